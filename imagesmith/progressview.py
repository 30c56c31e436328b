"""How the CLI shows progress events (:mod:`imagesmith.progress`) on stderr.

On a terminal: finished steps scroll as lines, and below them a live block is redrawn in
place (at most ten times a second): one line per layer being archived, uploaded, downloaded
or unpacked (bytes done of the total, percentage, rate, time left), and an overall line.
Without a terminal (CI logs): the same finished-step lines, and for a step that takes long
one plain line every ``interval`` seconds (``IMAGESMITH_PROGRESS_INTERVAL``, default 3; 0
reports every MiB), also while no byte moves (a stalled upload says for how long); no escape
sequences. ``quiet``: nothing. ``IMAGESMITH_PROGRESS`` chooses
for the CLI: ``auto`` (the default: live on a terminal, plain otherwise), ``plain``, ``none``.

Only the standard library, so ``imagesmith --version`` pays nothing for it.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar, TextIO

from imagesmith.progress import PROGRESS_KINDS, ProgressEvent

__all__ = ["INTERVAL_ENV", "MODE_ENV", "ProgressView", "human_bytes", "human_duration"]

INTERVAL_ENV = "IMAGESMITH_PROGRESS_INTERVAL"
MODE_ENV = "IMAGESMITH_PROGRESS"

# How far back the rate looks: long enough to be steady, short enough to follow a change.
_WINDOW = 3.0
_MAX_LIVE = 8  # layer lines in the live block; more are summed up in one line


def human_bytes(n: float) -> str:
    """``n`` bytes in decimal units with one decimal (``171.7 MB``), as the CLI's other output."""
    value = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if abs(value) < 1000:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} TB"


