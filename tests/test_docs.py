"""Docs that run: every command and Python example in README.md and docs/*.md, run for real.

The examples are read from the Markdown and run, file by file, against the test registry (the
CNCF registry on loopback), with podman behind ``docker`` for ``docker run`` lines. The
convention (docs/testing.md, "Docs that run"):

- a fenced block is **run** when it is ```` ```python ````, ```` ```sh ```` (a bash script), or
  ```` ```console ```` / unlabelled with ``$ `` prompts: each ``$ `` line is a command (``\\``
  continues it), the lines under it are its expected output. Other blocks (synopses,
  diagrams, file contents, messages shown alone) are text;
- the names the docs use for registries and base images are mapped onto the test registry by
  ``SUBSTITUTIONS`` (applied to commands and expected output alike);
- an expected output matches the real one modulo digests (``sha256:85a1…`` matches any
  digest), a ``docker://`` before a reference, ``…`` (anything) and ``<hash>`` (a package
  hash, captured: later ``<hash>`` of the same file are that value). Lines starting
  ``imagesmith:`` or ``Error:`` are standard error, the rest standard output, which must match
  whole (a command shown without output is not compared, only its exit status). A command
  exits 0 unless its expected output shows an ``imagesmith: error:`` line (or ``$ echo $?``);
  that error is one line, the last of its standard error;
- HTML comments steer a block: ``<!-- docs-test: skip REASON -->`` (never run; the reason is
  listed by ``test_docs_skips_are_few_and_explained``), ``<!-- docs-test: setup`` ... ``-->``
  (hidden shell lines run before the next block), ``<!-- docs-test: python`` ... ``-->``
  (hidden Python run before it, in the file's namespace).

Blocks of one file share a working directory (a copy of ``examples/`` under ``examples/``), a
Python namespace and the captured ``<hash>``.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cli_support import ok
from conftest import need_tool
from servers import DistributionRegistry

pytestmark = [pytest.mark.integration]

ROOT = Path(__file__).resolve().parent.parent
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BIN = Path(sys.executable).parent

# The doc's name -> the test's. Order matters: longer names first. {registry} is the test
# registry's host:port; everything the docs push goes under its docs/ namespace, apart from the
# other tests' repositories. ubuntu:23.04 is the tests' busybox base (linux/amd64 and
# linux/arm64/v8, an OCI index), pushed under BASE_NAME.
SUBSTITUTIONS: list[tuple[str, str]] = [
    ("ubuntu:23.04", "{registry}/docs/library/ubuntu:23.04"),
    ("https://registry.example/v2/", "http://{registry}/v2/docs/"),
    ("ghcr.io/acme/", "{registry}/docs/acme/"),
    ("registry.gitlab.com/acme/", "{registry}/docs/acme/"),
    ("registry.example.com/", "{registry}/docs/"),
    ("registry.example/", "{registry}/docs/"),
    ("reg.example/", "{registry}/docs/"),
    ("REG/", "{registry}/docs/"),
    ("127.0.0.1:5000", "{registry}"),
    ("localhost:5000", "{registry}"),
]
BASE_NAME = "{registry}/docs/library/ubuntu:23.04"
DIRECTIVE = re.compile(r"^<!--\s*docs-test:\s*(\w[\w-]*)\s*(.*?)\s*(-->)?\s*$")
FENCE = re.compile(r"^(\s*)```(\S*)\s*$")


@dataclass
class Block:
    path: Path
    line: int  # 1-based line of the opening fence
    lang: str
    text: str
    skip: str | None = None
    setup: list[str] = field(default_factory=list)
    python_setup: list[str] = field(default_factory=list)

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"

    @property
    def kind(self) -> str | None:
        """``python``, ``sh``, ``console`` or None (text, not run)."""
        if self.lang == "python":
            return "python"
        if self.lang in ("sh", "bash", "shell"):
            return "sh"
        if self.lang == "console" or (
            self.lang == "" and any(line.startswith("$ ") for line in self.text.splitlines())
        ):
            return "console"
        return None


def read_blocks(path: Path) -> list[Block]:
    """Every fenced block of ``path``, with the directives of the comments just before it."""
    lines = path.read_text().splitlines()
    blocks: list[Block] = []
    skip: str | None = None
    setup: list[str] = []
    python_setup: list[str] = []
    i = 0
    while i < len(lines):
        directive = DIRECTIVE.match(lines[i].strip())
        fence = FENCE.match(lines[i])
        if directive:
            name, rest, closed = directive.groups()
            body: list[str] = []
            if not closed:
                i += 1
                while i < len(lines) and lines[i].strip() != "-->":
                    body.append(lines[i])
                    i += 1
            if name == "skip":
                assert rest, f"{path.name}:{i + 1}: docs-test: skip needs a reason"
                skip = rest
            elif name == "setup":
                setup.extend(body)
            elif name == "python":
                python_setup.extend(body)
            else:
                raise AssertionError(f"{path.name}:{i + 1}: unknown docs-test directive {name!r}")
        elif fence:
            indent, lang = fence.groups()
            start = i
            body = []
            i += 1
            while i < len(lines) and not re.match(rf"^{re.escape(indent)}```\s*$", lines[i]):
                body.append(lines[i][len(indent) :])
                i += 1
            blocks.append(Block(path, start + 1, lang, "\n".join(body), skip, setup, python_setup))
            skip, setup, python_setup = None, [], []
        i += 1
    return blocks


def all_blocks() -> list[Block]:
    return [block for path in DOC_FILES for block in read_blocks(path)]


# --------------------------------------------------------------------------- output matching


def expected_pattern(line: str, captured: dict[str, str]) -> str:
    """A regular expression for one expected output line (see the module docstring)."""
    out = []
    pos = 0
    token = re.compile(r"sha256[:-][0-9a-f]*…?|…|<hash>|<[a-z][a-z -]*>")
    for m in token.finditer(line):
        out.append(re.escape(line[pos : m.start()]))
        text = m.group()
        if text.startswith("sha256"):  # a digest, or a digest as a tag: sha256-<hex>
            full = re.fullmatch(r"sha256[:-][0-9a-f]{64}", text)
            out.append(re.escape(text) if full else re.escape(text[:7]) + r"[0-9a-f]{8,64}")
        elif text == "…":
            out.append(".*?")
        elif text == "<hash>":
            if "hash" in captured:
                out.append(re.escape(captured["hash"]))
            elif "(?P<hash>" in "".join(out):
                out.append("(?P=hash)")
            else:
                out.append("(?P<hash>[a-z0-9]+)")
        else:
            out.append(r"\S+?")
        pos = m.end()
    out.append(re.escape(line[pos:]))
    return "".join(out).rstrip()


def match_lines(
    expected: list[str], actual: list[str], captured: dict[str, str], *, whole: bool
) -> str | None:
    """None when ``actual`` matches ``expected`` (all of it when ``whole``, else the expected
    lines in order among others); else what differs. A ``docker://`` before a printed
    reference is not compared: the docs show references without it."""
    actual = [a.rstrip().replace("docker://", "") for a in actual]
    expected = [e.replace("docker://", "") for e in expected]
    if whole and len(expected) != len(actual):
        return f"expected {len(expected)} lines, got {len(actual)}"
    j = 0
    for line in expected:
        pattern = re.compile(expected_pattern(line, captured))
        while j < len(actual):
            m = pattern.fullmatch(actual[j])
            j += 1
            if m:
                if m.groupdict().get("hash"):
                    captured.setdefault("hash", m.group("hash"))
                break
            if whole:
                return f"expected {line!r}, got {actual[j - 1]!r}"
        else:
            return f"expected {line!r}: not in the output"
    return None


def is_stderr_line(line: str) -> bool:
    return line.startswith(("imagesmith: ", "Error: "))


# --------------------------------------------------------------------------- running


@dataclass
class Session:
    """What the blocks of one doc file share."""

    workdir: Path
    env: dict[str, str]
    substitutions: list[tuple[str, str]]
    namespace: dict[str, object] = field(default_factory=dict)
    captured: dict[str, str] = field(default_factory=dict)

    def substitute(self, text: str) -> str:
        for doc, test in self.substitutions:
            text = text.replace(doc, test)
        if "hash" in self.captured:
            text = text.replace("<hash>", self.captured["hash"])
        return text

    def shell(self, script: str, *, timeout: float = 240) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", "-c", script],
            cwd=self.workdir,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )


def console_commands(text: str) -> Iterator[tuple[str, list[str]]]:
    """(command, expected output lines) of a console block."""
    command: list[str] | None = None
    output: list[str] = []
    for line in text.splitlines():
        if line.startswith("$ "):
            if command is not None:
                yield "\n".join(command), output
            command, output = [line[2:].rstrip()], []
        elif command is not None and command[-1].endswith("\\") and not output:
            command.append(line)
        elif command is not None:
            output.append(line)
    if command is not None:
        yield "\n".join(command), output


def _trim(lines: list[str]) -> list[str]:
    while lines and not lines[-1].strip():
        lines = lines[:-1]
    return lines


def strip_comment(command: str) -> str:
    """The command without a trailing ``# comment`` (two spaces before the ``#``)."""
    return re.sub(r"\s{2,}#.*$", "", command, flags=re.MULTILINE)


