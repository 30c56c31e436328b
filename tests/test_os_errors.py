"""Ordinary operating-system failures end in one line naming the path and the cause, with the
exit code of their category, never a traceback (issue 15).

Real conditions, through the real console entry (``python -m imagesmith``) in a subprocess:
a pipe whose reader is gone, ``/dev/full``, a 2 MiB tmpfs mounted as the cache or the pull
target, and directories made unreadable (mode 000) for a process that runs as root but
without the capabilities that let root ignore permissions (``setpriv --bounding-set
-dac_override,-dac_read_search``: what an ordinary user gets).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_support import ok
from conftest import need

NO_DAC = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]


def run(
    *args: str,
    stdout: int | None = subprocess.PIPE,
    unprivileged: bool = False,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "imagesmith", *args]
    return subprocess.run(
        [*NO_DAC, *argv] if unprivileged else argv,
        stdout=stdout,
        stderr=subprocess.PIPE,
        text=True,
        check=False,
        env={**os.environ, **(env or {})},
    )


def build_layout(
    base: str, tmp_path: Path, pkg: Path, *, unprivileged: bool = False, cache: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """``imagesmith build`` of ``pkg`` on ``base`` into the layout ``tmp_path/out``."""
    env = None if cache is None else {"IMAGESMITH_CACHE_DIR": str(cache)}
    output = f"oci:{tmp_path / 'out'}"
    return run(
        "build", "--base-image", base, "--output", output, str(pkg), unprivileged=unprivileged, env=env
    )


def one_line(done: subprocess.CompletedProcess[str], code: int) -> str:
    """The one error line of a run that exits ``code``."""
    assert done.returncode == code, done.stderr
    assert "Traceback" not in done.stderr
    (line,) = done.stderr.splitlines()
    assert line.startswith("imagesmith: error: ")
    return line


@pytest.fixture
def base(tmp_path: Path) -> str:
    rootfs = tmp_path / "rootfs"
    (rootfs / "etc").mkdir(parents=True)
    (rootfs / "etc" / "hostname").write_text("base\n")
    ok("import", str(rootfs), "--output", f"oci:{tmp_path / 'base'}:1")
    return f"oci:{tmp_path / 'base'}:1"


def package(where: Path, size: int = 0) -> Path:
    (where / "content" / "bin").mkdir(parents=True)
    (where / "content" / "bin" / "tool").write_text("#!/bin/sh\necho tool\n")
    if size:
        (where / "content" / "data").write_bytes(os.urandom(size))  # does not compress
    (where / "p.json").write_text(
        json.dumps({"name": "p", "version": "1", "prefix": "/opt/p", "content": "content"})
    )
    return where / "p.json"


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs (the tests run as root: make test, CI)."""
    need(os.geteuid() == 0, "mounting a small tmpfs needs root")
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


@pytest.fixture
def unprivileged() -> None:
    need(os.geteuid() == 0 and shutil.which("setpriv") is not None, "dropping DAC override needs setpriv")
    probe = subprocess.run([*NO_DAC, "true"], check=False)
    need(probe.returncode == 0, "setpriv cannot drop capabilities here")


# --- standard output -----------------------------------------------------------------------


@pytest.mark.parametrize("args", [("completion", "bash"), ("--help",), ("--version",), ("version", "--json")])
def test_a_closed_pipe_ends_quietly(args: tuple[str, ...]) -> None:
    """`imagesmith ... | head -c1`, with the reader gone before anything is written."""
    read, write = os.pipe()
    os.close(read)
    try:
        done = run(*args, stdout=write)
    finally:
        os.close(write)
    assert (done.returncode, done.stderr) == (141, "")


def test_head_reading_one_byte() -> None:
    done = subprocess.run(
        f'{sys.executable} -m imagesmith completion bash | head -c1; echo " ${{PIPESTATUS[0]}}"',
        shell=True,
        executable="bash",
        capture_output=True,
        text=True,
        check=False,
    )
    # head may take the byte before or after imagesmith writes the rest: either way, no noise.
    assert done.stderr == "" and done.stdout in ("# 0\n", "# 141\n")


