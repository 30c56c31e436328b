"""The one tar reader: both uses (indexing by offset, streaming) and every consumer agree.

The layer builder (package tarballs, ``import`` root filesystems) and the unpacker read tar
through :mod:`imagesmith.tar.format`. Each case where tar readers in the wild differ is decided
there once; the tests below check the decision through the reader itself (both uses) and
through both consumers, so a crafted archive cannot mean one tree at build time and another
at unpack time.
"""

from __future__ import annotations

import io
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import requires
from test_tarwriter import LONG_300, _sample, _write
from test_unpack import END, pax_record, raw_header, raw_member, raw_pax

from imagesmith.errors import LayerError, UnpackError
from imagesmith.tar.entries import tarball_entries
from imagesmith.tar.format import MAX_NAME_BYTES, TarMember, TarReader, read_members
from imagesmith.tar.unpack import unpack_layer

# --- helpers ------------------------------------------------------------------------------------


def _indexed(data: bytes) -> list[TarMember]:
    return list(read_members(io.BytesIO(data), "t.tar"))


def _streamed(data: bytes) -> list[tuple[TarMember, bytes]]:
    reader = TarReader(io.BytesIO(data), "t.tar")
    return [(m, b"".join(reader.data())) for m in reader.members()]


def _builder_view(tmp_path: Path, data: bytes) -> dict[str, str]:
    """What the layer builder makes of the tarball: archive name -> kind (file: + content)."""
    path = tmp_path / "pkg.tar"
    path.write_bytes(data)
    view: dict[str, str] = {}
    with tarball_entries(path, "") as entries:
        for entry in entries:
            if entry.kind == "file" and isinstance(entry.source, tuple):
                f, offset = entry.source
                f.seek(offset)
                view[entry.name] = "file:" + f.read(entry.size).decode()
            else:
                view[entry.name] = entry.kind
    return view


def _unpacked_view(tmp_path: Path, data: bytes) -> dict[str, str]:
    """What the unpacker makes of the same bytes, in the same form."""
    root = tmp_path / "root"
    unpack_layer(io.BytesIO(data), root)
    view: dict[str, str] = {}
    for path in sorted(root.rglob("*")):
        name = path.relative_to(root).as_posix()
        view[name] = "dir" if path.is_dir() else "file:" + path.read_text()
    return view


# --- the two uses read one way --------------------------------------------------------------------


def test_indexing_and_streaming_yield_the_same_members() -> None:
    data = _write(_sample())
    indexed = _indexed(data)
    streamed = _streamed(data)
    assert indexed == [m for m, _ in streamed]
    for member, content in streamed:
        assert data[member.offset : member.offset + member.size] == content
    assert [(m.name.rstrip("/"), m.kind) for m in indexed] == [(e.name, e.kind) for e, _ in _sample()]


def test_read_members_matches_what_was_written() -> None:
    data = _write(_sample())
    members = list(read_members(io.BytesIO(data), "sample"))
    f513 = members[3]
    assert data[f513.offset : f513.offset + f513.size] == b"b" * 513
    assert members[-1].linkname == "/" + LONG_300


def test_streaming_skips_unread_data() -> None:
    data = _write(_sample())
    reader = TarReader(io.BytesIO(data), "t.tar")
    names = [m.name for m in reader.members()]  # never reads data: each is skipped
    assert names == [m.name for m in _indexed(data)]
    assert reader.consumed == len(data) - 512  # through the first block of the end marker


@requires(shutil.which("tar") is not None, "GNU tar not installed")
def test_read_members_understands_gnu_long_names(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / ("n" * 120)).mkdir(parents=True)
    (src / ("n" * 120) / "file").write_text("x")
    (src / "l").symlink_to("t" * 150)
    archive = tmp_path / "gnu.tar"
    subprocess.run(["tar", "--format=gnu", "-cf", str(archive), "-C", str(src), "."], check=True)
    with archive.open("rb") as f:
        names = {m.name: m for m in read_members(f, "gnu.tar")}
    assert f"./{'n' * 120}/file" in names
    assert names["./l"].linkname == "t" * 150
    assert _streamed(archive.read_bytes())[-1][0] == list(names.values())[-1]


