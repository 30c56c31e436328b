"""gzip codecs: validity, determinism across runs and thread counts, backend choice and fallback."""

from __future__ import annotations

import gzip
import io
import random
import shutil
import subprocess
from pathlib import Path

import pytest

from imagesmith.errors import LayerError
from imagesmith.tar import compression
from imagesmith.tar.compression import codec_id, gzip_backend, open_compressor, open_decompressor

BLOCK = 1 << 20


def _text(n: int) -> bytes:
    rng = random.Random(7)
    letters = b"abcdefghijklmnopqrstuvwxyz"
    words = [bytes(rng.choice(letters) for _ in range(rng.randint(2, 9))) for _ in range(800)]
    out = bytearray()
    while len(out) < n:
        out += b" ".join(rng.choice(words) for _ in range(1000)) + b"\n"
    return bytes(out[:n])


INPUTS = {
    "empty": b"",
    "tiny": b"x",
    "block": _text(BLOCK),
    "block-1": _text(BLOCK - 1),
    "block+1": _text(BLOCK + 1),
    "random": random.Random(3).randbytes(3 * BLOCK + 12345),
    "text": _text(5 * BLOCK // 2),
    "mixed": _text(BLOCK + 99) + random.Random(5).randbytes(BLOCK) + bytes(BLOCK // 2),
}


def _compress(data: bytes, *, threads: int | None = None, step: int = 0, level: int | None = None) -> bytes:
    out = io.BytesIO()
    comp = open_compressor("gzip", out, level, threads=threads)
    step = step or max(len(data), 1)
    for start in range(0, len(data), step):
        comp.write(data[start : start + step])
    comp.close()
    comp.close()  # idempotent
    return out.getvalue()


def _python_gzip(data: bytes) -> bytes:
    out = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", compresslevel=6, mtime=0, fileobj=out) as f:
        f.write(data)
    return out.getvalue()


@pytest.fixture(params=["isal", "zlib"])
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    name: str = request.param
    monkeypatch.setenv("IMAGESMITH_GZIP", name)
    assert gzip_backend() == name
    return name


@pytest.mark.parametrize("name", list(INPUTS))
def test_gzip_round_trips(name: str, backend: str, tmp_path: Path) -> None:
    data = INPUTS[name]
    blob = _compress(data, threads=2, step=65_536)
    assert blob[:10] == b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"  # mtime 0, no name, OS 255
    assert gzip.decompress(blob) == data
    with open_decompressor(io.BytesIO(blob)) as stream:
        assert stream.read(len(data) + 1) == data
    if shutil.which("gzip"):
        path = tmp_path / "blob.gz"
        path.write_bytes(blob)
        subprocess.run(["gzip", "-t", str(path)], check=True)
        got = subprocess.run(["gzip", "-dc", str(path)], check=True, capture_output=True).stdout
        assert got == data


@pytest.mark.parametrize("name", ["empty", "tiny", "block", "block+1", "mixed", "text"])
def test_isal_output_independent_of_threads_and_write_sizes(name: str, backend: str) -> None:
    data = INPUTS[name]
    outs = {
        _compress(data, threads=threads, step=step)
        for threads in (1, 2, 4)
        for step in (0, 1000, BLOCK, 3 * BLOCK + 7)
    }
    assert len(outs) == 1
    # And run to run.
    assert _compress(data, threads=3) == outs.pop()


@pytest.mark.parametrize("level", range(10))
def test_every_level_valid(level: int, backend: str) -> None:
    data = INPUTS["mixed"]
    blob = _compress(data, threads=2, level=level)
    assert gzip.decompress(blob) == data
    assert blob == _compress(data, threads=1, level=level)


def test_bad_level_and_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    for backend in ("isal", "zlib"):
        monkeypatch.setenv("IMAGESMITH_GZIP", backend)
        with pytest.raises(LayerError, match="between 0 and 9"):
            open_compressor("gzip", io.BytesIO(), 10)
    monkeypatch.setenv("IMAGESMITH_GZIP", "pigz")
    with pytest.raises(LayerError, match="IMAGESMITH_GZIP"):
        open_compressor("gzip", io.BytesIO())


def test_isal_is_default_and_distinct_from_zlib(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("IMAGESMITH_GZIP", raising=False)
    assert gzip_backend() == "isal"
    isal_id = codec_id("gzip")
    isal_blob = _compress(INPUTS["text"])
    assert isal_id.startswith("gzip-6/isal-") and "/l2/" in isal_id
    assert codec_id("gzip", 1) != isal_id
    monkeypatch.setenv("IMAGESMITH_GZIP", "zlib")
    zlib_id = codec_id("gzip")
    assert zlib_id.startswith("gzip-6/zlib-") and zlib_id != isal_id
    zlib_blob = _compress(INPUTS["text"])
    # The zlib backend is byte-identical to Python's gzip (hence to Spack's layers).
    assert zlib_blob == _python_gzip(INPUTS["text"])
    assert zlib_blob != isal_blob


def test_falls_back_to_zlib_without_isal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(compression, "_isal_zlib", None)
    for env in ("", "isal"):
        monkeypatch.setenv("IMAGESMITH_GZIP", env)
        assert gzip_backend() == "zlib"
        assert codec_id("gzip").startswith("gzip-6/zlib-")
        data = INPUTS["text"]
        assert _compress(data, threads=4) == _python_gzip(data)


def test_isal_compressor_abandoned_midway_does_not_hang() -> None:
    # build_layer drops the compressor unclosed when the tar writer fails.
    comp = open_compressor("gzip", io.BytesIO(), threads=2)
    comp.write(INPUTS["random"])
    del comp
