"""Progress events: what the pipeline reports while it works.

The library never prints; it calls a user-supplied callback with :class:`ProgressEvent`
values, from whichever thread does the work (a callback must be thread-safe). The CLI renders
them (:mod:`imagesmith.progressview`: live lines on a terminal, plain periodic lines
otherwise); a generator program can log or aggregate them.

Two sorts of events: a finished step (``layer-built``, ``blob-uploaded``, ...) and the
``*-progress`` events of a step under way, which say how many bytes are done (``size``) of how
many (``total``, 0 while unknown) for one subject; a subject's step is over when done reaches a
known total or its finished event arrives. They come at most about once per MiB moved.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

__all__ = ["PROGRESS_KINDS", "EventKind", "Meter", "ProgressCallback", "ProgressEvent", "null_progress"]

EventKind = Literal[
    "resolve",  # base manifest resolved
    "layer-progress",  # a layer is being archived (size: uncompressed bytes so far, total: the input's)
    "upload-progress",  # a blob is being uploaded (subject: its digest, or the layer's name while built)
    "download-progress",  # a blob is being downloaded into the cache (subject: its digest)
    "unpack-progress",  # a layer is being unpacked (size: compressed bytes read, total: the blob's size)
    "layer-built",  # a package layer is in the cache (detail: digest)
    "layer-reused",  # an unchanged input's layer was found in the cache; nothing was read
    "blob-exists",  # the target already had a blob
    "blob-mounted",  # a blob was mounted from another repository
    "blob-uploaded",  # a blob was uploaded
    "blob-fetched",  # a blob was downloaded into the cache
    "manifest-pushed",
    "layer-unpacked",  # a layer was unpacked (subject: its digest)
    "layer-checked",  # a layer was summarised for the runtime-closure check (detail: read or record)
    "referrer-pushed",  # an artifact (an SBOM) was attached to an image (detail: its digest)
    "signed",  # a signature was pushed for an image (detail: the signature tag)
]


PROGRESS_KINDS: frozenset[str] = frozenset(
    {"layer-progress", "upload-progress", "download-progress", "unpack-progress"}
)


@dataclass(frozen=True)
class ProgressEvent:
    """One step of the work: its kind, a subject (package, blob or reference) and a size.

    For the ``*-progress`` kinds, ``size`` is the bytes done so far and ``total`` the bytes
    the step will move (0 when not known yet)."""

    kind: EventKind
    subject: str
    size: int = 0
    detail: str = ""
    total: int = 0


ProgressCallback = Callable[[ProgressEvent], None]


def null_progress(event: ProgressEvent) -> None:
    """The default callback: ignore every event."""


# A *-progress event at most once per this many bytes (and at the end).
_STEP = 1 << 20


class Meter:
    """Bytes moved for one subject, reported as ``kind`` events at most once per MiB.

    :meth:`add` counts bytes (one caller at a time), :meth:`reach` moves to an absolute
    position (a resumed or re-sent transfer never counts twice), :meth:`done` reports the end.
    """

    def __init__(self, progress: ProgressCallback, kind: EventKind, subject: str, total: int = 0) -> None:
        self._progress = progress
        self._kind: EventKind = kind
        self.subject = subject
        self.total = total
        self.done_bytes = 0
        self._reported = -1

    def add(self, n: int) -> None:
        self.reach(self.done_bytes + n)

    def reach(self, position: int) -> None:
        if position <= self.done_bytes and self._reported >= 0:
            return
        self.done_bytes = max(self.done_bytes, position)
        if self._reported < 0 or self.done_bytes - self._reported >= _STEP:
            self._emit()

    def done(self) -> None:
        """The whole step is done: report the final count (as the total too, if unknown)."""
        if self._reported < 0 and self.done_bytes == 0 and self.total <= 0:
            return  # nothing was reported, and there is nothing to report
        if self.total <= 0:
            self.total = self.done_bytes
        self.done_bytes = max(self.done_bytes, self.total)
        self._emit()

    def _emit(self) -> None:
        self._reported = self.done_bytes
        self._progress(ProgressEvent(self._kind, self.subject, self.done_bytes, total=self.total))
