"""Package content as deterministic tar entries: from a directory (:func:`directory_entries`)
or a tarball (:func:`tarball_entries`), as a stream of :class:`~imagesmith.tar.writer.TarEntry`
that :func:`imagesmith.tar.layer.build_layer` writes.

Determinism (the same content always gives the same diff_id and digest):

- entries are sorted by the bytes of their archive path (directories compared as ``name/``),
  every parent directory is present, and the parents of the install prefix come first;
- every entry gets the same mtime: ``$SOURCE_DATE_EPOCH`` when set, else 0;
- uid and gid are 0 and user and group names empty; no atime, ctime or other PAX extras;
- hardlinks are kept: the first path of a hardlinked set in sorted order carries the data,
  the others link to it.

Mode and special-file policy. ``preserve=False`` (packages, the default): directories 0755,
regular files 0755 when any execute bit is set and 0644 otherwise, symlinks 0777;
setuid, setgid and sticky bits are dropped, owners become 0:0; device nodes and FIFOs raise
:class:`LayerError` naming the path; sockets are skipped (tar cannot represent them and a
socket left in a prefix is a stale runtime artefact). ``preserve=True`` (importing a root
filesystem as a base image): permission bits including setuid, setgid and sticky are kept,
numeric owners come from the filesystem or the tarball, device nodes and FIFOs are kept,
sockets are still skipped; the mtime is still the fixed one.

Tarball members are checked before anything is written: absolute names, ``..`` components,
NUL bytes, whiteouts (any ``.wh.`` component, unless ``allow_whiteouts``), hardlinks to a member
not seen before, a member below a symlink or file, and member types tar cannot express portably
raise :class:`LayerError` naming the member. Tarballs are read by :mod:`imagesmith.tar.format`,
the reader the unpacker uses too. In a directory, a file or directory named ``.wh.*`` raises
:class:`LayerError` naming it: a layer reader would take it for a whiteout and delete files of
the layers below.

Size: one job, content as checked entries; the tarball side is the member index with every
refusal a tarball can earn, which only reads well whole.
"""

from __future__ import annotations

import codecs
import errno
import operator
import os
import stat
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, NoReturn

from imagesmith.errors import LayerError, UsageError
from imagesmith.store.cache import BlobCache
from imagesmith.tar.compression import open_decompressor
from imagesmith.tar.format import (
    MAX_HEADER_BYTES,
    MAX_MEMBERS,
    EntryKind,
    TarMember,
    kind_of_mode,
    read_members,
)
from imagesmith.tar.writer import TarEntry

if TYPE_CHECKING:
    pass

__all__ = [
    "MAX_TARBALL_BYTES",
    "TarballEntries",
    "archive_sort_key",
    "directory_entries",
    "input_error",
    "normalise_prefix",
    "source_date_epoch",
    "tarball_entries",
]


MAX_TARBALL_BYTES = 64 << 30


_CHUNK = 1 << 20


_DIR_MODE = 0o755


_WHITEOUT = ".wh."


_OPAQUE = ".wh..wh..opq"


def source_date_epoch() -> int:
    """The layer mtime: ``int($SOURCE_DATE_EPOCH)`` when set and non-empty, else 0.

    A value that is not a non-negative integer raises :class:`UsageError`, since silently
    ignoring it would break the reproducibility the variable asks for.
    """
    text = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
    if not text:
        return 0
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise UsageError(
            f"SOURCE_DATE_EPOCH={text!r} is not a number of seconds since 1970: unset it or fix it"
        )
    return value


