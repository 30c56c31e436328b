"""Benchmark (`make bench`): the throughput of each stage of a layer build, on this machine.

The layer builder is a pipeline (walk -> tar writer -> sha256 -> compressor -> cache file), so
its speed is bounded by its slowest stage. This measures each stage alone, against the limits
the performance work is judged by:

* per byte, on ~256 MiB x ``BENCH_SCALE`` of software-like data (the ``software`` generator of
  tests/bench_layers.py, its files concatenated): sha256 on one core; gzip level 6 with zlib
  (one thread, ``IMAGESMITH_GZIP=zlib``); gzip with ISA-L as imagesmith runs it
  (:func:`imagesmith.tar.compression.open_compressor`, 1 and 2 threads; imagesmith's default is
  every usable CPU); zstd level 3 as imagesmith runs it (single-threaded) and with two
  zstandard worker threads (a limit, not what imagesmith does). Input goes in 1 MiB pieces,
  as the layer builder feeds it; MB/s are 10^6 input bytes per second;
* per file, on the ``smallfiles`` workload of tests/bench_layers.py (50,000 files, ~200 MiB
  at scale 1.0): Python's ``tarfile`` (uncompressed, to a file), imagesmith's tar writer alone
  (``directory_entries`` + ``TarWriter``, uncompressed, into a sha256), and ``build_layer``
  (default gzip, into a temporary blob cache), in seconds and files per second, with each
  one's speedup over ``tarfile``.

Every figure is the median of ``BENCH_RUNS`` (default 3) runs, page cache warm (an untimed
pass reads every file first). Writes a table to the terminal and JSON to .bench/stages.json
(or the path in argv[1]). Quick at ``BENCH_SCALE=0.1``. On a shared 2-core machine, figures
within ~15% of each other are noise.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import statistics
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import zstandard

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import bench_layers  # noqa: E402
from bench_layers import MiB, finish_tree, make_many, make_software  # noqa: E402

from imagesmith.oci.mediatypes import OCI, Compression  # noqa: E402
from imagesmith.store.cache import BlobCache  # noqa: E402
from imagesmith.tar.compression import (  # noqa: E402
    GZIP_BACKEND_ENV,
    _default_threads,
    codec_id,
    gzip_backend,
    open_compressor,
)
from imagesmith.tar.entries import directory_entries  # noqa: E402
from imagesmith.tar.layer import build_layer  # noqa: E402
from imagesmith.tar.writer import TarWriter  # noqa: E402

SCALE = bench_layers.SCALE
RUNS = bench_layers.RUNS
PIECE = 1 << 20
PREFIX = "opt/bench"


class _Null:
    """Counts what a compressor emits and throws it away."""

    def __init__(self) -> None:
        self.size = 0

    def write(self, data: bytes | bytearray | memoryview, /) -> None:
        self.size += len(data)


class _HashSink:
    """What the tar writer feeds in a build, minus compression: a sha256 of the stream."""

    def __init__(self) -> None:
        self.hasher = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes, /) -> None:
        self.hasher.update(data)
        self.size += len(data)


def _median_seconds(run: Callable[[], object]) -> tuple[float, list[float], object]:
    times = []
    result: object = None
    for _ in range(RUNS):
        start = time.perf_counter()
        result = run()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times, result


def _software_bytes(tmp: Path) -> bytes:
    root = tmp / "software"
    make_software(root, int(256 * MiB * SCALE))
    parts = [p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()]
    return b"".join(parts)


def _feed(data: bytes, write: Callable[[memoryview], object]) -> None:
    with memoryview(data) as view:
        for start in range(0, len(view), PIECE):
            write(view[start : start + PIECE])


def _sha256(data: bytes) -> str:
    hasher = hashlib.sha256()
    _feed(data, hasher.update)
    return hasher.hexdigest()


@contextlib.contextmanager
def _gzip_backend(backend: str | None) -> Iterator[None]:
    """Run with ``$IMAGESMITH_GZIP`` set to ``backend`` (``None``: as it is)."""
    old = os.environ.get(GZIP_BACKEND_ENV)
    if backend is not None:
        os.environ[GZIP_BACKEND_ENV] = backend
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(GZIP_BACKEND_ENV, None)
        else:
            os.environ[GZIP_BACKEND_ENV] = old


def _compress(
    data: bytes, compression: Compression, threads: int | None = None, backend: str | None = None
) -> int:
    with _gzip_backend(backend):
        sink = _Null()
        compressor = open_compressor(compression, sink, threads=threads)
        _feed(data, compressor.write)
        compressor.close()
        return sink.size


def _codec(backend: str) -> str:
    with _gzip_backend(backend):
        return codec_id("gzip")


def _zstd_threads(data: bytes, threads: int) -> int:
    sink = _Null()
    compressor = zstandard.ZstdCompressor(
        level=3, threads=threads, write_content_size=False, write_checksum=False
    ).stream_writer(sink, closefd=False)  # type: ignore[arg-type]
    _feed(data, compressor.write)
    compressor.close()  # type: ignore[no-untyped-call]
    return sink.size


def byte_stages(tmp: Path) -> dict[str, dict[str, object]]:
    data = _software_bytes(tmp)
    n = len(data)
    print(f"software-like data: {n / MiB:.1f} MiB", flush=True)
    cpus = _default_threads()
    stages: list[tuple[str, str, Callable[[], object]]] = [
        ("sha256", "hashlib, one core", lambda: _sha256(data)),
        ("gzip-6 zlib, 1 thread", _codec("zlib"), lambda: _compress(data, "gzip", backend="zlib")),
        ("gzip isal, 1 thread", _codec("isal"), lambda: _compress(data, "gzip", 1, "isal")),
        ("gzip isal, 2 threads", _codec("isal"), lambda: _compress(data, "gzip", 2, "isal")),
        ("zstd-3, 1 thread (imagesmith)", codec_id("zstd"), lambda: _compress(data, "zstd")),
        (
            "zstd-3, 2 threads (zstandard)",
            "threads=2: a limit, not what imagesmith runs",
            lambda: _zstd_threads(data, 2),
        ),
    ]
    if gzip_backend() != "isal" and os.environ.get(GZIP_BACKEND_ENV, "") in ("", "isal"):
        stages = [s for s in stages if "isal" not in s[0]]  # the isal package is missing
        print("isal not installed: its rows are skipped", flush=True)
    out: dict[str, dict[str, object]] = {}
    for name, detail, run in stages:
        seconds, times, result = _median_seconds(run)
        row: dict[str, object] = {
            "detail": detail,
            "input_bytes": n,
            "seconds": round(seconds, 3),
            "runs": [round(t, 3) for t in times],
            "mb_per_s": round(n / 1e6 / seconds, 1),
        }
        if isinstance(result, int):
            row["ratio"] = round(result / n, 3)
        out[name] = row
        print(f"  {name:32} {row['mb_per_s']:>8} MB/s  ({seconds:.2f} s)", flush=True)
    out["_notes"] = {"usable_cpus": cpus, "imagesmith_default_isal_threads": cpus}
    return out


def _warm(root: Path) -> int:
    files = 0
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            path = os.path.join(dirpath, name)
            if not os.path.islink(path):
                with open(path, "rb") as f:
                    while f.read(PIECE):
                        pass
                files += 1
    return files


def _with_tarfile(root: Path, out: Path) -> int:
    with tarfile.open(out, "w") as tar:
        tar.add(root, arcname=PREFIX)
    size = out.stat().st_size
    out.unlink()
    return size


def _with_writer(root: Path) -> str:
    sink = _HashSink()
    writer = TarWriter(sink, mtime=0)
    for entry in directory_entries(root, PREFIX):
        writer.add(entry)
    writer.close()
    return "sha256:" + sink.hasher.hexdigest()


def _with_build_layer(root: Path, tmp: Path) -> str:
    with tempfile.TemporaryDirectory(dir=tmp) as cache_dir:
        blob = build_layer(directory_entries(root, PREFIX), BlobCache(Path(cache_dir)), media_types=OCI)
    return str(blob.diff_id)


def file_stages(tmp: Path) -> dict[str, object]:
    root = tmp / "smallfiles" / "prefix"
    count = max(100, int(50_000 * SCALE))
    make_many(root, count, int(200 * MiB * SCALE), 13)  # as bench_layers' smallfiles workload
    size = finish_tree(root)
    files = _warm(root)
    print(f"small files: {files} files, {size / MiB:.1f} MiB", flush=True)
    ways: list[tuple[str, str, Callable[[], object]]] = [
        (
            "tarfile",
            "tarfile.open(w) + add(), uncompressed, to a file",
            lambda: _with_tarfile(root, tmp / "x.tar"),
        ),
        (
            "imagesmith tar writer",
            "directory_entries + TarWriter, uncompressed, into sha256",
            lambda: _with_writer(root),
        ),
        (
            "imagesmith build_layer",
            f"default compression ({codec_id('gzip')}), into a BlobCache",
            lambda: _with_build_layer(root, tmp),
        ),
    ]
    rows: dict[str, dict[str, object]] = {}
    diff_ids: set[str] = set()
    for name, detail, run in ways:
        seconds, times, result = _median_seconds(run)
        if name != "tarfile":
            diff_ids.add(str(result))
        rows[name] = {
            "detail": detail,
            "seconds": round(seconds, 3),
            "runs": [round(t, 3) for t in times],
            "files_per_s": round(files / seconds),
            "mib_per_s": round(size / MiB / seconds, 1),
        }
    base = float(rows["tarfile"]["seconds"])  # type: ignore[arg-type]
    for row in rows.values():
        row["speedup_vs_tarfile"] = round(base / float(row["seconds"]), 2)  # type: ignore[arg-type]
    if len(diff_ids) != 1:
        sys.exit(f"bench: the tar writer and build_layer disagree on the diff_id: {sorted(diff_ids)}")
    return {"files": files, "bytes": size, "diff_id": diff_ids.pop(), "ways": rows}


def main() -> int:
    out_path = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(".bench/stages.json")
    t0 = time.perf_counter()
    print(f"scale {SCALE}, runs {RUNS}, usable CPUs {_default_threads()}", flush=True)
    tmp_parent = os.environ.get("BENCH_TMPDIR")
    with tempfile.TemporaryDirectory(prefix="imagesmith-bench-stages-", dir=tmp_parent) as t:
        tmp = Path(t)
        per_byte = byte_stages(tmp)
        per_file = file_stages(tmp)
    report = {
        "machine": {
            "cpus": os.cpu_count(),
            "usable_cpus": _default_threads(),
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            "zstd": ".".join(map(str, zstandard.ZSTD_VERSION)),
        },
        "scale": SCALE,
        "runs": RUNS,
        "per_byte": per_byte,
        "small_files": per_file,
        "seconds_total": round(time.perf_counter() - t0, 1),
    }
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(report, indent=2) + "\n")

    print()
    print("| stage | MB/s | seconds | output / input |")
    print("|---|---|---|---|")
    for name, row in per_byte.items():
        if not name.startswith("_"):
            print(f"| {name} | {row['mb_per_s']} | {row['seconds']} | {row.get('ratio', '-')} |")
    print()
    print(f"{per_file['files']} small files, {int(per_file['bytes']) / MiB:.1f} MiB:")  # type: ignore[call-overload]
    print("| way | seconds | files/s | MiB/s | speedup over tarfile |")
    print("|---|---|---|---|---|")
    for name, row in per_file["ways"].items():  # type: ignore[attr-defined]
        print(
            f"| {name} | {row['seconds']} | {row['files_per_s']} | {row['mib_per_s']} | "
            f"{row['speedup_vs_tarfile']}x |"
        )
    print(f"\nwritten to {out_path} ({report['seconds_total']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
