"""What the dynamic loader reads from an ELF file: machine, class, interpreter, needed
libraries, RPATH/RUNPATH and soname.

:func:`read_elf` parses a whole file with pyelftools (a maintained parser: the dynamic
section, its string table and the program headers are its business, not ours) and turns every
way a file can be broken or lie about itself into one :class:`ElfFormatError` naming the file,
never a traceback: pyelftools raises many exception types on hostile input (its own, struct and
construct errors, ``ValueError``, ``IndexError`` ...), so they are caught at this boundary.
:func:`elf_identity` reads only the first 20 bytes (class, byte order, type, machine), which is
all that is needed for the many libraries of a base image that are never checked themselves.

:func:`expected_machine` maps an OCI platform to the ELF machine and class its binaries have.
"""

from __future__ import annotations

import functools
import struct
from dataclasses import dataclass
from typing import IO, Any, cast

from imagesmith.errors import ImagesmithError
from imagesmith.oci.model import Platform

__all__ = [
    "ELF_MAGIC",
    "ElfFormatError",
    "ElfIdentity",
    "ElfInfo",
    "elf_identity",
    "expected_machine",
    "machine_name",
    "read_elf",
]

ELF_MAGIC = b"\x7fELF"
# How many entries of one dynamic section are read at most: real files have tens; a crafted
# DT_NULL-less section would otherwise make pyelftools walk the whole file entry by entry.
MAX_DYNAMIC_TAGS = 65536
_TYPES = {1: "relocatable", 2: "executable", 3: "shared", 4: "core"}
# OCI architecture -> (e_machine, ELF class, little endian). The ELF machine numbers are the
# gABI's (EM_X86_64 62, EM_AARCH64 183, ...; a test checks them against pyelftools' table,
# which is loaded only to name a machine); ppc64 big endian and ppc64le share EM_PPC64.
_PLATFORM_MACHINES: dict[str, tuple[int, int, bool]] = {
    "amd64": (62, 64, True),
    "arm64": (183, 64, True),
    "386": (3, 32, True),
    "arm": (40, 32, True),
    "ppc64le": (21, 64, True),
    "ppc64": (21, 64, False),
    "s390x": (22, 64, False),
    "riscv64": (243, 64, True),
    "mips64le": (8, 64, True),
    "loong64": (258, 64, True),  # EM_LOONGARCH, newer than some pyelftools releases
}


class ElfFormatError(ImagesmithError):
    """An ELF file that is truncated, corrupt or lies about its headers or sections."""


@functools.cache
def _machine_names() -> dict[int, str]:
    from elftools.elf.enums import ENUM_E_MACHINE

    return {number: name for name, number in ENUM_E_MACHINE.items() if name != "_default_"}


def machine_name(number: int) -> str:
    """``EM_X86_64`` for 62: the gABI name of an ``e_machine`` value, or ``EM_<number>``."""
    return _machine_names().get(number, f"EM_{number}")


@dataclass(frozen=True)
class ElfIdentity:
    """The first 20 bytes of an ELF file: class (32/64), byte order, type and machine."""

    elf_class: int
    little_endian: bool
    kind: str  # relocatable, executable, shared, core, or other
    machine: int

    def compatible(self, other: ElfIdentity) -> bool:
        """Whether the loader would load one for the other: same class, byte order, machine."""
        return (self.elf_class, self.little_endian, self.machine) == (
            other.elf_class,
            other.little_endian,
            other.machine,
        )

    def describe(self) -> str:
        """``EM_X86_64 (64-bit, little endian)``."""
        order = "little" if self.little_endian else "big"
        return f"{machine_name(self.machine)} ({self.elf_class}-bit, {order} endian)"


def elf_identity(head: bytes) -> ElfIdentity | None:
    """The identity in an ELF file's first bytes, or None when ``head`` is not an ELF header
    (too short, wrong magic, unknown class or byte order)."""
    if len(head) < 20 or not head.startswith(ELF_MAGIC):
        return None
    elf_class = {1: 32, 2: 64}.get(head[4])
    if elf_class is None or head[5] not in (1, 2):
        return None
    little = head[5] == 1
    e_type, e_machine = struct.unpack("<HH" if little else ">HH", head[16:20])
    return ElfIdentity(elf_class, little, _TYPES.get(e_type, "other"), e_machine)


def expected_machine(platform: Platform) -> ElfIdentity | None:
    """The identity a binary for ``platform`` has (type left as ``shared``), or None for an
    architecture this table does not know (then nothing is reported as the wrong machine)."""
    known = _PLATFORM_MACHINES.get(platform.normalized().architecture)
    if known is None:
        return None
    machine, elf_class, little = known
    return ElfIdentity(elf_class, little, "shared", machine)


