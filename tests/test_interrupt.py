"""Ctrl-C and the progress display, for real: ``imagesmith build`` runs in a tmux pane (a real
terminal) against the CNCF registry, with a layer of random bytes big enough that building and
uploading it take seconds; the pane is read with ``capture-pane`` and Ctrl-C is typed with
``send-keys``. Without a terminal (a CI log) the same build prints plain lines."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests
from cli_support import cli
from conftest import need_tool
from servers import DistributionRegistry

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# Random bytes do not compress: the layer is as big as its input.
BIG_MB = 200


def _package(root: Path, megabytes: int) -> Path:
    """A package ``big@1.0`` of ``megabytes`` MiB of random bytes (files of at most 50 MiB)."""
    data = root / "big" / "data"
    data.mkdir(parents=True)
    left, index = megabytes, 0
    while left > 0:
        size = min(50, left)
        with (data / f"part{index}.bin").open("wb") as out:
            for _ in range(size):
                out.write(os.urandom(1 << 20))
        left, index = left - size, index + 1
    package = root / "big.json"
    package.write_text(json.dumps({"name": "big", "version": "1.0", "prefix": "/opt/big", "content": "big"}))
    return package


class Pane:
    """One command in a detached tmux session on a private server (``-L``), 120x40."""

    def __init__(self, workdir: Path, command: list[str], env: dict[str, str]) -> None:
        self.socket = f"imagesmith-test-{uuid.uuid4().hex[:12]}"
        script = workdir / "pane.sh"
        exports = "".join(f"export {k}={shlex.quote(v)}\n" for k, v in env.items())
        # The shell survives the Ctrl-C sent to the pane's foreground processes (a trap, unlike an
        # ignored signal, is not inherited), to report the command's exit status.
        script.write_text(
            "trap : INT\nunset IMAGESMITH_PROGRESS IMAGESMITH_PROGRESS_INTERVAL\n"
            + exports
            + f"cd {shlex.quote(str(workdir))}\n"
            + shlex.join(command)
            + '\necho "EXIT=$? AT=$(date +%s.%N)"\nsleep 600\n'
        )
        size = ("-x", "120", "-y", "40")
        self._tmux("new-session", "-d", "-s", "main", *size, f"sh {shlex.quote(str(script))}")

    def _tmux(self, *args: str) -> str:
        done = subprocess.run(
            ["tmux", "-f", "/dev/null", "-L", self.socket, *args], capture_output=True, text=True, check=True
        )
        return done.stdout

    def text(self) -> str:
        return self._tmux("capture-pane", "-p", "-J", "-t", "main")  # -J: wrapped lines joined

    def wait_for(self, ready: Callable[[str], bool], what: str, limit: float = 180.0) -> str:
        """Poll the pane until ``ready(text)``; fail naming ``what`` with the pane's text."""
        deadline = time.monotonic() + limit
        while True:
            text = self.text()
            if ready(text):
                return text
            if time.monotonic() > deadline:
                pytest.fail(f"the pane never showed {what}:\n{text}")
            time.sleep(0.05)

    def ctrl_c(self) -> None:
        self._tmux("send-keys", "-t", "main", "C-c")

    def close(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True, check=False)


@pytest.fixture
def pane_factory() -> Iterator[Callable[[Path, list[str], dict[str, str]], Pane]]:
    need_tool("tmux")
    panes: list[Pane] = []

    def make(workdir: Path, command: list[str], env: dict[str, str]) -> Pane:
        panes.append(Pane(workdir, command, env))
        return panes[-1]

    yield make
    for pane in panes:
        pane.close()


ARCHIVING = re.compile(r"^  archiving   big@1\.0 +[\d.]+ MB / [\d.]+ MB +\d+% +[\d.]+ MB/s  ETA \d+s$", re.M)
UPLOADING = re.compile(r"^  uploading   big@1\.0 +[\d.]+ MB / (\?|[\d.]+ MB +\d+%) +[\d.]+ MB/s", re.M)
OVERALL = re.compile(r"^  overall     \d steps? under way +[\d.]+ MB / ", re.M)


def _uploads_left(registry: DistributionRegistry, repository: str) -> list[Path]:
    """Upload sessions of ``repository`` still holding bytes in the registry's storage."""
    uploads = registry.data_dir / "docker/registry/v2/repositories" / repository / "_uploads"
    return sorted(uploads.glob("*/data")) if uploads.is_dir() else []


