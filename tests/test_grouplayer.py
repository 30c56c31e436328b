"""Group layers (imagesmith.pipeline.group): several packages in one layer, byte for byte the layer
of their merged tree; a path two packages hold differently is refused, naming both."""

from __future__ import annotations

import os
import shutil
import tarfile
from pathlib import Path

import pytest

from imagesmith.errors import PackageError
from imagesmith.oci import mediatypes as mt
from imagesmith.pipeline.group import GroupMember, group_entries, group_record_key
from imagesmith.store.cache import BlobCache
from imagesmith.tar.entries import directory_entries
from imagesmith.tar.layer import build_layer


def prefix_tree(root: Path, files: dict[str, str | bytes]) -> Path:
    for name, data in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(data, bytes):
            path.write_bytes(data)
        else:
            path.write_text(data)
    return root


def test_a_group_is_the_layer_of_the_merged_tree(tmp_path: Path) -> None:
    a = prefix_tree(tmp_path / "a", {"bin/a": "#!/bin/sh\n", "lib/liba.so": b"\x7fELF" * 100})
    b = prefix_tree(tmp_path / "b", {"bin/b": "b", "share/doc/b/README": "read me"})
    (a / "bin/a").chmod(0o755)
    os.link(b / "bin/b", b / "bin/b-again")
    tarred = prefix_tree(tmp_path / "c-src", {"opt/spack/linux/c-1-abc/bin/c": "c"})
    tarball = tmp_path / "c.tar.gz"
    with tarfile.open(tarball, "w:gz") as tar:
        tar.add(tarred / "opt", arcname="opt")
    members = [
        GroupMember("c-1", tarball, "/opt/spack/linux/c-1-abc"),
        GroupMember("b-1", b, "/opt/spack/linux/b-1-xyz"),
        GroupMember("a-1", a, "/opt/a-2"),
    ]
    merged = tmp_path / "merged"
    shutil.copytree(a, merged / "opt/a-2", symlinks=True)
    shutil.copytree(b, merged / "opt/spack/linux/b-1-xyz", symlinks=True)
    shutil.copytree(tarred / "opt", merged / "opt", dirs_exist_ok=True)
    os.unlink(merged / "opt/spack/linux/b-1-xyz/bin/b-again")
    os.link(merged / "opt/spack/linux/b-1-xyz/bin/b", merged / "opt/spack/linux/b-1-xyz/bin/b-again")
    expected = list(directory_entries(merged, ""))[0:]
    got = list(group_entries(members, tmpdir=tmp_path))
    assert [(e.name, e.kind, e.mode, e.size, e.linkname) for e in got] == [
        (e.name, e.kind, e.mode, e.size, e.linkname) for e in expected
    ]
    cache = BlobCache(tmp_path / "cache")
    one = build_layer(group_entries(members, tmpdir=tmp_path), cache, media_types=mt.OCI)
    other = build_layer(group_entries(list(reversed(members)), tmpdir=tmp_path), cache, media_types=mt.OCI)
    whole = build_layer(directory_entries(merged, ""), cache, media_types=mt.OCI)
    assert one.digest == other.digest == whole.digest  # any member order; the merged tree's bytes


def test_nested_packages_may_share_identical_paths(tmp_path: Path) -> None:
    outer = prefix_tree(tmp_path / "suite", {"share/x": "same", "bin/suite": "s"})
    inner = prefix_tree(tmp_path / "share", {"x": "same", "y": "only inner"})
    members = [GroupMember("suite-1", outer, "/opt/suite"), GroupMember("plug-1", inner, "/opt/suite/share")]
    names = [e.name for e in group_entries(members)]
    assert names == sorted(set(names), key=lambda n: names.index(n))  # every path once
    assert "opt/suite/share/x" in names and "opt/suite/share/y" in names


@pytest.mark.parametrize(
    ("inner_files", "clash"),
    [
        ({"x": "different"}, "opt/suite/share/x"),
        ({"x/file": "a directory where suite has a file"}, "opt/suite/share/x"),
    ],
)
def test_a_path_held_differently_names_both_packages(
    tmp_path: Path, inner_files: dict[str, str | bytes], clash: str
) -> None:
    outer = prefix_tree(tmp_path / "suite", {"share/x": "same"})
    inner = prefix_tree(tmp_path / "share", inner_files)
    members = [GroupMember("suite-1", outer, "/opt/suite"), GroupMember("plug-1", inner, "/opt/suite/share")]
    with pytest.raises(PackageError) as caught:
        list(group_entries(members))
    message = str(caught.value)
    assert "suite-1" in message and "plug-1" in message and f"/{clash}" in message


def test_record_key_names_the_members_not_their_order(tmp_path: Path) -> None:
    from imagesmith.oci.digests import Digest

    a, b = ("/opt/a", Digest.of(b"a")), ("/opt/b", Digest.of(b"b"))
    key = group_record_key([a, b], compression="gzip", level=None, media_types=mt.OCI)
    assert key == group_record_key([b, a], compression="gzip", level=None, media_types=mt.OCI)
    assert key != group_record_key([a], compression="gzip", level=None, media_types=mt.OCI)
    assert key != group_record_key([a, b], compression="zstd", level=None, media_types=mt.OCI)
