"""Reuse of layers for unchanged inputs: nothing re-read, and every change noticed."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import tempfile
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cli_support import ok
from conftest import requires

from imagesmith.cli import main
from imagesmith.errors import LayerError
from imagesmith.oci.mediatypes import DOCKER, OCI
from imagesmith.pipeline import layers as pipeline_layers
from imagesmith.pipeline import records as layerrecords
from imagesmith.pipeline.layers import content_layer
from imagesmith.store.cache import BlobCache


@pytest.fixture
def prefix(tmp_path: Path) -> Path:
    root = tmp_path / "prefix"
    (root / "bin").mkdir(parents=True)
    (root / "bin" / "tool").write_text("#!/bin/sh\necho tool\n")
    (root / "lib").mkdir()
    (root / "lib" / "libx.so").write_bytes(b"\x7fELF" + bytes(range(256)) * 40)
    (root / "lib" / "libx.so.1").symlink_to("libx.so")
    return root


def test_second_build_reuses_without_reading(
    prefix: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = BlobCache(tmp_path / "cache")
    first, reused = content_layer(prefix, "opt/x", cache, OCI)
    assert not reused

    def no_reading(*args: object, **kwargs: object) -> None:
        raise AssertionError("an unchanged input was read again")

    monkeypatch.setattr(pipeline_layers, "build_layer", no_reading)
    again, reused = content_layer(prefix, "opt/x", cache, OCI)
    assert reused and again == first


@pytest.mark.parametrize("change", ["touch", "content", "new-file", "chmod", "symlink"])
def test_any_change_to_the_input_is_noticed(prefix: Path, tmp_path: Path, change: str) -> None:
    cache = BlobCache(tmp_path / "cache")
    first, _ = content_layer(prefix, "opt/x", cache, OCI)
    tool = prefix / "bin" / "tool"
    if change == "touch":
        os.utime(tool, ns=(1, 1))
    elif change == "content":
        tool.write_text("#!/bin/sh\necho TOOL\n")  # same size, different bytes
    elif change == "new-file":
        (prefix / "bin" / "other").write_text("x")
    elif change == "chmod":
        tool.chmod(0o755)
    else:
        (prefix / "lib" / "libx.so.1").unlink()
        (prefix / "lib" / "libx.so.1").symlink_to("../lib/libx.so")
    second, reused = content_layer(prefix, "opt/x", cache, OCI)
    assert not reused
    if change == "touch":
        assert second.digest == first.digest  # mtimes are normalised in the layer
    else:
        assert second.digest != first.digest


def test_settings_are_part_of_the_key(prefix: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = BlobCache(tmp_path / "cache")
    content_layer(prefix, "opt/x", cache, OCI)
    assert not content_layer(prefix, "opt/y", cache, OCI)[1]
    assert not content_layer(prefix, "opt/x", cache, OCI, compression="zstd")[1]
    assert not content_layer(prefix, "opt/x", cache, DOCKER)[1]
    assert not content_layer(prefix, "opt/x", cache, OCI, preserve=True)[1]
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "86400")
    assert not content_layer(prefix, "opt/x", cache, OCI)[1]
    monkeypatch.delenv("SOURCE_DATE_EPOCH")
    assert content_layer(prefix, "opt/x", cache, OCI)[1]


def test_a_pruned_blob_or_damaged_record_means_a_rebuild(prefix: Path, tmp_path: Path) -> None:
    cache = BlobCache(tmp_path / "cache")
    first, _ = content_layer(prefix, "opt/x", cache, OCI)
    cache.evict(first.digest)
    again, reused = content_layer(prefix, "opt/x", cache, OCI)
    assert not reused and again == first and cache.has(first.digest)
    key = layerrecords.input_key(
        prefix, "opt/x", preserve=False, compression="gzip", level=None, media_types=OCI
    )
    cache._record_path(key).write_text(json.dumps({"digest": "sha256:nope"}))
    assert not content_layer(prefix, "opt/x", cache, OCI)[1]


def test_tarball_input_is_reused_too(prefix: Path, tmp_path: Path) -> None:
    import tarfile

    tarball = tmp_path / "pkg.tar.gz"
    with tarfile.open(tarball, "w:gz") as tar:
        tar.add(prefix, arcname=".")
    cache = BlobCache(tmp_path / "cache")
    first, _ = content_layer(tarball, "opt/x", cache, OCI)
    again, reused = content_layer(tarball, "opt/x", cache, OCI)
    assert reused and again == first


# --- inputs that cannot be walked: one clear line, never a traceback ---------------------


def _deep_tree(root: Path, depth: int = 25) -> Path:
    """A file whose path is over 4,096 bytes (PATH_MAX), made one directory at a time."""
    root.mkdir()
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(depth):
            os.mkdir("d" * 200, dir_fd=fd)
            inner = os.open("d" * 200, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = inner
        os.close(os.open("f", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd))
    finally:
        os.close(fd)
    return root


def test_a_path_longer_than_the_system_allows_is_a_layer_error(tmp_path: Path) -> None:
    content = _deep_tree(tmp_path / "deep")
    cache = BlobCache(tmp_path / "cache")
    with pytest.raises(LayerError, match=r"cannot read .*deep/d+.*longer than the system allows") as raised:
        content_layer(content, "opt/deep", cache, OCI)
    assert "\n" not in str(raised.value) and len(str(raised.value)) < 1000
    with pytest.raises(LayerError, match=r"longer than the system allows"):
        content_layer(content, "opt/deep", cache, OCI, reuse=False)


def test_a_file_deleted_while_the_walk_runs_is_a_layer_error(
    prefix: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_scandir = os.scandir

    def vanishing(path: str) -> Any:
        # Lists the directory, then its tool disappears before the walk stats it.
        entries = list(real_scandir(path))
        victim = Path(path, "tool")
        if victim.exists():
            victim.unlink()
        return contextlib.nullcontext(iter(entries))

    monkeypatch.setattr(os, "scandir", vanishing)
    with pytest.raises(LayerError, match=r"bin/tool disappeared while the layer was built"):
        content_layer(prefix, "opt/x", BlobCache(tmp_path / "cache"), OCI)


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory every user can reach (pytest's own temp tree is root's alone)."""
    path = Path(tempfile.mkdtemp(prefix="imagesmith-nobody-"))
    path.chmod(0o755)
    yield path
    for dirpath, dirnames, _ in os.walk(path):
        for name in dirnames:
            os.chmod(os.path.join(dirpath, name), 0o755)
    shutil.rmtree(path)


