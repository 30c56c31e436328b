"""``pull`` unpacks each layer as soon as it is in the cache, while the later layers are still
being downloaded; a download that fails after some layers were unpacked leaves the target as
it was. Images are written into an OCI layout by hand (the helpers of test_pull)."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest
from test_pull import file_member, image, layer_tar

from imagesmith.errors import CacheError, UsageError
from imagesmith.ops import pull as pull_module
from imagesmith.progress import ProgressEvent
from imagesmith.store.cache import BlobCache
from imagesmith.store.layout import OCILayout
from imagesmith.tar.unpack import unpack_layers
from imagesmith.transports.base import fetch_blob


def two_layer_image(tmp_path: Path) -> OCILayout:
    layout = OCILayout(tmp_path / "layout", create=True)
    image(layout, [layer_tar(file_member("etc/one", b"1")), layer_tar(file_member("etc/two", b"2"))])
    return layout


def layer_digests(layout: OCILayout) -> list[str]:
    index = json.loads((layout.root / "index.json").read_text())
    manifest_digest = index["manifests"][-1]["digest"].split(":", 1)[1]
    manifest = json.loads((layout.root / "blobs" / "sha256" / manifest_digest).read_text())
    return [layer["digest"] for layer in manifest["layers"]]


def test_the_first_layer_is_unpacked_while_the_second_is_downloaded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    layout = two_layer_image(tmp_path)
    first, second = layer_digests(layout)
    unpacked = threading.Event()
    seen: list[bool] = []
    real = fetch_blob

    def fetch(pool: Any, cache: Any, descriptor: Any, origin: Any, progress: Any) -> Path:
        if str(descriptor.digest) == second:
            # Released by the first layer's unpack: before, every download had to end first.
            seen.append(unpacked.wait(20))
        return real(pool, cache, descriptor, origin, progress)

    def progress(event: ProgressEvent) -> None:
        if event.kind == "layer-unpacked" and event.subject == first:
            unpacked.set()

    monkeypatch.setattr("imagesmith.ops.pull.fetch_blob", fetch)
    rootfs = tmp_path / "rootfs"
    result = pull_module.pull(
        f"oci:{layout.root}:1", rootfs, cache=BlobCache(tmp_path / "cache"), progress=progress
    )
    assert seen == [True]
    assert result.layers == 2
    assert (rootfs / "etc/one").read_bytes() == b"1" and (rootfs / "etc/two").read_bytes() == b"2"


def test_a_download_failing_after_a_layer_was_unpacked_leaves_the_target_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    layout = two_layer_image(tmp_path)
    _, second = layer_digests(layout)
    real = fetch_blob

    def fetch(pool: Any, cache: Any, descriptor: Any, origin: Any, progress: Any) -> Path:
        if str(descriptor.digest) == second:
            raise CacheError("the second layer cannot be fetched")
        return real(pool, cache, descriptor, origin, progress)

    monkeypatch.setattr("imagesmith.ops.pull.fetch_blob", fetch)
    rootfs = tmp_path / "rootfs"
    with pytest.raises(CacheError, match="second layer"):
        pull_module.pull(f"oci:{layout.root}:1", rootfs, cache=BlobCache(tmp_path / "cache"))
    assert not rootfs.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".rootfs")]


def test_layers_given_as_an_iterator_are_counted_against_the_diff_ids(tmp_path: Path) -> None:
    one = tmp_path / "one.tar"
    one.write_bytes(layer_tar(file_member("a")))
    with pytest.raises(UsageError, match="2 names for 1 layers"):
        unpack_layers(iter([one]), tmp_path / "root1", names=["x", "y"])
    with pytest.raises(UsageError, match="1 names for 2 layers"):
        unpack_layers(iter([one, one]), tmp_path / "root2", names=["x"])
