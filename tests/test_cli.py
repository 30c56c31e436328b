"""The CLI layer alone: parsing, settings merging, rendering, exit codes (no registry)."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
from cli_support import cli

from imagesmith.cli import _command, _emit_list, _merge_globals, _parser, _registry_options, main
from imagesmith.errors import UsageError
from imagesmith.progress import ProgressEvent
from imagesmith.progressview import ProgressView as _Progress


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


# `makefile` for the example stack on a base and a repository nothing contacts.
MAKEFILE = ("makefile", "--base-image", "127.0.0.1:5000/b:1", "--repo", "127.0.0.1:5000/stack")


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    return main(list(argv), stdout=out, stderr=err), out.getvalue(), err.getvalue()


@pytest.mark.parametrize("command", [[], ["build"], ["inspect"], ["import"], ["cache"], ["cache", "prune"]])
def test_help_everywhere(command: list[str]) -> None:
    # --help and --version write to main's stdout, like every command's output.
    code, out, _ = run(*command, "--help")
    assert code == 0 and "usage: imagesmith" in out


def test_version() -> None:
    code, out, _ = run("--version")
    assert code == 0 and out.startswith("imagesmith 0.")


def test_missing_arguments_exit_2() -> None:
    code, _, err = run("build", "pkg.json")  # no --base-image, no --repo/--tag
    assert code == 2 and "--base-image" in err
    # One line, on the stream main() was given, naming where help is.
    assert err.count("\n") == 1 and err.startswith("imagesmith: error: ") and "imagesmith build --help" in err
    assert run("build", "--base-image", "x", "--repo", "a/b", "--tag", "a/b:c", "p.json")[0] == 2


def test_registry_settings_before_after_and_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    monkeypatch.setenv("IMAGESMITH_INSECURE_REGISTRY", "env.example:5000")
    monkeypatch.delenv("IMAGESMITH_CA_CERT", raising=False)
    args = _parser().parse_args(
        ["--insecure-registry", "a:1", "inspect", "x", "--insecure-registry", "b:2,c", "--ca-cert", str(ca)]
    )
    options = _registry_options(args)
    assert {"a:1", "b:2", "c", "env.example:5000"} <= set(options.insecure)
    assert options.ca_cert == ca
    assert options.is_insecure("c:443") and not options.is_insecure("d:1")


def test_credential_helper_timeout_from_flag_or_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("IMAGESMITH_CREDENTIAL_HELPER_TIMEOUT", raising=False)
    assert _registry_options(_parser().parse_args(["inspect", "x"])).credential_helper_timeout == 60
    monkeypatch.setenv("IMAGESMITH_CREDENTIAL_HELPER_TIMEOUT", "7")
    assert _registry_options(_parser().parse_args(["inspect", "x"])).credential_helper_timeout == 7
    for argv in (
        ["--credential-helper-timeout", "2.5", "inspect", "x"],
        ["inspect", "x", "--credential-helper-timeout", "2.5"],
    ):
        assert _registry_options(_parser().parse_args(argv)).credential_helper_timeout == 2.5
    code, _, err = run("--credential-helper-timeout", "0", "inspect", "127.0.0.1:1/x:1")
    assert code == 2 and "credential helper timeout" in err


def test_missing_ca_cert_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run("--ca-cert", "/nonexistent/ca.pem", "inspect", "127.0.0.1:1/x:1")
    assert code == 2 and "/nonexistent/ca.pem" in err


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('["/bin/sh", "-c"]', ["/bin/sh", "-c"]),
        ("python3 -m http.server", ["python3", "-m", "http.server"]),
        ("sh -c 'echo a b'", ["sh", "-c", "echo a b"]),
    ],
)
def test_command_forms(text: str, expected: list[str]) -> None:
    assert _command(text, "--cmd") == expected


@pytest.mark.parametrize("text", ['["unterminated"', "[1, 2]", "sh -c 'open"])
def test_bad_command_forms(text: str) -> None:
    with pytest.raises(UsageError, match="--cmd"):
        _command(text, "--cmd")


def test_progress_off_a_terminal_is_plain_lines() -> None:
    stream = io.StringIO()
    progress = _Progress(stream)
    progress(ProgressEvent("layer-progress", "hello@1", 10))
    progress(ProgressEvent("blob-uploaded", "sha256:" + "a" * 64, 1234))
    assert stream.getvalue() == "  uploaded         sha256:aaaaaaaaaaaa (1.2 kB)\n"


def test_progress_on_a_terminal() -> None:
    stream = Tty()
    progress = _Progress(stream)
    progress(ProgressEvent("layer-progress", "hello@1", 2_500_000))
    progress(ProgressEvent("layer-built", "hello@1", 1_000, "sha256:" + "b" * 64))
    progress(ProgressEvent("blob-uploaded", "sha256:" + "a" * 64, 1234))
    text = stream.getvalue()
    assert "archiving   hello@1" in text and "2.5 MB / ?" in text
    assert "built layer      hello@1 (1.0 kB)" in text
    assert "uploaded         sha256:aaaaaaaaaaaa (1.2 kB)" in text


def test_bad_package_file_is_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"name": "x"}')
    code, out, err = run("build", "--base-image", "127.0.0.1:1/b:1", "--repo", "127.0.0.1:1/r", str(bad))
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and str(bad) in err


def test_import_of_a_non_tar_file(tmp_path: Path) -> None:
    not_tar = tmp_path / "hostname"
    not_tar.write_text("myhost\n")
    code, out, err = run(
        # A layout, not a dead registry: that one is reported first, before any input is read.
        "import",
        str(not_tar),
        "--output",
        f"oci:{tmp_path / 'out'}",
        "--cache-dir",
        str(tmp_path / "c"),
    )
    assert code == 1 and out == ""
    assert f"{not_tar} is not a tar archive" in err


def test_cache_info_and_prune(tmp_path: Path) -> None:
    import json
    import os
    import time

    from imagesmith.store.cache import BlobCache

    cache = BlobCache(tmp_path / "c")
    old = cache.put_bytes(b"old blob")
    new = cache.put_bytes(b"new blob!")
    cache.put_record("k", {"v": 1})
    week_ago = time.time() - 7 * 86400
    os.utime(cache.path(old), (week_ago, week_ago))
    os.utime(cache._record_path("k"), (week_ago, week_ago))

    code, out, _ = run("cache", "--cache-dir", str(cache.root), "info", "--json")
    assert code == 0
    assert json.loads(out) == {
        "root": str(cache.root),
        "blobs": 2,
        "blob_bytes": 17,
        "records": 1,
        "temp_files": 0,
        "temp_bytes": 0,
    }
    code, out, _ = run("cache", "--cache-dir", str(cache.root), "prune", "--older-than", "3", "--dry-run")
    assert code == 0 and out.startswith("Would remove 1 blobs (") and ", 1 records" in out
    assert cache.has(old)
    code, out, _ = run("cache", "--cache-dir", str(cache.root), "prune", "--older-than", "3", "--json")
    assert json.loads(out)["blobs"] == 1
    assert not cache.has(old) and cache.has(new)
    # Reading a blob marks it used: it survives a prune of older entries.
    os.utime(cache.path(new), (week_ago, week_ago))
    with cache.open(new) as reader:
        reader.read_all()
    assert run("cache", "--cache-dir", str(cache.root), "prune", "--older-than", "3")[0] == 0
    assert cache.has(new)
    assert run("cache", "--cache-dir", str(cache.root), "prune")[0] == 0
    assert not cache.has(new)
    assert "Blobs:   0 (0 B)" in run("cache", "--cache-dir", str(cache.root), "info")[1]
    assert run("cache", "--cache-dir", str(cache.root), "prune", "--older-than", "-1")[0] == 2


def test_makefile_command_writes_a_runnable_makefile(tmp_path: Path) -> None:
    import shutil
    import subprocess

    stack = tmp_path / "stack"
    shutil.copytree(Path(__file__).resolve().parent.parent / "examples" / "stack", stack)
    target = tmp_path / "Makefile"
    code, out, err = run(
        "--insecure-registry", "127.0.0.1:5000", *MAKEFILE, "-o", str(target), str(stack / "hello.json")
    )
    assert code == 0 and out == "", err
    text = target.read_text()
    assert "\nIMAGESMITH_FLAGS ?= --insecure-registry 127.0.0.1:5000\n" in text
    assert "stack/hello.json" in text and str(tmp_path) not in text.split("# Set variables")[1]
    env = {"PATH": "/usr/bin:/bin"}
    listed = subprocess.run(
        ["make", "-s", "-C", str(tmp_path), "list"], capture_output=True, text=True, env=env, check=True
    )
    assert listed.stdout.split() == ["libgreet-1.0", "hello-2.12"]


def test_makefile_records_the_authfile_path_and_never_a_credential(tmp_path: Path) -> None:
    """Each build of a generated Makefile reads the credentials file `makefile` was told of (by
    its path); --creds, a secret, is never written into the file."""
    auth = tmp_path / "auth.json"
    auth.write_text('{"auths": {}}')
    target = tmp_path / "Makefile"
    hello = str(Path(__file__).resolve().parent.parent / "examples" / "stack" / "hello.json")
    credentials = ("--authfile", str(auth), "--creds", "robot:s3cr3t-token")
    code, _out, err = cli(*credentials, *MAKEFILE, "-o", str(target), hello)
    assert code == 0, err
    text = target.read_text()
    assert f"\nIMAGESMITH_FLAGS ?= --authfile {auth}\n" in text
    assert "s3cr3t" not in text and "robot" not in text


def test_a_json_list_is_printed_one_element_at_a_time_as_json_dumps_would() -> None:
    cases: list[list[dict[str, Any]]] = [
        [],
        [{"a": 1, "b": [1, {"c": "x\ny"}]}],
        [{"a": 1}, {"b": {"c": [1, 2]}, "d": "  x\n"}],
    ]
    for data in cases:
        out = io.StringIO()
        _emit_list(iter(data), out)
        assert out.getvalue() == json.dumps(data, indent=2) + "\n"


def test_inspect_escapes_what_the_image_says(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 14, item 8: Env, labels, annotations and history went to the terminal raw, so an
    image could clear the screen, retitle the window or hide text; --json stays exact JSON."""
    from test_pull import file_member, image, layer_tar

    from imagesmith.store.layout import OCILayout

    monkeypatch.setenv("IMAGESMITH_CACHE_DIR", str(tmp_path / "cache"))
    evil = "\x1b]0;pwned\x07\x1b[2J\u009b31m"
    layout = OCILayout(tmp_path / "layout", create=True)
    image(
        layout,
        [layer_tar(file_member("f"))],
        config={"Env": [f"A={evil}"], "Labels": {"l": evil}, "WorkingDir": f"/w{evil}"},
        history=[{"created_by": f"run {evil}"}],
        annotations={"a": evil},
    )
    code, out, err = cli("inspect", f"oci:{layout.root}:1")
    assert code == 0, err
    for line in (
        "A=\\x1b]0;pwned\\x07\\x1b[2J\\x9b31m",
        "Label:      l=\\x1b]0;pwned",
        "Annotation: a=\\x1b",
        "WorkingDir: /w\\x1b",
        "run \\x1b]0;pwned",
    ):
        assert line in out, out
    assert not any(ch in out for ch in "\x1b\x07\u009b")
    code, out, _ = cli("inspect", f"oci:{layout.root}:1", "--json")
    assert json.loads(out)["config"]["Env"] == [f"A={evil}"]


