"""The runtime-closure check: will every program and library the packages add find its shared
libraries and its interpreter in the image, the way the dynamic loader looks for them?

Each layer is read once, streamed, into a small summary kept as a cache record under the
layer's digest (so a base is read once per machine, and an unchanged package layer never
again): its library-like files (names with ``.so``, and every ELF shared object, with the ELF
class and machine read from the first 20 bytes), every symlink, whiteouts, directories, the
loader's configuration (``/etc/ld.so.conf``, ``ld.so.conf.d/*``, musl's ``ld-musl-*.path``) and,
for package layers only, what :func:`~imagesmith.pipeline.elf.read_elf` reads from each ELF executable
and shared object (spooled to a temp file one at a time; no file's content is ever kept).

The summaries are stacked base first into a :class:`FileIndex` as a runtime stacks layers
(whiteouts hide lower entries, a member's parent directories are resolved through the
symlinks below it), and symlinks resolve inside the image, chroot-style, never on the host.
Each ELF file of a package is then checked as glibc's ``ld.so`` searches (``man ld.so``):

1. DT_RPATH, unless the object has DT_RUNPATH, then the DT_RPATH of the objects that loaded it
   (for a library: of the package executables whose closure reaches it without a RUNPATH);
2. ``LD_LIBRARY_PATH`` of the image's merged environment;
3. DT_RUNPATH;
4. the directories of ``/etc/ld.so.conf`` and the files it includes (``ld.so.cache`` is built
   from them);
5. the default directories (``/lib``, ``/usr/lib``, their ``64`` and Debian multiarch forms).

``$ORIGIN``, ``$LIB`` and ``$PLATFORM`` are expanded; a candidate of another ELF class or
machine is skipped, as the loader skips it. musl's loader (an ``ld-musl-*`` interpreter)
searches ``LD_LIBRARY_PATH``, then its path file or ``/lib:/usr/local/lib:/usr/lib``.
A problem is a :class:`Finding`: a missing library (with every directory tried), a missing
interpreter, the wrong ELF machine or class for the platform, or an ELF file that cannot be
read (truncated, or lying about its sections).

Size: one job, the runtime-closure check: layer summaries, the stacked file index with chroot-
style symlinks, and the loader's search, each meaningful only with the others.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import posixpath
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import IO, Any, Literal, cast

from imagesmith._version import __version__
from imagesmith.errors import CacheError, LayerError, PackageError, UnpackError
from imagesmith.oci.digests import Digest
from imagesmith.oci.image import Image, Layer, Readable
from imagesmith.oci.model import Platform
from imagesmith.pipeline.elf import (
    ElfFormatError,
    ElfIdentity,
    ElfInfo,
    elf_identity,
    expected_machine,
    read_elf,
)
from imagesmith.progress import ProgressCallback, ProgressEvent, null_progress
from imagesmith.registry.client import RegistryPool
from imagesmith.store.cache import BlobCache
from imagesmith.tar.compression import open_decompressor
from imagesmith.tar.format import TarMember, TarReader
from imagesmith.tar.unpack import MAX_SYMLINK_HOPS, UnpackPolicy
from imagesmith.tar.writer import TarEntry, open_source_file
from imagesmith.transports.base import fetch_blob

__all__ = [
    "CHECK_MODES",
    "CheckMode",
    "ClosureError",
    "ClosureReport",
    "FileIndex",
    "Finding",
    "LayerSummariser",
    "LayerSummary",
    "check_closure",
    "closure_gate",
    "default_directories",
    "summarize_layer",
]

CheckMode = Literal["warn", "error", "off"]
CHECK_MODES: tuple[CheckMode, ...] = ("warn", "error", "off")
FindingKind = Literal["missing-library", "missing-interpreter", "wrong-machine", "unreadable-elf"]

RECORD_VERSION = 1
# An ELF file up to this size is parsed in memory; a larger one is spooled to a temp file.
SPOOL_IN_MEMORY = 16 << 20
MAX_TEXT = 64 << 10  # ld.so.conf and friends are a few lines
_LOADER_CONFIG = ("etc/ld.so.conf", "etc/ld.so.conf.d/*", "etc/ld-musl-*.path")
_OPAQUE = ".wh..wh..opq"
_WHITEOUT = ".wh."

# Debian's multiarch triplet and the upstream library directory name, per OCI architecture.
_MULTIARCH: dict[str, tuple[str, str]] = {
    "amd64": ("x86_64-linux-gnu", "lib64"),
    "arm64": ("aarch64-linux-gnu", "lib64"),
    "386": ("i386-linux-gnu", "lib"),
    "arm": ("arm-linux-gnueabihf", "lib"),
    "ppc64le": ("powerpc64le-linux-gnu", "lib64"),
    "ppc64": ("powerpc64-linux-gnu", "lib64"),
    "s390x": ("s390x-linux-gnu", "lib64"),
    "riscv64": ("riscv64-linux-gnu", "lib64"),
    "mips64le": ("mips64el-linux-gnuabi64", "lib64"),
    "loong64": ("loongarch64-linux-gnu", "lib64"),
}
# What $PLATFORM expands to (the AT_PLATFORM string the kernel passes).
_AT_PLATFORM = {
    "amd64": "x86_64",
    "arm64": "aarch64",
    "386": "i686",
    "arm": "v7l",
    "ppc64le": "power8",
    "s390x": "z13",
    "riscv64": "riscv64",
}


class ClosureError(PackageError):
    """The runtime-closure check failed with ``--check=error``: nothing was written."""

    def __init__(self, message: str, report: ClosureReport) -> None:
        super().__init__(message)
        self.report = report


@dataclass(frozen=True)
class Finding:
    """One problem of one ELF file a package added.

    ``binary`` is its absolute path in the image, ``package`` the package's label; ``name`` the
    library (``missing-library``), the interpreter (``missing-interpreter``), the file's machine
    (``wrong-machine``) or empty; ``tried`` every ``(directory, why)`` searched; ``detail`` the
    rest of the story (the machine expected, why the file cannot be read).
    """

    kind: FindingKind
    binary: str
    package: str
    name: str = ""
    tried: tuple[tuple[str, str], ...] = ()
    detail: str = ""

    def line(self) -> str:
        """The finding as one line of text."""
        who = f"{self.binary} ({self.package})"
        if self.kind == "missing-library":
            where = ", ".join(directory for directory, _ in self.tried) or "nowhere"
            return f"{who} needs {self.name}: not found in the image; tried {where}"
        if self.kind == "missing-interpreter":
            return f"{who}: its interpreter {self.name} is not in the image{self.detail}"
        if self.kind == "wrong-machine":
            return f"{who} is built for {self.name}, not {self.detail}"
        return f"{who}: {self.detail}"

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "binary": self.binary,
            "package": self.package,
            "name": self.name,
            "tried": [{"directory": d, "via": via} for d, via in self.tried],
            "detail": self.detail,
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Finding:
        """The inverse of :meth:`to_json`; ValueError/KeyError/TypeError on a bad record."""
        kind = obj["kind"]
        if kind not in ("missing-library", "missing-interpreter", "wrong-machine", "unreadable-elf"):
            raise ValueError(f"unknown finding kind {kind!r}")
        return cls(
            kind,
            str(obj["binary"]),
            str(obj["package"]),
            str(obj["name"]),
            tuple((str(t["directory"]), str(t["via"])) for t in obj["tried"]),
            str(obj["detail"]),
        )


@dataclass(frozen=True)
class ClosureReport:
    """The outcome of :func:`check_closure`: how many ELF files of how many packages were
    checked for ``platform``, and the findings (none: every one resolves)."""

    platform: str
    checked: int
    packages: int
    findings: tuple[Finding, ...]

    @property
    def ok(self) -> bool:
        return not self.findings

    def summary(self) -> str:
        """``runtime closure of linux/amd64: 12 ELF files of 3 packages, 1 problem``."""
        count = len(self.findings)
        problems = "no problem" if not count else f"{count} problem{'s' if count > 1 else ''}"
        return (
            f"runtime closure of {self.platform}: {self.checked} ELF file{'s' if self.checked != 1 else ''} "
            f"of {self.packages} package{'s' if self.packages != 1 else ''}, {problems}"
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "platform": self.platform,
            "checked": self.checked,
            "packages": self.packages,
            "ok": self.ok,
            "findings": [f.to_json() for f in self.findings],
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> ClosureReport:
        """The inverse of :meth:`to_json`; ValueError/KeyError/TypeError on a bad record."""
        return cls(
            str(obj["platform"]),
            int(obj["checked"]),
            int(obj["packages"]),
            tuple(Finding.from_json(f) for f in obj["findings"]),
        )


# --- one layer ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class LayerSummary:
    """What the check keeps of one layer, in member order.

    ``entries`` are ``("f", path, identity-or-None)`` library-like files, ``("h", path,
    target)`` hardlinks, ``("l", path, target)`` symlinks, ``("d", path)`` directories,
    ``("t", path, text)`` loader configuration, ``("w", path)`` whiteouts and ``("o", dir)``
    opaque directories; ``elves`` what each ELF executable or shared object holds (or why it
    cannot be read), for package layers only.
    """

    entries: tuple[tuple[Any, ...], ...]
    elves: tuple[tuple[str, ElfInfo | str], ...] = ()

    def to_json(self) -> dict[str, Any]:
        def entry(e: tuple[Any, ...]) -> list[Any]:
            if e[0] == "f":
                ident = e[2]
                return [
                    "f",
                    e[1],
                    None
                    if ident is None
                    else [ident.elf_class, ident.little_endian, ident.kind, ident.machine],
                ]
            return list(e)

        return {
            "version": RECORD_VERSION,
            "entries": [entry(e) for e in self.entries],
            "elves": [[path, info if isinstance(info, str) else info.to_json()] for path, info in self.elves],
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> LayerSummary:
        """The inverse of :meth:`to_json`; ValueError/KeyError/TypeError on a bad record."""
        if obj.get("version") != RECORD_VERSION:
            raise ValueError("another record version")
        entries: list[tuple[Any, ...]] = []
        for raw in obj["entries"]:
            if raw[0] == "f":
                ident = raw[2]
                entries.append(
                    (
                        "f",
                        str(raw[1]),
                        None
                        if ident is None
                        else ElfIdentity(int(ident[0]), bool(ident[1]), str(ident[2]), int(ident[3])),
                    )
                )
            elif raw[0] in ("h", "l", "t") and len(raw) == 3:
                entries.append((raw[0], str(raw[1]), str(raw[2])))
            elif raw[0] in ("d", "w", "o") and len(raw) == 2:
                entries.append((raw[0], str(raw[1])))
            else:
                raise ValueError(f"unknown entry {raw[0]!r}")
        elves = tuple(
            (str(path), info if isinstance(info, str) else ElfInfo.from_json(info))
            for path, info in obj["elves"]
        )
        return cls(tuple(entries), elves)


def _clean(name: str) -> str | None:
    """A member name as a relative path without ``.``/``..``; None when it climbs out."""
    parts: list[str] = []
    for part in name.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not parts:
                return None
            parts.pop()
        else:
            parts.append(part)
    return "/".join(parts) if parts else None


def _library_like(base: str) -> bool:
    return ".so" in base


def _loader_config(path: str) -> bool:
    return any(fnmatch.fnmatchcase(path, pattern) for pattern in _LOADER_CONFIG)


@contextmanager
def _spooled(first: bytes, rest: Iterator[bytes]) -> Iterator[IO[bytes]]:
    """A tar member's data (its first piece, then the rest) as a seekable file."""
    with tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY) as spool:
        spool.write(first)
        for chunk in rest:
            spool.write(chunk)
        spool.seek(0)
        yield cast(IO[bytes], spool)


