"""Stopping work on request: what Ctrl-C does.

Work runs in worker threads (layer builds, parallel uploads and downloads, an upload fed while
its layer is compressed); only the main thread gets ``SIGINT``. The program that owns the
process (the CLI) calls :func:`interrupt` from its handler; every loop that moves data checks
:func:`check` between chunks (a request body's reads, a download's reads, the layer builder's
writes, the unpacker), so each worker stops within one chunk by raising :class:`Interrupted`.
On its way out each one cleans up as after any failure: upload sessions are cancelled
(``DELETE``), temp files removed, and no manifest or tag is written, since every request but
a ``DELETE`` refuses to start once interrupted.

A request body under way is let finish for up to :data:`BODY_GRACE` seconds
(``check(BODY_GRACE)``) before it is cut: a registry keeps the bytes of a cut ``PATCH`` but not
the client's idea of the session's offset, and then refuses the ``DELETE`` that would cancel
it (the CNCF distribution registry does). Uploads go in chunks of a few MiB, so one usually
finishes within the grace and the session is cancelled cleanly.

The flag is process-wide, like the signal it stands for; :func:`reset` clears it (a program
that carries on after an interrupt, a test).
"""

from __future__ import annotations

import threading
import time

__all__ = ["BODY_GRACE", "Interrupted", "check", "interrupt", "interrupted", "reset", "wait"]

# Seconds a request body being sent may go on after an interrupt (see the module docstring).
BODY_GRACE = 1.0

_flag = threading.Event()
_since: list[float] = []  # when interrupt() was first called


class Interrupted(KeyboardInterrupt):
    """Work stopped because :func:`interrupt` was called.

    A :class:`KeyboardInterrupt`, not an :class:`~imagesmith.errors.ImagesmithError`: no retry,
    fallback or ``except Exception`` handler takes it for a failure to work around, and a
    caller that handles Ctrl-C handles it too."""


def interrupt() -> None:
    """Ask every running transfer and build to stop (safe from a signal handler)."""
    if not _since:
        _since.append(time.monotonic())
    _flag.set()


def interrupted() -> bool:
    """Whether :func:`interrupt` was called (and not :func:`reset` since)."""
    return _flag.is_set()


def check(grace: float = 0.0) -> None:
    """Raise :class:`Interrupted` if :func:`interrupt` was called (at least ``grace`` seconds ago)."""
    if _flag.is_set() and (grace <= 0 or not _since or time.monotonic() - _since[0] >= grace):
        raise Interrupted("interrupted")


def wait(seconds: float) -> None:
    """Sleep ``seconds`` (a retry's back-off), cut short by :func:`interrupt`, which raises."""
    if _flag.wait(seconds):
        raise Interrupted("interrupted")


def reset() -> None:
    """Clear the flag: work may start again."""
    _flag.clear()
    _since.clear()