def test_every_command_has_a_handler() -> None:
    """main runs what the parser recorded for the command (imagesmith/cli/parser.py): a command
    declared without its handler would fail only when someone ran it."""
    import argparse

    def handlers(parser: argparse.ArgumentParser, path: tuple[str, ...], found: Any) -> list[Any]:
        found = parser.get_default("handler") or found
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs:
            return [(path, found)]
        return [h for name, child in subs[0].choices.items() for h in handlers(child, (*path, name), found)]

    found = handlers(_parser(), (), None)
    assert len(found) == 25  # 23 commands; index and cache have two actions each
    assert [path for path, handler in found if not callable(handler)] == []
    assert len({handler for _, handler in found}) == 23  # one per command (manifest, config: their own)


def test_global_options_before_or_after_the_command(tmp_path: Path) -> None:
    """Issue 15, item 10: --debug and `cache --cache-dir` were refused after the command."""
    cache = str(tmp_path / "cache")
    outputs = set()
    for argv in (
        ["--json", "--cache-dir", cache, "cache", "info"],
        ["cache", "info", "--json", "--cache-dir", cache],
        ["cache", "--cache-dir", cache, "info", "--json"],
        ["--debug", "cache", "info", "--cache-dir", cache, "--json"],
        ["cache", "info", "--debug", "--json", "--cache-dir", cache],
    ):
        code, out, err = run(*argv)
        assert code == 0, (argv, err)
        outputs.add(out)
    assert len(outputs) == 1 and json.loads(outputs.pop())["root"] == cache
    for argv in (["--debug", "inspect", "x"], ["inspect", "x", "--debug"], ["cache", "prune", "--debug"]):
        args = _parser().parse_args(argv)
        _merge_globals(args)
        assert args.debug is True
    args = _parser().parse_args(["inspect", "x"])
    _merge_globals(args)
    assert args.debug is False and args.json is False
    # Given before and after, --insecure-registry adds up; the value after the command wins otherwise.
    args = _parser().parse_args(
        ["--cache-dir", "/a", "cache", "--cache-dir", "/b", "info", "--cache-dir", "/c"]
    )
    assert args.cache_dir == "/c" and args.cache_dir_global == "/a"