@contextmanager
def _entry_data(entry: TarEntry) -> Iterator[IO[bytes]]:
    """The data of a file entry just written to a layer, read again from its source: the file
    itself (opened as the tar writer opens it), else its bytes from the open tarball, spooled.
    OSError or LayerError when it cannot be read."""
    source = entry.source
    if isinstance(source, str | os.PathLike):
        fd, _ = open_source_file(source)
        with os.fdopen(fd, "rb") as f:
            yield f
    elif isinstance(source, tuple):
        fileobj, offset = source
        fileobj.seek(offset)
        with tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY) as spool:
            left = entry.size
            while left:
                chunk = fileobj.read(min(left, 1 << 20))
                if not chunk:
                    raise OSError(f"{entry.name} ended early")
                spool.write(chunk)
                left -= len(chunk)
            spool.seek(0)
            yield cast(IO[bytes], spool)
    else:
        raise OSError(f"{entry.name} has no data source to read again")


class LayerSummariser:
    """Builds a :class:`LayerSummary` member by member, in layer order.

    Fed either from a layer's tar stream (:meth:`member`: what :func:`summarize_layer` reads)
    or while a layer is written or adopted (:meth:`entry`, :meth:`member`: a
    :class:`~imagesmith.tar.layer.LayerObserver`), so a package layer this machine builds is
    summarised in the build's own pass and never read back for the check; both give the same
    summary for the same bytes. An ELF file is parsed from its source file, which the build
    has just read. When a source cannot be read again the summary is :attr:`incomplete` and
    :meth:`remember` keeps nothing (the check then reads the layer itself).
    """

    def __init__(self, *, inspect_elves: bool = True) -> None:
        self._inspect = inspect_elves
        self._entries: list[tuple[Any, ...]] = []
        self._elves: list[tuple[str, ElfInfo | str]] = []
        self.incomplete = False

    def member(self, member: TarMember, data: Iterator[bytes]) -> None:
        """One member of a tar stream and its data."""
        first = next(data, b"") if member.kind == "file" else b""
        self._add(
            member.name, member.kind, member.linkname, member.size, first, lambda: _spooled(first, data)
        )

    def entry(self, entry: TarEntry, head: bytes) -> None:
        """One entry the tar writer wrote, with the first bytes of its data."""
        try:
            self._add(entry.name, entry.kind, entry.linkname, entry.size, head, lambda: _entry_data(entry))
        except (OSError, LayerError):
            self.incomplete = True

    def summary(self) -> LayerSummary:
        return LayerSummary(tuple(self._entries), tuple(self._elves))

    def remember(self, cache: BlobCache, digest: Digest) -> None:
        """Keep the summary as the record of the layer ``digest`` (its bytes were what this
        summariser saw), unless it is incomplete."""
        if not self.incomplete:
            cache.put_record(_record_key(digest, self._inspect), self.summary().to_json())

    def _add(
        self,
        name: str,
        kind: str,
        linkname: str,
        size: int,
        first: bytes,
        data: Callable[[], AbstractContextManager[IO[bytes]]],
    ) -> None:
        path = _clean(name)
        if path is None:
            return
        entries = self._entries
        base = posixpath.basename(path)
        if base.startswith(_WHITEOUT):
            parent = posixpath.dirname(path)
            if base == _OPAQUE:
                entries.append(("o", parent))
            elif not base.startswith(".wh..wh."):
                entries.append(("w", posixpath.join(parent, base[len(_WHITEOUT) :])))
            return
        if kind == "dir":
            entries.append(("d", path))
        elif kind == "symlink":
            entries.append(("l", path, linkname))
        elif kind == "hardlink":
            target = _clean(linkname)
            if target is not None:
                entries.append(("h", path, target))
        elif kind == "file":
            identity = elf_identity(first[:20])
            if identity is not None and self._inspect and identity.kind in ("executable", "shared"):
                with data() as stream:
                    try:
                        info: ElfInfo | str = read_elf(stream, f"/{path}")
                    except ElfFormatError as exc:
                        info = str(exc)
                self._elves.append((path, info))
            if identity is None and size <= MAX_TEXT and _loader_config(path):
                with data() as stream:
                    text = stream.read(MAX_TEXT + 1)
                entries.append(("t", path, text.decode("utf-8", "replace")))
            elif (identity is not None and identity.kind == "shared") or _library_like(base):
                entries.append(("f", path, identity))


