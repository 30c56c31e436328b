"""What the command line writes, and what it exits with.

Human output goes through :func:`say` (every control character escaped) or plain ``print``
where the text is imagesmith's own; ``--json`` through :func:`emit` / :func:`emit_list`
(exact JSON); raw documents through :func:`write_raw`; files through :func:`write_output`
(whole or not at all). Standard output is wrapped (:class:`Output`) so that a write that fails
(``| head``, ``> /dev/full``) is told apart from the library's own errors, and
:func:`exit_code` maps the library's error categories to the exit codes the table in
:mod:`imagesmith.cli` lists.
"""

from __future__ import annotations

import io
import json
import os
import re
import sys
import textwrap
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TextIO

from imagesmith.errors import (
    DISK_FULL_ERRNOS,
    CacheError,
    DaemonError,
    DigestFormatError,
    DiskFullError,
    FileSystemError,
    ImagesmithError,
    IntegrityError,
    PackageError,
    ReferenceFormatError,
    RegistryError,
    TemplateError,
    UnpackError,
    UsageError,
    file_error,
)

# C0 controls, DEL, C1 controls, and lone surrogates: those from U+DC80 stand for bytes that
# were not UTF-8 (names from an old image, decoded with surrogateescape); any other comes from
# a JSON "\\udXXX" escape in a config. None of them can be printed as they are.
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    if 0xDC80 <= code <= 0xDCFF:
        return f"\\x{code - 0xDC00:02x}"
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def shown(text: str) -> str:
    """``text`` safe to print: every control character and undecodable byte as a ``\\xNN``
    escape, so what an image says (names, Env, labels, history) can neither drive the terminal
    (escape sequences) nor break the encoder. Human output only: ``--json`` stays exact JSON."""
    return _UNPRINTABLE.sub(_escape, text)


def say(text: str, out: TextIO) -> None:
    print(shown(text), file=out)


def human(size: int) -> str:
    """A size for people: ``512 B``, ``1.5 MB``."""
    value = float(size)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{size} B"


def emit(obj: dict[str, Any], stdout: TextIO) -> None:
    print(json.dumps(obj, indent=2), file=stdout)


def emit_list(objects: Iterable[dict[str, Any]], stdout: TextIO) -> None:
    """Print a JSON list, one element at a time: the same text as ``json.dumps(list,
    indent=2)``, without every element's document in memory at once (a 1,000-image run's
    list took 120 MB)."""
    first = True
    for obj in objects:
        stdout.write("[\n" if first else ",\n")
        stdout.write(textwrap.indent(json.dumps(obj, indent=2), "  "))
        first = False
    print("[]" if first else "\n]", file=stdout)


def write_raw(data: bytes, stdout: TextIO) -> None:
    """Document bytes exactly as stored; on a terminal, with control characters escaped (and a
    final newline) so that a hostile document cannot drive the terminal."""
    if stdout.isatty():
        text = data.decode("utf-8", "surrogateescape")
        print("\n".join(shown(line).replace("\\x09", "\t") for line in text.split("\n")), file=stdout)
        return
    buffer = getattr(stdout, "buffer", None)
    if buffer is None:  # a text-only stream (tests): the bytes decoded
        stdout.write(data.decode("utf-8", "replace"))
        return
    stdout.flush()
    buffer.write(data)
    buffer.flush()


def write_output(text: str, target: Path | None, stdout: TextIO) -> None:
    """``text`` to standard output, or to ``target`` whole (through a temporary file) or not at all."""
    if target is None:
        stdout.write(text)
        return
    tmp = target.with_name(target.name + ".tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(target)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise UsageError(f"cannot write {target}: {exc.strerror or exc}") from None


# Exit code 2: what the user gave is wrong (docs/cli.md, "Exit codes").
_USAGE = (UsageError, ReferenceFormatError, DigestFormatError, PackageError, TemplateError)


def exit_code(error: ImagesmithError) -> int:
    """The exit code of ``error``'s category (the table in :mod:`imagesmith.cli`)."""
    if isinstance(error, DiskFullError) or os_cause(error) in DISK_FULL_ERRNOS:
        return 6  # before integrity: a layer cut short by a full disk is no corrupt layer
    if isinstance(error, FileSystemError | CacheError):
        return 5
    if isinstance(error, _USAGE):
        return 2
    if isinstance(error, RegistryError | DaemonError):
        return 3
    if isinstance(error, IntegrityError | UnpackError):
        return 4
    if os_cause(error) is not None:
        return 5  # a layer or layout path that could not be read or written
    return 1


def os_cause(error: BaseException) -> int | None:
    """The errno of the OSError ``error`` was raised while handling (``raise ... from None``
    keeps it as the context), if any: the library's per-module errors name the path and the
    cause in their message; this gives them the exit code of a local file-system failure."""
    context = error.__context__
    # Something that is not there (no such file, a file where a directory should be) is a wrong
    # input the message names, not a file system that failed: it keeps its module's category.
    absent = FileNotFoundError | NotADirectoryError | ConnectionError
    if isinstance(context, OSError) and not isinstance(context, absent):
        return context.errno
    return None


class OutputError(Exception):
    """Writing standard output failed: a closed pipe (``| head``), a full disk (``> /dev/full``)."""

    def __init__(self, error: OSError) -> None:
        super().__init__(str(error))
        self.error = error


class Output(io.TextIOBase):
    """Standard output for the commands: a write or flush that fails raises :class:`OutputError`,
    told apart from the library's own OSErrors (which name their paths)."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def write(self, s: str) -> int:
        try:
            return self.stream.write(s)
        except OSError as exc:
            raise OutputError(exc) from None

    def flush(self) -> None:
        try:
            self.stream.flush()
        except OSError as exc:
            raise OutputError(exc) from None

    def isatty(self) -> bool:
        return self.stream.isatty()

    def fileno(self) -> int:
        return self.stream.fileno()

    def close(self) -> None:
        """Leave the stream open (and unflushed: main flushes it) when this wrapper goes away."""


def output_failed(error: OSError, stream: TextIO, stderr: TextIO) -> int:
    """A closed pipe ends the command quietly with 141 (128 + SIGPIPE, what a shell reports for
    `cmd | head` when cmd dies of SIGPIPE); any other failure is one line (5, or 6 for a full disk)."""
    if stream is sys.stdout or stream is sys.__stdout__:
        # What is left in the buffer would fail again when Python flushes it at exit.
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, stream.fileno())
            os.close(devnull)
        except (OSError, ValueError):
            pass
    if isinstance(error, BrokenPipeError):
        return 141
    failure = file_error(
        "write", None, error, "free space on the device it goes to" if error.errno in DISK_FULL_ERRNOS else ""
    )
    say(f"imagesmith: error: {failure}", stderr)
    return exit_code(failure)
