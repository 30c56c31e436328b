"""Layer building: determinism, mode policy, tarball inputs and their attacks, codecs, memory."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import os
import random
import re
import shutil
import socket
import stat
import subprocess
import sys
import tarfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import zstandard
from conftest import need, requires

from imagesmith.errors import IntegrityError, LayerError, UsageError
from imagesmith.oci.digests import Digest
from imagesmith.oci.mediatypes import DOCKER, OCI
from imagesmith.store.cache import BlobCache
from imagesmith.tar.compression import open_decompressor
from imagesmith.tar.entries import directory_entries, normalise_prefix, tarball_entries
from imagesmith.tar.layer import LayerBlob, adopt_tarball, build_layer, with_file
from imagesmith.tar.writer import TarEntry

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
HAVE_TAR = shutil.which("tar") is not None
LONG_DIR = "deep-" + "d" * 120  # a component > 100 bytes
LONG_FILE = "f" * 140  # with LONG_DIR and the prefix, a path > 255 bytes
UNICODE = "résumé-日本.txt"
PREFIX = "/opt/spack/linux-x86_64/zlib-1.3-abcdef"


@pytest.fixture
def cache(tmp_path: Path) -> BlobCache:
    return BlobCache(tmp_path / "cache")


def _tree_spec() -> dict[str, tuple[str, bytes | str]]:
    rng = random.Random(42)
    return {
        "bin/tool": ("exec", b"#!/bin/sh\necho hi\n"),
        "lib/libz.so.1": ("file", rng.randbytes(70_000)),
        "lib/libz.so": ("symlink", "libz.so.1"),
        "include/a-b.h": ("file", b"ab"),
        "include/a.h": ("file", b"a"),
        "include/a/b.h": ("file", b"b"),
        "share/doc/README": ("file", b"read me\n" * 100),
        "share/doc/README.same": ("hardlink", "share/doc/README"),
        "share/empty": ("file", b""),
        "share/f512": ("file", b"5" * 512),
        "share/f513": ("file", b"3" * 513),
        f"share/{LONG_DIR}/{LONG_FILE}": ("file", b"long"),
        f"share/{UNICODE}": ("file", "ünïcode".encode()),
        "share/emptydir/": ("dir", ""),
    }


def make_tree(
    root: Path,
    *,
    reverse: bool = False,
    mtime: int = 1_000_000,
    umask: int = 0o022,
    owner: int | None = None,
) -> Path:
    """Create the sample prefix; order, umask, mtimes and owners vary, content does not."""
    items = sorted(_tree_spec().items(), reverse=reverse)
    old = os.umask(umask)
    try:
        root.mkdir(parents=True)
        for rel, (kind, value) in items:
            path = root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            if kind == "dir":
                path.mkdir(exist_ok=True)
            elif kind == "symlink":
                path.symlink_to(str(value))
            elif kind in ("file", "exec"):
                path.write_bytes(value)  # type: ignore[arg-type]
                if kind == "exec":
                    path.chmod(0o700 if umask & 0o077 == 0o077 else 0o755)
        for rel, (kind, value) in items:
            if kind == "hardlink":
                (root / rel).hardlink_to(root / str(value))
    finally:
        os.umask(old)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            os.utime(path, (mtime, mtime), follow_symlinks=False)
            if owner is not None:
                os.chown(path, owner, owner, follow_symlinks=False)
    os.utime(root, (mtime, mtime))
    return root


def _build(entries: object, cache: BlobCache, **kwargs: object) -> LayerBlob:
    kwargs.setdefault("media_types", OCI)
    return build_layer(entries, cache, **kwargs)  # type: ignore[arg-type]


def _members(cache: BlobCache, blob: LayerBlob) -> list[tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(_tar_bytes(cache, blob))) as tar:
        return tar.getmembers()


def _tar_bytes(cache: BlobCache, blob: LayerBlob) -> bytes:
    with open_decompressor(cache.path(blob.digest)) as raw:
        return raw.read(1 << 30)


# --- determinism -------------------------------------------------------------------------


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_same_content_same_digests(tmp_path: Path, cache: BlobCache, compression: str) -> None:
    """RELIABILITY 21."""
    a = make_tree(tmp_path / "a")
    b = make_tree(
        tmp_path / "b",
        reverse=True,
        mtime=1_700_000_000,
        umask=0o077,
        owner=1234 if IS_ROOT else None,
    )
    blob_a = _build(directory_entries(a, PREFIX), cache, compression=compression)
    blob_b = _build(directory_entries(b, PREFIX), cache, compression=compression)
    assert (blob_a.digest, blob_a.diff_id, blob_a.size) == (blob_b.digest, blob_b.diff_id, blob_b.size)


def test_source_date_epoch_changes_the_output(
    tmp_path: Path, cache: BlobCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    """RELIABILITY 21."""
    tree = make_tree(tmp_path / "t")
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    plain = _build(directory_entries(tree, PREFIX), cache)
    assert {m.mtime for m in _members(cache, plain)} == {0}
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    dated = _build(directory_entries(tree, PREFIX), cache)
    assert dated.diff_id != plain.diff_id and dated.digest != plain.digest
    assert {m.mtime for m in _members(cache, dated)} == {1_700_000_000}
    assert _build(directory_entries(tree, PREFIX), cache, mtime=0).digest == plain.digest
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "yesterday")
    with pytest.raises(UsageError, match="SOURCE_DATE_EPOCH"):
        _build(directory_entries(tree, PREFIX), cache)


def test_gzip_matches_pythons_gzip_with_fixed_header(
    tmp_path: Path, cache: BlobCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Spack writes gzip with GzipFile(mtime=0, filename="", compresslevel=6): the zlib backend
    # gives the same bytes (the default isal backend is faster but has its own bytes).
    monkeypatch.setenv("IMAGESMITH_GZIP", "zlib")
    tree = make_tree(tmp_path / "t")
    raw = _build(directory_entries(tree, PREFIX), cache, compression="none")
    gz = _build(directory_entries(tree, PREFIX), cache)
    out = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", compresslevel=6, mtime=0, fileobj=out) as f:
        f.write(cache.path(raw.digest).read_bytes())
    assert cache.path(gz.digest).read_bytes() == out.getvalue()
    assert raw.digest == raw.diff_id == gz.diff_id


# --- content, order, names ---------------------------------------------------------------


def test_order_parents_links_and_names(tmp_path: Path, cache: BlobCache) -> None:
    """RELIABILITY 21."""
    tree = make_tree(tmp_path / "t")
    blob = _build(directory_entries(tree, PREFIX), cache)
    members = _members(cache, blob)
    names = [m.name for m in members]
    assert names[:5] == ["opt", "opt/spack", "opt/spack/linux-x86_64", PREFIX[1:], f"{PREFIX[1:]}/bin"]
    archive_keys = [m.name.encode() + (b"/" if m.isdir() else b"") for m in members]
    assert archive_keys == sorted(archive_keys)
    assert len(names) == len(set(names))
    by_name = {m.name: m for m in members}
    p = PREFIX[1:]
    assert names.index(f"{p}/include/a-b.h") < names.index(f"{p}/include/a.h") < names.index(f"{p}/include/a")
    assert by_name[f"{p}/lib/libz.so"].issym() and by_name[f"{p}/lib/libz.so"].linkname == "libz.so.1"
    readme, same = by_name[f"{p}/share/doc/README"], by_name[f"{p}/share/doc/README.same"]
    assert readme.isfile() and same.islnk() and same.linkname == f"{p}/share/doc/README"
    assert by_name[f"{p}/share/emptydir"].isdir()
    long_path = f"{p}/share/{LONG_DIR}/{LONG_FILE}"
    assert len(long_path.encode()) > 255 and by_name[long_path].size == 4
    assert by_name[f"{p}/share/{UNICODE}"].size == len("ünïcode".encode())
    for size in (0, 512, 513):
        name = {0: "empty", 512: "f512", 513: "f513"}[size]
        assert by_name[f"{p}/share/{name}"].size == size
    assert all((m.uid, m.gid, m.uname, m.gname) == (0, 0, "", "") for m in members)
    assert blob.directories >= {"opt", "opt/spack", p, f"{p}/bin", f"{p}/include/a", f"{p}/share/emptydir"}
    assert f"{p}/bin/tool" not in blob.directories


@requires(HAVE_TAR, "GNU tar not installed")
def test_gnu_tar_extracts_the_same_tree(tmp_path: Path, cache: BlobCache) -> None:
    tree = make_tree(tmp_path / "t")
    blob = _build(directory_entries(tree, PREFIX), cache)
    env = {**os.environ, "LC_ALL": "C.UTF-8"}
    listing = subprocess.run(
        ["tar", "--quoting-style=literal", "-tvzf", str(cache.path(blob.digest))],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    )
    assert f"share/{UNICODE}" in listing.stdout and LONG_FILE in listing.stdout
    out = tmp_path / "out"
    out.mkdir()
    subprocess.run(["tar", "-xzf", str(cache.path(blob.digest)), "-C", str(out)], check=True, env=env)
    extracted = out / PREFIX[1:]
    for rel, (kind, value) in _tree_spec().items():
        path = extracted / rel
        if kind == "symlink":
            assert os.readlink(path) == value
        elif kind == "hardlink":
            assert path.stat().st_ino == (extracted / str(value)).stat().st_ino
        elif kind == "dir":
            assert path.is_dir()
        else:
            assert path.read_bytes() == value
    assert (extracted / "bin/tool").stat().st_mode & 0o777 == 0o755


# --- codecs and digests ------------------------------------------------------------------


def test_gzip_blob_is_valid_and_digests_match(tmp_path: Path, cache: BlobCache) -> None:
    blob = _build(directory_entries(make_tree(tmp_path / "t"), PREFIX), cache)
    data = cache.path(blob.digest).read_bytes()
    assert blob.media_type == "application/vnd.oci.image.layer.v1.tar+gzip"
    assert blob.size == len(data) and hashlib.sha256(data).hexdigest() == blob.digest.hex
    assert data[:10] == b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"  # mtime 0, no name, OS unknown
    tar = gzip.decompress(data)
    assert hashlib.sha256(tar).hexdigest() == blob.diff_id.hex and blob.uncompressed_size == len(tar)
    if shutil.which("gzip"):
        subprocess.run(["gzip", "-t", str(cache.path(blob.digest))], check=True)
    descriptor = blob.descriptor({"org.opencontainers.image.title": "zlib"})
    assert descriptor.to_json() == {
        "mediaType": blob.media_type,
        "digest": str(blob.digest),
        "size": blob.size,
        "annotations": {"org.opencontainers.image.title": "zlib"},
    }


def test_zstd_blob_is_valid_and_digests_match(tmp_path: Path, cache: BlobCache) -> None:
    blob = _build(directory_entries(make_tree(tmp_path / "t"), PREFIX), cache, compression="zstd")
    data = cache.path(blob.digest).read_bytes()
    assert blob.media_type == "application/vnd.oci.image.layer.v1.tar+zstd"
    assert blob.size == len(data) and hashlib.sha256(data).hexdigest() == blob.digest.hex
    params = zstandard.get_frame_parameters(data)
    assert params.content_size == zstandard.CONTENTSIZE_UNKNOWN and not params.has_checksum
    tar = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data)).read()
    assert hashlib.sha256(tar).hexdigest() == blob.diff_id.hex


def _decompress_all(data: bytes) -> bytes:
    with open_decompressor(io.BytesIO(data)) as stream:
        return b"".join(iter(lambda: stream.read(1 << 16), b""))


def test_decompressor_handles_frames_members_and_cuts() -> None:
    payload = os.urandom(100_000) + bytes(3 << 20) + b"tail"
    variants = [
        zstandard.ZstdCompressor(write_checksum=True).compress(payload),
        zstandard.ZstdCompressor(write_content_size=False, level=19).compress(payload),
        zstandard.ZstdCompressor().compress(payload[:5000])
        + zstandard.ZstdCompressor().compress(payload[5000:]),
        # a skippable frame between two data frames
        zstandard.ZstdCompressor().compress(payload[:10])
        + b"\x5a\x2a\x4d\x18"
        + (3).to_bytes(4, "little")
        + b"abc"
        + zstandard.ZstdCompressor().compress(payload[10:]),
        gzip.compress(payload[:7], mtime=0) + gzip.compress(payload[7:], mtime=0),
        payload,
    ]
    for data in variants:
        assert _decompress_all(data) == payload
        if data is payload:
            continue
        for cut in (len(data) - 1, len(data) // 2, 8):
            with pytest.raises(LayerError, match=r"truncated|not valid"):
                _decompress_all(data[:cut])
        with pytest.raises(LayerError, match="trailing garbage"):
            _decompress_all(data + b"junk-after-the-end")
    assert _decompress_all(zstandard.ZstdCompressor().compress(b"")) == b""
    # Zero padding after gzip data is accepted, as gzip itself does.
    assert _decompress_all(gzip.compress(payload, mtime=0) + bytes(512)) == payload


def test_media_types_by_family(tmp_path: Path, cache: BlobCache) -> None:
    tree = make_tree(tmp_path / "t")
    docker = _build(directory_entries(tree, PREFIX), cache, media_types=DOCKER)
    assert docker.media_type == "application/vnd.docker.image.rootfs.diff.tar.gzip"
    with pytest.raises(UsageError, match="zstd"):
        _build(directory_entries(tree, PREFIX), cache, media_types=DOCKER, compression="zstd")
    plain = _build(directory_entries(tree, PREFIX), cache, compression="none")
    assert plain.media_type == "application/vnd.oci.image.layer.v1.tar" and plain.digest == plain.diff_id


def test_progress_is_reported(tmp_path: Path, cache: BlobCache) -> None:
    seen: list[int] = []
    blob = _build(directory_entries(make_tree(tmp_path / "t"), PREFIX), cache, progress=seen.append)
    assert seen and seen == sorted(seen) and seen[-1] == blob.uncompressed_size


# --- mode and special-file policy --------------------------------------------------------


def test_package_modes_are_normalised(tmp_path: Path, cache: BlobCache) -> None:
    root = tmp_path / "p"
    (root / "sticky").mkdir(parents=True)
    (root / "sticky").chmod(0o1777)
    (root / "private").mkdir()
    (root / "private").chmod(0o700)
    modes = {"suid": 0o4755, "sgid": 0o2711, "secret": 0o600, "userexec": 0o700, "ro": 0o444}
    for name, mode in modes.items():
        (root / name).write_text(name)
        (root / name).chmod(mode)
    members = {m.name: m for m in _members(cache, _build(directory_entries(root), cache))}
    assert {n: m.mode for n, m in members.items()} == {
        "private": 0o755,
        "ro": 0o644,
        "secret": 0o644,
        "sgid": 0o755,
        "sticky": 0o755,
        "suid": 0o755,
        "userexec": 0o755,
    }


def test_fifo_in_package_is_refused(tmp_path: Path, cache: BlobCache) -> None:
    root = tmp_path / "p"
    root.mkdir()
    os.mkfifo(root / "pipe")
    with pytest.raises(LayerError, match=r"pipe.*FIFO"):
        _build(directory_entries(root), cache)
    assert list((cache.root / "tmp").iterdir()) == []
    assert list((cache.root / "blobs" / "sha256").iterdir()) == []


@requires(IS_ROOT, "creating device nodes needs root")
def test_device_in_package_is_refused_but_kept_when_preserving(tmp_path: Path, cache: BlobCache) -> None:
    root = tmp_path / "rootfs"
    (root / "dev").mkdir(parents=True)
    os.mknod(root / "dev" / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    with pytest.raises(LayerError, match=r"null.*device node"):
        _build(directory_entries(root), cache)
    members = {m.name: m for m in _members(cache, _build(directory_entries(root, preserve=True), cache))}
    null = members["dev/null"]
    assert null.ischr() and (null.devmajor, null.devminor) == (1, 3)


def test_sockets_are_skipped(tmp_path: Path, cache: BlobCache) -> None:
    root = tmp_path / "p"
    root.mkdir()
    (root / "keep").write_text("x")
    sock_path = root / "s.sock"
    if len(os.fsencode(sock_path)) > 100:
        need(False, "temp path too long for a unix socket")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(sock_path))
        for preserve in (False, True):
            names = [e.name for e in directory_entries(root, preserve=preserve)]
            assert names == ["keep"]


def test_preserve_keeps_bits_and_owners(tmp_path: Path, cache: BlobCache) -> None:
    root = tmp_path / "rootfs"
    (root / "usr/bin").mkdir(parents=True)
    (root / "usr/bin/su").write_text("su")
    if IS_ROOT:
        os.chown(root / "usr/bin/su", 0, 42)  # before chmod: chown clears setuid
    (root / "usr/bin/su").chmod(0o4755)
    (root / "tmp").mkdir()
    (root / "tmp").chmod(0o1777)
    os.mkfifo(root / "initctl", 0o600)
    members = {m.name: m for m in _members(cache, _build(directory_entries(root, preserve=True), cache))}
    assert members["usr/bin/su"].mode == 0o4755
    assert members["tmp"].mode == 0o1777
    assert members["initctl"].isfifo() and members["initctl"].mode == 0o600
    if IS_ROOT:
        assert members["usr/bin/su"].gid == 42


def test_non_utf8_names_are_refused(tmp_path: Path, cache: BlobCache) -> None:
    root = tmp_path / "p"
    root.mkdir()
    fd = os.open(os.fsencode(root) + b"/bad-\xff", os.O_CREAT | os.O_WRONLY, 0o644)
    os.close(fd)
    with pytest.raises(LayerError, match="UTF-8"):
        _build(directory_entries(root), cache)


def test_file_modified_during_build_is_named(tmp_path: Path, cache: BlobCache) -> None:
    root = tmp_path / "p"
    root.mkdir()
    (root / "data.bin").write_bytes(b"x" * 1000)

    def meddle(entries: Iterator[TarEntry]) -> Iterator[TarEntry]:
        for entry in entries:
            if entry.name == "data.bin":
                with (root / "data.bin").open("ab") as f:
                    f.write(b"more")
            yield entry

    with pytest.raises(LayerError, match=r"data\.bin"):
        _build(meddle(directory_entries(root)), cache)
    assert list((cache.root / "tmp").iterdir()) == []


def test_prefix_normalisation() -> None:
    assert normalise_prefix("/opt//pkg/./") == "opt/pkg"
    assert normalise_prefix("/") == ""
    with pytest.raises(LayerError):
        normalise_prefix("/opt/../etc")


def test_root_must_be_a_directory(tmp_path: Path) -> None:
    with pytest.raises(LayerError, match="not a directory"):
        list(directory_entries(Path(__file__)))
    with pytest.raises(LayerError, match="cannot read"):
        list(directory_entries(tmp_path / "missing"))


# --- tarball inputs ----------------------------------------------------------------------


def _compress(data: bytes, compression: str) -> bytes:
    if compression == "gzip":
        return gzip.compress(data, mtime=0)
    if compression == "zstd":
        return zstandard.ZstdCompressor().compress(data)
    return data


def make_tarball(path: Path, members: list[tuple[tarfile.TarInfo, bytes]], compression: str = "none") -> Path:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            info.size = len(data) if info.isfile() else 0
            tar.addfile(info, io.BytesIO(data) if info.isfile() else None)
    path.write_bytes(_compress(out.getvalue(), compression))
    return path


def _info(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "", mode: int = 0o644) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode = kind, linkname, mode
    return info


@requires(HAVE_TAR, "GNU tar not installed")
@pytest.mark.parametrize("compression", ["none", "gzip", "zstd"])
def test_prefix_relative_tarball_matches_directory(
    tmp_path: Path, cache: BlobCache, compression: str
) -> None:
    tree = make_tree(tmp_path / "t")
    expected = _build(directory_entries(tree, PREFIX), cache)
    other = make_tree(tmp_path / "other", reverse=True, mtime=5, umask=0o077)
    tar_path = tmp_path / "pkg.tar"
    subprocess.run(["tar", "-cf", str(tar_path), "-C", str(other), "."], check=True)
    tarball = tmp_path / "pkg.bin"  # the extension says nothing: detection is by magic bytes
    tarball.write_bytes(_compress(tar_path.read_bytes(), compression))
    with tarball_entries(tarball, PREFIX) as entries:
        blob = _build(entries, cache)
        assert entries.root_relative is False
    assert (blob.digest, blob.diff_id) == (expected.digest, expected.diff_id)


@requires(HAVE_TAR, "GNU tar not installed")
def test_root_relative_tarball_is_used_as_is(tmp_path: Path, cache: BlobCache) -> None:
    tree = make_tree(tmp_path / "t")
    expected = _build(directory_entries(tree, PREFIX), cache, compression="zstd")
    stage = tmp_path / "stage"
    make_tree(stage / PREFIX[1:], reverse=True)
    tarball = tmp_path / "spack.tar.gz"
    subprocess.run(["tar", "-czf", str(tarball), "-C", str(stage), "opt"], check=True)
    entries = tarball_entries(tarball, PREFIX)
    blob = _build(entries, cache, compression="zstd")  # iterated without `with`: cleans up itself
    assert entries.root_relative is True
    assert (blob.digest, blob.diff_id) == (expected.digest, expected.diff_id)


def test_tarball_detection_and_rerooting(tmp_path: Path, cache: BlobCache) -> None:
    spack_like = make_tarball(
        tmp_path / "a.tar",
        [
            (_info("opt/", tarfile.DIRTYPE), b""),
            (_info("opt/pkg/bin/x"), b"x"),
        ],
    )
    with tarball_entries(spack_like, "/opt/pkg") as entries:
        assert [e.name for e in entries] == ["opt", "opt/pkg", "opt/pkg/bin", "opt/pkg/bin/x"]
        assert entries.root_relative
    elsewhere = make_tarball(tmp_path / "b.tar", [(_info("opt/other/x"), b"x")])
    with tarball_entries(elsewhere, "/opt/pkg") as entries:
        assert [e.name for e in entries][-1] == "opt/pkg/opt/other/x"
        assert not entries.root_relative
    at_root = make_tarball(tmp_path / "c.tar", [(_info("./etc/motd"), b"hi")])
    assert [e.name for e in tarball_entries(at_root)] == ["etc", "etc/motd"]


def test_tarball_modes_and_owners_are_normalised(tmp_path: Path, cache: BlobCache) -> None:
    info = _info("bin/tool", mode=0o4750)
    info.uid, info.gid, info.uname, info.gname = 1000, 1000, "me", "us"
    path = make_tarball(tmp_path / "t.tar", [(info, b"x"), (_info("d", tarfile.DIRTYPE, mode=0o700), b"")])
    entries = {e.name: e for e in tarball_entries(path, "/p")}
    tool = entries["p/bin/tool"]
    assert (tool.mode, tool.uid, tool.gid, tool.uname, tool.gname) == (0o755, 0, 0, "", "")
    assert entries["p/d"].mode == 0o755
    kept = {e.name: e for e in tarball_entries(path, "", preserve=True)}
    assert (kept["bin/tool"].mode, kept["bin/tool"].uid, kept["bin/tool"].uname) == (0o4750, 1000, "me")


def test_duplicates_last_wins_and_hardlinks_reordered(tmp_path: Path, cache: BlobCache) -> None:
    path = make_tarball(
        tmp_path / "t.tar",
        [
            (_info("z"), b"data"),
            (_info("a", tarfile.LNKTYPE, linkname="z"), b""),
            (_info("old"), b"old"),
            (_info("keeps-old", tarfile.LNKTYPE, linkname="old"), b""),
            (_info("old"), b"new"),
            (_info("dup"), b"one"),
            (_info("dup"), b"two"),
        ],
    )
    blob = _build(tarball_entries(path), cache)
    with tarfile.open(fileobj=io.BytesIO(_tar_bytes(cache, blob))) as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert list(members) == ["a", "dup", "keeps-old", "old", "z"]
        assert members["a"].isfile() and members["z"].islnk() and members["z"].linkname == "a"
        assert tar.extractfile("a").read() == b"data"  # type: ignore[union-attr]
        assert tar.extractfile("dup").read() == b"two"  # type: ignore[union-attr]
        assert tar.extractfile("old").read() == b"new"  # type: ignore[union-attr]
        assert tar.extractfile("keeps-old").read() == b"old"  # type: ignore[union-attr]


def _pax_nul() -> tarfile.TarInfo:
    info = _info("placeholder")
    info.pax_headers = {"path": "a\0b"}
    return info


@pytest.mark.parametrize(
    ("members", "match"),
    [
        ([(_info("/etc/passwd"), b"x")], "'/etc/passwd'.*absolute"),
        ([(_info("../x"), b"x")], r"'\.\./x'.*'\.\.'"),
        ([(_info("a/../../x"), b"x")], r"'a/\.\./\.\./x'"),
        ([(_pax_nul(), b"x")], "NUL"),
        ([(_info("etc/.wh.passwd"), b"")], "'etc/.wh.passwd'.*whiteout"),
        ([(_info("etc/.wh..wh..opq"), b"")], "whiteout"),
        ([(_info("h", tarfile.LNKTYPE, linkname="missing"), b"")], "'h'.*not an earlier member"),
        ([(_info("h", tarfile.LNKTYPE, linkname="f"), b""), (_info("f"), b"x")], "not an earlier member"),
        ([(_info("h", tarfile.LNKTYPE, linkname="../etc/shadow"), b"")], "'h' points outside"),
        ([(_info("h", tarfile.LNKTYPE, linkname="/etc/shadow"), b"")], "points outside"),
        (
            [(_info("a", tarfile.SYMTYPE, linkname="/etc"), b""), (_info("a/passwd"), b"x")],
            "'a/passwd' lies below 'a'.*symlink",
        ),
        ([(_info("dev/sda", tarfile.BLKTYPE), b"")], "'dev/sda'.*device node"),
        ([(_info("p", tarfile.FIFOTYPE), b"")], "'p'.*FIFO"),
    ],
)
def test_malicious_tarball_members_are_refused(
    tmp_path: Path, cache: BlobCache, members: list[tuple[tarfile.TarInfo, bytes]], match: str
) -> None:
    path = make_tarball(tmp_path / "evil.tar.gz", members, "gzip")
    with pytest.raises(LayerError, match=match):
        _build(tarball_entries(path, "/opt/pkg"), cache)
    assert list((cache.root / "blobs" / "sha256").glob("*")) == []


def test_whiteouts_allowed_when_asked(tmp_path: Path) -> None:
    path = make_tarball(tmp_path / "w.tar", [(_info("etc/.wh.motd"), b"")])
    assert [e.name for e in tarball_entries(path, allow_whiteouts=True)] == ["etc", "etc/.wh.motd"]


@pytest.mark.parametrize("name", [".wh..wh..opq", ".wh.sh", ".wh.dir/inside"])
def test_whiteout_names_in_a_package_directory_are_refused(tmp_path: Path, name: str) -> None:
    """Issue 14, item 7: a file ``.wh..wh..opq`` in a package whose prefix is /bin wiped the
    base's /bin, and ``.wh.sh`` deleted /bin/sh: a directory input is refused like a tarball,
    naming the file; so is a tarball member below a ``.wh.`` directory (which would make the
    implied directory a whiteout)."""
    prefix = tmp_path / "prefix"
    (prefix / name).parent.mkdir(parents=True, exist_ok=True)
    (prefix / name).write_text("x")
    (prefix / "tool").write_text("y")
    shown = str(prefix / name.split("/")[0])
    for preserve in (False, True):
        with pytest.raises(LayerError, match=re.escape(repr(shown)) + ".*whiteout.*delete"):
            list(directory_entries(prefix, "bin", preserve=preserve))
    tarball = make_tarball(tmp_path / "t.tar", [(_info(f"opt/{name}"), b"x")])
    with pytest.raises(LayerError, match="whiteout"):
        list(tarball_entries(tarball))
    with pytest.raises(LayerError, match="whiteout"):
        normalise_prefix("/opt/.wh.x/pkg")


def test_broken_tarballs(tmp_path: Path, cache: BlobCache) -> None:
    good = io.BytesIO()
    with tarfile.open(fileobj=good, mode="w") as tar:
        info = _info("f")
        info.size = 100_000
        tar.addfile(info, io.BytesIO(os.urandom(100_000)))
    gz = gzip.compress(good.getvalue(), mtime=0)
    cases = {
        "truncated.gz": (gz[: len(gz) // 2], "truncated"),
        "garbage.gz": (gz + b"GARBAGE!", "trailing garbage"),
        "corrupt.gz": (gz[:20] + bytes(b ^ 0x55 for b in gz[20:60]) + gz[60:], "gzip"),
        "truncated.zst": (zstandard.ZstdCompressor().compress(good.getvalue())[:-100], "truncated"),
        "notatar.bin": (os.urandom(4096), "not a tar"),
        "short.tar": (good.getvalue()[:5000], "truncated"),
        "x.tar.xz": (b"\xfd7zXZ\x00" + bytes(100), "xz"),
    }
    for name, (data, match) in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(LayerError, match=match):
            _build(tarball_entries(tmp_path / name), cache)
    assert list((cache.root / "blobs" / "sha256").glob("*")) == []


def test_tarball_limits(tmp_path: Path, cache: BlobCache) -> None:
    bomb = make_tarball(tmp_path / "bomb.tar.gz", [(_info("zeros"), bytes(4 << 20))], "gzip")
    with pytest.raises(LayerError, match="decompresses to more than"):
        _build(tarball_entries(bomb, max_bytes=1 << 20), cache)
    many = make_tarball(tmp_path / "many.tar", [(_info(f"f{i}"), b"") for i in range(20)])
    with pytest.raises(LayerError, match="more than 10 members"):
        _build(tarball_entries(many, max_members=10), cache)


# --- a tarball as its own layer (a Spack build-cache tarball) ---------------------------


SPACK_PREFIX = "opt/spack/linux-x86_64/tool-1.0-abc"


def spack_members(*extra: tuple[tarfile.TarInfo, bytes]) -> list[tuple[tarfile.TarInfo, bytes]]:
    """A tarball laid out as ``spack buildcache push`` writes it: parents first, the prefix, its
    files, the relocation record last."""
    parts = SPACK_PREFIX.split("/")
    members = [(_info("/".join(parts[: i + 1]), tarfile.DIRTYPE, mode=0o755), b"") for i in range(len(parts))]
    members += [
        (_info(f"{SPACK_PREFIX}/.spack", tarfile.DIRTYPE, mode=0o755), b""),
        (_info(f"{SPACK_PREFIX}/.spack/spec.json"), b'{"spec": {}}'),
        (_info(f"{SPACK_PREFIX}/bin", tarfile.DIRTYPE, mode=0o755), b""),
        (_info(f"{SPACK_PREFIX}/bin/tool", mode=0o755), b"#!/bin/sh\necho hi\n" * 1000),
        (_info(f"{SPACK_PREFIX}/bin/alias", tarfile.LNKTYPE, linkname=f"{SPACK_PREFIX}/bin/tool"), b""),
        *extra,
        (_info(f"{SPACK_PREFIX}/.spack/binary_distribution"), b"{}"),
    ]
    return members


@pytest.mark.parametrize("compression", ["gzip", "none", "zstd"])
def test_a_tarball_is_adopted_byte_for_byte(tmp_path: Path, compression: str) -> None:
    path = make_tarball(tmp_path / "pkg", spack_members(), compression)
    data = path.read_bytes()
    grown: list[int] = []

    class Follower:
        def grow(self, where: Path, size: int) -> None:
            assert where == path
            grown.append(size)

        def finish(self, digest: object, size: int) -> None:
            grown.append(-size)

        def abort(self) -> None:  # pragma: no cover - not reached on success
            raise AssertionError("aborted")

    blob = adopt_tarball(
        path, SPACK_PREFIX, OCI, required=(".spack/binary_distribution",), follower=Follower()
    )
    assert blob.digest == Digest.of(data) and blob.size == len(data)
    raw = _decompress_all(data)
    assert blob.diff_id == Digest.of(raw) and blob.uncompressed_size == len(raw)
    assert blob.media_type == OCI.layer(compression)  # type: ignore[arg-type]
    assert f"{SPACK_PREFIX}/bin" in blob.directories and "opt" in blob.directories
    assert grown[-1] == -len(data)
    if compression == "zstd":
        with pytest.raises(UsageError, match=r"zstd layers need an OCI base image"):
            adopt_tarball(path, SPACK_PREFIX, DOCKER)
    else:
        docker = adopt_tarball(path, "/" + SPACK_PREFIX, DOCKER, expected=blob.digest)
        assert (docker.digest, docker.media_type) == (blob.digest, DOCKER.layer(compression))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        ((_info("etc/passwd"), b"x"), "'etc/passwd' lies outside the install prefix"),
        ((_info("opt/other", tarfile.DIRTYPE), b""), "'opt/other/' lies outside"),
        ((_info("../evil"), b"x"), r"'\.\./evil' contains '\.\.'"),
        ((_info(f"{SPACK_PREFIX}/.wh.x"), b""), "whiteout"),
        ((_info(f"{SPACK_PREFIX}/dev", tarfile.CHRTYPE), b""), "device node"),
        ((_info(f"{SPACK_PREFIX}/bin/su", mode=0o4755), b"x"), "setuid"),
        ((_info(f"{SPACK_PREFIX}/h", tarfile.LNKTYPE, linkname="nowhere"), b""), "not an earlier file"),
        ((_info(f"{SPACK_PREFIX}/h", tarfile.LNKTYPE, linkname="/etc/shadow"), b""), "points outside"),
        ((_info(f"{SPACK_PREFIX}/bin/tool/x"), b""), "lies below .*bin/tool.*, which is a file"),
    ],
)
def test_an_adopted_tarball_is_checked_like_any_package_tarball(
    tmp_path: Path, extra: tuple[tarfile.TarInfo, bytes], match: str
) -> None:
    path = make_tarball(tmp_path / "evil.tar.gz", spack_members(extra), "gzip")
    aborted: list[bool] = []

    class Follower:
        def grow(self, where: Path, size: int) -> None:
            pass

        def finish(self, digest: object, size: int) -> None:  # pragma: no cover - never reached
            raise AssertionError("finished")

        def abort(self) -> None:
            aborted.append(True)

    with pytest.raises(LayerError, match=match):
        adopt_tarball(path, SPACK_PREFIX, OCI, follower=Follower())
    assert aborted == [True]


def test_an_adopted_tarball_must_match_its_checksum_and_hold_what_is_required(tmp_path: Path) -> None:
    path = make_tarball(tmp_path / "pkg.tar.gz", spack_members(), "gzip")
    with pytest.raises(IntegrityError, match=r"hashes to .* but its build cache records"):
        adopt_tarball(path, SPACK_PREFIX, OCI, expected=Digest.of(b"something else"))
    with pytest.raises(LayerError, match=r"has no opt/.*/\.spack/missing, so it is not a Spack build-cache"):
        adopt_tarball(path, SPACK_PREFIX, OCI, required=(".spack/missing",))
    with pytest.raises(LayerError, match="decompresses to more than"):
        adopt_tarball(path, SPACK_PREFIX, OCI, max_bytes=4096)
    with pytest.raises(LayerError, match="more than 3 members"):
        adopt_tarball(path, SPACK_PREFIX, OCI, max_members=3)
    data = path.read_bytes()
    for name, broken, match in (
        ("cut.tar.gz", data[: len(data) // 2], "truncated"),
        ("garbage.tar.gz", data + b"GARBAGE", "trailing garbage"),
    ):
        (tmp_path / name).write_bytes(broken)
        with pytest.raises(LayerError, match=match):
            adopt_tarball(tmp_path / name, SPACK_PREFIX, OCI)
    with pytest.raises(LayerError, match="cannot read"):
        adopt_tarball(tmp_path / "gone.tar.gz", SPACK_PREFIX, OCI)


def test_with_file_puts_a_generated_file_in_its_sorted_place(tmp_path: Path, cache: BlobCache) -> None:
    tree = tmp_path / "p"
    (tree / ".spack").mkdir(parents=True)
    (tree / ".spack" / "binary_distribution").write_text("stale")
    (tree / ".spack" / "spec.json").write_text("{}")
    (tree / "bin").mkdir()
    (tree / "bin" / "x").write_text("x")
    entries = list(with_file(directory_entries(tree, "opt/p"), "opt/p/.spack/binary_distribution", b"new"))
    assert [e.name for e in entries] == [
        "opt",
        "opt/p",
        "opt/p/.spack",
        "opt/p/.spack/binary_distribution",
        "opt/p/.spack/spec.json",
        "opt/p/bin",
        "opt/p/bin/x",
    ]
    blob = _build(iter(entries), cache)
    with tarfile.open(fileobj=io.BytesIO(_tar_bytes(cache, blob))) as tar:
        assert tar.extractfile("opt/p/.spack/binary_distribution").read() == b"new"  # type: ignore[union-attr]
    last = list(with_file(directory_entries(tree, "opt/p"), "opt/p/zz", b""))
    assert last[-1].name == "opt/p/zz"
    with pytest.raises(LayerError, match="is a directory"):
        list(with_file(directory_entries(tree, "opt/p"), "opt/p/bin", b""))


# --- memory ------------------------------------------------------------------------------


def _peak_rss_growth(warm_up: str, work: str, *args: str) -> int:
    """How much the peak RSS of a fresh interpreter grows while it runs ``work`` after
    ``warm_up`` (Python source both, ``sys.argv[1:]`` being ``args``): imports and caches
    are paid in the warm-up, so only what the work itself holds counts."""
    script = "\n".join(
        (
            "import resource, sys",
            "from pathlib import Path",
            textwrap.dedent(warm_up),
            "base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss",
            textwrap.dedent(work),
            "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) * 1024)",
        )
    )
    proc = subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return int(proc.stdout.strip())


@pytest.mark.slow
def test_memory_stays_bounded_for_a_large_file(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    with (src / "big.bin").open("wb") as f:
        f.truncate(200 << 20)  # sparse: 200 MB of zeros without writing them
        f.seek(100 << 20)
        f.write(os.urandom(1 << 20))
    warm_up = """
        from imagesmith.store.cache import BlobCache
        from imagesmith.tar.layer import build_layer
        from imagesmith.tar.entries import directory_entries, tarball_entries
        from imagesmith.oci.mediatypes import OCI
        cache = BlobCache(Path(sys.argv[2]))
        small = Path(sys.argv[1]).parent / "small"
        small.mkdir()
        (small / "f").write_bytes(b"x")
        build_layer(directory_entries(small), cache, media_types=OCI)  # warm up imports
        """
    work = """
        blob = build_layer(directory_entries(Path(sys.argv[1])), cache, media_types=OCI)
        zst = build_layer(directory_entries(Path(sys.argv[1])), cache, media_types=OCI, compression="zstd")
        again = build_layer(
            tarball_entries(cache.path(zst.digest)), cache, media_types=OCI, compression="zstd"
        )
        assert again.diff_id == zst.diff_id == blob.diff_id
        """
    growth = _peak_rss_growth(warm_up, work, str(src), str(tmp_path / "cache"))
    assert growth < 100 << 20, f"peak RSS grew by {growth >> 20} MiB while streaming 200 MB"


@pytest.mark.slow
def test_memory_stays_bounded_for_members_at_the_deepest_path(tmp_path: Path) -> None:
    """Issue 14, item 1: ten members each 2,046 components deep (the most a PATH_MAX name
    allows) imply 20,000 parent directories of up to 4 KB each. Kept as full strings (index,
    sort keys, the layer's directory list and its record) that cost hundreds of MB; the tree
    index and the depth-bounded directory list keep it to a few."""
    tarball = tmp_path / "deep.tar"
    with tarfile.open(tarball, "w", format=tarfile.PAX_FORMAT) as tar:
        for i in range(10):
            info = tarfile.TarInfo(f"{i}/" + "/".join(["a"] * 2045) + "/f")
            info.size = 1
            tar.addfile(info, io.BytesIO(b"x"))
    warm_up = """
        from imagesmith.store.cache import BlobCache
        from imagesmith.oci.mediatypes import OCI
        from imagesmith.pipeline.layers import content_layer
        cache = BlobCache(Path(sys.argv[2]))
        small = Path(sys.argv[1]).parent / "small"
        small.mkdir()
        (small / "f").write_bytes(b"x")
        content_layer(small, "/opt/small", cache, OCI)  # warm up imports
        """
    work = """
        blob, _ = content_layer(Path(sys.argv[1]), "/opt/pkg", cache, OCI)
        assert "opt/pkg/0/a" in blob.directories
        """
    growth = _peak_rss_growth(warm_up, work, str(tarball), str(tmp_path / "cache"))
    assert growth < 30 << 20, f"peak RSS grew by {growth >> 20} MiB for 10 deep members"


# --- pinned bytes ------------------------------------------------------------------------


def make_pinned_tree(root: Path, files: int = 3000) -> Path:
    """A deterministic tree that reaches every path of the directory walk and the tar writer.

    Thousands of small files (empty, 1 byte, exactly 512 and 1024 bytes, one byte either side
    of a block), executables, symlinks (relative, absolute, dangling, long and unicode
    targets, one hardlinked), hardlinked sets spread over directories, names over 100 and
    paths over 255 bytes, unicode names, names that sort differently as ``name/``, empty
    directories, and files of 1 MiB, 1 MiB + 1 and 3 MiB. Modes are set explicitly so the
    umask does not matter; used with ``preserve=False`` so owners do not either.
    """
    rng = random.Random(20261124)
    root.mkdir(parents=True)

    def put(rel: str, data: bytes, mode: int = 0o644) -> None:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        path.chmod(mode)

    sizes = (0, 1, 100, 511, 512, 513, 1023, 1024, 1025, 4096, 10_000)
    for i in range(files):
        size = sizes[i % len(sizes)] if i % 3 == 0 else int(rng.expovariate(1 / 2000))
        data = rng.randbytes(size) if i % 2 else ((b"line %d\n" % i) * (size // 6 + 1))[:size]
        put(f"d{i % 37:02d}/s{i % 5}/f{i}.dat", data, 0o755 if i % 7 == 0 else 0o640)
    put("big/1mib", rng.randbytes(1 << 20))
    put("big/1mib+1", rng.randbytes((1 << 20) + 1))
    put("big/3mib", rng.randbytes(3 << 20), 0o700)
    put("x" * 101, b"a name over 100 bytes\n")
    put("y" * 99, b"a name of 99 bytes, over 100 with the prefix\n")
    put(f"{'L' * 120}/{'M' * 120}/{'n' * 200}", b"a path over 255 bytes\n")
    put("résumé-日本.txt", "ünïcode".encode())
    put("ü/emoji-\U0001f642", b"\xf0\x9f\x99\x82\n")
    for name in ("a/b", "a-b", "a.b", "a0"):
        put(f"order/{name}", name.encode())
    (root / "empty/dir/deeper").mkdir(parents=True)
    (root / "empty/file").write_bytes(b"")
    links = root / "links"
    links.mkdir()
    (links / "rel").symlink_to("../d00/s0/f0.dat")
    (links / "abs").symlink_to("/usr/bin/env")
    (links / "dangling").symlink_to("nowhere/at/all")
    (links / "long").symlink_to("../" * 40 + "target")
    (links / "unicode").symlink_to("résumé-日本.txt")
    (links / "to-dir").symlink_to("../order/a")
    os.link(links / "rel", links / "rel-hardlinked", follow_symlinks=False)
    put("hard/a", b"hardlinked data\n" * 40)
    os.link(root / "hard/a", root / "hard/b")
    os.link(root / "hard/a", root / "d05/s0/z-hard")  # first in sorted order: carries the data
    os.link(root / "big/1mib+1", root / "big/zz-link")
    for dirpath, _dirs, _names in os.walk(root):
        os.chmod(dirpath, 0o750)
    return root


# Computed with the writer as it was before the read-ahead and header fast paths were added.
PINNED_DIFF_ID = "sha256:c1373e9cab6221e8f4917b9b22459843b5dd79353ccc6d631af3e396b766543c"
PINNED_DIFF_ID_MTIME = "sha256:2474d74ba1a110182ecb92a6fcec09229cd4d128994d5802cbaa835a082008cf"
PINNED_DIFF_ID_SPECIAL = "sha256:bd7d5e6268ce572afadbde989a559e6eb947a54c8eb136965055fb090df5f896"


def test_pinned_tree_bytes_never_change(tmp_path: Path, cache: BlobCache) -> None:
    """The exact tar bytes of a tree covering every writer path are pinned: any change to
    the walk or the writer that alters a single byte (so every layer digest) fails here."""
    root = make_pinned_tree(tmp_path / "tree")
    blob = _build(directory_entries(root, "opt/bench"), cache, compression="none", mtime=0)
    assert str(blob.diff_id) == PINNED_DIFF_ID
    dated = _build(directory_entries(root, "opt/bench"), cache, mtime=1_700_000_000)
    assert str(dated.diff_id) == PINNED_DIFF_ID_MTIME


def test_pinned_special_files_bytes_never_change(tmp_path: Path, cache: BlobCache) -> None:
    """A FIFO, a setuid file and a sticky directory, kept by ``preserve=True`` (owners zeroed
    so the digest does not depend on who runs the test)."""
    special = tmp_path / "special"
    special.mkdir()
    os.mkfifo(special / "fifo")
    os.chmod(special / "fifo", 0o600)
    (special / "suid").write_bytes(b"x" * 700)
    os.chmod(special / "suid", 0o4755)
    os.chmod(special, 0o1777)
    entries = (
        dataclasses.replace(e, uid=0, gid=0) for e in directory_entries(special, "opt/s", preserve=True)
    )
    blob = _build(entries, cache, compression="none", mtime=0)
    assert str(blob.diff_id) == PINNED_DIFF_ID_SPECIAL


@pytest.mark.parametrize("size", [1000, 3 << 20])
@pytest.mark.parametrize("change", ["grow", "shrink", "vanish", "symlink", "directory", "fifo"])
def test_file_changed_after_the_walk_is_named(
    tmp_path: Path, cache: BlobCache, change: str, size: int
) -> None:
    """Whatever happens to a file between the walk and the writer, the build fails naming it."""
    root = tmp_path / "p"
    root.mkdir()
    (root / "a").write_bytes(b"a")
    victim = root / "data.bin"
    victim.write_bytes(b"x" * size)
    (root / "z").write_bytes(b"z" * 600)

    def meddle(entries: Iterator[TarEntry]) -> Iterator[TarEntry]:
        for entry in entries:
            if entry.name == "data.bin":
                if change == "grow":
                    with victim.open("ab") as f:
                        f.write(b"more")
                elif change == "shrink":
                    victim.write_bytes(b"x")
                else:
                    victim.unlink()
                    if change == "symlink":
                        victim.symlink_to(root / "z")
                    elif change == "directory":
                        victim.mkdir()
                    elif change == "fifo":
                        os.mkfifo(victim)
            yield entry

    with pytest.raises(LayerError, match=r"data\.bin"):
        _build(meddle(directory_entries(root)), cache)
    assert list((cache.root / "tmp").iterdir()) == []