def test_read_members_limits_and_corruption() -> None:
    data = _write(_sample())
    with pytest.raises(LayerError, match="more than 3 members"):
        list(read_members(io.BytesIO(data), "x", max_members=3))
    with pytest.raises(LayerError, match="extended header"):
        list(read_members(io.BytesIO(data), "x", max_header_bytes=10))
    corrupt = bytearray(data)
    corrupt[0] ^= 0xFF
    with pytest.raises(LayerError, match="bad header checksum"):
        list(read_members(io.BytesIO(bytes(corrupt)), "x"))
    with pytest.raises(LayerError, match="truncated"):
        list(read_members(io.BytesIO(data[:1000]), "x"))
    # Data after the end-of-archive marker is ignored, as tar does.
    assert len(list(read_members(io.BytesIO(data + b"garbage" * 100), "x"))) == len(_sample())


def test_streaming_byte_limit_and_error_class() -> None:
    data = _write(_sample())
    reader = TarReader(io.BytesIO(data), "x", max_bytes=2048, error=UnpackError, limits="UnpackPolicy")
    with pytest.raises(UnpackError, match=r"larger than 2048 bytes.*UnpackPolicy\.max_bytes"):
        list(reader.members())


@requires(shutil.which("tar") is not None, "GNU tar not installed")
def test_sparse_members_are_refused(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    with (src / "sparse").open("wb") as f:
        f.truncate(1 << 20)
        f.write(b"x")
    archive = tmp_path / "sparse.tar"
    subprocess.run(["tar", "--format=gnu", "-S", "-cf", str(archive), "-C", str(src), "sparse"], check=True)
    with archive.open("rb") as f, pytest.raises(LayerError, match="sparse"):
        list(read_members(f, "sparse.tar"))


def test_header_only_types_ignore_their_size_field() -> None:
    """A symlink header claiming data must not swallow the member after it (parser alignment)."""
    data = raw_header(b"link", b"2", 512, linkname=b"target") + raw_member(b"file", b"hello") + END
    assert [m.name for m in _indexed(data)] == ["link", "file"]
    assert [m.name for m, _ in _streamed(data)] == ["link", "file"]


def test_base256_numbers_and_signed_checksums() -> None:
    block = bytearray(raw_header(b"big", b"0", 0))
    block[108:116] = b"\x80" + (5_000_000).to_bytes(7, "big")  # uid beyond 7 octal digits
    block[136:148] = b"\xff" * 4 + (-10).to_bytes(8, "big", signed=True)  # mtime before 1970
    block[148:156] = b" " * 8
    signed = sum(b - 256 if b >= 128 else b for b in block)  # as old writers summed
    block[148:156] = b"%06o\0 " % signed
    (member,) = _indexed(bytes(block) + END)
    assert member.uid == 5_000_000 and member.mtime_ns == -10_000_000_000


def test_volume_labels_are_not_members_and_their_data_is_skipped() -> None:
    data = raw_header(b"LABEL", b"V", 5) + b"label" + bytes(507) + raw_member(b"f", b"x") + END
    assert [m.name for m in _indexed(data)] == ["f"]
    assert [(m.name, d) for m, d in _streamed(data)] == [("f", b"x")]


# --- the three inputs the two readers used to disagree on -----------------------------------------


DUMPDIR = raw_header(b"d/", b"D", 5) + b"Yf\0\0\0" + bytes(507) + raw_member(b"d/f", b"data") + END
SLASHED_FILE = (
    raw_header(b"e/", b"0", 5)
    + b"hello"
    + bytes(507)
    + raw_member(b"e/f", b"data")
    + raw_header(b"g/", b"\0", 0)
    + END
)


@pytest.mark.parametrize("data", [DUMPDIR, SLASHED_FILE], ids=["dumpdir-with-data", "type-0-ending-in-slash"])
def test_directories_whose_headers_carry_data(tmp_path: Path, data: bytes) -> None:
    """GNU tar's reading: a dumpdir (``D``) and a regular-file header whose name ends in ``/``
    are directories; the data they declare is skipped, so the next member is read in place."""
    kinds = [(m.name.rstrip("/"), m.kind, m.size) for m in _indexed(data)]
    assert kinds == [(m.name.rstrip("/"), m.kind, m.size) for m, _ in _streamed(data)]
    assert all(kind == "dir" and size == 0 for name, kind, size in kinds if "/" not in name)
    built = _builder_view(tmp_path, data)
    unpacked = _unpacked_view(tmp_path, data)
    assert built == unpacked
    assert built[kinds[0][0]] == "dir" and built[kinds[0][0] + "/f"] == "file:data"


def test_an_empty_pax_value_deletes_the_field(tmp_path: Path) -> None:
    """POSIX pax: an empty value deletes the header field too, so ``path=`` leaves the member
    without a name (refused by both consumers); in a global header it ends the global value."""
    nameless = raw_pax(pax_record("path", b"")) + raw_member(b"a", b"x") + END
    for read in (_indexed, _streamed):
        with pytest.raises(LayerError, match="empty name"):
            read(nameless)
    (tmp_path / "pkg.tar").write_bytes(nameless)
    with pytest.raises(LayerError, match="empty name"), tarball_entries(tmp_path / "pkg.tar", ""):
        pass
    with pytest.raises(UnpackError, match="empty name"):
        unpack_layer(io.BytesIO(nameless), tmp_path / "root")
    linkless = raw_pax(pax_record("linkpath", b"")) + raw_header(b"l", b"2", linkname=b"t") + END
    assert _indexed(linkless)[0].linkname == ""
    sizeless = raw_pax(pax_record("size", b"")) + raw_member(b"a", b"x") + END
    with pytest.raises(LayerError, match="corrupt size"):
        _indexed(sizeless)
    header_mtime = raw_member(b"a", b"x")
    ended = (
        raw_header(b"g", b"g", 14)
        + pax_record("mtime", b"5").ljust(512, b"\0")
        + raw_header(b"g", b"g", 10)
        + pax_record("mtime", b"").ljust(512, b"\0")
        + header_mtime
        + END
    )
    (member,) = _indexed(ended)
    assert member.mtime_ns == 1_600_000_000 * 10**9  # the header's own mtime, not 5


# --- limits every consumer shares -----------------------------------------------------------------


def test_names_longer_than_path_max_are_refused_everywhere(tmp_path: Path) -> None:
    """A name no system call can take (> PATH_MAX bytes) is refused by the reader itself: the
    builder and the unpacker never see it (issue 14, item 1: depth cost memory quadratically)."""
    deep = "/".join(["a"] * 3000) + "/f"  # 6,001 bytes, 3,001 components
    data = raw_pax(pax_record("path", deep.encode())) + raw_member(b"x", b"data") + END
    for read in (_indexed, _streamed):
        with pytest.raises(LayerError, match=f"longer than {MAX_NAME_BYTES} bytes"):
            read(data)
    (tmp_path / "deep.tar").write_bytes(data)
    with pytest.raises(LayerError, match="PATH_MAX"), tarball_entries(tmp_path / "deep.tar", ""):
        pass
    with pytest.raises(UnpackError, match=r"'a/a/a.*\(6001 bytes\).*PATH_MAX"):
        unpack_layer(io.BytesIO(data), tmp_path / "root")
    assert not (tmp_path / "root" / "a").exists()
    fits = "/".join(["a"] * 2047) + "/f"  # 4,096 bytes: the deepest path allowed
    ok = raw_pax(pax_record("path", fits.encode())) + raw_member(b"x", b"data") + END
    assert _indexed(ok)[0].name == fits
    long_link = raw_pax(pax_record("linkpath", b"t" * 5000)) + raw_header(b"l", b"2", linkname=b"t") + END
    with pytest.raises(LayerError, match="link target"):
        _indexed(long_link)