def summarize_layer(stream: Readable, what: str, *, inspect_elves: bool) -> LayerSummary:
    """Read a layer (compressed or not) once and keep what the check needs.

    With ``inspect_elves`` every ELF executable and shared object is parsed (a package
    layer); otherwise only the first 20 bytes of each file are looked at (a base layer). A
    corrupt layer raises :class:`~imagesmith.errors.UnpackError`; a bad ELF file is noted in
    :attr:`LayerSummary.elves`, never raised.
    """
    try:
        source = open_decompressor(cast(IO[bytes], stream), what)
    except LayerError as exc:
        raise UnpackError(f"{exc}; cannot read it") from None
    # The one tar reader the unpacker uses too: the check sees the tree a runtime unpacks.
    reader = TarReader(
        source,
        what,
        max_bytes=UnpackPolicy().max_bytes,
        error=UnpackError,
        advice="the layer is truncated or corrupt: fetch it again",
        limits="UnpackPolicy",
    )
    summariser = LayerSummariser(inspect_elves=inspect_elves)
    for member in reader.members():
        summariser.member(member, reader.data())
    return summariser.summary()


def _record_key(digest: Digest, inspect_elves: bool) -> str:
    return f"closure/v{RECORD_VERSION}/{'elves' if inspect_elves else 'names'}/{digest}"