def run_console(block: Block, session: Session) -> list[str]:
    problems: list[str] = []
    last_code = 0
    commands = list(console_commands(block.text))
    for index, (command, output) in enumerate(commands):
        following = commands[index + 1] if index + 1 < len(commands) else ("", [])
        shown_code = following[1][0].strip() if following[0].strip() == "echo $?" and following[1] else "0"
        if command.strip() == "echo $?":
            if output and output[0].strip() != str(last_code):
                problems.append(f"exit code {last_code}, the doc says {output[0].strip()}")
            continue
        command = session.substitute(strip_comment(command))
        expected = [session.substitute(line) for line in _trim(output)]
        ran = session.shell(command)
        last_code = ran.returncode
        err_expected = [line for line in expected if is_stderr_line(line)]
        out_expected = [line for line in expected if not is_stderr_line(line)]
        fails = shown_code != "0" or any(line.startswith("imagesmith: error:") for line in err_expected)
        tell = f"$ {command}\n--- stdout\n{ran.stdout}--- stderr\n{ran.stderr}"
        if not fails and ran.returncode != 0:
            problems.append(f"exited {ran.returncode}:\n{tell}")
            continue
        if fails and ran.returncode == 0:
            problems.append(f"succeeded, the doc shows it failing:\n{tell}")
            continue
        if fails and any(line.startswith("imagesmith: error:") for line in err_expected):
            # One line, and the last: progress may come before it, nothing after it.
            lines = [line for line in ran.stderr.splitlines() if line.strip()]
            at = [i for i, line in enumerate(lines) if line.startswith("imagesmith: error:")]
            if len(at) != 1 or at[0] != len(lines) - 1:
                problems.append(f"the error is not one line, the last:\n{tell}")
                continue
        if not expected:  # no output shown: the exit status is all there is to check
            continue
        why = match_lines(out_expected, ran.stdout.splitlines(), session.captured, whole=True)
        if why is None:
            why = match_lines(err_expected, ran.stderr.splitlines(), session.captured, whole=False)
        if why is not None:
            problems.append(f"{why}\n{tell}")
    return problems


