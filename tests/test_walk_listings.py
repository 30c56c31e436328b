"""The identity walk's directory listings, kept in the cache: reused only while a directory's
inode and times are unchanged, and never at the cost of a change going unnoticed."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from imagesmith.errors import LayerError
from imagesmith.oci.mediatypes import OCI
from imagesmith.pipeline import records as layerrecords
from imagesmith.pipeline.layers import content_layer
from imagesmith.store.cache import BlobCache


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "prefix"
    for d in ("bin", "lib", "share/doc/x"):
        (root / d).mkdir(parents=True)
    (root / "bin" / "tool").write_text("#!/bin/sh\necho tool\n")
    (root / "lib" / "libx.so").write_bytes(b"\x7fELF" + bytes(range(256)) * 4)
    (root / "lib" / "libx.so.1").symlink_to("libx.so")
    (root / "share/doc/x" / "README").write_text("read me\n")
    return root


@pytest.fixture
def settled(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every directory counts as settled, however recently it changed (the tests change them
    within a second; the racy window has a test of its own)."""
    monkeypatch.setattr(layerrecords, "_SETTLED_NS", -(10**12))
    monkeypatch.setattr(layerrecords, "_LISTINGS_MIN_DIRS", 1)


@pytest.fixture
def listings(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The directories os.scandir lists."""
    listed: list[str] = []
    real = os.scandir

    def counting(path: Any) -> Any:
        listed.append(os.fspath(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", counting)
    yield listed


def key(root: Path, cache: BlobCache | None) -> str:
    return layerrecords.input_key(
        root, "/opt/x", preserve=False, compression="gzip", level=None, media_types=OCI, cache=cache
    )


@pytest.mark.usefixtures("settled")
def test_unchanged_directories_are_not_listed_again(tree: Path, tmp_path: Path, listings: list[str]) -> None:
    cache = BlobCache(tmp_path / "cache")
    first = key(tree, cache)
    # the root, bin, lib, share, share/doc, share/doc/x
    assert len([d for d in listings if d.startswith(str(tree))]) == 6
    listings.clear()
    assert key(tree, cache) == first
    assert [d for d in listings if d.startswith(str(tree))] == []
    assert key(tree, None) == first  # the same identity whether listings are kept or not


@pytest.mark.usefixtures("settled")
def test_a_file_written_in_place_in_an_unchanged_directory_is_noticed(tree: Path, tmp_path: Path) -> None:
    cache = BlobCache(tmp_path / "cache")
    first = key(tree, cache)
    tool = tree / "bin" / "tool"
    before = os.stat(tool)
    directory = os.stat(tree / "bin")
    with open(tool, "r+b") as f:  # same size, other bytes, its mtime put back
        f.write(b"#!/bin/sh\necho TOOL\n")
    os.utime(tool, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = os.stat(tree / "bin")
    # The case a skipped directory would miss: the directory itself did not change at all.
    assert (after.st_mtime_ns, after.st_ctime_ns) == (directory.st_mtime_ns, directory.st_ctime_ns)
    assert key(tree, cache) != first


@pytest.mark.usefixtures("settled")
@pytest.mark.parametrize("change", ["add", "remove", "rename", "replace-with-directory"])
def test_a_changed_listing_is_read_again_even_with_its_mtime_put_back(
    tree: Path, tmp_path: Path, change: str
) -> None:
    cache = BlobCache(tmp_path / "cache")
    first = key(tree, cache)
    lib = tree / "lib"
    times = os.stat(lib)
    if change == "add":
        (lib / "libnew.so").write_bytes(b"new")
    elif change == "remove":
        (lib / "libx.so.1").unlink()
    elif change == "rename":
        (lib / "libx.so.1").rename(lib / "libx.so.2")
    else:
        (lib / "libx.so.1").unlink()
        (lib / "libx.so.1").mkdir()
    os.utime(lib, ns=(times.st_atime_ns, times.st_mtime_ns))  # ctime cannot be put back
    assert os.stat(lib).st_mtime_ns == times.st_mtime_ns
    second = key(tree, cache)
    assert second != first
    assert second == key(tree, None)  # exactly what a walk without listings gives


def test_a_directory_changed_within_the_racy_window_is_not_kept(
    tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(layerrecords, "_LISTINGS_MIN_DIRS", 1)
    cache = BlobCache(tmp_path / "cache")
    (tree / "lib" / "fresh").write_text("x")  # lib changed just now; the others are as old
    key(tree, cache)
    record = cache.get_record(layerrecords._listings_key(tree))
    kept = record["dirs"] if record is not None else {}
    assert "lib/" not in kept  # its listing is read again next time, whatever its times say


@pytest.mark.usefixtures("settled")
@pytest.mark.parametrize(
    "damage",
    [
        ["not", "a", "listing"],
        [1, 2, 3, 4, ["../../etc"]],
        [1, 2, 3, 4, "names"],
        [True, 2, 3, 4, []],
        [1, 2, 3, 4, ["a\0b"]],
        [1, 2, 3, 4, ["x", ".."]],
        [1, 2, 3, 4, ["", "x"]],
        [1, 2, 3, 4, ["."]],
        [1, 2, 3, 4, ["x", 7]],
        [1, 2, 3, 4, ["x/y"]],
        [1, 2, 3, 4, ["x"], "six"],
    ],
)
def test_a_malformed_listing_record_is_ignored(tree: Path, tmp_path: Path, damage: Any) -> None:
    cache = BlobCache(tmp_path / "cache")
    first = key(tree, cache)
    name = layerrecords._listings_key(tree)
    record = cache.get_record(name)
    assert record is not None and "bin/" in record["dirs"]
    st = os.stat(tree / "bin")
    if isinstance(damage, list) and len(damage) == 5:
        damage[1:4] = [st.st_ino, st.st_mtime_ns, st.st_ctime_ns]
        if damage[0] is not True:
            damage[0] = st.st_dev
    record["dirs"]["bin/"] = damage
    cache.put_record(name, record)
    assert key(tree, cache) == first


@pytest.mark.usefixtures("settled")
def test_a_file_removed_during_a_walk_from_listings_is_a_layer_error(
    tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = BlobCache(tmp_path / "cache")
    key(tree, cache)
    real_lstat = os.lstat

    def vanishing(path: Any, *args: Any, **kwargs: Any) -> os.stat_result:
        if os.fspath(path).endswith("/bin/tool"):
            (tree / "bin" / "tool").unlink(missing_ok=True)
        return real_lstat(path, *args, **kwargs)

    monkeypatch.setattr(os, "lstat", vanishing)
    with pytest.raises(LayerError, match=r"bin/tool disappeared while the layer was built"):
        key(tree, cache)


@pytest.mark.usefixtures("settled")
def test_warm_build_uses_the_listings(tree: Path, tmp_path: Path, listings: list[str]) -> None:
    cache = BlobCache(tmp_path / "cache")
    first, reused = content_layer(tree, "opt/x", cache, OCI)
    assert not reused
    listings.clear()
    again, reused = content_layer(tree, "opt/x", cache, OCI)
    assert reused and again == first
    assert [d for d in listings if d.startswith(str(tree))] == []


@pytest.mark.usefixtures("settled")
def test_a_small_input_keeps_no_listings(tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(layerrecords, "_LISTINGS_MIN_DIRS", 7)  # the tree has 6 directories
    cache = BlobCache(tmp_path / "cache")
    key(tree, cache)
    assert cache.get_record(layerrecords._listings_key(tree)) is None