def _ctrl_c(pane: Pane, ready: Callable[[str], bool], what: str) -> str:
    """Wait for ``ready``, type Ctrl-C, wait for the command's end; the pane's text after it."""
    screen = pane.wait_for(ready, what)
    print(f"\n--- the pane while {what} ---\n{screen.rstrip()}")
    sent = time.time()
    pane.ctrl_c()
    text = pane.wait_for(lambda t: "EXIT=" in t, "the build ending")
    stopped = float(re.search(r"AT=([\d.]+)", text).group(1))  # type: ignore[union-attr]
    print(f"--- the pane after one Ctrl-C ({stopped - sent:.2f} s to exit) ---\n{text.rstrip()}")
    return text


def _assert_stopped(text: str, registry: DistributionRegistry, repository: str, cache: Path) -> None:
    """Exit 130 with one line, the live block erased; nothing tagged, the upload session
    cancelled (a DELETE the registry accepted) and holding no bytes; no temp file left."""
    assert "EXIT=130" in text
    # Finished steps are indented; the only other lines are the message and the shell's.
    others = [line for line in text.splitlines() if line.strip() and not line.startswith("  ")]
    assert others[0] == "imagesmith: interrupted" and others[1].startswith("EXIT=130"), text
    assert len(others) == 2 and "Traceback" not in text, text
    assert not (ARCHIVING.search(text) or UPLOADING.search(text) or OVERALL.search(text))
    tags = requests.get(f"{registry.url}/v2/{repository}/tags/list", timeout=10)
    assert tags.status_code == 404 or "1" not in (tags.json().get("tags") or []), tags.text
    log = registry.log_path.read_text(errors="replace")
    assert re.search(rf'"DELETE /v2/{repository}/blobs/uploads/[^ ]+ HTTP/1\.1" 204', log)
    assert _uploads_left(registry, repository) == []
    assert [p for p in (cache / "tmp").rglob("*") if p.is_file()] == []


def _build(registry: DistributionRegistry, base: str, package: Path, *args: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "imagesmith",
        "--insecure-registry",
        registry.host,
        "build",
        "--base-image",
        base,
        *args,
        str(package),
    ]


def test_ctrl_c_while_a_layer_is_built_and_uploaded(
    registry: DistributionRegistry, base: str, tmp_path: Path, pane_factory: Callable[..., Pane]
) -> None:
    package = _package(tmp_path, BIG_MB)
    cache = tmp_path / "cache"
    command = _build(registry, base, package, "--tag", f"{registry.host}/interrupt/built:1")
    pane = pane_factory(tmp_path, command, {"IMAGESMITH_CACHE_DIR": str(cache)})
    # The live display: the layer being archived (done/total, %, rate, ETA), the same layer
    # uploaded meanwhile (its total unknown until the build ends), and the overall line.
    text = _ctrl_c(
        pane,
        lambda t: bool(ARCHIVING.search(t) and UPLOADING.search(t) and OVERALL.search(t)),
        "archiving and uploading",
    )
    _assert_stopped(text, registry, "interrupt/built", cache)
    # The build stopped too: no layer blob reached the cache.
    assert [p for p in cache.rglob("*") if p.is_file() and p.stat().st_size > 50_000_000] == []


def test_ctrl_c_while_a_built_layer_is_pushed(
    registry: DistributionRegistry, base: str, tmp_path: Path, pane_factory: Callable[..., Pane]
) -> None:
    """The case of the issue: the layer is in the cache, its upload runs in a worker thread,
    and Ctrl-C used to wait for the whole upload to end."""
    package = _package(tmp_path, BIG_MB)
    cache = tmp_path / "cache"
    env = {**os.environ, "IMAGESMITH_CACHE_DIR": str(cache)}
    subprocess.run(
        _build(registry, base, package, "--output", f"oci:{tmp_path / 'layout'}:1"),
        check=True,
        env=env,
        capture_output=True,
    )
    (blob,) = [p for p in cache.rglob("*") if p.is_file() and p.stat().st_size > 50_000_000]
    digest = f"sha256:{blob.name}"
    command = _build(registry, base, package, "--tag", f"{registry.host}/interrupt/pushed:1")
    pane = pane_factory(tmp_path, command, {"IMAGESMITH_CACHE_DIR": str(cache)})
    row = re.compile(
        rf"^  uploading   {digest[:19]} +[\d.]+ MB / 209\.\d MB +\d+% +[\d.]+ MB/s  ETA \d+s$", re.M
    )
    text = _ctrl_c(pane, lambda t: bool(row.search(t) and OVERALL.search(t)), "uploading the layer")
    _assert_stopped(text, registry, "interrupt/pushed", cache)
    # The upload stopped: the registry never got the whole blob.
    head = requests.head(f"{registry.url}/v2/interrupt/pushed/blobs/{digest}", timeout=10)
    assert head.status_code == 404


