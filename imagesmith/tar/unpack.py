"""Unpacking image layers into a root directory without ever writing outside it.

:func:`unpack_layer` streams one layer (gzip, zstd or plain tar, detected by magic bytes) into
``root``; :func:`unpack_layers` applies several in order, base first, the way a container
runtime stacks them. The full policy is in ``docs/unpacking.md``; in short:

- Member names are cleaned lexically (leading ``/`` and ``.`` components dropped, ``a/..``
  folded); a ``..`` that would climb above the root, an empty name or a NUL byte refuses the
  whole layer with :class:`~imagesmith.errors.UnpackError`.
- Symlinks met in the parent path of a member are followed with chroot semantics (an absolute
  target starts again at ``root``, ``..`` stops at ``root``, at most :data:`MAX_SYMLINK_HOPS`
  hops), so a merged-``/usr`` link ``lib -> usr/lib`` sends ``lib/x.so`` to ``usr/lib/x.so``
  and ``evil -> /`` sends ``evil/etc/passwd`` to ``root/etc/passwd``. Every filesystem call is
  made relative to a directory file descriptor opened with ``O_NOFOLLOW | O_DIRECTORY``, and
  the last component of a member is never followed: whatever is there is replaced.
- Whiteouts (``.wh.NAME``, ``.wh..wh..opq``) hide what lower layers put there and never what
  the same layer wrote, whatever the member order; they are never written themselves.
- Hardlinks must name a regular file already inside the root; devices are skipped unless the
  policy allows them and the process is root; setuid/setgid bits and owners follow the policy.
- Member count, uncompressed size, extended header size and path length (``PATH_MAX``, so
  depth too) are bounded; memory does not grow with member sizes, and grows with the member
  count only linearly (the whiteout bookkeeping keeps written paths as a tree of components,
  never one string per ancestor).
- With the layer's diff_id given, the uncompressed stream is hashed while it is unpacked, to
  its very end, and a mismatch is an :class:`~imagesmith.errors.IntegrityError`.

Python's ``tarfile`` is deliberately not used for reading: its extraction filters have had
bypasses. The tar stream is read by :mod:`imagesmith.tar.format` (the layer builder's reader
too) and every path is resolved by this module.

Size: one job, safe unpacking; its safety argument (directory-fd relative operations, symlink
resolution, whiteouts, limits) is read in one place, as docs/unpacking.md presents it.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, NoReturn, cast

from imagesmith import cancel
from imagesmith.errors import DiskFullError, IntegrityError, LayerError, UnpackError, UsageError
from imagesmith.oci.digests import Digest, Hasher
from imagesmith.progress import Meter, ProgressCallback, ProgressEvent, null_progress
from imagesmith.tar.compression import Decompressor, open_decompressor
from imagesmith.tar.format import MAX_NAME_BYTES, TarMember, TarReader, kind_of_mode

__all__ = ["MAX_SYMLINK_HOPS", "UnpackPolicy", "UnpackStats", "discard_tree", "unpack_layer", "unpack_layers"]

MAX_SYMLINK_HOPS = 255

_CHUNK = 1 << 20
# The deepest path a file system call can name (PATH_MAX bytes, one byte and a slash per level).
_MAX_DEPTH = MAX_NAME_BYTES // 2
_WHITEOUT = ".wh."
_WHITEOUT_META = ".wh..wh."
_OPAQUE = ".wh..wh..opq"
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NEW_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_ESCAPE_ADVICE = "the layer is corrupt or malicious: do not use this image"
_TRUNCATED_ADVICE = "the layer is truncated or corrupt: fetch it again"


def _running_as_root() -> bool:
    return os.geteuid() == 0


@dataclass(frozen=True)
class UnpackPolicy:
    """What :func:`unpack_layer` accepts and how it applies metadata.

    ``preserve_owners`` (default: whether the process runs as root) chowns every entry to the
    member's numeric uid/gid, never following symlinks; user and group names are ignored, since
    the host's account database is not the image's. ``allow_devices`` creates character and
    block devices, but only when the process runs as root; otherwise they are skipped and
    listed in :attr:`UnpackStats.skipped`. ``allow_setuid=False`` strips setuid and setgid
    bits. ``allow_whiteouts=False`` turns every whiteout into an :class:`UnpackError` (package
    tarballs must not delete files of other layers). ``max_members``, ``max_bytes`` (the
    uncompressed tar stream of one layer) and ``max_header_bytes`` (the extended headers in
    front of one member) bound the work a hostile layer can cause. Negative limits raise
    :class:`UsageError`.
    """

    preserve_owners: bool = field(default_factory=_running_as_root)
    allow_devices: bool = False
    allow_setuid: bool = True
    allow_whiteouts: bool = True
    max_members: int = 1_000_000
    max_bytes: int = 64 << 30
    max_header_bytes: int = 1 << 20

    def __post_init__(self) -> None:
        for name in ("max_members", "max_bytes", "max_header_bytes"):
            if getattr(self, name) < 0:
                raise UsageError(f"UnpackPolicy.{name} must not be negative")


@dataclass(frozen=True)
class UnpackStats:
    """What an unpack did: entries created per kind, whiteouts applied, members skipped.

    ``skipped`` lists, as stored in the archive, the names of members the policy skipped
    (device nodes, aufs ``.wh..wh.*`` metadata). ``bytes`` counts file data written.
    ``specials`` counts FIFOs and device nodes created.
    """

    files: int
    dirs: int
    symlinks: int
    hardlinks: int
    whiteouts: int
    skipped: tuple[str, ...]
    bytes: int
    specials: int = 0


@dataclass(slots=True)
class _Dir:
    """An open directory inside the root and its path from the root (``""`` is the root)."""

    fd: int
    path: str


@dataclass(slots=True)
class _DirMeta:
    member: str
    mode: int
    uid: int
    gid: int
    mtime_ns: int
    identity: tuple[int, int]


# A node of a _PathTree: its children by name; the key "" (never a component) marks a path
# that was written. A written leaf is the shared, never-mutated _LEAF.
_Node = dict[str, "_Node"]
_LEAF: _Node = {}
_WRITTEN_MARK: _Node = {}


class _PathTree:
    """The paths one layer wrote, as a tree of their components.

    Whiteouts need two questions answered about a path: was it written by this layer, and
    was anything written below it. One string per ancestor of every written path answers
    them too, but costs the square of the depth per member (a 40,000-component name cost
    gigabytes); here each component of a path is stored once, under its parent.
    """

    __slots__ = ("_root",)

    def __init__(self) -> None:
        self._root: _Node = {}

    def add(self, path: str) -> None:
        """Record ``path`` (``a/b/c``, from the root) as written."""
        node = self._root
        *parents, last = path.split("/")
        for name in parents:
            child = node.get(name)
            if child is None:
                child = node[name] = {}
            elif child is _LEAF:
                child = node[name] = {"": _WRITTEN_MARK}  # written, and now a parent too
            node = child
        child = node.get(last)
        if child is None:
            node[last] = _LEAF
        elif child is not _LEAF:
            child[""] = _WRITTEN_MARK

    def _find(self, path: str) -> _Node | None:
        node = self._root
        for name in path.split("/"):
            child = node.get(name)
            if child is None:
                return None
            node = child
        return node

    def written(self, path: str) -> bool:
        """Whether ``path`` itself was written."""
        node = self._find(path)
        return node is not None and (node is _LEAF or "" in node)

    def kept(self, path: str) -> bool:
        """Whether ``path`` was written or lies above something that was."""
        return self._find(path) is not None


def _join(parent: str, name: str) -> str:
    return f"{parent}/{name}" if parent else name


def _lstat(name: str, dir_fd: int) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def _push(stack: list[tuple[int, str, list[str]]], fd: int, label: str) -> None:
    children: list[str] = []
    stack.append((fd, label, children))
    children.extend(os.listdir(fd))


def _open_dir(name: str, dir_fd: int, *, writable: bool) -> int:
    try:
        fd = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    except PermissionError:
        if not writable:
            raise
        # An unreadable directory (mode 0 in the image, unpacked as non-root): make it ours
        # first. It was seen to be a directory, inside a tree only this process writes.
        os.chmod(name, 0o700, dir_fd=dir_fd)
        fd = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    if writable:
        try:
            os.fchmod(fd, 0o700)
        except OSError:
            os.close(fd)
            raise
    return fd


def _remove(dir_fd: int, name: str, *, writable: bool = False) -> None:
    """Remove ``name`` in ``dir_fd`` and everything below it, never following a symlink.

    With ``writable``, each directory is made readable and writable before it is emptied (an
    unpacked tree can hold read-only directories).
    """
    st = _lstat(name, dir_fd)
    if st is None:
        return
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(name, dir_fd=dir_fd)
        return
    # Iterative, one descriptor per level: a hostile layer can nest very deep. A descriptor
    # goes on the stack before its listing is read, so a failing listdir cannot leak it.
    stack: list[tuple[int, str, list[str]]] = []
    try:
        _push(stack, _open_dir(name, dir_fd, writable=writable), name)
        while stack:
            fd, dname, children = stack[-1]
            if not children:
                stack.pop()
                os.close(fd)
                os.rmdir(dname, dir_fd=stack[-1][0] if stack else dir_fd)
                continue
            child = children.pop()
            cst = _lstat(child, fd)
            if cst is None:
                continue
            if stat.S_ISDIR(cst.st_mode):
                _push(stack, _open_dir(child, fd, writable=writable), child)
            else:
                os.unlink(child, dir_fd=fd)
    finally:
        for fd, _, _ in stack:
            os.close(fd)


def discard_tree(path: Path) -> None:
    """Remove the directory ``path`` and everything in it, as deep as it goes, never following
    a symlink, read-only directories included: what is left of a refused unpack.

    ``shutil.rmtree`` recurses once per level and cannot remove a tree as deep as a layer may
    legitimately make one. A failure raises :class:`OSError`.
    """
    path = Path(path)
    parent = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        _remove(parent, path.name, writable=True)
    finally:
        os.close(parent)


_KIND_NAMES = {"dir": "directory", "symlink": "symlink", "file": "regular file"}


def _kind_name(mode: int) -> str:
    return _KIND_NAMES.get(kind_of_mode(mode) or "", "special file")


# --- applying members -------------------------------------------------------------------------


class _Unpacker:
    """Applies the members of one layer to the root open as ``root_fd``."""

    def __init__(self, root_fd: int, policy: UnpackPolicy, what: str) -> None:
        self._root_fd = root_fd
        self._policy = policy
        self._what = what
        self._devices_ok = policy.allow_devices and os.geteuid() == 0
        self._name = ""  # the member being applied, for messages
        # Paths (from the root, symlinks resolved) this layer wrote, and so every directory
        # above them: whiteouts and opaque markers hide lower layers only, never this layer's.
        self._written = _PathTree()
        # Directory metadata is applied once the layer is done: later members would change the
        # mtime, and a read-only mode would stop an unprivileged unpack from filling it.
        self._deferred: dict[str, _DirMeta] = {}
        self._cache_key: tuple[str, ...] | None = None
        self._cache: _Dir | None = None
        self.files = self.dirs = self.symlinks = self.hardlinks = 0
        self.whiteouts = self.specials = self.bytes = 0
        self.skipped: list[str] = []

    def stats(self) -> UnpackStats:
        return UnpackStats(
            files=self.files,
            dirs=self.dirs,
            symlinks=self.symlinks,
            hardlinks=self.hardlinks,
            whiteouts=self.whiteouts,
            skipped=tuple(self.skipped),
            bytes=self.bytes,
            specials=self.specials,
        )

    def close(self) -> None:
        self._forget()

    def _fail(self, problem: str, advice: str = _ESCAPE_ADVICE) -> NoReturn:
        raise UnpackError(f"{self._what}: member {self._name!r} {problem}; {advice}")

    # -- the walk ---------------------------------------------------------------------------

    def _forget(self) -> None:
        """Drop the cached parent directory: called whenever anything is removed."""
        if self._cache is not None:
            os.close(self._cache.fd)
        self._cache = None
        self._cache_key = None

    def _reopen(self, names: list[str]) -> int:
        fd = os.dup(self._root_fd)
        try:
            for name in names:
                nxt = os.open(name, _DIR_FLAGS, dir_fd=fd)
                os.close(fd)
                fd = nxt
        except OSError:
            os.close(fd)
            self._fail(
                f"resolves through {'/'.join(names)!r}, which changed while the layer was unpacked",
                "unpack into a directory nothing else writes to",
            )
        return fd

    def _resolve(self, components: tuple[str, ...], *, create: bool) -> _Dir | None:
        """Open the directory ``components`` name, with chroot semantics for symlinks.

        Missing directories are created (0755) when ``create``; otherwise a missing or
        non-directory component gives None. The caller owns the returned descriptor.
        """
        pending = list(reversed(components))
        names: list[str] = []
        fd = os.dup(self._root_fd)
        hops = 0
        try:
            while pending:
                comp = pending.pop()
                if comp in ("", "."):
                    continue
                if comp == "..":
                    # Tracked by name, not by the filesystem's "..": it can never leave the root.
                    if names:
                        names.pop()
                        os.close(fd)
                        fd = -1
                        fd = self._reopen(names)
                    continue
                try:
                    nxt = os.open(comp, _DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        return None
                    try:
                        os.mkdir(comp, 0o700, dir_fd=fd)
                    except FileExistsError:
                        hops += 1  # appeared meanwhile: look again (bounded like the symlinks)
                        if hops > MAX_SYMLINK_HOPS:
                            self._fail(
                                "has a parent directory that keeps changing",
                                "unpack into a directory nothing else writes to",
                            )
                        pending.append(comp)
                        continue
                    nxt = os.open(comp, _DIR_FLAGS, dir_fd=fd)
                    os.fchmod(nxt, 0o755)  # explicit: the umask must not shape the tree
                except OSError as exc:
                    if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                        raise
                    st = _lstat(comp, fd)
                    if st is not None and stat.S_ISLNK(st.st_mode):
                        hops += 1
                        if hops > MAX_SYMLINK_HOPS:
                            self._fail(f"resolves through more than {MAX_SYMLINK_HOPS} symlinks (a loop?)")
                        target = os.readlink(comp, dir_fd=fd)
                        if target.startswith("/"):
                            # Absolute targets mean the image's root, never the host's.
                            names = []
                            os.close(fd)
                            fd = -1
                            fd = os.dup(self._root_fd)
                        pending.extend(reversed(target.split("/")))
                        continue
                    if st is None and create:
                        hops += 1  # vanished meanwhile: look again (bounded like the symlinks)
                        if hops > MAX_SYMLINK_HOPS:
                            self._fail(
                                "has a parent directory that keeps changing",
                                "unpack into a directory nothing else writes to",
                            )
                        pending.append(comp)
                        continue
                    if not create or st is None:
                        return None
                    path = "/".join([*names, comp])
                    self._fail(
                        f"lies below {path!r}, which is a {_kind_name(st.st_mode)}, not a directory",
                        "the layer does not fit the layers below it",
                    )
                names.append(comp)
                os.close(fd)
                fd = nxt
                if len(names) > _MAX_DEPTH:
                    # Symlinks can lengthen a path past what its name says: bound the depth
                    # (and so the bookkeeping of what was written) as PATH_MAX does.
                    self._fail(
                        f"resolves to a path more than {_MAX_DEPTH} directories deep, beyond what "
                        f"a {MAX_NAME_BYTES}-byte path can name"
                    )
            result = _Dir(fd, "/".join(names))
            fd = -1
            return result
        finally:
            if fd >= 0:
                os.close(fd)

    def _parent(self, parts: list[str], *, create: bool) -> _Dir | None:
        """The directory holding ``parts[-1]`` (a descriptor the caller closes), or None."""
        key = tuple(parts[:-1])
        if self._cache is not None and self._cache_key == key:
            return _Dir(os.dup(self._cache.fd), self._cache.path)
        found = self._resolve(key, create=create)
        if found is not None:
            # Only removals can change where a resolved path leads (creation happens at names
            # that did not exist, which the walk never went through), so removals forget this.
            self._forget()
            self._cache = _Dir(os.dup(found.fd), found.path)
            self._cache_key = key
        return found

    def _clean(self, raw: str, role: str = "name") -> list[str]:
        if not raw:
            self._fail(f"has an empty {role}", "the layer is corrupt")
        if "\0" in raw:
            self._fail(f"has a NUL byte in its {role}")
        parts: list[str] = []
        for part in raw.split("/"):
            if part in ("", "."):
                continue
            if part == "..":
                if not parts:
                    self._fail(f"climbs above the root with '..' in its {role} {raw!r}")
                parts.pop()
            else:
                parts.append(part)
        return parts

    # -- bookkeeping and removal --------------------------------------------------------------

    def _wrote(self, path: str) -> None:
        self._written.add(path)

    def _kept(self, path: str) -> bool:
        return self._written.kept(path)

    def _rmtree(self, dir_fd: int, name: str) -> None:
        """Remove ``name`` in ``dir_fd`` and everything below it, never following a symlink."""
        self._forget()
        _remove(dir_fd, name)

    def _hide_lower(self, dir_fd: int, name: str, path: str) -> None:
        """Apply a whiteout of ``name`` (at ``path``): remove what lower layers put there."""
        st = _lstat(name, dir_fd)
        if st is None:
            return
        if not stat.S_ISDIR(st.st_mode) or not self._kept(path):
            if not self._written.written(path):
                self._rmtree(dir_fd, name)
            return
        # A directory this layer wrote or wrote into stays; lower content inside it goes.
        stack: list[tuple[int, str, list[str]]] = []
        try:
            _push(stack, os.open(name, _DIR_FLAGS, dir_fd=dir_fd), path)
            while stack:
                fd, dpath, children = stack[-1]
                if not children:
                    stack.pop()
                    os.close(fd)
                    continue
                child = children.pop()
                cpath = _join(dpath, child)
                cst = _lstat(child, fd)
                if cst is None:
                    continue
                if stat.S_ISDIR(cst.st_mode) and self._kept(cpath):
                    _push(stack, os.open(child, _DIR_FLAGS, dir_fd=fd), cpath)
                elif not self._written.written(cpath):
                    self._rmtree(fd, child)
        finally:
            for fd, _, _ in stack:
                os.close(fd)

    def _replace(self, parent: _Dir, base: str, *, keep_dir: bool) -> os.stat_result | None:
        """Clear the way for a new entry; return the stat of a directory kept in place."""
        st = _lstat(base, parent.fd)
        if st is None:
            return None
        if stat.S_ISDIR(st.st_mode) and keep_dir:
            return st
        self._rmtree(parent.fd, base)
        return None

    # -- metadata -----------------------------------------------------------------------------

    def _mode(self, m: TarMember) -> int:
        mode = m.mode & 0o7777
        return mode if self._policy.allow_setuid else mode & ~(stat.S_ISUID | stat.S_ISGID)

    def _chown_failed(self, uid: int, gid: int, exc: OSError) -> NoReturn:
        self._fail(
            f"cannot be given owner {uid}:{gid}: {exc.strerror or exc}",
            "owners can only be preserved as root: use UnpackPolicy(preserve_owners=False)",
        )

    def _finish_fd(self, fd: int, m: TarMember) -> None:
        if self._policy.preserve_owners:
            try:
                os.fchown(fd, m.uid, m.gid)  # before chmod: chown clears setuid/setgid
            except PermissionError as exc:
                self._chown_failed(m.uid, m.gid, exc)
        os.fchmod(fd, self._mode(m))
        self._utime(fd, m.mtime_ns)

    def _utime(self, target: int | str, mtime_ns: int, dir_fd: int | None = None) -> None:
        try:
            if isinstance(target, int):
                os.utime(target, ns=(mtime_ns, mtime_ns))
            else:
                os.utime(target, ns=(mtime_ns, mtime_ns), dir_fd=dir_fd, follow_symlinks=False)
        except OverflowError:
            self._fail(f"has an mtime out of range ({mtime_ns} ns)", "the layer is corrupt")

    # -- members ------------------------------------------------------------------------------

    def run(self, stream: TarReader) -> None:
        for member in stream.members():
            self._name = member.name
            try:
                self._apply(member, stream)
            except OSError as exc:
                self._os_failure(member, exc)
            except (ValueError, OverflowError) as exc:
                # Values the OS cannot take: a device number or id too large, and the like.
                self._fail(f"could not be unpacked: {exc}", "the layer is corrupt")
        try:
            self._apply_deferred()
        except OSError as exc:
            self._fail(
                f"could not get its directory metadata: {exc.strerror or exc}",
                "check the permissions of the root directory",
            )

    def _os_failure(self, m: TarMember, exc: OSError) -> NoReturn:
        """Fail for an error the OS gave while ``m`` was applied, with advice that fits it."""
        problem = f"could not be unpacked: {exc.strerror or exc}"
        if exc.errno == errno.ENAMETOOLONG:
            try:
                name_max = os.fpathconf(self._root_fd, "PC_NAME_MAX")
            except (OSError, ValueError):
                name_max = 255
            longest = max(m.name.split("/"), key=lambda part: len(os.fsencode(part)))
            size = len(os.fsencode(longest))
            if size > name_max:
                shown = longest if size <= 80 else f"{longest[:60]}..."
                self._fail(
                    f"has a name component of {size} bytes ({shown!r}), longer than the "
                    f"{name_max} bytes a name may have on the target file system",
                    "the image cannot be unpacked on this file system",
                )
            if m.kind == "symlink":
                self._fail(
                    f"is a symlink whose target ({len(os.fsencode(m.linkname))} bytes) is "
                    "longer than the target file system takes",
                    "the layer is corrupt",
                )
            self._fail(
                f"{problem}: its name is too long for the target file system",
                "the image cannot be unpacked on this file system",
            )
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            # A full disk, not a bad layer: its own error (and exit code), never an integrity one.
            raise DiskFullError(
                f"{self._what}: member {self._name!r} {problem}; free space (or raise the quota) on the "
                "target file system and pull again",
                errno=exc.errno,
            )
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            self._fail(problem, "check the permissions of the root directory and its file system")
        self._fail(
            problem, "check the root directory: free space, permissions, and that nothing else writes to it"
        )

    def _apply(self, m: TarMember, stream: TarReader) -> None:
        parts = self._clean(m.name)
        if not parts:
            if m.kind == "dir":
                return  # "./": the root itself, which belongs to the caller
            self._fail(f"names the root directory itself but is a {m.kind}", "the layer is corrupt")
        if any(part.startswith(_WHITEOUT) for part in parts):
            self._whiteout(m, parts)
            return
        if m.kind in ("chardev", "blockdev") and not self._devices_ok:
            self.skipped.append(m.name)
            return
        if m.kind == "hardlink":
            self._hardlink(m, parts)
            return
        parent = self._parent(parts, create=True)
        assert parent is not None  # create=True either succeeds or raises
        try:
            base = parts[-1]
            path = _join(parent.path, base)
            kept = self._replace(parent, base, keep_dir=m.kind == "dir")
            if m.kind == "file":
                self._file(m, parent, base, stream)
            elif m.kind == "dir":
                self._dir(m, parent, base, path, existed=kept is not None)
            elif m.kind == "symlink":
                self._symlink(m, parent, base)
            elif m.kind == "fifo":
                self._fifo(m, parent, base)
            else:
                self._device(m, parent, base)
            self._wrote(path)
        finally:
            os.close(parent.fd)

    def _file(self, m: TarMember, parent: _Dir, base: str, stream: TarReader) -> None:
        # O_EXCL|O_NOFOLLOW: the old entry is gone, so whatever appears meanwhile is refused.
        fd = os.open(base, _NEW_FILE_FLAGS, 0o600, dir_fd=parent.fd)
        done = False
        try:
            for chunk in stream.data():
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view) :]
                self.bytes += len(chunk)
            self._finish_fd(fd, m)
            done = True
        finally:
            os.close(fd)
            if not done:
                try:
                    os.unlink(base, dir_fd=parent.fd)  # no half-written file left behind
                except OSError:
                    pass
        self.files += 1

    def _dir(self, m: TarMember, parent: _Dir, base: str, path: str, *, existed: bool) -> None:
        if not existed:
            os.mkdir(base, 0o700, dir_fd=parent.fd)
        fd = os.open(base, _DIR_FLAGS, dir_fd=parent.fd)
        try:
            st = os.fstat(fd)
            if not existed:
                os.fchmod(fd, 0o700)  # owner-writable until the layer is done, whatever the umask
        finally:
            os.close(fd)
        self._deferred[path] = _DirMeta(
            m.name, self._mode(m), m.uid, m.gid, m.mtime_ns, (st.st_dev, st.st_ino)
        )
        self.dirs += 1

    def _symlink(self, m: TarMember, parent: _Dir, base: str) -> None:
        if not m.linkname or "\0" in m.linkname:
            self._fail("is a symlink with an empty target or a NUL byte in it", "the layer is corrupt")
        # The target is stored verbatim: it is only ever followed by _resolve, inside the root.
        os.symlink(m.linkname, base, dir_fd=parent.fd)
        if self._policy.preserve_owners:
            try:
                os.chown(base, m.uid, m.gid, dir_fd=parent.fd, follow_symlinks=False)
            except PermissionError as exc:
                self._chown_failed(m.uid, m.gid, exc)
        self._utime(base, m.mtime_ns, parent.fd)
        self.symlinks += 1

    def _fifo(self, m: TarMember, parent: _Dir, base: str) -> None:
        os.mkfifo(base, 0o600, dir_fd=parent.fd)
        # Opening a FIFO for reading without O_NONBLOCK would wait for a writer.
        fd = os.open(base, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent.fd)
        try:
            if not stat.S_ISFIFO(os.fstat(fd).st_mode):
                self._fail(
                    "was replaced while it was unpacked", "unpack into a directory nothing else writes to"
                )
            self._finish_fd(fd, m)
        finally:
            os.close(fd)
        self.specials += 1

    def _device(self, m: TarMember, parent: _Dir, base: str) -> None:
        kind = stat.S_IFCHR if m.kind == "chardev" else stat.S_IFBLK
        os.mknod(base, 0o600 | kind, os.makedev(m.devmajor, m.devminor), dir_fd=parent.fd)
        # Never opened: opening a device node can have side effects (a tape rewinds).
        if self._policy.preserve_owners:
            os.chown(base, m.uid, m.gid, dir_fd=parent.fd, follow_symlinks=False)
        try:
            os.chmod(base, self._mode(m), dir_fd=parent.fd, follow_symlinks=False)
        except (NotImplementedError, ValueError):
            self._fail(
                "cannot get its mode without following symlinks on this platform",
                "use UnpackPolicy(allow_devices=False)",
            )
        self._utime(base, m.mtime_ns, parent.fd)
        self.specials += 1

    def _hardlink(self, m: TarMember, parts: list[str]) -> None:
        target_parts = self._clean(m.linkname, "link target")
        if not target_parts:
            self._fail("is a hardlink to the root directory")
        source = self._parent(target_parts, create=False)
        source_st = None
        if source is not None:
            source_st = _lstat(target_parts[-1], source.fd)
        try:
            if source is None or source_st is None:
                self._fail(
                    f"is a hardlink to {m.linkname!r}, which does not exist in the root (not an "
                    "earlier member of this layer or of a lower one)",
                    "the layer is corrupt or the layers are applied out of order",
                )
            if not stat.S_ISREG(source_st.st_mode):
                self._fail(
                    f"is a hardlink to {m.linkname!r}, which is a {_kind_name(source_st.st_mode)}: "
                    "only regular files may be hardlinked"
                )
            parent = self._parent(parts, create=True)
            assert parent is not None
            try:
                base = parts[-1]
                existing = _lstat(base, parent.fd)
                same = existing is not None and (existing.st_dev, existing.st_ino) == (
                    source_st.st_dev,
                    source_st.st_ino,
                )
                if not same:
                    self._replace(parent, base, keep_dir=False)
                    # follow_symlinks=False: if the target became a symlink meanwhile, the new
                    # link is that symlink, never the file it points to.
                    os.link(
                        target_parts[-1],
                        base,
                        src_dir_fd=source.fd,
                        dst_dir_fd=parent.fd,
                        follow_symlinks=False,
                    )
                self._wrote(_join(parent.path, base))
            finally:
                os.close(parent.fd)
        finally:
            if source is not None:
                os.close(source.fd)
        self.hardlinks += 1

    def _whiteout(self, m: TarMember, parts: list[str]) -> None:
        if not self._policy.allow_whiteouts:
            self._fail(
                "is a whiteout, which this policy refuses",
                "package tarballs may not delete files of other layers",
            )
        base = parts[-1]
        if parts[0].startswith(_WHITEOUT_META) and parts != [_OPAQUE]:
            # aufs bookkeeping at the top (.wh..wh.aufs, .wh..wh.plnk/...): never content.
            self.skipped.append(m.name)
            return
        if any(part.startswith(_WHITEOUT) for part in parts[:-1]):
            self._fail("lies below a whiteout entry", "the layer is corrupt")
        if base.startswith(_WHITEOUT_META) and base != _OPAQUE:
            self._fail("is an unknown whiteout marker", "the layer is corrupt")
        target = base[len(_WHITEOUT) :]
        if base != _OPAQUE and target in ("", ".", ".."):
            self._fail(f"is a whiteout of {target!r}, which is not a file name", "the layer is corrupt")
        parent = self._parent(parts, create=False)
        if parent is not None:
            try:
                if base == _OPAQUE:
                    for child in os.listdir(parent.fd):  # noqa: PTH208 - a descriptor, not a path
                        self._hide_lower(parent.fd, child, _join(parent.path, child))
                else:
                    self._hide_lower(parent.fd, target, _join(parent.path, target))
            finally:
                os.close(parent.fd)
        self.whiteouts += 1

    def _apply_deferred(self) -> None:
        # Deepest first, so a directory made read-only never blocks the ones below it.
        for path in sorted(self._deferred, key=lambda p: p.count("/"), reverse=True):
            meta = self._deferred[path]
            self._name = meta.member
            parts = path.split("/")
            parent = self._parent(parts, create=False)
            if parent is None:
                continue
            try:
                try:
                    fd = os.open(parts[-1], _DIR_FLAGS, dir_fd=parent.fd)
                except OSError:
                    continue  # removed or replaced later in the layer
            finally:
                os.close(parent.fd)
            try:
                st = os.fstat(fd)
                if (st.st_dev, st.st_ino) != meta.identity:
                    continue  # not the directory the member made
                if self._policy.preserve_owners:
                    try:
                        os.fchown(fd, meta.uid, meta.gid)
                    except PermissionError as exc:
                        self._chown_failed(meta.uid, meta.gid, exc)
                os.fchmod(fd, meta.mode)
                self._utime(fd, meta.mtime_ns)
            finally:
                os.close(fd)


# --- entry points -----------------------------------------------------------------------------


def _open_root(root: Path) -> int:
    try:
        root.mkdir(parents=True, exist_ok=True)
        return os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise UnpackError(f"cannot use {root} as the root to unpack into: {exc.strerror or exc}") from None


def _label(layer: Path | str | IO[bytes]) -> str:
    if isinstance(layer, str | Path):
        return str(layer)
    name = getattr(layer, "name", None)
    return str(name) if isinstance(name, str) else "layer stream"


class _Metered:
    """A layer file read by the unpacker: progress by position, and a check for an interrupt."""

    def __init__(self, raw: IO[bytes], meter: Meter) -> None:
        self._raw = raw
        self._meter = meter
        self.name = raw.name

    def read(self, n: int = -1, /) -> bytes:
        cancel.check()
        data = self._raw.read(n)
        self._meter.add(len(data))
        return data


class _Hashing:
    """The decompressed layer, hashed as it is read: a diff_id covers every byte of the tar."""

    def __init__(self, source: Decompressor, algorithm: str) -> None:
        self._source = source
        self.hasher = Hasher(algorithm)

    def read(self, n: int = -1, /) -> bytes:
        data = self._source.read(n)
        self.hasher.update(data)
        return data


def _check_diff_id(
    hashing: _Hashing, reader: TarReader, diff_id: Digest, policy: UnpackPolicy, label: str
) -> None:
    """Hash what follows the end-of-archive marker too, then compare with ``diff_id``."""
    left = policy.max_bytes - reader.consumed
    try:
        while chunk := hashing.read(_CHUNK):
            left -= len(chunk)
            if left < 0:
                raise UnpackError(
                    f"{label}: more than {policy.max_bytes} bytes uncompressed, counting what "
                    "follows its end-of-archive marker (a decompression bomb?); raise "
                    "UnpackPolicy.max_bytes if the layer is trusted"
                )
    except LayerError as exc:
        raise UnpackError(f"{exc} (after the end of the archive); {_TRUNCATED_ADVICE}") from None
    actual = hashing.hasher.digest
    if actual != diff_id:
        raise IntegrityError(
            f"{label}: its uncompressed content has digest {actual}, but the image config lists "
            f"diff_id {diff_id}: the image is corrupt or was tampered with; do not use it"
        )


def unpack_layer(
    layer: Path | str | IO[bytes],
    root: Path,
    *,
    policy: UnpackPolicy | None = None,
    what: str | None = None,
    diff_id: Digest | None = None,
) -> UnpackStats:
    """Unpack one layer (a path or a binary stream: gzip, zstd or plain tar) into ``root``.

    ``root`` is created if missing; existing content is the lower layers and is overlaid
    following OCI rules (whiteouts remove, later entries replace). The layer is streamed: memory
    does not grow with member sizes. ``policy`` defaults to :class:`UnpackPolicy()`; ``what``
    names the layer in messages (default: its path). Anything unsafe or against the policy
    (an escape from the root, a hardlink to a missing or non-regular file, a limit exceeded, a
    truncated or corrupt stream) raises :class:`UnpackError` naming the layer and the member;
    with ``diff_id`` (the config's ``rootfs.diff_ids`` entry), uncompressed bytes that hash to
    anything else raise :class:`IntegrityError` once the layer is read to its end. Either way
    the root is then partly unpacked and should be discarded. A stream passed in is not closed.
    """
    policy = policy if policy is not None else UnpackPolicy()
    label = what or _label(layer)
    root_fd = _open_root(Path(root))
    try:
        try:
            source = open_decompressor(layer, label)
        except LayerError as exc:
            raise UnpackError(f"{exc}; cannot unpack it") from None
        with source:
            hashing = _Hashing(source, diff_id.algorithm) if diff_id is not None else None
            reader = TarReader(
                hashing or source,
                label,
                max_members=policy.max_members,
                max_header_bytes=policy.max_header_bytes,
                max_bytes=policy.max_bytes,
                error=UnpackError,
                advice=_TRUNCATED_ADVICE,
                limits="UnpackPolicy",
            )
            unpacker = _Unpacker(root_fd, policy, label)
            try:
                unpacker.run(reader)
            finally:
                unpacker.close()
            if hashing is not None and diff_id is not None:
                _check_diff_id(hashing, reader, diff_id, policy, label)
            return unpacker.stats()
    finally:
        os.close(root_fd)


def unpack_layers(
    layers: Iterable[Path | str | IO[bytes]],
    root: Path,
    *,
    policy: UnpackPolicy | None = None,
    diff_ids: Sequence[Digest] | None = None,
    names: Sequence[str] | None = None,
    progress: ProgressCallback = null_progress,
) -> UnpackStats:
    """Unpack ``layers`` into ``root`` in order, base first, and return the summed statistics.

    ``layers`` may be an iterator that yields each layer as it becomes available (a download):
    each is unpacked as soon as it is yielded, while the later ones are still being fetched.

    Each layer is applied with :func:`unpack_layer`, checked against its entry of ``diff_ids``
    when given, and named ``layer N (NAME)`` in errors, NAME from ``names`` (the layer digests,
    say) or else its path; the limits of ``policy`` apply to each layer separately. ``root`` is
    created if missing and may already hold content (that is how layers stack). The first
    error stops the unpack and leaves the root partly unpacked: discard it. A layer given as a
    path reports ``unpack-progress`` (its file's bytes read) to ``progress``, then
    ``layer-unpacked``, and stops at :func:`imagesmith.cancel.interrupt`.
    """

    def check_count(count: int) -> None:
        for given, label in ((diff_ids, "diff_ids"), (names, "names")):
            if given is not None and len(given) != count:
                raise UsageError(f"unpack_layers: {len(given)} {label} for {count} layers")

    if isinstance(layers, Sequence):
        check_count(len(layers))
    totals = [0] * 7
    skipped: list[str] = []
    number = 0
    for number, layer in enumerate(layers, 1):
        for given in (diff_ids, names):
            if given is not None and number > len(given):
                check_count(number)  # more layers than names: refused before this one is applied
        name = names[number - 1] if names is not None else _label(layer)
        what = f"layer {number} ({name})"
        diff_id = diff_ids[number - 1] if diff_ids is not None else None
        raw = None
        if isinstance(layer, str | Path):
            try:
                raw = open(layer, "rb")  # noqa: SIM115 - closed below
            except OSError:
                raw = None  # unpack_layer opens it again and says what is wrong
        if raw is None:
            stats = unpack_layer(layer, root, policy=policy, what=what, diff_id=diff_id)
        else:
            meter = Meter(progress, "unpack-progress", name, os.fstat(raw.fileno()).st_size)
            with raw:
                stats = unpack_layer(
                    cast("IO[bytes]", _Metered(raw, meter)), root, policy=policy, what=what, diff_id=diff_id
                )
            meter.done()
            progress(ProgressEvent("layer-unpacked", name, meter.total))
        for i, value in enumerate(
            (
                stats.files,
                stats.dirs,
                stats.symlinks,
                stats.hardlinks,
                stats.whiteouts,
                stats.bytes,
                stats.specials,
            )
        ):
            totals[i] += value
        skipped.extend(stats.skipped)
    check_count(number)
    return UnpackStats(
        files=totals[0],
        dirs=totals[1],
        symlinks=totals[2],
        hardlinks=totals[3],
        whiteouts=totals[4],
        skipped=tuple(skipped),
        bytes=totals[5],
        specials=totals[6],
    )
