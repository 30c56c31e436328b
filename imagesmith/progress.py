"""Progress events: what the pipeline reports while it works.

The library never prints; it calls a user-supplied callback with :class:`ProgressEvent`
values. The CLI renders them (a status line on a terminal, nothing otherwise); a generator
program can log or aggregate them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

__all__ = ["EventKind", "ProgressCallback", "ProgressEvent", "null_progress"]

EventKind = Literal[
    "resolve",  # base manifest resolved
    "layer-progress",  # a layer is being archived (size: uncompressed bytes so far)
    "layer-built",  # a package layer is in the cache (detail: digest)
    "layer-reused",  # an unchanged input's layer was found in the cache; nothing was read
    "blob-exists",  # the target already had a blob
    "blob-mounted",  # a blob was mounted from another repository
    "blob-uploaded",  # a blob was uploaded
    "blob-fetched",  # a blob was downloaded into the cache
    "manifest-pushed",
    "layer-checked",  # a layer was summarised for the runtime-closure check (detail: read or record)
    "referrer-pushed",  # an artifact (an SBOM) was attached to an image (detail: its digest)
    "signed",  # a signature was pushed for an image (detail: the signature tag)
]


@dataclass(frozen=True)
class ProgressEvent:
    """One step of the work: its kind, a subject (package, blob or reference) and a size."""

    kind: EventKind
    subject: str
    size: int = 0
    detail: str = ""


ProgressCallback = Callable[[ProgressEvent], None]


def null_progress(event: ProgressEvent) -> None:
    """The default callback: ignore every event."""