def _open_layer(
    layer: Layer, pool: RegistryPool, cache: BlobCache, keep: bool
) -> AbstractContextManager[Readable]:
    descriptor = layer.descriptor
    if keep and layer.origin is not None and not layer.origin.local:
        # The destination needs these bytes anyway (a layout, an archive, another registry):
        # fetched once, into the cache, for both.
        fetch_blob(pool, cache, descriptor, layer.origin)
    if cache.has(descriptor.digest, descriptor.size):
        return cache.open(descriptor.digest, descriptor.size)
    if layer.origin is None:
        raise CacheError(f"layer {descriptor.digest} is missing from the cache at {cache.root}: build again")
    # Streamed and verified, never stored: the summary is all that is kept of a base layer.
    return layer.origin.open_blob(descriptor, pool)


def layer_summary(
    layer: Layer, *, inspect_elves: bool, pool: RegistryPool, cache: BlobCache, what: str, keep: bool = False
) -> tuple[LayerSummary, bool]:
    """The summary of ``layer`` from its cache record, else read (and recorded); returns it
    and whether the layer was read. With ``keep`` a remote layer read is also kept in the
    cache."""
    key = _record_key(layer.digest, inspect_elves)
    record = cache.get_record(key)
    if record is not None:
        try:
            return LayerSummary.from_json(record), False
        except (ValueError, KeyError, TypeError, IndexError):
            pass  # a damaged or older record: read the layer again
    with _open_layer(layer, pool, cache, keep) as stream:
        summary = summarize_layer(stream, what, inspect_elves=inspect_elves)
    cache.put_record(key, summary.to_json())
    return summary, True