def normalise_prefix(prefix: str) -> str:
    """Turn an install prefix such as ``/opt/pkg/`` into an archive path (``opt/pkg``).

    Leading and trailing slashes, empty and ``.`` components are dropped; ``..`` or a NUL
    byte raises :class:`LayerError`. The empty string stands for the root.
    """
    if "\0" in prefix:
        raise LayerError(f"prefix {prefix!r} contains a NUL byte")
    parts = [p for p in prefix.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise LayerError(f"prefix {prefix!r} must not contain '..'")
    if any(p.startswith(_WHITEOUT) for p in parts):
        raise LayerError(f"prefix {prefix!r} has a component named like a whiteout ({_WHITEOUT}*)")
    return "/".join(parts)


def _sort_key(name: str, kind: EntryKind) -> bytes:
    # Comparing directories as "name/" makes a per-directory sort equal the global byte
    # order of archive paths: everything under "a/" sorts together, right after "a/".
    raw = name.encode("utf-8")
    return raw + b"/" if kind == "dir" else raw


def archive_sort_key(entry: TarEntry) -> bytes:
    """The key layers sort their entries by: the bytes of the archive path, a directory's
    with ``/`` appended (so everything under ``a/`` follows ``a/`` directly)."""
    return _sort_key(entry.name, entry.kind)


def _package_mode(kind: EntryKind, mode: int) -> int:
    if kind == "dir":
        return _DIR_MODE
    if kind == "symlink":
        return 0o777
    return 0o755 if mode & 0o111 else 0o644


def _parents(prefix: str, include_self: bool) -> Iterator[TarEntry]:
    parts = prefix.split("/") if prefix else []
    upto = len(parts) if include_self else len(parts) - 1
    for i in range(1, upto + 1):
        yield TarEntry("/".join(parts[:i]), "dir", _DIR_MODE)


# Whether names from os.scandir are UTF-8 decoded (with surrogate escapes for invalid bytes):
# then a name is valid UTF-8 exactly when it encodes strictly, without a round trip to bytes.
_FS_ENCODING_IS_UTF8 = codecs.lookup(sys.getfilesystemencoding()).name == "utf-8"


_Child = tuple[bytes, str, str, os.stat_result | None]


_first = operator.itemgetter(0)


# Paths in messages are cut in the middle past this length: a path over PATH_MAX is the error.
_SHOWN_PATH = 400


def input_error(path: str | os.PathLike[str], exc: OSError, *, walking: bool = True) -> LayerError:
    """The :class:`LayerError` for package content that cannot be read: one line naming the
    path at fault (``exc.filename`` when the system names one) and what to do about it.

    ``walking`` says that the path was listed a moment before, so a missing one disappeared
    while the input was read (content still being written, or a cleanup running meanwhile).
    """
    raw = exc.filename if isinstance(exc.filename, str) else os.fspath(path)
    shown = raw if len(raw) <= _SHOWN_PATH else f"{raw[:150]}...{raw[-200:]} ({len(raw)} characters)"
    if exc.errno == errno.ENOENT and walking:
        return LayerError(
            f"{shown} disappeared while the layer was built: is something still changing the "
            "package? build again once it is complete"
        )
    if exc.errno == errno.ENAMETOOLONG:
        return LayerError(
            f"cannot read {shown}: its path is longer than the system allows; shorten the "
            "directory names or move the content closer to /"
        )
    if exc.errno in (errno.EACCES, errno.EPERM):
        return LayerError(
            f"cannot read {shown}: Permission denied; make the package readable (and its "
            "directories searchable) by the user running imagesmith"
        )
    return LayerError(f"cannot read {shown}: {exc.strerror or exc}")


def _utf8_member(text: str, what: str, member: str) -> None:
    """Refuse a tarball member's name or link target whose stored bytes are not UTF-8."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # tarformat keeps undecodable bytes as lone surrogates
        raise LayerError(
            f"{what}: member {member!r} has a name or link target that is not valid UTF-8: layer "
            "names must be UTF-8 (re-create the tarball with UTF-8 names)"
        ) from None


def _utf8_name(raw: bytes, path: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise LayerError(f"{path!r}: file names must be valid UTF-8 to go into a layer") from None


def _refuse_whiteout_name(path: str, name: str) -> NoReturn:
    """Refuse a file whose name a layer reader takes for a whiteout (OCI image-spec)."""
    meaning = (
        "everything the layers below put in its directory"
        if name == _OPAQUE
        else f"{name[len(_WHITEOUT) :]!r} from the layers below"
    )
    raise LayerError(
        f"{path!r} is named like a whiteout ({_WHITEOUT}*): in a layer it would not be a file but "
        f"would delete {meaning}; rename or remove it"
    )


def _sorted_children(directory: str, archive_dir: str, stat_dirs: bool) -> list[_Child]:
    """The entries of ``directory`` as ``(sort key, archive name, path, lstat or None)``, sorted.

    Names are checked to be UTF-8 here, once per entry. Unless ``stat_dirs``, a subdirectory
    is recognised from the type its directory entry carries (no ``lstat``; a filesystem that
    does not report types costs one inside :meth:`os.DirEntry.is_dir`) and comes with ``None``
    instead of a stat result: packages give every directory mode 0755 and owner 0, so its
    stat would only say that it is a directory, one system call per directory for nothing.
    """
    children: list[_Child] = []
    base = archive_dir + "/" if archive_dir else ""
    try:
        with os.scandir(directory) as it:
            for dirent in it:
                name = dirent.name
                if not _FS_ENCODING_IS_UTF8:
                    name = _utf8_name(os.fsencode(name), dirent.path)
                if name.startswith(_WHITEOUT):
                    _refuse_whiteout_name(dirent.path, name)
                archive_name = base + name
                try:
                    # With a UTF-8 file system encoding, the bytes of a name that is not UTF-8
                    # come back as lone surrogates, which refuse to encode.
                    key = archive_name.encode("utf-8")
                except UnicodeEncodeError:
                    raise LayerError(
                        f"{dirent.path!r}: file names must be valid UTF-8 to go into a layer"
                    ) from None
                if not stat_dirs and dirent.is_dir(follow_symlinks=False):
                    children.append((key + b"/", archive_name, dirent.path, None))
                    continue
                st = dirent.stat(follow_symlinks=False)
                if stat.S_ISDIR(st.st_mode):
                    key += b"/"
                children.append((key, archive_name, dirent.path, st))
    except OSError as exc:
        raise input_error(directory, exc) from None
    children.sort(key=_first)
    return children


def directory_entries(root: Path, prefix: str = "", *, preserve: bool = False) -> Iterator[TarEntry]:
    """Yield the entries of a layer holding the contents of ``root`` at ``prefix``.

    The parents of ``prefix`` come first (``opt``, ``opt/pkg``, each once; ``prefix`` itself
    carries ``root``'s own attributes), then everything below ``root`` in the byte order of the
    archive path, walked lazily without following symlinks. Files that share an inode are
    kept as hardlinks: the first in sorted order is the file, later ones link to it. Modes,
    owners and special files follow the module's policy for ``preserve``. File data is read
    only when the entry is written, and its size is checked then.
    """
    prefix = normalise_prefix(prefix)
    try:
        root_st = Path(root).stat()
    except OSError as exc:
        raise input_error(root, exc, walking=False) from None
    if not stat.S_ISDIR(root_st.st_mode):
        raise LayerError(f"{root} is not a directory")
    yield from _parents(prefix, include_self=False)
    if prefix:
        yield _dir_entry(prefix, root_st, preserve)
    seen_inodes: dict[tuple[int, int], str] = {}
    stack = [iter(_sorted_children(os.fspath(root), prefix, preserve))]
    while stack:
        # Resumes the innermost directory's iterator; "break" descends into a subdirectory,
        # and the loop running out pops back to the parent.
        for _, archive_name, path, st in stack[-1]:
            if st is None:
                yield TarEntry(archive_name, "dir", _DIR_MODE)
                stack.append(iter(_sorted_children(path, archive_name, preserve)))
                break
            mode = st.st_mode
            if not preserve and st.st_nlink == 1 and stat.S_ISREG(mode):
                # The common case, inline: a package file that is not hardlinked.
                yield TarEntry(archive_name, "file", _package_mode("file", mode), st.st_size, source=path)
                continue
            entry = _fs_entry(archive_name, path, st, preserve, seen_inodes)
            if entry is None:
                continue
            yield entry
            if entry.kind == "dir":
                stack.append(iter(_sorted_children(path, archive_name, preserve)))
                break
        else:
            stack.pop()


def _dir_entry(name: str, st: os.stat_result, preserve: bool) -> TarEntry:
    if preserve:
        return TarEntry(name, "dir", stat.S_IMODE(st.st_mode), uid=st.st_uid, gid=st.st_gid)
    return TarEntry(name, "dir", _DIR_MODE)


def _fs_entry(
    name: str, path: str, st: os.stat_result, preserve: bool, seen_inodes: dict[tuple[int, int], str]
) -> TarEntry | None:
    kind = kind_of_mode(st.st_mode)  # None: sockets, skipped by policy
    if kind is None:
        return None
    if kind == "dir":
        return _dir_entry(name, st, preserve)
    if kind in ("chardev", "blockdev", "fifo") and not preserve:
        raise LayerError(
            f"{path} is a {'FIFO' if kind == 'fifo' else 'device node'}: packages may not contain "
            "special files; remove it from the prefix"
        )
    mode = stat.S_IMODE(st.st_mode) if preserve else _package_mode(kind, st.st_mode)
    uid, gid = (st.st_uid, st.st_gid) if preserve else (0, 0)
    if st.st_nlink > 1:
        inode = (st.st_dev, st.st_ino)
        first = seen_inodes.get(inode)
        if first is not None:
            return TarEntry(name, "hardlink", mode, linkname=first, uid=uid, gid=gid)
        seen_inodes[inode] = name
    if kind == "symlink":
        try:
            target = os.fspath(Path(path).readlink())
        except OSError as exc:
            raise input_error(path, exc) from None
        _utf8_name(os.fsencode(target), path)
        return TarEntry(name, "symlink", mode, linkname=target, uid=uid, gid=gid)
    if kind == "file":
        return TarEntry(name, "file", mode, size=st.st_size, uid=uid, gid=gid, source=path)
    return TarEntry(
        name,
        kind,
        mode,
        uid=uid,
        gid=gid,
        devmajor=os.major(st.st_rdev),
        devminor=os.minor(st.st_rdev),
    )


def _clean_member_name(raw: str, what: str) -> str:
    if not raw.isascii():
        _utf8_member(raw, what, raw)
    if raw.startswith("/"):
        raise LayerError(
            f"{what}: member {raw!r} has an absolute name; create the tarball with relative paths"
        )
    parts = [p for p in raw.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise LayerError(f"{what}: member {raw!r} contains '..' and could escape the image root")
    return "/".join(parts)


@dataclass(slots=True)
class _Item:
    """One surviving tarball member; ``target`` is the member a hardlink resolves to."""

    member: TarMember
    target: TarMember | None


@dataclass(slots=True)
class _Node:
    """One path of the layer, below its parent's node: the member there (None for a
    directory only implied by the paths below it) and its children by name.

    A tree, not one string per path: the implied parents of a deep member cost one node per
    component instead of a full path each (the square of the depth in bytes).
    """

    item: _Item | None = None
    children: dict[str, _Node] | None = None

    def is_dir(self) -> bool:
        return self.item is None or self.item.member.kind == "dir"


class TarballEntries:
    """The sorted, checked entries of a tarball; made by :func:`tarball_entries`.

    Use it as a context manager (the tarball is indexed once on entry and its temporary
    decompressed copy removed on exit) or iterate it directly (indexing and cleanup then happen
    around each iteration). ``root_relative`` says, once indexed, whether the members were
    already paths relative to ``/`` under the prefix.
    """

    def __init__(
        self,
        path: Path,
        prefix: str,
        *,
        allow_whiteouts: bool,
        preserve: bool,
        tmpdir: Path | None,
        max_members: int,
        max_bytes: int,
        max_header_bytes: int,
    ) -> None:
        self.path = Path(path)
        self.prefix = normalise_prefix(prefix)
        self.allow_whiteouts = allow_whiteouts
        self.preserve = preserve
        self.tmpdir = tmpdir
        self.max_members = max_members
        self.max_bytes = max_bytes
        self.max_header_bytes = max_header_bytes
        self.root_relative: bool | None = None
        self._file: IO[bytes] | None = None
        self._root = _Node()
        self._nodes = 0
        self._linked: set[int] = set()  # ids of the members hardlinks point to

    def __enter__(self) -> TarballEntries:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __iter__(self) -> Iterator[TarEntry]:
        opened_here = self._file is None
        if opened_here:
            self.open()
        try:
            yield from self._entries()
        finally:
            if opened_here:
                self.close()

    def close(self) -> None:
        """Close the tarball and drop its temporary decompressed copy and index."""
        if self._file is not None:
            self._file.close()
            self._file = None
        self._root = _Node()
        self._nodes = 0
        self._linked = set()

    def open(self) -> None:
        """Decompress (when needed) and index the tarball; idempotent while open."""
        if self._file is not None:
            return
        self._file = self._uncompressed()
        try:
            self._index(self._file)
        except BaseException:
            self.close()
            raise

    def _uncompressed(self) -> IO[bytes]:
        what = str(self.path)
        with open_decompressor(self.path) as source:
            if source.compression == "none":
                try:
                    return open(self.path, "rb")
                except OSError as exc:
                    raise LayerError(f"cannot open {what}: {exc.strerror or exc}") from None
            try:
                # An unlinked temp file: gone even if this process is killed.
                tmp = tempfile.TemporaryFile(dir=self._temp_dir())  # noqa: SIM115
            except OSError as exc:
                raise LayerError(f"cannot create a temp file for {what}: {exc.strerror or exc}") from None
            try:
                written = 0
                while chunk := source.read(_CHUNK):
                    written += len(chunk)
                    if written > self.max_bytes:
                        raise LayerError(
                            f"{what} decompresses to more than {self.max_bytes} bytes: refusing it "
                            "(a decompression bomb, or raise the limit for a genuinely huge package)"
                        )
                    tmp.write(chunk)
                tmp.flush()
            except OSError as exc:
                tmp.close()
                raise LayerError(f"cannot decompress {what}: {exc.strerror or exc}") from None
            except BaseException:
                tmp.close()
                raise
            return tmp

    def _temp_dir(self) -> Path | None:
        # Default to the blob cache's disk: /tmp is often a RAM-backed tmpfs, and a
        # decompressed package can be many GiB.
        chosen = self.tmpdir if self.tmpdir is not None else BlobCache().tmp_dir
        try:
            chosen.mkdir(parents=True, exist_ok=True)
        except OSError:
            return None if self.tmpdir is None else chosen
        return chosen

    def _child(self, node: _Node, name: str, what: str) -> _Node:
        """The child ``name`` of ``node``, created (and counted) if it is new."""
        if node.children is None:
            node.children = {}
        child = node.children.get(name)
        if child is None:
            self._nodes += 1
            if self._nodes > self.max_members:
                # Implied parents are entries of the layer too: one deep member must not make
                # thousands of entries beyond the limit.
                raise LayerError(
                    f"{what}: the layer would have more than {self.max_members} entries with "
                    "the parent directories its members imply; raise max_members if the "
                    "tarball is trusted"
                )
            child = node.children[name] = _Node()
        return child

    def _index(self, f: IO[bytes]) -> None:
        what = str(self.path)
        root = _Node()
        files = 0
        for member in read_members(
            f, what, max_members=self.max_members, max_header_bytes=self.max_header_bytes
        ):
            name = _clean_member_name(member.name, what)
            if not name:
                continue  # "./" itself: the root, or the prefix, which is emitted anyway
            files += 1
            self._check_member(name, member, what)
            if not member.linkname.isascii():
                _utf8_member(member.linkname, what, member.name)
            target = None
            if member.kind == "hardlink":
                target = self._link_target(member, root, what)
                self._linked.add(id(target))
            node = root
            for part in name.split("/"):
                node = self._child(node, part, what)
            node.item = _Item(member, target)  # of duplicate names the last wins
        if not files:
            raise self._empty(what)
        prefix_parts = self.prefix.split("/") if self.prefix else []
        self.root_relative = _is_root_relative(root, prefix_parts)
        if not self.root_relative:
            # Re-rooted: the whole tree goes below the prefix.
            rerooted = _Node()
            node = rerooted
            for part in prefix_parts:
                node = self._child(node, part, what)
            node.children = root.children
            root = rerooted
        else:
            node = root
            for part in prefix_parts:  # the prefix and its parents are always there
                node = self._child(node, part, what)
        _check_parents(root, what)
        self._root = root

    def _empty(self, what: str) -> LayerError:
        """A tarball without a single file: a 0-byte file, an empty gzip stream, or a tar
        archive of nothing but its end marker (or of ``./`` alone) -- most often one whose
        writing failed or was cut short, which must not become an empty layer unnoticed."""
        try:
            size = self.path.stat().st_size
        except OSError:
            size = -1
        if size == 0:
            return LayerError(
                f"{what} is empty (0 bytes), not a tar archive: was it cut short or never "
                "written? Give the tarball with the files"
            )
        return LayerError(
            f"{what} is a tar archive holding no files: was it made from an empty "
            "directory, or cut short? Give the tarball with the files"
        )

    def _check_member(self, name: str, member: TarMember, what: str) -> None:
        # Any component: "a/.wh.b/c" would make the implied directory "a/.wh.b" a whiteout.
        if not self.allow_whiteouts and "/" + _WHITEOUT in "/" + name:
            raise LayerError(
                f"{what}: member {member.name!r} is a whiteout: package tarballs may not delete "
                "files of lower layers"
            )
        if member.kind in ("chardev", "blockdev", "fifo") and not self.preserve:
            raise LayerError(
                f"{what}: member {member.name!r} is a {'FIFO' if member.kind == 'fifo' else 'device node'}: "
                "packages may not contain special files"
            )

    @staticmethod
    def _link_target(member: TarMember, root: _Node, what: str) -> TarMember:
        if member.linkname.startswith("/") or ".." in member.linkname.split("/"):
            raise LayerError(
                f"{what}: hardlink {member.name!r} points outside the archive ({member.linkname!r})"
            )
        node: _Node | None = root
        for part in _clean_member_name(member.linkname, what).split("/"):
            node = node.children.get(part) if node is not None and node.children else None
        item = node.item if node is not None else None
        if item is None:
            raise LayerError(
                f"{what}: hardlink {member.name!r} points to {member.linkname!r}, which is not an "
                "earlier member of the tarball"
            )
        if item.target is not None:
            return item.target
        if item.member.kind == "dir":
            raise LayerError(f"{what}: hardlink {member.name!r} points to a directory")
        return item.member

    def _entries(self) -> Iterator[TarEntry]:
        # Depth first, each directory's children sorted by the bytes of their archive names
        # (directories compared as "name/"), which is the byte order of the full archive paths.
        f = self._file
        assert f is not None
        # A hardlinked set is written as the data under its first name in sorted order and
        # hardlinks to that name for the rest, so the target always precedes its links.
        first_of: dict[int, str] = {}
        stack = [("", iter(_sorted_nodes(self._root)))]
        while stack:
            base, children = stack[-1]
            for part, node in children:
                name = base + part
                yield self._entry(name, node, first_of, f)
                if node.children:
                    stack.append((name + "/", iter(_sorted_nodes(node))))
                    break
            else:
                stack.pop()

    def _entry(self, name: str, node: _Node, first_of: dict[int, str], f: IO[bytes]) -> TarEntry:
        item = node.item
        if item is None:
            return TarEntry(name, "dir", _DIR_MODE)
        m = item.target if item.target is not None else item.member
        kind = m.kind
        first = first_of.setdefault(id(m), name) if id(m) in self._linked else name
        if self.preserve:
            mode, uid, gid, uname, gname = m.mode, m.uid, m.gid, m.uname, m.gname
        else:
            mode, uid, gid, uname, gname = _package_mode(kind, m.mode), 0, 0, "", ""
        if first != name:
            kind, linkname, size, source = "hardlink", first, 0, None
        else:
            linkname = m.linkname if kind == "symlink" else ""
            size = m.size if kind == "file" else 0
            source = (f, m.offset) if kind == "file" else None
        device = kind in ("chardev", "blockdev")
        return TarEntry(
            name,
            kind,
            mode,
            size=size,
            linkname=linkname,
            uid=uid,
            gid=gid,
            uname=uname,
            gname=gname,
            devmajor=m.devmajor if device else 0,
            devminor=m.devminor if device else 0,
            source=source,
        )


def _sorted_nodes(node: _Node) -> list[tuple[str, _Node]]:
    children = node.children or {}
    return sorted(children.items(), key=lambda kv: _sort_key(kv[0], "dir" if kv[1].is_dir() else "file"))


def _is_root_relative(root: _Node, prefix_parts: list[str]) -> bool:
    """Whether every member lies at or under the prefix, or is a directory above it."""
    node = root
    for depth, part in enumerate(prefix_parts):
        children = node.children or {}
        if any(name != part for name in children):
            return False
        child = children.get(part)
        if child is None:
            return True
        if depth < len(prefix_parts) - 1 and not child.is_dir():
            return False
        node = child
    return True


def _check_parents(root: _Node, what: str) -> None:
    """Refuse a member below a member that is not a directory (a file, a link...)."""
    stack = [root]
    while stack:
        node = stack.pop()
        if not node.children:
            continue
        if not node.is_dir():
            assert node.item is not None
            below = next(iter(node.children.values()))
            while below.item is None and below.children:  # an implied parent: its members
                below = next(iter(below.children.values()))
            below_name = below.item.member.name if below.item is not None else "?"
            raise LayerError(
                f"{what}: member {below_name!r} lies below {node.item.member.name!r}, which is "
                f"a {node.item.member.kind}, not a directory"
            )
        stack.extend(node.children.values())


def tarball_entries(
    path: Path,
    prefix: str = "",
    *,
    allow_whiteouts: bool = False,
    preserve: bool = False,
    tmpdir: Path | None = None,
    max_members: int = MAX_MEMBERS,
    max_bytes: int = MAX_TARBALL_BYTES,
    max_header_bytes: int = MAX_HEADER_BYTES,
) -> TarballEntries:
    """The entries of a layer made from the tarball ``path`` (plain, gzip or zstd, by magic).

    When every member lies under ``prefix`` (or is one of its parent directories) the tarball
    is root-relative, Spack's layout, and used as is; otherwise members are re-rooted under
    ``prefix``. Entries come out sorted like :func:`directory_entries`, with every parent
    present. A compressed tarball is decompressed once into an unlinked temp file (in
    ``tmpdir``; by default the blob cache's ``tmp`` directory, since ``/tmp`` is often in RAM)
    and member data is read from there by offset, so memory use does not depend on the data
    size. Limits: ``max_members`` members, ``max_bytes`` decompressed bytes,
    ``max_header_bytes`` per extended header. Unsafe members (see the module docstring) raise
    :class:`LayerError`; of duplicate names the last wins, as extraction would.
    """
    return TarballEntries(
        path,
        prefix,
        allow_whiteouts=allow_whiteouts,
        preserve=preserve,
        tmpdir=tmpdir,
        max_members=max_members,
        max_bytes=max_bytes,
        max_header_bytes=max_header_bytes,
    )
