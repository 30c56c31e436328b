"""The deterministic tar writer, checked against tarfile and GNU tar."""

from __future__ import annotations

import io
import os
import random
import re
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
from conftest import requires

from imagesmith.errors import LayerError
from imagesmith.tar.format import read_members
from imagesmith.tar.writer import EntryKind, TarEntry, TarWriter, _byte_sum, _read_fd

LONG_150 = "d" * 60 + "/" + "f" * 89  # 150 bytes in two components
LONG_300 = "/".join(["x" * 99, "y" * 99, "z" * 100])  # 300 bytes
UNICODE = "données/été-ß-日本.txt"


def _write(entries: list[tuple[TarEntry, bytes | None]], mtime: int = 0) -> bytes:
    out = io.BytesIO()
    writer = TarWriter(out, mtime=mtime)
    for entry, data in entries:
        writer.add(entry, io.BytesIO(data) if data is not None else None)
    writer.close()
    return out.getvalue()


def _sample() -> list[tuple[TarEntry, bytes | None]]:
    return [
        (TarEntry("d", "dir", 0o755), None),
        (TarEntry("d/empty", "file", 0o644), None),
        (TarEntry("d/f512", "file", 0o644, size=512), b"a" * 512),
        (TarEntry("d/f513", "file", 0o755, size=513), b"b" * 513),
        (TarEntry("d/link", "symlink", 0o777, linkname="f512"), None),
        (TarEntry("d/hard", "hardlink", 0o644, linkname="d/f512"), None),
        (TarEntry(LONG_150, "file", 0o644, size=3), b"150"),
        (TarEntry(LONG_300, "file", 0o644, size=3), b"300"),
        (TarEntry(UNICODE, "file", 0o644, size=2), b"u8"),
        (TarEntry("longlink", "symlink", 0o777, linkname="/" + LONG_300), None),
    ]


def test_tarfile_reads_back_every_kind_and_name() -> None:
    data = _write(_sample(), mtime=1234)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert list(members) == [e.name for e, _ in _sample()]
        assert members["d"].isdir() and members["d"].mode == 0o755
        assert members["d/f513"].size == 513 and members["d/f513"].mode == 0o755
        assert tar.extractfile("d/f513").read() == b"b" * 513  # type: ignore[union-attr]
        assert tar.extractfile("d/f512").read() == b"a" * 512  # type: ignore[union-attr]
        assert tar.extractfile("d/empty").read() == b""  # type: ignore[union-attr]
        assert members["d/link"].issym() and members["d/link"].linkname == "f512"
        assert members["d/hard"].islnk() and members["d/hard"].linkname == "d/f512"
        assert tar.extractfile(LONG_300).read() == b"300"  # type: ignore[union-attr]
        assert tar.extractfile(UNICODE).read() == b"u8"  # type: ignore[union-attr]
        assert members["longlink"].linkname == "/" + LONG_300
        for m in members.values():
            assert (m.uid, m.gid, m.uname, m.gname, m.mtime) == (0, 0, "", "", 1234)
            assert not {"atime", "ctime", "mtime"} & set(m.pax_headers)


def test_exact_layout_and_header_fields() -> None:
    data = _write([(TarEntry("a", "dir", 0o755), None), (TarEntry("a/f", "file", 0o644, size=1), b"x")])
    # header, header + one data block, then exactly two zero blocks: no record padding.
    assert len(data) == 512 * 5
    assert data[-1024:] == bytes(1024)
    dir_header = data[:512]
    assert dir_header[:2] == b"a/" and dir_header[156:157] == b"5"
    assert dir_header[257:265] == b"ustar\x0000"
    assert dir_header[329:345] == b"0000000\x000000000\x00"  # devmajor / devminor of a non-device
    assert dir_header[265:297] == bytes(32)  # empty uname
    stored = int(dir_header[148:154], 8)
    assert stored == sum(dir_header[:148]) + 256 + sum(dir_header[156:])


def test_pax_headers_only_when_needed_and_deterministic() -> None:
    short = _write([(TarEntry("short", "file", 0o644), None)])
    assert b"PaxHeader" not in short
    long_one = _write([(TarEntry(LONG_150, "file", 0o644), None)])
    assert long_one[:14] == b"././@PaxHeader"
    assert b" path=" + LONG_150.encode() + b"\n" in long_one
    assert _write(_sample()) == _write(_sample())
    assert _write(_sample(), mtime=1) != _write(_sample(), mtime=2)