# --- the image's file system ------------------------------------------------------------------


@dataclass
class FileIndex:
    """The names the check needs of an image's file system, layers stacked in order.

    ``files`` maps each library-like file to its ELF identity (None when not ELF), ``links``
    each symlink to its target, ``texts`` the loader's configuration files to their text.
    Paths are relative to the root, without leading slash.
    """

    files: dict[str, ElfIdentity | None] = field(default_factory=dict)
    links: dict[str, str] = field(default_factory=dict)
    texts: dict[str, str] = field(default_factory=dict)

    def resolve(self, path: str, *, follow_last: bool = True) -> str | None:
        """``path`` (absolute or relative to the root) with every symlink resolved inside the
        image (an absolute target starts again at the root, ``..`` stops there); None after
        too many hops. The last component is followed only with ``follow_last``."""
        links = self.links
        if path and path[0] not in "./" and path[-1] != "/" and "//" not in path and "/." not in path:
            # The common case, a clean relative path none of whose leading parts is a symlink,
            # without building a list per component (a layer of 50,000 directories is placed
            # member by member).
            end = path.find("/")
            while end != -1 and path[:end] not in links:
                end = path.find("/", end + 1)
            if end == -1 and not (follow_last and path in links):
                return path
        pending = [p for p in path.split("/") if p not in ("", ".")]
        pending.reverse()
        done: list[str] = []
        hops = 0
        while pending:
            part = pending.pop()
            if part == "..":
                if done:
                    done.pop()
                continue
            candidate = "/".join([*done, part])
            target = self.links.get(candidate)
            if target is None or (not pending and not follow_last):
                done.append(part)
                continue
            hops += 1
            if hops > MAX_SYMLINK_HOPS:
                return None
            if target.startswith("/"):
                done = []
            pending.extend(reversed([p for p in target.split("/") if p not in ("", ".")]))
        return "/".join(done)

    def place(self, path: str) -> str:
        """Where a layer member named ``path`` lands: its parent directories resolved through
        the symlinks already there, as a runtime unpacks it."""
        parent, _, base = path.rpartition("/")
        if not parent:
            return path
        resolved = self.resolve(parent)
        if resolved is None:
            return path
        return f"{resolved}/{base}" if resolved else base

    def _remove_under(self, prefix: str, *, keep_self: bool) -> None:
        start = prefix + "/" if prefix else ""

        def doomed(table: Mapping[str, object]) -> list[str]:
            return [p for p in table if p.startswith(start) or (not keep_self and p == prefix)]

        for p in doomed(self.files):
            del self.files[p]
        for p in doomed(self.links):
            del self.links[p]
        for p in doomed(self.texts):
            del self.texts[p]

    def apply(self, summary: LayerSummary) -> list[tuple[str, ElfInfo | str]]:
        """Stack one layer on top; return its ELF files at the paths where they landed."""
        # Whiteouts hide what lower layers hold, never what this layer writes, whatever
        # the member order: apply them all first.
        for entry in summary.entries:
            if entry[0] == "w":
                self._remove_under(self.place(entry[1]), keep_self=False)
            elif entry[0] == "o":
                self._remove_under(self.resolve(entry[1]) or entry[1], keep_self=True)
        for entry in summary.entries:
            kind, path = entry[0], entry[1]
            if kind in ("w", "o"):
                continue
            placed = self.place(path)
            # Whatever was at that name is replaced (a directory member replaces a symlink).
            self.files.pop(placed, None)
            self.links.pop(placed, None)
            self.texts.pop(placed, None)
            if kind == "f":
                self.files[placed] = entry[2]
            elif kind == "l":
                self.links[placed] = entry[2]
            elif kind == "t":
                self.texts[placed] = entry[2]
            elif kind == "h":
                target = self.place(entry[2])
                if target in self.files:
                    self.files[placed] = self.files[target]
        return [(self.place(path), info) for path, info in summary.elves]

    def file(self, path: str) -> tuple[str, ElfIdentity | None] | None:
        """The library-like file at ``path`` (symlinks followed) as (its real path, its ELF
        identity), or None when there is none."""
        resolved = self.resolve(path)
        if resolved is None or resolved not in self.files:
            return None
        return resolved, self.files[resolved]


# --- the loader's search --------------------------------------------------------------------------