def run_sh(block: Block, session: Session) -> list[str]:
    ran = session.shell("set -euo pipefail\n" + session.substitute(block.text))
    if ran.returncode != 0:
        return [f"exited {ran.returncode}:\n--- stdout\n{ran.stdout}--- stderr\n{ran.stderr}"]
    return []


def run_python(code: str, session: Session, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    code = session.substitute(code)
    out = io.StringIO()
    with monkeypatch.context() as m:
        m.chdir(session.workdir)
        for key, value in session.env.items():
            if key.startswith(("IMAGESMITH_", "DOCKER_", "CONTAINERS_")):
                m.setenv(key, value)
        try:
            with contextlib.redirect_stdout(out):
                exec(compile(code, "<doc>", "exec"), session.namespace)
        except Exception as error:
            return [f"raised {type(error).__name__}: {error}\n--- code\n{code}\n--- stdout\n{out.getvalue()}"]
    return []


# --------------------------------------------------------------------------- fixtures and tests


@pytest.fixture(scope="module")
def docs_env(
    registry: DistributionRegistry, multiarch_base: str, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, str]:
    """The environment every doc command runs in, and the base image under the docs' name."""
    cache = str(tmp_path_factory.getbasetemp() / "cache")
    os.environ.setdefault("IMAGESMITH_CACHE_DIR", cache)
    ok("--insecure-registry", registry.host, "copy", multiarch_base, BASE_NAME.format(registry=registry.host))
    home = tmp_path_factory.mktemp("docs-home")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("IMAGESMITH_", "DOCKER_"))}
    env.update(
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        HOME=str(home),
        IMAGESMITH_INSECURE_REGISTRY=registry.host,
        IMAGESMITH_CACHE_DIR=os.environ["IMAGESMITH_CACHE_DIR"],
        DOCKER_CONFIG=str(home / ".docker"),
    )
    return env


# Programs the docs' examples call besides imagesmith (the Makefile installs them).
TOOLS = ("docker", "podman", "make", "curl", "jq")


def _tools(blocks: list[Block]) -> set[str]:
    text = "\n".join(b.text for b in blocks if b.kind and not b.skip)
    return {tool for tool in TOOLS if re.search(rf"(^(\$ )?|\|\s*|\$\(){tool}\s", text, re.MULTILINE)}