def test_large_ids_and_names_go_to_pax() -> None:
    entry = TarEntry("f", "file", 0o4755, uid=3_000_000, gid=5, uname="u" * 40, gname="grp")
    with tarfile.open(fileobj=io.BytesIO(_write([(entry, None)]))) as tar:
        (m,) = tar.getmembers()
    assert (m.uid, m.gid, m.uname, m.gname, m.mode) == (3_000_000, 5, "u" * 40, "grp", 0o4755)


def test_size_of_8_gib_uses_a_pax_size_record(tmp_path: Path) -> None:
    size = 8 << 30
    entry = TarEntry("huge", "file", 0o644, size=size)
    header = TarWriter(io.BytesIO(), mtime=0)._headers(entry)
    assert b" size=8589934592\n" in header
    # A sparse file stands in for the data so the archive can be listed for real.
    path = tmp_path / "huge.tar"
    with path.open("wb") as f:
        f.write(header)
        f.truncate(len(header) + size)
        f.seek(0, os.SEEK_END)
        f.write(bytes(1024))
    with tarfile.open(path) as tar:
        assert tar.getmember("huge").size == size
    with path.open("rb") as f:
        (member,) = read_members(f, "huge.tar")
    assert member.size == size and member.offset == len(header)
    if shutil.which("tar"):
        listing = subprocess.run(["tar", "-tvf", str(path)], capture_output=True, text=True, check=True)
        assert "8589934592" in listing.stdout


@requires(shutil.which("tar") is not None, "GNU tar not installed")
def test_gnu_tar_lists_and_extracts(tmp_path: Path) -> None:
    archive = tmp_path / "a.tar"
    archive.write_bytes(_write(_sample()))
    env = {**os.environ, "LC_ALL": "C.UTF-8"}
    listing = subprocess.run(
        ["tar", "--quoting-style=literal", "-tvf", str(archive)],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    )
    assert listing.stderr == ""
    for entry, _ in _sample():
        assert entry.name in listing.stdout
    out = tmp_path / "out"
    out.mkdir()
    subprocess.run(["tar", "-xf", str(archive), "-C", str(out)], check=True, env=env)
    assert (out / LONG_300).read_bytes() == b"300"
    assert (out / UNICODE).read_bytes() == b"u8"
    assert (out / "d/f513").read_bytes() == b"b" * 513
    assert os.readlink(out / "d/link") == "f512"
    assert (out / "d/hard").stat().st_ino == (out / "d/f512").stat().st_ino


@pytest.mark.parametrize("name", ["", "/abs", "a/../b", "..", "a//b", "a/", "./a", "nul\0byte"])
def test_invalid_names_are_refused(name: str) -> None:
    with pytest.raises(LayerError):
        TarEntry(name, "file", 0o644)


def test_invalid_entries_are_refused() -> None:
    with pytest.raises(LayerError):
        TarEntry("d", "dir", 0o755, size=3)
    with pytest.raises(LayerError):
        TarEntry("l", "symlink", 0o777)
    with pytest.raises(LayerError):
        TarEntry("f", "file", 0o10000)
    with pytest.raises(LayerError):
        TarWriter(io.BytesIO(), mtime=-1)


def test_file_changing_size_is_named(tmp_path: Path) -> None:
    path = tmp_path / "growing.bin"
    path.write_bytes(b"12345")
    writer = TarWriter(io.BytesIO(), mtime=0)
    with pytest.raises(LayerError, match=r"growing\.bin"):
        writer.add(TarEntry("growing.bin", "file", 0o644, size=3, source=path))
    with pytest.raises(LayerError, match=r"growing\.bin"):
        writer.add(TarEntry("growing.bin", "file", 0o644, size=9, source=path))
    with pytest.raises(LayerError, match="short"):
        writer.add(TarEntry("short", "file", 0o644, size=9), io.BytesIO(b"123"))


def test_symlink_swapped_in_is_not_followed(tmp_path: Path) -> None:
    (tmp_path / "target").write_bytes(b"secret")
    (tmp_path / "f").symlink_to(tmp_path / "target")
    writer = TarWriter(io.BytesIO(), mtime=0)
    with pytest.raises(LayerError, match="cannot read"):
        writer.add(TarEntry("f", "file", 0o644, size=6, source=tmp_path / "f"))


def test_source_by_offset() -> None:
    blob = io.BytesIO(b"....hello....")
    data = _write([(TarEntry("f", "file", 0o644, size=5, source=(blob, 4)), None)])
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        assert tar.extractfile("f").read() == b"hello"  # type: ignore[union-attr]


