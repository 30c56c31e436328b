"""Tests for imagesmith.tar.unpack: safe unpacking of layers into a root directory.

Every attack test works in an "arena": ``tmp_path`` holds a ``victim`` file and a ``sentinel``
directory next to ``root``; the test asserts that nothing outside ``root`` changed. Attacks
that aim at the host through an absolute path aim at the arena's own victim (``/<tmp>/victim``)
rather than at ``/etc/passwd``: a regression then damages a temp file, not the machine.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import stat
import subprocess
import sys
import tarfile
import textwrap
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import zstandard
from conftest import need, requires

from imagesmith.errors import UnpackError, UsageError
from imagesmith.oci.mediatypes import OCI
from imagesmith.store.cache import BlobCache
from imagesmith.tar import unpack as unpack_module
from imagesmith.tar.entries import directory_entries
from imagesmith.tar.layer import build_layer
from imagesmith.tar.unpack import UnpackPolicy, UnpackStats, unpack_layer, unpack_layers

IS_ROOT = os.geteuid() == 0
MTIME = 1_600_000_000

# --- building layers -------------------------------------------------------------------------

Member = tuple[tarfile.TarInfo, bytes | None]


def _info(
    name: str,
    kind: bytes,
    *,
    mode: int = 0o644,
    link: str = "",
    size: int = 0,
    uid: int = 0,
    gid: int = 0,
    pax: dict[str, str] | None = None,
) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.linkname = link
    info.size = size
    info.uid, info.gid = uid, gid
    info.mtime = MTIME
    if pax:
        info.pax_headers = dict(pax)
    return info


def F(
    name: str,
    data: bytes = b"",
    mode: int = 0o644,
    *,
    uid: int = 0,
    gid: int = 0,
    pax: dict[str, str] | None = None,
) -> Member:
    return _info(name, tarfile.REGTYPE, mode=mode, size=len(data), uid=uid, gid=gid, pax=pax), data


def D(name: str, mode: int = 0o755, *, uid: int = 0, gid: int = 0) -> Member:
    return _info(name, tarfile.DIRTYPE, mode=mode, uid=uid, gid=gid), None


def S(name: str, target: str, *, uid: int = 0, gid: int = 0) -> Member:
    return _info(name, tarfile.SYMTYPE, mode=0o777, link=target, uid=uid, gid=gid), None


def H(name: str, target: str) -> Member:
    return _info(name, tarfile.LNKTYPE, link=target), None


def tar(*members: Member, end: bool = True) -> bytes:
    buf = io.BytesIO()
    t = tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT)  # noqa: SIM115
    for info, data in members:
        t.addfile(info, io.BytesIO(data) if data is not None else None)
    if end:  # end=False leaves the archive without its end-of-archive blocks
        t.close()
    return buf.getvalue()


def raw_header(
    name: bytes, typeflag: bytes = b"0", size: int = 0, linkname: bytes = b"", mode: int = 0o644
) -> bytes:
    """A ustar header with exactly the bytes given (tarfile would refuse or clean some)."""
    block = bytearray(512)
    block[0 : len(name)] = name
    block[100:108] = b"%07o\0" % mode
    block[108:116] = b"%07o\0" % 0
    block[116:124] = b"%07o\0" % 0
    block[124:136] = b"%011o\0" % size
    block[136:148] = b"%011o\0" % MTIME
    block[148:156] = b" " * 8
    block[156:157] = typeflag
    block[157 : 157 + len(linkname)] = linkname
    block[257:265] = b"ustar\x0000"
    block[148:156] = b"%06o\0 " % sum(block)
    return bytes(block)


def raw_member(name: bytes, data: bytes = b"", typeflag: bytes = b"0") -> bytes:
    return raw_header(name, typeflag, len(data)) + data + bytes(-len(data) % 512)


def pax_record(key: str, value: bytes) -> bytes:
    body = b" " + key.encode() + b"=" + value + b"\n"
    length = len(body) + 1
    while len(str(length)) + len(body) != length:
        length = len(str(length)) + len(body)
    return str(length).encode() + body


def raw_pax(payload: bytes) -> bytes:
    return raw_header(b"././@PaxHeader", b"x", len(payload)) + payload + bytes(-len(payload) % 512)


END = bytes(1024)


def unpack(root: Path, *layers: bytes, policy: UnpackPolicy | None = None) -> UnpackStats:
    return unpack_layers([io.BytesIO(layer) for layer in layers], root, policy=policy)


# --- the arena ---------------------------------------------------------------------------------


def _listing(top: Path, skip: Path) -> dict[str, tuple[object, ...]]:
    seen: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(top):  # never follows symlinks
        here = Path(dirpath)
        dirnames[:] = [name for name in dirnames if here / name != skip]
        for name in dirnames + filenames:
            path = here / name
            st = path.lstat()
            detail: object = None
            if stat.S_ISREG(st.st_mode):
                detail = hashlib.sha256(path.read_bytes()).hexdigest()
            elif stat.S_ISLNK(st.st_mode):
                detail = os.readlink(path)
            seen[str(path)] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_mtime_ns, detail)
    return seen


@dataclass
class Arena:
    top: Path
    root: Path
    victim: Path
    sentinel: Path

    @property
    def abs_top(self) -> str:
        """``tmp_path`` without its leading slash: the same place seen from inside the root."""
        return str(self.top).lstrip("/")

    @contextmanager
    def untouched(self) -> Iterator[None]:
        before = _listing(self.top, self.root)
        try:
            yield
        finally:
            assert _listing(self.top, self.root) == before, "something outside the root changed"
            assert self.victim.read_bytes() == b"precious\n"
            assert sorted(p.name for p in self.sentinel.iterdir()) == ["keep"]


@pytest.fixture
def arena(tmp_path: Path) -> Arena:
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious\n")
    sentinel = tmp_path / "sentinel"
    sentinel.mkdir()
    (sentinel / "keep").write_bytes(b"keep\n")
    root = tmp_path / "root"
    root.mkdir()
    return Arena(tmp_path, root, victim, sentinel)


# --- normal behaviour --------------------------------------------------------------------------


def test_files_dirs_links_modes_and_mtimes(tmp_path: Path) -> None:
    root = tmp_path / "root"  # missing: created
    layer = tar(
        D("./"),
        D("etc/", mode=0o750),
        F("etc/conf", b"a=1\n", mode=0o640),
        F("bin/tool", b"#!/bin/sh\n", mode=0o755),  # parent "bin" implied
        S("bin/alias", "tool"),
        H("bin/again", "bin/tool"),
        (_info("run/fifo", tarfile.FIFOTYPE, mode=0o620), None),
        F("etc/frac", b"", pax={"mtime": "1600000000.5"}),
    )
    old = os.umask(0o077)  # a strict umask must not change what is unpacked
    try:
        stats = unpack_layer(io.BytesIO(layer), root, what="test layer")
    finally:
        os.umask(old)
    assert stats == UnpackStats(
        files=3, dirs=1, symlinks=1, hardlinks=1, whiteouts=0, skipped=(), bytes=14, specials=1
    )
    assert (root / "etc/conf").read_bytes() == b"a=1\n"
    assert stat.S_IMODE((root / "etc/conf").stat().st_mode) == 0o640
    assert stat.S_IMODE((root / "etc").stat().st_mode) == 0o750
    assert stat.S_IMODE((root / "bin").stat().st_mode) == 0o755  # implied parent
    assert stat.S_IMODE((root / "bin/tool").stat().st_mode) == 0o755
    assert os.readlink(root / "bin/alias") == "tool"
    assert (root / "bin/again").stat().st_ino == (root / "bin/tool").stat().st_ino
    assert stat.S_ISFIFO((root / "run/fifo").lstat().st_mode)
    assert stat.S_IMODE((root / "run/fifo").lstat().st_mode) == 0o620
    # mtimes: files, links and directories (set after their children were written)
    for rel in ("etc", "etc/conf", "bin/tool", "bin/alias", "run/fifo"):
        assert (root / rel).lstat().st_mtime_ns == MTIME * 10**9, rel
    assert (root / "etc/frac").stat().st_mtime_ns == MTIME * 10**9 + 500_000_000


def test_path_input_and_stats_summed_over_layers(tmp_path: Path) -> None:
    one, two = tmp_path / "one.tar", tmp_path / "two.tar"
    one.write_bytes(tar(F("a", b"1")))
    two.write_bytes(tar(F("b", b"22"), F(".wh.a")))
    stats = unpack_layers([one, two], tmp_path / "root")
    assert (stats.files, stats.whiteouts, stats.bytes) == (2, 1, 3)
    assert sorted(p.name for p in (tmp_path / "root").iterdir()) == ["b"]


@requires(IS_ROOT, "chown needs root")
def test_owners_applied_as_root_without_following_symlinks(arena: Arena) -> None:
    layer = tar(
        D("d/", uid=1234, gid=5678),
        F("d/f", b"x", mode=0o4755, uid=1234, gid=5678),
        S("d/l", str(arena.victim), uid=1234, gid=5678),
    )
    with arena.untouched():
        unpack(arena.root, layer, policy=UnpackPolicy(preserve_owners=True))
    for rel in ("d", "d/f", "d/l"):
        st = (arena.root / rel).lstat()
        assert (st.st_uid, st.st_gid) == (1234, 5678), rel
    assert stat.S_IMODE((arena.root / "d/f").stat().st_mode) == 0o4755  # chown did not clear it
    assert arena.victim.stat().st_uid == os.getuid()

    other = arena.root.parent / "root2"
    unpack(other, layer, policy=UnpackPolicy(preserve_owners=False))
    assert (other / "d/f").stat().st_uid == os.geteuid()
    assert UnpackPolicy().preserve_owners is True  # the default when running as root


def test_setuid_kept_or_stripped(tmp_path: Path) -> None:
    layer = tar(F("su", b"x", mode=0o4755), F("sg", b"x", mode=0o2755), D("sticky/", mode=0o1777))
    unpack(tmp_path / "a", layer)
    assert stat.S_IMODE((tmp_path / "a/su").stat().st_mode) == 0o4755
    assert stat.S_IMODE((tmp_path / "a/sg").stat().st_mode) == 0o2755
    unpack(tmp_path / "b", layer, policy=UnpackPolicy(allow_setuid=False))
    assert stat.S_IMODE((tmp_path / "b/su").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "b/sg").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "b/sticky").stat().st_mode) == 0o1777


@requires(IS_ROOT, "dropping privileges needs root")
def test_unprivileged_unpack(tmp_path: Path) -> None:
    """As an ordinary user: owners not applied by default, devices skipped even when allowed,
    and a read-only directory still gets its content (its mode is applied at the end)."""
    root = tmp_path / "root"
    root.mkdir()
    os.chown(root, 65534, 65534)
    layer = tar(D("ro/", mode=0o555), F("ro/f", b"x", uid=1234, gid=1234), _device("dev/null"))
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through its exit status
        code = 1
        try:
            os.chdir(root)  # the pytest temp tree above is not searchable by nobody
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            policy = UnpackPolicy(allow_devices=True)
            assert policy.preserve_owners is False
            stats = unpack_layer(io.BytesIO(layer), Path("."), policy=policy)
            assert stats.skipped == ("dev/null",) and stats.files == 1
            with pytest.raises(UnpackError, match=r"'f'.*owner 0:0.*preserve_owners=False"):
                owners = UnpackPolicy(preserve_owners=True)
                unpack_layer(io.BytesIO(tar(F("f", b"x"))), Path("."), policy=owners)
            code = 0
        finally:
            os._exit(code)
    assert os.waitpid(pid, 0)[1] == 0
    assert stat.S_IMODE((root / "ro").stat().st_mode) == 0o555
    assert (root / "ro/f").stat().st_uid == 65534
    assert not (root / "dev/null").exists()


def _device(name: str) -> Member:
    info = _info(name, tarfile.CHRTYPE, mode=0o666)
    info.devmajor, info.devminor = 1, 3
    return info, None


def test_devices_skipped_by_default(tmp_path: Path) -> None:
    stats = unpack(tmp_path / "root", tar(_device("dev/null"), F("ok", b"1")))
    assert stats.skipped == ("dev/null",)
    assert not (tmp_path / "root/dev/null").exists()
    assert (tmp_path / "root/ok").exists()


def test_devices_created_when_allowed_as_root(tmp_path: Path) -> None:
    try:
        os.mknod(tmp_path / "probe", 0o600 | stat.S_IFCHR, os.makedev(1, 3))
    except (PermissionError, OSError):
        need(False, "this process cannot create device nodes")
    stats = unpack(tmp_path / "root", tar(_device("dev/null")), policy=UnpackPolicy(allow_devices=True))
    st = (tmp_path / "root/dev/null").lstat()
    assert stat.S_ISCHR(st.st_mode) and os.major(st.st_rdev) == 1 and os.minor(st.st_rdev) == 3
    assert stat.S_IMODE(st.st_mode) == 0o666
    assert stats.specials == 1 and stats.skipped == ()


def test_merged_usr_links_resolved_inside_the_root(arena: Arena) -> None:
    base = tar(
        D("usr/"),
        D("usr/lib/"),
        D("usr/lib64/"),
        S("lib", "usr/lib"),
        S("lib64", "/usr/lib64"),
        S("etc/alternatives/libdir", "/usr/lib"),  # absolute, from a subdirectory
    )
    upper = tar(F("lib/x.so", b"x"), F("lib64/ld.so", b"ld"), F("etc/alternatives/libdir/z.so", b"z"))
    with arena.untouched():
        unpack(arena.root, base, upper)
    assert (arena.root / "usr/lib/x.so").read_bytes() == b"x"
    assert (arena.root / "usr/lib64/ld.so").read_bytes() == b"ld"
    assert (arena.root / "usr/lib/z.so").read_bytes() == b"z"
    assert (arena.root / "lib").is_symlink() and (arena.root / "lib64").is_symlink()


def test_existing_entries_replaced_never_followed(arena: Arena) -> None:
    lower = tar(
        S("f", str(arena.victim)),  # a symlink to the host's victim...
        D("d/"),
        F("d/inner", b"i"),
        F("x", b"file"),
        D("keep/", mode=0o700),
        F("keep/old", b"o"),
        S("s", str(arena.sentinel)),
    )
    upper = tar(
        F("f", b"replaced"),  # ...is replaced by a file, not written through
        F("d", b"now a file"),
        D("x/"),
        D("keep/", mode=0o755),
        D("s/"),  # a directory member replaces a symlink to a directory
        F("s/new", b"n"),
    )
    with arena.untouched():
        unpack(arena.root, lower, upper)
    assert not (arena.root / "f").is_symlink() and (arena.root / "f").read_bytes() == b"replaced"
    assert (arena.root / "d").read_bytes() == b"now a file"
    assert (arena.root / "x").is_dir()
    assert (arena.root / "keep/old").read_bytes() == b"o"  # an existing directory stays...
    assert stat.S_IMODE((arena.root / "keep").stat().st_mode) == 0o755  # ...with its new mode
    assert not (arena.root / "s").is_symlink() and (arena.root / "s/new").exists()


def test_root_entry_and_non_utf8_names(tmp_path: Path) -> None:
    layer = tar(D("."), D("./"), D("/"), end=False) + raw_member(b"caf\xe9", b"latin-1") + END
    unpack(tmp_path / "root", layer)
    assert os.listdir(os.fsencode(tmp_path / "root")) == [b"caf\xe9"]


def _tree(root: Path) -> dict[str, tuple[int, str]]:
    out = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        if stat.S_ISLNK(st.st_mode):
            content = "-> " + os.readlink(path)
        elif stat.S_ISREG(st.st_mode):
            content = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            content = "dir"
        out[str(path.relative_to(root))] = (st.st_mode, content)
    return out


@pytest.mark.parametrize("compression", ["gzip", "zstd", "none"])
def test_layers_built_by_imagesmith_round_trip(tmp_path: Path, compression: str) -> None:
    src = tmp_path / "src"
    (src / "opt/pkg/bin").mkdir(parents=True)
    (src / "opt/pkg/bin/run").write_bytes(b"#!/bin/sh\necho hi\n")
    (src / "opt/pkg/bin/run").chmod(0o755)
    (src / "opt/pkg/big").write_bytes(os.urandom(3 << 20))
    (src / "opt/pkg/link").symlink_to("bin/run")
    cache = BlobCache(tmp_path / "cache")
    blob = build_layer(directory_entries(src), cache, media_types=OCI, compression=compression)  # type: ignore[arg-type]
    stats = unpack_layer(cache.path(blob.digest), tmp_path / "root")
    assert _tree(tmp_path / "root") == _tree(src)
    assert stats.bytes == (3 << 20) + 18


# --- whiteouts ---------------------------------------------------------------------------------


def test_whiteouts_remove_lower_entries_never_outside(arena: Arena) -> None:
    lower = tar(
        D("a/"),
        F("a/file", b"f"),
        D("a/dir/"),
        D("a/dir/sub/"),
        F("a/dir/sub/x", b"x"),
        S("a/link", str(arena.sentinel)),  # whiting it out removes the link, not the sentinel
        S("a/up", "../../.."),
        S("out", "/" + arena.abs_top),
    )
    upper = tar(
        F("a/.wh.file"),
        F("a/.wh.dir"),
        F("a/.wh.link"),
        F("a/.wh.missing"),
        F("a/up/.wh.victim"),
        F("out/.wh.sentinel"),  # through symlinks: resolved inside the root
    )
    with arena.untouched():
        stats = unpack(arena.root, lower, upper)
    assert sorted(os.listdir(arena.root / "a")) == ["up"]
    assert stats.whiteouts == 6
    assert not list(arena.root.rglob(".wh.*"))  # whiteouts are never written


def test_opaque_directory_keeps_entries_of_its_own_layer(arena: Arena) -> None:
    lower = tar(D("d/"), F("d/old", b"o"), D("d/sub/"), F("d/sub/old2", b"o"), D("d/gone/"), F("other", b"x"))
    upper = tar(
        D("d/"),
        F("d/early", b"before the marker"),
        F("d/sub/new", b"n"),  # sub is kept (this layer wrote into it), its lower content is not
        F("d/.wh..wh..opq"),
        F("d/late", b"after the marker"),
    )
    with arena.untouched():
        unpack(arena.root, lower, upper)
    assert sorted(os.listdir(arena.root / "d")) == ["early", "late", "sub"]
    assert os.listdir(arena.root / "d/sub") == ["new"]
    assert (arena.root / "other").exists()


def test_whiteout_after_an_entry_of_the_same_layer_keeps_it(tmp_path: Path) -> None:
    root = tmp_path / "root"
    lower = tar(D("d/"), F("d/lower", b"l"))
    unpack(root, lower, tar(F("f", b"new"), F(".wh.f"), F("d/n", b"n"), F(".wh.d")))
    assert (root / "f").read_bytes() == b"new"
    assert os.listdir(root / "d") == ["n"]  # d rewritten by this layer: only lower content hidden


def test_opaque_through_a_symlink_stays_inside(arena: Arena) -> None:
    (arena.root / arena.abs_top).mkdir(parents=True)
    (arena.root / arena.abs_top / "victim").write_bytes(b"in root")
    with arena.untouched():
        unpack(arena.root, tar(S("s", "/" + arena.abs_top)), tar(F("s/.wh..wh..opq")))
    assert os.listdir(arena.root / arena.abs_top) == []


def test_whiteouts_refused_by_policy_and_malformed(tmp_path: Path) -> None:
    with pytest.raises(UnpackError, match=r"pkg\.tar.*'a/\.wh\.b'.*whiteout"):
        unpack_layer(
            io.BytesIO(tar(F("a/.wh.b"))),
            tmp_path / "r1",
            what="pkg.tar",
            policy=UnpackPolicy(allow_whiteouts=False),
        )
    with pytest.raises(UnpackError, match=r"'\.wh\.\.\.'"):
        unpack(tmp_path / "r2", tar(F(".wh...")))
    with pytest.raises(UnpackError, match="below a whiteout"):
        unpack(tmp_path / "r3", tar(F(".wh.a/b", b"x")))
    with pytest.raises(UnpackError, match="unknown whiteout marker"):
        unpack(tmp_path / "r3", tar(F("d/.wh..wh.other")))
    # Legacy aufs bookkeeping at the top of a layer is skipped, as Docker does.
    stats = unpack(tmp_path / "r4", tar(F(".wh..wh.aufs"), D(".wh..wh.plnk/"), F(".wh..wh.plnk/1.2", b"x")))
    assert stats.skipped == (".wh..wh.aufs", ".wh..wh.plnk/", ".wh..wh.plnk/1.2")
    assert os.listdir(tmp_path / "r4") == []


# --- attacks: names ----------------------------------------------------------------------------


def test_absolute_names_land_inside_the_root(arena: Arena) -> None:
    with arena.untouched():
        unpack(arena.root, tar(F("/abs/path", b"a"), F(f"/{arena.abs_top}/victim", b"owned")))
    assert (arena.root / "abs/path").read_bytes() == b"a"
    assert (arena.root / arena.abs_top / "victim").read_bytes() == b"owned"


@pytest.mark.parametrize("name", ["../victim", "a/../../victim", "./../victim", "a/b/../../../victim"])
def test_dotdot_climbing_above_the_root_is_refused(arena: Arena, name: str) -> None:
    layer = tar(F("first", b"1"), F(name, b"owned"))
    with arena.untouched(), pytest.raises(UnpackError) as info:
        unpack_layer(io.BytesIO(layer), arena.root, what="evil.tar")
    message = str(info.value)
    assert "evil.tar" in message and repr(name) in message and "do not use this image" in message


def test_dotdot_that_stays_inside_is_folded(tmp_path: Path) -> None:
    unpack(tmp_path / "root", tar(F("a/../b", b"x")))
    assert (tmp_path / "root/b").read_bytes() == b"x" and not (tmp_path / "root/a").exists()


def test_nul_and_empty_names_refused(arena: Arena) -> None:
    via_pax = raw_pax(pax_record("path", b"a\0b")) + raw_member(b"ab", b"x")
    long_name = b"a\0/../../victim\0"
    via_gnu = raw_header(b"././@LongLink", b"L", len(long_name)) + long_name + bytes(-len(long_name) % 512)
    via_gnu += raw_member(b"ignored", b"x")
    with arena.untouched():
        for layer in (via_pax + END, via_gnu + END):
            with pytest.raises(UnpackError, match="NUL byte"):
                unpack(arena.root, layer)
        with pytest.raises(UnpackError, match="empty name"):
            unpack(arena.root, raw_member(b"", b"x") + END)
        link = raw_pax(pax_record("linkpath", b"/tmp\0/x")) + raw_header(b"l", b"2", linkname=b"x")
        with pytest.raises(UnpackError, match="NUL byte"):
            unpack(arena.root, link + END)
        huge = bytearray(raw_header(b"d", b"3"))
        huge[329:337] = b"\x80" + (1 << 40).to_bytes(7, "big")  # base-256 device major
        huge[148:156] = b" " * 8
        huge[148:156] = b"%06o\0 " % sum(huge)
        if IS_ROOT:  # only root tries to create a device
            with pytest.raises(UnpackError, match="'d' could not be unpacked"):
                unpack(arena.root, bytes(huge) + END, policy=UnpackPolicy(allow_devices=True))
    assert os.listdir(arena.root) == []


# --- attacks: symlinks ---------------------------------------------------------------------------


@pytest.mark.parametrize("target", ["/", "../../../../../../../../..", "/../../.."])
def test_write_through_a_symlink_to_the_host_root_stays_inside(arena: Arena, target: str) -> None:
    probe = f"imagesmith-unpack-test-{uuid.uuid4().hex}"
    layer = tar(S("evil", target), F(f"evil/{arena.abs_top}/victim", b"owned"), F(f"evil/{probe}", b"p"))
    try:
        with arena.untouched():
            unpack(arena.root, layer)
    finally:
        leaked = Path("/", probe)
        if leaked.is_file():
            leaked.unlink()
            pytest.fail(f"the unpack wrote {leaked} on the host")
    assert (arena.root / arena.abs_top / "victim").read_bytes() == b"owned"
    assert (arena.root / probe).exists()


def test_evil_etc_passwd_lands_in_root_etc(arena: Arena) -> None:
    """The classic "evil -> /" then "evil/etc/passwd", split across two layers.

    As root the unpack runs in a child chrooted into the arena, so that a regression overwrites
    the arena's ``etc/passwd``, never the machine's; without root the host file is not writable.
    """
    fake = arena.top / "etc/passwd"
    fake.parent.mkdir()
    fake.write_bytes(b"precious\n")
    layers = [tar(S("evil", "/")), tar(F("evil/etc/passwd", b"root::0:0::/:/bin/sh\n"))]
    with arena.untouched():
        if IS_ROOT:
            pid = os.fork()
            if pid == 0:  # pragma: no cover - the child reports through its exit status
                code = 1
                try:
                    os.chroot(arena.top)
                    os.chdir("/")
                    unpack(Path("/root"), *layers)
                    code = 0
                finally:
                    os._exit(code)
            assert os.waitpid(pid, 0)[1] == 0
        else:
            unpack(arena.root, *layers)
    assert (arena.root / "etc/passwd").read_bytes().startswith(b"root::0:0")
    assert fake.read_bytes() == b"precious\n"


def test_chained_dotdot_symlinks_stay_inside(arena: Arena) -> None:
    layer = tar(
        S("a", ".."),
        S("a/b", ".."),  # created at root/b: "a" resolves to the root
        S("a/b/c", "../../a/b"),
        F("a/b/victim", b"owned"),
        F("a/b/c/a/b/sentinel/new", b"owned"),
    )
    with arena.untouched():
        unpack(arena.root, layer)
    assert (arena.root / "victim").read_bytes() == b"owned"
    assert (arena.root / "sentinel/new").read_bytes() == b"owned"


def test_symlink_trick_split_across_two_layers(arena: Arena) -> None:
    with arena.untouched():
        unpack(
            arena.root,
            tar(S("evil", "../"), S("abs", "/" + arena.abs_top)),
            tar(F("evil/victim", b"owned"), F("abs/sentinel/keep", b"owned"), D("abs/sentinel/sub/")),
        )
    assert (arena.root / "victim").read_bytes() == b"owned"
    assert (arena.root / arena.abs_top / "sentinel/keep").read_bytes() == b"owned"


def test_directory_replaced_by_a_symlink_then_written_through(arena: Arena) -> None:
    layer = tar(
        D("a/"),
        F("a/x", b"x"),
        S("a", "/" + arena.abs_top),
        F("a/victim", b"owned"),
        S("b", "../.."),
        F("b/sentinel/keep", b"owned"),
    )
    with arena.untouched():
        unpack(arena.root, layer)
    assert (arena.root / arena.abs_top / "victim").read_bytes() == b"owned"
    assert (arena.root / "sentinel/keep").read_bytes() == b"owned"


def test_symlink_loops_and_files_as_parents_refused(tmp_path: Path) -> None:
    with pytest.raises(UnpackError, match=r"'a/x'.*more than 255 symlinks"):
        unpack(tmp_path / "r1", tar(S("a", "b"), S("b", "a"), F("a/x", b"x")))
    with pytest.raises(UnpackError, match=r"'f/x'.*lies below 'f', which is a regular file"):
        unpack(tmp_path / "r2", tar(F("f", b"1"), F("f/x", b"x")))


def test_final_component_swapped_for_a_symlink_meanwhile_is_refused(
    arena: Arena, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Simulates a concurrent writer: right after the old entry is cleared away, a symlink to the
    # victim appears at the member's name. The file is created with O_EXCL|O_NOFOLLOW: refused.
    original = unpack_module._Unpacker._replace

    def racing(
        self: unpack_module._Unpacker, parent: unpack_module._Dir, base: str, *, keep_dir: bool
    ) -> os.stat_result | None:
        kept = original(self, parent, base, keep_dir=keep_dir)
        os.symlink(arena.victim, base, dir_fd=parent.fd)
        return kept

    monkeypatch.setattr(unpack_module._Unpacker, "_replace", racing)
    with arena.untouched(), pytest.raises(UnpackError, match=r"member 'f'.*File exists"):
        unpack(arena.root, tar(F("f", b"owned")))


def test_parent_swapped_for_a_symlink_meanwhile_is_not_followed(
    arena: Arena, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Simulates a concurrent writer that swaps the resolved parent directory for a symlink to
    # the host: the write goes through the directory descriptor already held, inside the root.
    original = unpack_module._Unpacker._parent

    def racing(self: unpack_module._Unpacker, parts: list[str], *, create: bool) -> unpack_module._Dir | None:
        found = original(self, parts, create=create)
        if parts == ["d", "victim"] and not (arena.root / "d.moved").exists():
            (arena.root / "d").rename(arena.root / "d.moved")
            (arena.root / "d").symlink_to(arena.top)
        return found

    monkeypatch.setattr(unpack_module._Unpacker, "_parent", racing)
    with arena.untouched():
        unpack(arena.root, tar(D("d/"), F("d/victim", b"owned")))
    assert (arena.root / "d.moved/victim").read_bytes() == b"owned"


# --- attacks: hardlinks ---------------------------------------------------------------------------


def test_hardlinks_across_layers(tmp_path: Path) -> None:
    root = tmp_path / "root"
    unpack(root, tar(F("usr/bin/a", b"data", mode=0o755), S("bin", "usr/bin")), tar(H("b", "/bin/a")))
    assert (root / "b").stat().st_ino == (root / "usr/bin/a").stat().st_ino


@pytest.mark.parametrize(
    ("setup", "target", "error"),
    [
        ((), "../../victim", "climbs above the root"),
        ((), "{abs}/victim", "does not exist in the root"),
        ((), "later", "does not exist in the root"),
        (("link-dir",), "s/victim", "does not exist in the root"),
        (("link-file",), "s", "which is a symlink"),
        (("dir",), "d", "which is a directory"),
    ],
)
def test_hardlink_targets_must_be_regular_files_inside(
    arena: Arena, setup: tuple[str, ...], target: str, error: str
) -> None:
    members = []
    if "link-dir" in setup:
        members.append(S("s", "/" + arena.abs_top))
    if "link-file" in setup:
        members.append(S("s", str(arena.victim)))
    if "dir" in setup:
        members.append(D("d/"))
    members += [H("h", target.format(abs="/" + arena.abs_top)), F("later", b"x")]
    with arena.untouched(), pytest.raises(UnpackError, match=error) as info:
        unpack_layer(io.BytesIO(tar(*members)), arena.root, what="links.tar")
    assert "links.tar: member 'h'" in str(info.value)
    assert not (arena.root / "h").exists()
    assert arena.victim.stat().st_nlink == 1


# --- limits and corrupt streams -------------------------------------------------------------------


def test_member_limit(tmp_path: Path) -> None:
    layer = tar(*(F(f"f{i}") for i in range(20)))
    with pytest.raises(UnpackError, match=r"more than 10 members.*max_members"):
        unpack(tmp_path / "root", layer, policy=UnpackPolicy(max_members=10))


def test_byte_limit_stops_before_writing_the_member(tmp_path: Path) -> None:
    layer = gzip.compress(tar(F("small", b"s"), F("bomb", bytes(2 << 20))))
    with pytest.raises(UnpackError, match=r"'bomb'.*larger than 1048576 bytes.*max_bytes"):
        unpack(tmp_path / "root", layer, policy=UnpackPolicy(max_bytes=1 << 20))
    assert os.listdir(tmp_path / "root") == ["small"]


def test_huge_pax_header_refused(tmp_path: Path) -> None:
    layer = tar(F("x", b"", pax={"comment": "y" * (2 << 20)}))
    with pytest.raises(UnpackError, match="extended headers of more than 1048576 bytes"):
        unpack(tmp_path / "root", layer)
    many = b"".join(raw_pax(pax_record(f"k{i}", b"v" * 490)) for i in range(3))
    with pytest.raises(UnpackError, match="extended headers of more than 1024 bytes"):
        unpack(tmp_path / "root", many + raw_member(b"x") + END, policy=UnpackPolicy(max_header_bytes=1024))


def test_truncated_streams(tmp_path: Path) -> None:
    layer = tar(F("a", b"1"), F("big", os.urandom(100_000)))
    cases = {
        "plain-mid-data": layer[:5000],
        "plain-no-end-marker": tar(F("a", b"1"), end=False),
        "plain-mid-header": layer[:1124],
        "gzip": gzip.compress(layer)[:-5000],
        "zstd": zstandard.ZstdCompressor().compress(layer)[:-5000],
    }
    for label, data in cases.items():
        with pytest.raises(UnpackError, match=r"truncated.*fetch it again") as info:
            unpack_layer(io.BytesIO(data), tmp_path / label, what=f"{label}.tar")
        assert f"{label}.tar" in str(info.value)
        assert not (tmp_path / label / "big").exists()  # no half-written file is left


def test_header_only_types_carry_no_data_but_dumpdirs_do(tmp_path: Path) -> None:
    # A symlink header claiming 512 bytes of data: like Go and tarfile, the size is ignored, so
    # the next header is read right after it. A GNU dumpdir's listing is data and is skipped.
    symlink = raw_header(b"l", b"2", 512, linkname=b"t")
    dumpdir = raw_header(b"d/", b"D", 5) + b"Yx\0\0\0" + bytes(507)
    layer = symlink + dumpdir + raw_member(b"f", b"data") + END
    stats = unpack(tmp_path / "root", layer)
    assert (stats.symlinks, stats.dirs, stats.files) == (1, 1, 1)
    assert (tmp_path / "root/f").read_bytes() == b"data"


def test_not_a_tar(tmp_path: Path) -> None:
    with pytest.raises(UnpackError, match="bad header checksum"):
        unpack(tmp_path / "root", b"hello, this is not a tar archive" * 40)


def test_trailing_garbage_after_the_end_is_ignored(tmp_path: Path) -> None:
    layer = tar(F("a", b"1")) + b"garbage" * 1000
    unpack(tmp_path / "plain", layer)
    unpack(tmp_path / "gzip", gzip.compress(layer))
    assert (tmp_path / "plain/a").exists() and (tmp_path / "gzip/a").exists()
    assert unpack(tmp_path / "empty", b"").files == 0  # an empty stream is an empty layer


def test_policy_validation() -> None:
    with pytest.raises(UsageError):
        UnpackPolicy(max_bytes=-1)


@pytest.mark.slow
def test_memory_stays_bounded_for_a_huge_member(tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import io, resource, sys, tarfile
        from pathlib import Path
        from imagesmith.tar.unpack import unpack_layer

        SIZE = 200 << 20

        class Generated(io.RawIOBase):
            # A tar of one member of `size` zero bytes, produced on the fly: header, data,
            # padding and end blocks (all zeros after the header).
            def __init__(self, size):
                info = tarfile.TarInfo("big.bin")
                info.size = size
                self.head = info.tobuf(format=tarfile.PAX_FORMAT)
                self.zeros = size + (-size % 512) + 1024

            def readable(self):
                return True

            def readinto(self, b):
                if self.head:
                    k = min(len(b), len(self.head))
                    b[:k] = self.head[:k]
                    self.head = self.head[k:]
                    return k
                k = min(len(b), self.zeros)
                b[:k] = bytes(k)
                self.zeros -= k
                return k

        def rss():
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

        unpack_layer(io.BufferedReader(Generated(1000)), Path(sys.argv[1]) / "warm")
        base = rss()
        stats = unpack_layer(io.BufferedReader(Generated(SIZE)), Path(sys.argv[1]) / "root")
        assert stats.bytes == SIZE, stats
        assert (Path(sys.argv[1]) / "root/big.bin").stat().st_size == SIZE
        print(rss() - base)
        """
    )
    proc = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    growth = int(proc.stdout.strip())
    assert growth < 100 << 20, f"peak RSS grew by {growth >> 20} MiB while unpacking 200 MB"