@pytest.mark.parametrize("path", DOC_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_doc_examples_run(
    path: Path,
    docs_env: dict[str, str],
    registry: DistributionRegistry,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    blocks = [b for b in read_blocks(path) if b.kind]
    runnable = [b for b in blocks if not b.skip]
    if not runnable:
        return
    tools = _tools(runnable)
    for tool in sorted(tools):
        need_tool(tool)
    env = dict(docs_env)
    if tools & {"docker", "podman"}:
        podman = request.getfixturevalue("podman")
        env.update({k: v for k, v in podman.env().items() if k.startswith(("DOCKER_", "CONTAINERS_"))})
        env["REGISTRY_AUTH_FILE"] = podman.env()["REGISTRY_AUTH_FILE"]
    workdir = tmp_path / "work"
    workdir.mkdir()
    shutil.copytree(ROOT / "examples", workdir / "examples")
    substitutions = [(doc, test.format(registry=registry.host)) for doc, test in SUBSTITUTIONS]
    session = Session(workdir, env, substitutions)
    problems: list[str] = []
    for block in runnable:
        found: list[str] = []
        if block.setup:
            ran = session.shell("set -euo pipefail\n" + session.substitute("\n".join(block.setup)))
            if ran.returncode != 0:
                found.append(f"hidden setup exited {ran.returncode}: {ran.stderr}")
        if not found and block.python_setup:
            found += run_python("\n".join(block.python_setup), session, monkeypatch)
        if not found:
            if block.kind == "python":
                found += run_python(block.text, session, monkeypatch)
            elif block.kind == "sh":
                found += run_sh(block, session)
            else:
                found += run_console(block, session)
        problems += [f"{block.where} ({block.kind}): {p}" for p in found]
    assert not problems, "\n\n".join(problems)


# Blocks that cannot run here, each with its reason: keep this list short.
def test_docs_skips_are_few_and_explained() -> None:
    blocks = [b for b in all_blocks() if b.kind]
    skipped = [b for b in blocks if b.skip]
    for b in skipped:
        assert len(b.skip or "") > 10, f"{b.where}: say why it cannot run"
    print(f"\n{len(blocks) - len(skipped)} doc blocks run, {len(skipped)} skipped:")
    for b in skipped:
        print(f"  {b.where}: {b.skip}")
    assert len(blocks) - len(skipped) >= 25
    assert len(skipped) <= 3


def test_directives_attach_to_a_runnable_block() -> None:
    """A skip or setup comment before a text block is a mistake (it would do nothing)."""
    for b in all_blocks():
        if b.skip or b.setup or b.python_setup:
            assert b.kind, f"{b.where}: a docs-test comment before a block that is not run"


def test_expected_output_matching() -> None:
    captured: dict[str, str] = {}
    digest = "sha256:" + "ab" * 32
    line = "Pushed reg/stack:hello-2.12-<hash> (sha256:…)"
    real = f"Pushed docker://reg/stack:hello-2.12-abc123 ({digest})"
    assert match_lines([line], [real], captured, whole=True) is None
    assert captured == {"hash": "abc123"}
    assert match_lines(["x <hash>"], ["x other"], captured, whole=True) is not None
    assert (
        match_lines(
            ["  linux/amd64  sha256:3f90… (479 B)"], [f"  linux/amd64  {digest} (480 B)"], {}, whole=True
        )
        is not None
    )
    assert match_lines(["a"], ["a", "b"], {}, whole=True) is not None
    assert match_lines(["a"], ["x", "a", "b"], {}, whole=False) is None


def test_a_wrong_doc_fails(tmp_path: Path) -> None:
    """The harness catches wrong output, a failing command, and an error of two lines."""
    session = Session(tmp_path, {"PATH": os.environ["PATH"]}, [("reg.example/", "127.0.0.1:1/")])

    def problems(text: str) -> list[str]:
        return run_console(Block(tmp_path / "x.md", 1, "console", text), session)

    assert problems("$ echo reg.example/a  # comment\n127.0.0.1:1/a\n") == []
    assert problems("$ echo one\ntwo\n")
    assert problems("$ false\n")
    fail = "$ echo 'imagesmith: error: bad' >&2; exit 2\nimagesmith: error: bad\n$ echo $?\n"
    assert problems(fail + "2\n") == []
    assert problems(fail + "1\n")
    two_lines = "$ printf 'imagesmith: error: bad\\nmore\\n' >&2; exit 2\nimagesmith: error: bad\n"
    assert problems(two_lines)
    assert problems("$ true\nimagesmith: error: bad\n")  # the doc shows a failure that does not happen