def human_duration(seconds: float) -> str:
    """``42s``, ``3m05s``, ``1h02m``."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


@dataclass
class _Rate:
    """Bytes per second over the last few seconds of (time, bytes done) samples."""

    samples: deque[tuple[float, int]] = field(default_factory=deque)

    def add(self, now: float, done: int) -> None:
        self.samples.append((now, done))
        while len(self.samples) > 2 and now - self.samples[1][0] >= _WINDOW:
            self.samples.popleft()

    def per_second(self, now: float) -> float | None:
        if len(self.samples) < 2:
            return None
        (t0, d0), (_, d1) = self.samples[0], self.samples[-1]
        elapsed = now - t0
        return (d1 - d0) / elapsed if elapsed >= 0.2 else None


@dataclass
class _Task:
    kind: str
    subject: str
    started: float
    done: int = 0
    total: int = 0
    rate: _Rate = field(default_factory=_Rate)
    last_line: float = 0.0  # when a plain line last reported it
    moved: float = 0.0  # when its bytes last moved

    @property
    def finished(self) -> bool:
        # An archive's total is its files' bytes, which the tar's headers exceed: a layer is
        # done when its layer-built event says so.
        return self.kind != "layer-progress" and 0 < self.total <= self.done


def _short(subject: str) -> str:
    return subject[:19] if subject.startswith("sha256:") else subject


class ProgressView:
    """A progress callback rendering events on ``stream`` (thread-safe).

    ``live`` defaults to ``stream.isatty()``; ``interval`` is the seconds between the plain
    lines of one long step; ``clock`` and ``width`` are for tests. Call :meth:`close` when the
    work ends or stops, before printing anything else: it erases the live block.
    """

    WORDS: ClassVar[dict[str, str]] = {
        "resolve": "resolved",
        "layer-built": "built layer",
        "layer-reused": "reused layer",
        "layer-unpacked": "unpacked",
        "blob-exists": "already there",
        "blob-mounted": "mounted",
        "blob-uploaded": "uploaded",
        "blob-fetched": "fetched",
        "manifest-pushed": "pushed manifest",
        "layer-checked": "checked layer",
        "referrer-pushed": "attached to",
        "signed": "signed",
    }
    VERBS: ClassVar[dict[str, str]] = {
        "layer-progress": "archiving",
        "upload-progress": "uploading",
        "download-progress": "downloading",
        "unpack-progress": "unpacking",
    }
    # The finished step that ends a progress kind's task of the same subject.
    ENDS: ClassVar[dict[str, str]] = {
        "layer-built": "layer-progress",
        "layer-reused": "layer-progress",
        "blob-uploaded": "upload-progress",
        "blob-fetched": "download-progress",
        "layer-unpacked": "unpack-progress",
    }

    def __init__(
        self,
        stream: TextIO,
        *,
        live: bool | None = None,
        quiet: bool = False,
        interval: float = 3.0,
        clock: Callable[[], float] = time.monotonic,
        width: int | None = None,
    ) -> None:
        self._stream = stream
        self.quiet = quiet
        self.live = (not quiet) and (stream.isatty() if live is None else live)
        self.interval = interval
        self._clock = clock
        self._width = width
        self._tasks: dict[tuple[str, str], _Task] = {}
        self._finished_done = 0  # bytes of the tasks that ended, for the overall line
        self._overall = _Rate()
        self._drawn = 0  # lines of the live block on screen
        self._last_draw = 0.0
        self._lock = threading.Lock()
        # Plain mode: a step whose bytes stop moving still gets its line every interval, from
        # a daemon thread started with the first step and stopped by close().
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None

    @classmethod
    def for_cli(cls, stream: TextIO, *, quiet: bool = False) -> ProgressView:
        """The CLI's view: the mode from :data:`MODE_ENV` (``auto``, ``plain`` or ``none``; ``-q``
        is ``none``), ``interval`` from :data:`INTERVAL_ENV` when it holds a number."""
        try:
            interval = max(0.0, float(os.environ.get(INTERVAL_ENV, "")))
        except ValueError:
            interval = 3.0
        mode = os.environ.get(MODE_ENV, "auto").strip().lower()
        live = False if mode == "plain" else None
        return cls(stream, quiet=quiet or mode == "none", interval=interval, live=live)

    @property
    def stream(self) -> TextIO:
        """The stream, for writing to it directly (warnings): the live block is erased first,
        so such lines land where finished steps do."""
        with self._lock:
            self._erase_block()
        return self._stream

    @property
    def enabled(self) -> bool:
        """Whether anything is shown (not ``quiet``)."""
        return not self.quiet

    def __call__(self, event: ProgressEvent) -> None:
        if self.quiet:
            return
        with self._lock:
            now = self._clock()
            if event.kind in PROGRESS_KINDS:
                self._progress(event, now)
            else:
                self._step(event, now)

    def close(self) -> None:
        """Erase the live block (the work ended or was interrupted)."""
        self._stop.set()
        with self._lock:
            self._tasks.clear()
            self._erase_block()

    def _tick(self) -> None:
        """Plain lines for the steps no event has reported for an interval."""
        while not self._stop.wait(self.interval):
            with self._lock:
                now = self._clock()
                for task in list(self._tasks.values()):
                    if now - task.last_line >= self.interval:
                        task.last_line = now
                        self._print(self._plain(task, now))
                if not self._tasks:
                    self._ticker = None  # the next step starts another
                    return

    def _erase_block(self) -> None:
        if self.live and self._drawn:
            self._stream.write(self._erase())
            self._stream.flush()
            self._drawn = 0

    # -- events
    def _progress(self, event: ProgressEvent, now: float) -> None:
        key = (event.kind, event.subject)
        task = self._tasks.get(key)
        if task is None:
            task = self._tasks[key] = _Task(event.kind, event.subject, now, last_line=now, moved=now)
            if not self.live and self.interval > 0 and self._ticker is None and not self._stop.is_set():
                self._ticker = threading.Thread(target=self._tick, name="imagesmith-progress", daemon=True)
                self._ticker.start()
        if event.size > task.done:
            task.moved = now
        task.done = max(task.done, event.size)
        task.total = event.total or task.total
        task.rate.add(now, task.done)
        self._overall.add(now, self._done_bytes())
        if task.finished:
            self._end(key)
            self._redraw(now, force=True)
            return
        if self.live:
            self._redraw(now)
        elif now - task.last_line >= self.interval:
            task.last_line = now
            self._print(self._plain(task, now))

    def _step(self, event: ProgressEvent, now: float) -> None:
        ends = self.ENDS.get(event.kind)
        if ends is not None:
            self._end((ends, event.subject))
        size = f" ({human_bytes(event.size)})" if event.size else ""
        self._print(f"  {self.WORDS.get(event.kind, event.kind):<16} {_short(event.subject)}{size}")
        self._redraw(now, force=True)

    def _end(self, key: tuple[str, str]) -> None:
        task = self._tasks.pop(key, None)
        if task is not None:
            self._finished_done += max(task.done, task.total)

    def _done_bytes(self) -> int:
        return self._finished_done + sum(t.done for t in self._tasks.values())

    # -- output
    def _print(self, line: str) -> None:
        """A finished line: above the live block on a terminal (then redrawn)."""
        if self.live and self._drawn:
            self._stream.write(self._erase())
            self._drawn = 0
        self._stream.write(line + "\n")
        self._stream.flush()

    def _erase(self) -> str:
        # To the start of the block's first line, then clear to the end of the screen.
        return f"\x1b[{self._drawn}F\x1b[J" if self._drawn else "\r\x1b[J"

    def _redraw(self, now: float, *, force: bool = False) -> None:
        if not self.live or (not force and now - self._last_draw < 0.1):
            return
        self._last_draw = now
        lines = self._block(now)
        width = self._width or self._columns()
        text = "".join(line[: width - 1] + "\n" for line in lines)
        self._stream.write((self._erase() if self._drawn else "") + text)
        self._stream.flush()
        self._drawn = len(lines)

    def _columns(self) -> int:
        """The stream's terminal width: a line that wrapped would break the redraw (the cursor
        moves up by lines), so the terminal's own size wins over ``COLUMNS``."""
        try:
            return os.get_terminal_size(self._stream.fileno()).columns
        except (AttributeError, ValueError, OSError):
            return shutil.get_terminal_size((100, 20)).columns

    def _block(self, now: float) -> list[str]:
        tasks = sorted(self._tasks.values(), key=lambda t: (t.started, t.kind))
        if not tasks:
            return []
        lines = [
            self._row(self.VERBS[t.kind], _short(t.subject), t.done, t.total, t.rate.per_second(now))
            for t in tasks[:_MAX_LIVE]
        ]
        if len(tasks) > _MAX_LIVE:
            lines.append(f"  ... and {len(tasks) - _MAX_LIVE} more")
        known = all(t.total for t in tasks)
        done = self._done_bytes()
        total = self._finished_done + sum(max(t.total, t.done) for t in tasks) if known else 0
        steps = f"{len(tasks)} step{'s' if len(tasks) != 1 else ''} under way"
        lines.append(self._row("overall", steps, done, total, self._overall.per_second(now)))
        return lines

    @staticmethod
    def _row(verb: str, subject: str, done: int, total: int, rate: float | None) -> str:
        amount = f"{human_bytes(min(done, total) if total else done):>10} / "
        if total:
            amount += f"{human_bytes(total):<10} {min(100, done * 100 // total):>3}%"
        else:
            amount += f"{'?':<10}     "
        speed = f"{human_bytes(rate)}/s" if rate else ""
        eta = f"ETA {human_duration((total - done) / rate)}" if rate and total and done < total else ""
        return f"  {verb:<11} {subject:<22.22} {amount}  {speed:>12}  {eta}".rstrip()

    def _plain(self, task: _Task, now: float) -> str:
        rate = task.rate.per_second(now)
        parts = [human_bytes(task.done) + (f" of {human_bytes(task.total)}" if task.total else "")]
        if task.total:
            parts[0] += f" ({min(100, task.done * 100 // task.total)}%)"
        if rate:
            parts.append(f"{human_bytes(rate)}/s")
            if task.total and task.done < task.total:
                parts.append(f"ETA {human_duration((task.total - task.done) / rate)}")
        parts.append(f"{human_duration(now - task.started)} so far")
        if now - task.moved >= self.interval > 0:
            parts.append(f"no bytes for {human_duration(now - task.moved)}")
        return f"  {self.VERBS[task.kind]:<16} {_short(task.subject)}: " + ", ".join(parts)