def captured(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` with ``env``, its output captured as text, whatever its exit status."""
    return subprocess.run(argv, capture_output=True, text=True, env=env, check=False)


def test_plain_progress_lines_without_a_terminal(
    registry: DistributionRegistry, base: str, tmp_path: Path
) -> None:
    package = _package(tmp_path, 24)
    target = f"{registry.host}/interrupt/plain:1"
    env = {**os.environ, "IMAGESMITH_CACHE_DIR": str(tmp_path / "cache"), "IMAGESMITH_PROGRESS_INTERVAL": "0"}
    env.pop("IMAGESMITH_PROGRESS", None)  # the default: plain lines without a terminal
    flags = [sys.executable, "-m", "imagesmith", "--insecure-registry", registry.host]
    built = captured([*flags, "build", "--base-image", base, "--tag", target, str(package)], env)
    assert built.returncode == 0, built.stderr
    print(f"\n--- build, stderr without a terminal ---\n{built.stderr}")
    assert "\x1b" not in built.stderr and "\r" not in built.stderr
    err = built.stderr.splitlines()
    # A line per finished step, and lines while a step runs (every event here: interval 0).
    assert any(line.startswith("  built layer      big@1.0 (25.") for line in err)
    assert any(line.startswith("  pushed manifest  ") for line in err)
    assert any(
        re.fullmatch(r"  archiving        big@1\.0: [\d.]+ MB of 25\.2 MB \(\d+%\), .*so far", line)
        for line in err
    )
    assert any(re.fullmatch(r"  uploading        big@1\.0: [\d.]+ MB.*so far", line) for line in err)
    assert built.stdout.startswith(f"Pushed {target} (sha256:")

    # Download and unpack report the same way (a fresh cache: every layer is fetched).
    env["IMAGESMITH_CACHE_DIR"] = str(tmp_path / "cache2")
    pulled = captured([*flags, "pull", target, "--rootfs", str(tmp_path / "rootfs")], env)
    assert pulled.returncode == 0, pulled.stderr
    print(f"--- pull, stderr without a terminal ---\n{pulled.stderr}")
    err = pulled.stderr.splitlines()
    assert any(
        re.fullmatch(r"  downloading      sha256:\w{12}: [\d.]+ MB of 25\.\d MB \(\d+%\).*", line)
        for line in err
    )
    assert any(
        re.fullmatch(r"  unpacking        sha256:\w{12}: [\d.]+ MB of 25\.\d MB \(\d+%\).*", line)
        for line in err
    )
    assert sum(line.startswith("  unpacked         sha256:") for line in err) == 2
    assert (tmp_path / "rootfs/opt/big/data/part0.bin").stat().st_size == 24 << 20


def test_quiet_prints_the_digest_and_json_is_unchanged(
    registry: DistributionRegistry, base: str, tmp_path: Path
) -> None:
    package = _package(tmp_path, 1)
    target = f"{registry.host}/interrupt/quiet:1"
    flags = ("--insecure-registry", registry.host, "build", "--base-image", base, "--tag", target)
    env = {"IMAGESMITH_CACHE_DIR": str(tmp_path / "cache"), "IMAGESMITH_PROGRESS": "auto"}
    code, out, err = cli(*flags, "-q", str(package), env=env)
    assert code == 0 and err == ""
    assert re.fullmatch(r"sha256:[0-9a-f]{64}\n", out)
    code, out_json, err = cli(*flags, "--json", str(package), env=env)
    assert code == 0
    result = json.loads(out_json)  # the whole of stdout is the JSON document, as before
    assert result["digest"] == out.strip() and result["reference"] == target
    assert "  pushed manifest  " in err  # progress goes to stderr only