@dataclass(frozen=True)
class ElfInfo:
    """What the dynamic loader reads from an ELF file.

    ``needed`` lists DT_NEEDED in order; ``rpath`` and ``runpath`` the colon-separated entries
    of DT_RPATH and DT_RUNPATH, tokens (``$ORIGIN``...) unexpanded; ``interpreter`` is PT_INTERP.
    """

    identity: ElfIdentity
    interpreter: str | None
    needed: tuple[str, ...]
    rpath: tuple[str, ...]
    runpath: tuple[str, ...]
    soname: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            "class": self.identity.elf_class,
            "little_endian": self.identity.little_endian,
            "type": self.identity.kind,
            "machine": self.identity.machine,
            "interpreter": self.interpreter,
            "needed": list(self.needed),
            "rpath": list(self.rpath),
            "runpath": list(self.runpath),
            "soname": self.soname,
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> ElfInfo:
        """The inverse of :meth:`to_json` (a cache record written by this module)."""
        identity = ElfIdentity(
            int(obj["class"]), bool(obj["little_endian"]), str(obj["type"]), int(obj["machine"])
        )
        return cls(
            identity,
            obj.get("interpreter"),
            tuple(obj["needed"]),
            tuple(obj["rpath"]),
            tuple(obj["runpath"]),
            obj.get("soname"),
        )


def _text(value: object, what: str) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "surrogateescape")
    if isinstance(value, str):
        return value
    raise ElfFormatError(f"{what}: a string of the dynamic section is not text")


def _split_path(value: str) -> tuple[str, ...]:
    return tuple(value.split(":")) if value else ()


class _Clamped:
    """``stream`` with every seek kept inside the file: a header that points past the end reads
    as truncated (an empty read) and one before the start is an error, the same whether the
    file is on disk (which refuses a far seek) or spooled in memory (which overflows)."""

    def __init__(self, stream: IO[bytes], what: str) -> None:
        self._stream = stream
        self._what = what
        stream.seek(0, 2)
        self._size = stream.tell()
        stream.seek(0)

    def seek(self, offset: int, whence: int = 0) -> int:
        base = (0, self._stream.tell(), self._size)[whence]
        target = base + offset
        if target < 0:
            raise ElfFormatError(f"{self._what} is truncated or corrupt (a header points before its start)")
        return self._stream.seek(min(target, self._size))

    def tell(self) -> int:
        return self._stream.tell()

    def read(self, n: int = -1) -> bytes:
        return self._stream.read(n)


def _read(raw: IO[bytes], what: str) -> ElfInfo:
    stream = cast(IO[bytes], _Clamped(raw, what))
    head = stream.read(20)
    identity = elf_identity(head)
    if identity is None:
        raise ElfFormatError(f"{what} is not an ELF file (bad magic, class or byte order)")
    stream.seek(0)
    # The parser (and its DWARF readers) is loaded when a file is parsed: a warm build whose
    # layers are summarised in the cache never needs it.
    from elftools.elf.dynamic import DynamicSegment
    from elftools.elf.elffile import ELFFile
    from elftools.elf.segments import InterpSegment

    elf = ELFFile(stream)
    interpreter: str | None = None
    needed: list[str] = []
    rpath: list[str] = []
    runpath: list[str] = []
    soname: str | None = None
    dynamic_seen = False
    for segment in elf.iter_segments():
        if isinstance(segment, InterpSegment):
            interpreter = _text(segment.get_interp_name(), what).rstrip("\0")
        elif isinstance(segment, DynamicSegment) and not dynamic_seen:
            dynamic_seen = True  # the loader reads the first one only
            for count, tag in enumerate(segment.iter_tags()):
                if count >= MAX_DYNAMIC_TAGS:
                    raise ElfFormatError(f"{what}: its dynamic section has no end (no DT_NULL)")
                name = tag.entry.d_tag
                if name == "DT_NEEDED":
                    needed.append(_text(getattr(tag, "needed", None), what))
                elif name == "DT_RPATH":
                    rpath.extend(_split_path(_text(getattr(tag, "rpath", None), what)))
                elif name == "DT_RUNPATH":
                    runpath.extend(_split_path(_text(getattr(tag, "runpath", None), what)))
                elif name == "DT_SONAME":
                    soname = _text(getattr(tag, "soname", None), what)
                elif name == "DT_NULL":
                    break
    return ElfInfo(identity, interpreter, tuple(needed), tuple(rpath), tuple(runpath), soname)


def read_elf(stream: IO[bytes], what: str) -> ElfInfo:
    """Parse the seekable ELF file ``stream`` (named ``what`` in messages).

    A truncated file, a header or section that points outside the file, a string table that
    is missing or not text, or any other inconsistency raises :class:`ElfFormatError` with
    one line naming ``what`` and the problem.
    """
    try:
        return _read(stream, what)
    except ElfFormatError:
        raise
    except RecursionError:
        raise ElfFormatError(f"{what}: its headers refer to each other in a loop") from None
    except MemoryError:
        raise ElfFormatError(f"{what}: its headers announce sizes too large to read") from None
    except Exception as exc:  # any exception of the parser on hostile input
        # pyelftools raises its own errors, construct/struct errors, ValueError, IndexError,
        # KeyError, AttributeError... on a file that lies about itself: all mean the same here.
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise ElfFormatError(f"{what} is truncated or corrupt ({reason})") from None