@pytest.mark.parametrize(
    "command",
    [
        ["build", "--base-image", "b", "--repo", "r", "p.json"],
        ["copy", "a", "b"],
        ["merge", "a", "--tag", "t"],
        ["pull", "a", "--rootfs", "d"],
        ["index", "list", "r"],
        ["makefile", "--base-image", "b", "--repo", "r", "p"],
    ],
)
def test_jobs_must_be_at_least_one(command: list[str]) -> None:
    for jobs in ("0", "-3", "many"):
        code, out, err = run(*command, "-j", jobs)
        assert code == 2 and out == "" and err.count("\n") == 1, err
        assert err.startswith("imagesmith: error: argument -j/--jobs: "), err


def test_options_that_exclude_each_other_are_one_line() -> None:
    """Issue 15, item 10: `inspect --json --raw` silently printed the raw manifest."""
    for argv in (
        ["inspect", "--json", "--raw", "x"],
        ["--json", "inspect", "--raw", "x"],
        ["inspect", "--referrers", "--raw", "x"],
        ["inspect", "--referrers", "--platform", "linux/amd64", "x"],
        ["--json", "manifest", "x"],
        ["--json", "serve", "--root", "d"],
        ["login", "r", "-p", "x", "--password-stdin"],
        ["build", "--each", "--each-root"],
    ):
        code, out, err = run(*argv)
        assert code == 2 and out == "" and err.count("\n") == 1, (argv, err)
        assert err.startswith("imagesmith: error: "), err