def _build_as_nobody(root: Path, *args: str) -> tuple[int, str]:
    """Run ``imagesmith ARGS`` in a child process as user nobody (65534) inside ``root``;
    its exit code and stderr."""
    (root / "cache").mkdir()
    os.chown(root / "cache", 65534, 65534)
    os.chown(root, 65534, 65534)
    err_file = root / "stderr.txt"
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through its exit status and a file
        code = 99
        try:
            os.chdir(root)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            os.environ["IMAGESMITH_CACHE_DIR"] = str(root / "cache")
            err = io.StringIO()
            code = main(list(args), stdout=io.StringIO(), stderr=err)
            err_file.write_text(err.getvalue())
        except BaseException:
            err_file.write_text(traceback.format_exc())
        finally:
            os._exit(code)
    status = os.waitpid(pid, 0)[1]
    return os.waitstatus_to_exitcode(status), err_file.read_text()


@requires(os.geteuid() == 0, "dropping privileges to user nobody needs root")
@pytest.mark.parametrize("mode", [0o000, 0o644], ids=["unreadable", "not-searchable"])
def test_a_directory_the_user_cannot_read_is_one_clear_line(shared_dir: Path, mode: int) -> None:
    base = shared_dir / "rootfs"
    (base / "etc").mkdir(parents=True)
    (base / "etc" / "hostname").write_text("x\n")
    cache = {"IMAGESMITH_CACHE_DIR": str(shared_dir / "root-cache")}
    ok("import", str(base), "--output", f"oci:{shared_dir / 'base'}:1", env=cache)
    content = shared_dir / "pkg" / "content"
    (content / "secret").mkdir(parents=True)
    (content / "secret" / "file").write_text("x")
    (content / "bin").mkdir()
    (content / "bin" / "tool").write_text("x")
    (shared_dir / "pkg" / "pkg.json").write_text(
        json.dumps({"name": "pkg", "version": "1", "prefix": "/opt/pkg", "content": "content"})
    )
    (content / "secret").chmod(mode)
    code, err = _build_as_nobody(
        shared_dir, "build", "--base-image", "oci:base:1", "--output", "oci:out:1", "pkg/pkg.json"
    )
    assert code == 5, err  # a local path that cannot be read
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("imagesmith: error: cannot read ") and "content/secret" in lines[0]
    assert "Permission denied" in lines[0] and "readable" in lines[0]


def test_a_rebuild_that_gives_other_bytes_is_refused(prefix: Path, tmp_path: Path) -> None:
    cache = BlobCache(tmp_path / "cache")
    blob, _ = content_layer(prefix, "opt/x", cache, OCI)
    origin = layerrecords.RebuildOrigin(
        blob, cache, "the layer of x", lambda: content_layer(prefix, "opt/x", cache, OCI, reuse=False)[0]
    )
    path = cache.path(blob.digest)
    data = bytearray(path.read_bytes())
    data[-10] ^= 1
    path.write_bytes(bytes(data))
    origin.restore()  # damaged: evicted and built again
    assert cache.verify(blob.digest)
    (prefix / "bin" / "tool").write_text("#!/bin/sh\necho TOOL\n")  # same size, other bytes
    cache.evict(blob.digest)
    with pytest.raises(LayerError, match=r"building the layer of x again gave layer sha256:\w+, not "):
        origin.restore()
