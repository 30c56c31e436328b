"""A tarball that is empty, holds no files or was cut short never becomes an empty (or partial)
package layer or base image: `build` and `import` refuse it with one line, and write nothing."""

from __future__ import annotations

import gzip
import io
import json
import tarfile
from pathlib import Path

import pytest
from cli_support import cli, ok


def _tar(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


GOOD = _tar({"bin/tool": b"#!/bin/sh\necho tool\n" * 400, "share/doc": b"x" * 3000})
with tarfile.open(fileobj=io.BytesIO(GOOD)) as _good:
    _LAST = _good.getmembers()[-1]
_END = _LAST.offset_data + -(-_LAST.size // 512) * 512  # where the last member's data ends
EMPTY_DIR = _tar({})  # only the end-of-archive marker
DOT = io.BytesIO()
with tarfile.open(fileobj=DOT, mode="w") as _t:
    _d = tarfile.TarInfo("./")
    _d.type = tarfile.DIRTYPE
    _t.addfile(_d)
NO_FILES = "is a tar archive holding no files"
ZERO = "is empty (0 bytes), not a tar archive"
CUT = "the archive is truncated or corrupt"

CASES = {
    "empty.tar": (b"", ZERO),
    "empty.tar.gz": (b"", ZERO),
    "zeros.tar": (b"\0" * 1024, NO_FILES),
    "zeros.tar.gz": (gzip.compress(b"\0" * 10240, mtime=0), NO_FILES),
    "dot.tar": (DOT.getvalue(), NO_FILES),
    "empty-dir.tar": (EMPTY_DIR, NO_FILES),
    "cut.tar": (GOOD[:1536], CUT),  # inside the first member's data
    "no-marker.tar": (GOOD[:_END], "the end-of-archive marker is missing"),  # every member whole
    "cut.tar.gz": (gzip.compress(GOOD, mtime=0)[:-20], "the gzip stream ends early"),
}


def _write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def package_of(tmp_path: Path, content: str) -> Path:
    """``tmp_path/p.json``: package p 1 at /opt/p with ``content``."""
    package = tmp_path / "p.json"
    package.write_text(json.dumps({"name": "p", "version": "1", "prefix": "/opt/p", "content": content}))
    return package


def build_layout(tmp_path: Path, base: str, package: Path) -> tuple[int, str, str]:
    """``imagesmith build`` of ``package`` into the layout ``tmp_path/out``."""
    output = f"oci:{tmp_path / 'out'}"
    env = {"IMAGESMITH_CACHE_DIR": str(tmp_path / "cache")}
    return cli("build", "--base-image", base, "--output", output, str(package), env=env)


@pytest.fixture
def base(tmp_path: Path) -> str:
    ok(
        "import",
        str(_write(tmp_path, "base.tar", GOOD)),
        "--output",
        f"oci:{tmp_path / 'base'}:1",
        env={"IMAGESMITH_CACHE_DIR": str(tmp_path / "cache")},
    )
    return f"oci:{tmp_path / 'base'}:1"


@pytest.mark.parametrize("name", sorted(CASES))
def test_import_refuses_a_tarball_without_files(tmp_path: Path, name: str) -> None:
    data, message = CASES[name]
    rootfs = _write(tmp_path, name, data)
    code, out, err = cli(
        "import",
        str(rootfs),
        "--output",
        f"oci:{tmp_path / 'out'}:1",
        env={"IMAGESMITH_CACHE_DIR": str(tmp_path / "cache")},
    )
    assert code == 1 and out == "" and err.count("\n") == 1, err
    assert err.startswith(f"imagesmith: error: {rootfs}") and message in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", sorted(CASES))
def test_build_refuses_package_content_without_files(tmp_path: Path, base: str, name: str) -> None:
    data, message = CASES[name]
    content = _write(tmp_path, name, data)
    code, out, err = build_layout(tmp_path, base, package_of(tmp_path, name))
    assert code == 1 and out == "" and err.count("\n") == 1, err
    assert err.startswith(f"imagesmith: error: {content}") and message in err
    assert not (tmp_path / "out").exists()


def test_a_tarball_with_files_is_taken(tmp_path: Path, base: str) -> None:
    """The control: the same commands take the intact tarball."""
    _write(tmp_path, "good.tar.gz", gzip.compress(GOOD, mtime=0))
    code, _, err = build_layout(tmp_path, base, package_of(tmp_path, "good.tar.gz"))
    assert code == 0, err
