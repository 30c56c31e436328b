"""Reuse of layers for unchanged inputs: nothing re-read, and every change noticed."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from imagesmith import layerrecords, pipeline
from imagesmith.cache import BlobCache
from imagesmith.mediatypes import DOCKER, OCI
from imagesmith.pipeline import content_layer


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

    monkeypatch.setattr(pipeline, "build_layer", no_reading)
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