def default_directories(platform: Platform, *, musl: bool = False) -> tuple[str, ...]:
    """The directories the loader searches last: glibc's (``/lib``, ``/usr/lib`` and their
    ``64`` forms) with Debian's multiarch ones first, or musl's."""
    if musl:
        return ("/lib", "/usr/local/lib", "/usr/lib")
    triplet, libdir = _MULTIARCH.get(platform.normalized().architecture, ("", "lib"))
    dirs: list[str] = []
    if triplet:
        dirs += [f"/lib/{triplet}", f"/usr/lib/{triplet}"]
    if libdir != "lib":
        dirs += [f"/{libdir}", f"/usr/{libdir}"]
    return (*dirs, "/lib", "/usr/lib")


def _ld_so_conf(index: FileIndex) -> tuple[str, ...]:
    """The directories listed by ``/etc/ld.so.conf`` and the files it includes (globs)."""
    out: list[str] = []
    seen: set[str] = set()

    def read(path: str, depth: int) -> None:
        if depth > 8 or path in seen:
            return
        seen.add(path)
        text = index.texts.get(path)
        if text is None:
            return
        for raw in text.splitlines():
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            if line.startswith("include ") or line.startswith("include\t"):
                for pattern in line.split()[1:]:
                    full = pattern.lstrip("/") if pattern.startswith("/") else posixpath.join("etc", pattern)
                    for match in sorted(p for p in index.texts if fnmatch.fnmatchcase(p, full)):
                        read(match, depth + 1)
            elif line.startswith("hwcap "):
                continue
            else:
                for word in line.replace(",", " ").split():
                    directory = word.split("=", 1)[0]  # old "DIR=TYPE" entries
                    if directory.startswith("/") and directory not in out:
                        out.append(directory)

    read("etc/ld.so.conf", 0)
    return tuple(out)


def _musl_path(index: FileIndex) -> tuple[str, ...] | None:
    for path, text in index.texts.items():
        if fnmatch.fnmatchcase(path, "etc/ld-musl-*.path"):
            return tuple(d for d in text.replace(":", "\n").split() if d.startswith("/"))
    return None


def _expand(entry: str, origin: str, platform: Platform, identity: ElfIdentity) -> str | None:
    """An RPATH/RUNPATH entry with ``$ORIGIN``, ``$LIB`` and ``$PLATFORM`` expanded; None for an
    empty (current directory) or relative entry, which depends on where the program runs."""
    arch = platform.normalized().architecture
    lib = _MULTIARCH.get(arch, ("", "lib"))[1] if identity.elf_class == 64 else "lib"
    for token, value in (("ORIGIN", origin), ("LIB", lib), ("PLATFORM", _AT_PLATFORM.get(arch, arch))):
        entry = entry.replace("${" + token + "}", value).replace("$" + token, value)
    if not entry.startswith("/"):
        return None
    return posixpath.normpath(entry)


@dataclass(frozen=True)
class _Elf:
    path: str  # absolute, where it landed in the image
    package: str
    info: ElfInfo


class _Search:
    """The loader's search for one image: the directories every object shares."""

    def __init__(self, index: FileIndex, env: Sequence[str], platform: Platform) -> None:
        self.index = index
        self.platform = platform
        library_path = next((e.partition("=")[2] for e in env if e.startswith("LD_LIBRARY_PATH=")), "")
        entries = library_path.replace(";", ":").split(":")
        self.ld_library_path = tuple(d for d in entries if d.startswith("/"))
        self.conf = _ld_so_conf(index)
        self.glibc_defaults = default_directories(platform)
        self.musl_dirs = _musl_path(index) or default_directories(platform, musl=True)

    def directories(self, elf: _Elf, inherited: Sequence[str] = ()) -> list[tuple[str, str]]:
        """Every directory searched for ``elf``'s needed libraries, in order, with why."""
        info = elf.info
        origin = posixpath.dirname(elf.path)

        def expanded(entries: Iterable[str]) -> list[str]:
            out = []
            for entry in entries:
                value = _expand(entry, origin, self.platform, info.identity)
                if value is not None:
                    out.append(value)
            return out

        dirs: list[tuple[str, str]] = []
        musl = info.interpreter is not None and posixpath.basename(info.interpreter).startswith("ld-musl")
        if not info.runpath:
            dirs += [(d, "RPATH") for d in expanded(info.rpath)]
            dirs += [(d, "RPATH of a loader") for d in inherited]
        dirs += [(d, "LD_LIBRARY_PATH") for d in self.ld_library_path]
        dirs += [(d, "RUNPATH") for d in expanded(info.runpath)]
        if musl:
            dirs += [(d, "musl default") for d in self.musl_dirs]
        else:
            dirs += [(d, "ld.so.conf") for d in self.conf]
            dirs += [(d, "default") for d in self.glibc_defaults]
        seen: set[str] = set()
        unique = []
        for directory, why in dirs:
            if directory not in seen:
                seen.add(directory)
                unique.append((directory, why))
        return unique

    def find(self, name: str, elf: _Elf, directories: Sequence[tuple[str, str]]) -> str | None:
        """Where the loader finds library ``name`` for ``elf``: its real path, or None."""
        if "/" in name:
            found = self.index.file(name)
            return found[0] if found and self._fits(found[1], elf) else None
        for directory, _ in directories:
            found = self.index.file(f"{directory}/{name}")
            if found is not None and self._fits(found[1], elf):
                return found[0]
        return None

    @staticmethod
    def _fits(identity: ElfIdentity | None, elf: _Elf) -> bool:
        # A file that is not ELF (a linker script named libc.so) is not loadable; one of
        # another class or machine is skipped, as the loader skips it.
        return identity is not None and identity.compatible(elf.info.identity)