# --- the fast paths give the general path's bytes ------------------------------------------


def _random_entry(rng: random.Random) -> TarEntry:
    alphabet = ["a", "b", "-", ".", "x" * 40, "é", "日", "y" * 99]
    parts = [
        "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 3))) for _ in range(rng.randint(1, 3))
    ]
    name = "/".join(part if part.strip(".") else "p" for part in parts)
    kinds: list[EntryKind] = ["file", "dir", "symlink", "hardlink", "chardev", "blockdev", "fifo"]
    kind = rng.choice(kinds)

    def number() -> int:
        return rng.choice([0, 0, 1, 7, 1000, 0o7777777, 0o7777777 + 1])

    return TarEntry(
        name,
        kind,
        rng.randint(0, 0o7777),
        size=rng.choice([0, 1, 511, 512, 513, 0o77777777777, 0o77777777777 + 1]) if kind == "file" else 0,
        linkname=rng.choice(["t", "../" + name, "l" * 100, "l" * 101, "é"]) if "link" in kind else "",
        uid=number(),
        gid=number(),
        uname=rng.choice(["", "", "", "root", "u" * 33, "é"]),
        gname=rng.choice(["", "", "", "wheel"]),
        devmajor=number() if kind.endswith("dev") else 0,
        devminor=number() if kind.endswith("dev") else 0,
    )


@pytest.mark.parametrize("mtime", [0, 1_700_000_000, 0o77777777777])
def test_fast_header_path_matches_the_general_one(mtime: int) -> None:
    """The one-block fast path must give byte for byte what the general path gives."""
    rng = random.Random(mtime)
    writer = TarWriter(io.BytesIO(), mtime=mtime)
    fast = 0
    for _ in range(3000):
        entry = _random_entry(rng)
        try:
            general = writer._general_headers(entry)
        except LayerError as exc:
            with pytest.raises(LayerError, match=re.escape(str(exc))):
                writer._headers(entry)
            continue
        assert writer._headers(entry) == general, entry
        fast += len(general) == 512
    assert fast > 150  # the fast path was exercised, not just the fallback


def test_checksum_by_adler32_is_the_byte_sum() -> None:
    """Adler-32's low half is an exact byte sum for a block of ASCII, the largest a header can be."""
    for block in (bytes(512), b"\x7f" * 512, bytes(range(128)) * 4):
        assert _byte_sum(block) == sum(block)


def test_file_swapped_for_a_directory_or_fifo_is_named(tmp_path: Path) -> None:
    """Neither raises a bare OSError nor hangs opening a FIFO that has no writer."""
    (tmp_path / "was-a-file").mkdir()
    os.mkfifo(tmp_path / "fifo")
    writer = TarWriter(io.BytesIO(), mtime=0)
    for name in ("was-a-file", "fifo"):
        with pytest.raises(LayerError, match=f"{name} is no longer a regular file"):
            writer.add(TarEntry(name, "file", 0o644, size=10, source=tmp_path / name))


def test_small_file_read_detects_growth_and_shrinking_after_the_size_check(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"0123456789")
    fd = os.open(path, os.O_RDONLY)
    try:
        assert _read_fd(fd, 10, "f") == b"0123456789"
        os.lseek(fd, 0, os.SEEK_SET)
        with pytest.raises(LayerError, match=r"f grew while the layer was built \(more than 9 bytes\)"):
            _read_fd(fd, 9, "f")
        os.lseek(fd, 0, os.SEEK_SET)
        with pytest.raises(LayerError, match="f shrank while the layer was built: 10 of 11 bytes read"):
            _read_fd(fd, 11, "f")
    finally:
        os.close(fd)


def test_unreadable_file_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file that cannot be opened (permissions, which root would bypass) raises LayerError."""
    secret = tmp_path / "secret"
    secret.write_bytes(b"hidden")
    real_open = os.open

    def refuse(path: object, *args: object, **kwargs: object) -> int:
        if os.fspath(path) == os.fspath(secret):  # type: ignore[call-overload]
            raise PermissionError(13, "Permission denied", os.fspath(secret))
        return real_open(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", refuse)
    writer = TarWriter(io.BytesIO(), mtime=0)
    with pytest.raises(LayerError, match=r"cannot read .*secret: Permission denied"):
        writer.add(TarEntry("secret", "file", 0o644, size=6, source=secret))