@pytest.mark.parametrize("args", [("version",), ("--help",), ("completion", "zsh")])
def test_standard_output_on_a_full_device(args: tuple[str, ...]) -> None:
    with open("/dev/full", "w") as full:
        done = run(*args, stdout=full.fileno())
    assert one_line(done, 6) == (
        "imagesmith: error: no space left on device while writing standard output; free space on the "
        "device it goes to"
    )


# --- a full disk ---------------------------------------------------------------------------


def test_a_full_cache_disk_is_not_an_integrity_error(base: str, tmp_path: Path, small_disk: Path) -> None:
    pkg = package(tmp_path / "pkg", size=4 << 20)
    done = build_layout(base, tmp_path, pkg, cache=small_disk)
    line = one_line(done, 6)
    assert f"cannot write {small_disk}/" in line and "No space left on device" in line
    assert "IMAGESMITH_CACHE_DIR" in line
    assert [p for p in small_disk.rglob("*") if p.is_file()] == []  # nothing half-written is kept


def test_pulling_onto_a_full_disk_is_not_an_integrity_error(tmp_path: Path, small_disk: Path) -> None:
    rootfs = tmp_path / "big"
    rootfs.mkdir()
    (rootfs / "data").write_bytes(os.urandom(4 << 20))
    ok("import", str(rootfs), "--output", f"oci:{tmp_path / 'image'}:1")
    done = run(
        "pull",
        f"oci:{tmp_path / 'image'}:1",
        "--rootfs",
        str(small_disk / "root"),
        env={"IMAGESMITH_CACHE_DIR": str(tmp_path / "cache")},
    )
    line = one_line(done, 6)
    assert "member 'data'" in line and "No space left on device" in line and "left as it was" in line
    assert list(small_disk.iterdir()) == []


# --- permissions ---------------------------------------------------------------------------


@pytest.mark.usefixtures("unprivileged")
def test_an_unreadable_directory_in_a_package(base: str, tmp_path: Path) -> None:
    pkg = package(tmp_path / "pkg")
    locked = pkg.parent / "content" / "share"
    locked.mkdir()
    locked.chmod(0)
    done = build_layout(base, tmp_path, pkg, unprivileged=True, cache=tmp_path / "cache")
    assert one_line(done, 5) == (
        f"imagesmith: error: cannot read {locked}: Permission denied; make the package readable (and its "
        "directories searchable) by the user running imagesmith"
    )


@pytest.mark.usefixtures("unprivileged")
def test_a_package_below_an_unsearchable_directory(base: str, tmp_path: Path) -> None:
    pkg = package(tmp_path / "pkg")
    pkg.parent.chmod(0)
    done = build_layout(base, tmp_path, pkg, unprivileged=True)
    assert one_line(done, 5) == (
        f"imagesmith: error: cannot access {pkg}: Permission denied; check the permissions of the "
        "directories above it"
    )


@pytest.mark.usefixtures("unprivileged")
def test_an_unsearchable_parent_of_rootfs(base: str, tmp_path: Path) -> None:
    parent = tmp_path / "locked"
    (parent / "child").mkdir(parents=True)
    parent.chmod(0)
    target = parent / "child" / "root"
    done = run("pull", base, "--rootfs", str(target), unprivileged=True)
    assert one_line(done, 5) == (
        f"imagesmith: error: cannot access {target}: Permission denied; check the permissions of the "
        "directories above it"
    )
    # import reads a root filesystem: the same for one below a directory it cannot search
    done = run("import", str(parent / "child"), "--output", f"oci:{tmp_path / 'x'}", unprivileged=True)
    line = one_line(done, 5)
    assert line.startswith(f"imagesmith: error: cannot access {parent / 'child'}: Permission denied")