def _interpreter_finding(search: _Search, elf: _Elf) -> Finding | None:
    interpreter = elf.info.interpreter
    if not interpreter:
        return None
    found = search.index.file(interpreter)
    if found is not None:
        return None
    resolved = search.index.resolve(interpreter)
    detail = f" (it resolves to /{resolved})" if resolved and resolved != interpreter.lstrip("/") else ""
    return Finding("missing-interpreter", elf.path, elf.package, interpreter, detail=detail)


def _inherited_rpaths(search: _Search, elves: Sequence[_Elf]) -> dict[str, list[str]]:
    """For each package library, the DT_RPATH entries of the objects that load it, up to the
    package program: glibc searches them when the library itself has no DT_RUNPATH (an
    object with DT_RUNPATH contributes no DT_RPATH, as glibc ignores it then)."""
    by_path = {e.path.lstrip("/"): e for e in elves}
    inherited: dict[str, list[str]] = {}

    def own_rpath(elf: _Elf) -> list[str]:
        return [d for d, why in search.directories(elf) if why == "RPATH"]

    for program in elves:
        if program.info.interpreter is None:
            continue
        stack: list[tuple[_Elf, list[str]]] = [(program, [])]
        visited: set[str] = {program.path}
        while stack:
            current, chain = stack.pop()
            below = own_rpath(current) + [d for d in chain if d not in own_rpath(current)]
            if not below:
                continue
            directories = search.directories(current, chain)
            for name in current.info.needed:
                found = search.find(name, current, directories)
                library = by_path.get(found) if found is not None else None
                if library is None or library.path in visited:
                    continue
                visited.add(library.path)
                known = inherited.setdefault(library.path, [])
                known += [d for d in below if d not in known]
                stack.append((library, below))
    return inherited


def _check_needed(search: _Search, elves: Sequence[_Elf]) -> list[Finding]:
    findings: list[Finding] = []
    unresolved: list[tuple[_Elf, str]] = []
    for elf in elves:
        directories = search.directories(elf)
        for name in elf.info.needed:
            if search.find(name, elf, directories) is None:
                unresolved.append((elf, name))
    inherited = (
        _inherited_rpaths(search, elves)
        if any(elf.info.interpreter is None and not elf.info.runpath for elf, _ in unresolved)
        else {}
    )
    for elf, name in unresolved:
        directories = search.directories(elf, inherited.get(elf.path, ()))
        if search.find(name, elf, directories) is None:
            findings.append(Finding("missing-library", elf.path, elf.package, name, tuple(directories)))
    return findings


def _platform_text(platform: Platform, expected: ElfIdentity) -> str:
    return f"{platform} ({expected.describe()})"