@pytest.mark.slow
def test_memory_stays_bounded_for_members_at_the_deepest_path(tmp_path: Path) -> None:
    """Issue 14, item 1: twenty members each 2,046 components deep. The whiteout bookkeeping kept
    every ancestor of every written path as a full string (the square of the depth: ~4 MB a
    member, gigabytes for one 40,000-component name); as a tree of components it is linear."""
    script = textwrap.dedent(
        """
        import io, resource, sys, tarfile
        from pathlib import Path
        from imagesmith.tar.unpack import unpack_layer

        def layer(count):
            buf = io.BytesIO()
            with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
                for i in range(count):
                    info = tarfile.TarInfo(f"{i}/" + "/".join(["a"] * 2045) + "/f")
                    info.size = 1
                    tar.addfile(info, io.BytesIO(b"x"))
            return buf.getvalue()

        def rss():
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

        deep = layer(20)
        unpack_layer(io.BytesIO(layer(1)), Path(sys.argv[1]) / "warm")
        base = rss()
        stats = unpack_layer(io.BytesIO(deep), Path(sys.argv[1]) / "root")
        assert stats.files == 20, stats
        print(rss() - base)
        """
    )
    try:
        proc = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True)
    finally:
        # shutil.rmtree recurses once per level and fails at this depth (so would pytest's
        # own clean-up of old temp dirs): remove the trees with rm, which does not.
        subprocess.run(["rm", "-rf", str(tmp_path / "warm"), str(tmp_path / "root")], check=True)
    assert proc.returncode == 0, proc.stderr
    growth = int(proc.stdout.strip())
    assert growth < 25 << 20, f"peak RSS grew by {growth >> 20} MiB for 20 deep members"
