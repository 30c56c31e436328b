"""The CLI's progress display (imagesmith.progressview), the events behind it, and the cancel
flag that Ctrl-C sets (imagesmith.cancel): in process, with a fake clock."""

from __future__ import annotations

import io
import re
import threading
import time
from pathlib import Path

import pytest

from imagesmith import cancel
from imagesmith.oci.mediatypes import OCI
from imagesmith.progress import Meter, ProgressEvent
from imagesmith.progressview import ProgressView, human_bytes, human_duration
from imagesmith.store.cache import BlobCache
from imagesmith.tar.entries import directory_entries
from imagesmith.tar.layer import build_layer

MB = 1_000_000


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_units() -> None:
    assert human_bytes(999) == "999 B"
    assert human_bytes(171_700_000) == "171.7 MB"
    assert human_duration(42) == "42s" and human_duration(185) == "3m05s" and human_duration(3720) == "1h02m"


def test_plain_lines_every_interval_with_rate_and_eta() -> None:
    clock, out = Clock(), io.StringIO()
    view = ProgressView(out, live=False, interval=3.0, clock=clock)
    digest = "sha256:" + "c" * 64
    for second in range(8):
        clock.now = 100.0 + second
        view(ProgressEvent("upload-progress", digest, 10 * MB * second, total=100 * MB))
    view(ProgressEvent("blob-uploaded", digest, 100 * MB))
    lines = out.getvalue().splitlines()
    # Seconds 3 and 6 of the upload: one line each, then the finished step.
    assert lines == [
        "  uploading        sha256:cccccccccccc: 30.0 MB of 100.0 MB (30%), 10.0 MB/s, ETA 7s, 3s so far",
        "  uploading        sha256:cccccccccccc: 60.0 MB of 100.0 MB (60%), 10.0 MB/s, ETA 4s, 6s so far",
        "  uploaded         sha256:cccccccccccc (100.0 MB)",
    ]
    assert "\x1b" not in out.getvalue()


def test_a_stalled_step_still_gets_its_plain_line() -> None:
    """In a CI log, an upload whose bytes stop moving is not silent: its line comes every
    interval anyway, saying for how long nothing moved; close() ends the ticking."""
    out = io.StringIO()
    view = ProgressView(out, live=False, interval=0.1)
    view(ProgressEvent("upload-progress", "sha256:" + "d" * 64, 1 * MB, total=10 * MB))
    deadline = time.monotonic() + 10
    while "no bytes for" not in out.getvalue() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert re.search(
        r"uploading +sha256:dddddddddddd: 1\.0 MB of 10\.0 MB \(10%\), .*no bytes for", out.getvalue()
    )
    view.close()
    time.sleep(0.3)
    settled = out.getvalue()
    time.sleep(0.3)
    assert out.getvalue() == settled


def test_live_block_per_layer_and_overall() -> None:
    clock, out = Clock(), io.StringIO()
    view = ProgressView(out, live=True, clock=clock, width=120)
    for second in range(3):
        clock.now = 100.0 + second
        view(ProgressEvent("layer-progress", "big@1.0", 20 * MB * second, total=100 * MB))
        clock.now += 0.5  # redraws are at most ten a second
        view(ProgressEvent("upload-progress", "big@1.0", 10 * MB * second))
    screen = out.getvalue().rsplit("\x1b[J", 1)[-1]  # what the last redraw left
    rows = screen.splitlines()
    # Rates over the last seconds up to now (102.5): 40 MB in 2.5 s, 20 MB in 2 s.
    assert re.fullmatch(r"  archiving   big@1\.0 +40\.0 MB / 100\.0 MB +40% +16\.0 MB/s  ETA 4s", rows[0])
    assert re.fullmatch(r"  uploading   big@1\.0 +20\.0 MB / \? +10\.0 MB/s", rows[1])
    assert len({row.index(" / ") for row in rows}) == 1 and rows[0].index("MB/s") == rows[1].index("MB/s")
    assert re.fullmatch(r"  overall     2 steps under way +60\.0 MB / \? +[\d.]+ MB/s", rows[2])
    assert len(rows) == 3
    view(ProgressEvent("layer-built", "big@1.0", 100 * MB, "sha256:" + "d" * 64))
    assert "  built layer      big@1.0 (100.0 MB)\n" in out.getvalue()
    # Writing to the view's stream directly (a warning) first erases the live block (the
    # upload and overall lines: cursor up over them, clear below); close() then has nothing
    # left to erase.
    view.stream.write("warning\n")
    view.close()
    assert out.getvalue().endswith("\x1b[2F\x1b[Jwarning\n")


def test_quiet_prints_nothing() -> None:
    out = io.StringIO()
    view = ProgressView(out, quiet=True)
    view(ProgressEvent("upload-progress", "x", 1, total=2))
    view(ProgressEvent("blob-uploaded", "x", 2))
    view.close()
    assert out.getvalue() == ""


def test_meter_reports_per_mib_and_never_goes_back() -> None:
    events: list[ProgressEvent] = []
    meter = Meter(events.append, "download-progress", "blob", 5 << 20)
    for _ in range(5 * 16):
        meter.add(64 << 10)
    meter.reach(1 << 20)  # a resumed transfer re-reading earlier bytes
    meter.done()
    sizes = [e.size for e in events]
    assert sizes == sorted(set(sizes)) and sizes[-1] == 5 << 20 and len(sizes) == 6  # ~one a MiB
    assert all(e.total == 5 << 20 for e in events)


@pytest.fixture
def interrupted() -> object:
    cancel.interrupt()
    yield None
    cancel.reset()


def test_interrupted_layer_build_leaves_nothing(tmp_path: Path, interrupted: object) -> None:
    content = tmp_path / "content"
    content.mkdir()
    (content / "data").write_bytes(b"\0" * (4 << 20))
    cache = BlobCache(tmp_path / "cache")
    with pytest.raises(KeyboardInterrupt):
        build_layer(directory_entries(content, "opt/x"), cache, media_types=OCI)
    assert list(cache.tmp_dir.iterdir()) == []
    assert not any(p.is_file() for p in (tmp_path / "cache").rglob("sha256/*"))


def test_body_grace_lets_a_request_body_finish(interrupted: object) -> None:
    # Right after the interrupt the grace is running: a body being sent may continue...
    cancel.check(60.0)
    # ...while everything else stops at once.
    with pytest.raises(cancel.Interrupted):
        cancel.check()
    event = threading.Event()
    with pytest.raises(cancel.Interrupted):
        cancel.wait(30.0)  # a retry's back-off does not sleep on
    assert not event.is_set()