def check_closure(
    image: Image,
    packages: Mapping[Digest, str],
    *,
    pool: RegistryPool,
    cache: BlobCache,
    jobs: int = 4,
    progress: ProgressCallback = null_progress,
    memo: dict[tuple[Digest, bool], LayerSummary] | None = None,
    keep_in_cache: bool = False,
) -> ClosureReport:
    """Check that every ELF file of the layers named in ``packages`` (layer digest -> the
    package's label) runs in ``image``: its interpreter and every DT_NEEDED library found as
    the loader would find them, its machine the platform's.

    Every other layer (the base's, a profile-script layer) only provides files. Layers are
    summarised once each (``jobs`` at a time) and the summaries kept as cache records by
    digest, so a base is read from its registry once per machine and never stored whole.
    ``memo`` keeps the summaries in memory across the calls of one run (several images of a
    stack share their base and lower layers); ``keep_in_cache`` stores the remote layers it
    reads in the cache, for a destination that needs their bytes too.
    """
    platform = image.config.platform
    layers: list[Layer] = []
    seen: set[Digest] = set()
    for layer in image.layers:
        if layer.digest not in seen and not layer.descriptor.urls:
            seen.add(layer.digest)
            layers.append(layer)
    # The report is a function of the layers' bytes (their digests), which are packages and
    # under what label, the environment and the platform: the same image checked again (a
    # warm build) takes it from its record, without even stacking the summaries.
    report_key = _report_key(image, packages)
    record = cache.get_record(report_key)
    if record is not None:
        try:
            report = ClosureReport.from_json(record)
        except (ValueError, KeyError, TypeError):
            pass  # damaged, or from another version: check again
        else:
            for layer in layers:
                label = packages.get(layer.digest)
                progress(
                    ProgressEvent(
                        "layer-checked", label or str(layer.digest), layer.descriptor.size, "from its record"
                    )
                )
            return report

    def summarise(layer: Layer) -> LayerSummary:
        label = packages.get(layer.digest)
        key = (layer.digest, label is not None)
        known = memo.get(key) if memo is not None else None
        if known is not None:
            return known
        what = f"layer {layer.digest} ({'package ' + label if label else 'base'})"
        summary, read = layer_summary(
            layer, inspect_elves=label is not None, pool=pool, cache=cache, what=what, keep=keep_in_cache
        )
        progress(
            ProgressEvent(
                "layer-checked",
                label or str(layer.digest),
                layer.descriptor.size,
                "read" if read else "from its record",
            )
        )
        if memo is not None:
            memo[key] = summary
        return summary

    workers = max(1, min(jobs, len(layers)))
    if workers == 1:
        summaries = {layer.digest: summarise(layer) for layer in layers}
    else:
        with ThreadPoolExecutor(max_workers=workers) as executor:
            summaries = {
                layer.digest: summary
                for layer, summary in zip(layers, executor.map(summarise, layers), strict=True)
            }
    index = FileIndex()
    elves: list[_Elf] = []
    findings: list[Finding] = []
    for layer in image.layers:
        summary = summaries.get(layer.digest)
        if summary is None:
            continue
        landed = index.apply(summary)
        label = packages.get(layer.digest)
        if label is None:
            continue
        for path, info in landed:
            if isinstance(info, str):
                findings.append(Finding("unreadable-elf", f"/{path}", label, detail=info))
            else:
                elves.append(_Elf(f"/{path}", label, info))
    expected = expected_machine(platform)
    runnable: list[_Elf] = []
    for elf in elves:
        if expected is not None and not elf.info.identity.compatible(expected):
            findings.append(
                Finding(
                    "wrong-machine",
                    elf.path,
                    elf.package,
                    elf.info.identity.describe(),
                    detail=_platform_text(platform, expected),
                )
            )
        else:
            runnable.append(elf)
    search = _Search(index, image.config.env, platform)
    for elf in runnable:
        finding = _interpreter_finding(search, elf)
        if finding is not None:
            findings.append(finding)
    findings += _check_needed(search, runnable)
    order = {label: i for i, label in enumerate(dict.fromkeys(packages.values()))}
    findings.sort(key=lambda f: (order.get(f.package, len(order)), f.binary, f.kind))
    report = ClosureReport(
        str(platform),
        len(elves) + sum(1 for f in findings if f.kind == "unreadable-elf"),
        len(set(packages.values())),
        tuple(findings),
    )
    cache.put_record(report_key, report.to_json())
    return report


def _report_key(image: Image, packages: Mapping[Digest, str]) -> str:
    """The record key of the check's report on ``image`` (see :func:`check_closure`)."""
    identity = {
        "imagesmith": __version__,  # the rules of the check are this version's
        "platform": image.config.platform.to_json(),
        "env": list(image.config.env),
        "layers": [
            [str(layer.digest), packages.get(layer.digest)]
            for layer in image.layers
            if not layer.descriptor.urls
        ],
        "labels": list(dict.fromkeys(packages.values())),
    }
    text = json.dumps(identity, sort_keys=True, separators=(",", ":"))
    return f"closure/v{RECORD_VERSION}/report/{hashlib.sha256(text.encode()).hexdigest()}"


def closure_gate(report: ClosureReport, mode: CheckMode) -> None:
    """Act on ``report`` as ``mode`` says: ``error`` raises :class:`ClosureError` when there
    is a finding; otherwise nothing (the report travels in the result)."""
    if mode != "error" or report.ok:
        return
    first = report.findings[0]
    more = len(report.findings) - 1
    raise ClosureError(
        f"{report.summary()}: {first.line()}"
        + (f" (and {more} more)" if more else "")
        + "; nothing was written: add the missing packages, or build with --check=warn",
        report,
    )
