"""The blob cache: atomic writes, verified reads, eviction of corrupt entries, concurrency."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from imagesmith.errors import CacheError, IntegrityError
from imagesmith.oci.digests import Digest
from imagesmith.store.cache import BlobCache

PAYLOAD = os.urandom(3 << 20)  # several read chunks, so verification spans many reads
PAYLOAD_DIGEST = Digest.of(PAYLOAD)


@pytest.fixture
def cache(tmp_path: Path) -> BlobCache:
    return BlobCache(tmp_path / "cache")


def _read(cache: BlobCache, digest: Digest, size: int | None = None) -> bytes:
    with cache.open(digest, size) as reader:
        return reader.read_all()


def test_default_root_follows_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("IMAGESMITH_CACHE_DIR", str(tmp_path / "envcache"))
    assert BlobCache().root == tmp_path / "envcache"
    monkeypatch.delenv("IMAGESMITH_CACHE_DIR")
    assert BlobCache().root.name == "imagesmith"
    assert not (tmp_path / "envcache").exists()  # nothing is created until something is written


def test_put_and_read_back(cache: BlobCache) -> None:
    digest = cache.put_bytes(PAYLOAD)
    assert digest == PAYLOAD_DIGEST
    assert cache.path(digest) == cache.root / "blobs" / "sha256" / digest.hex
    assert cache.has(digest) and cache.has(digest, len(PAYLOAD)) and not cache.has(digest, 1)
    assert _read(cache, digest, len(PAYLOAD)) == PAYLOAD
    assert cache.verify(digest)
    assert list((cache.root / "tmp").iterdir()) == []


def test_put_file_and_stream(cache: BlobCache, tmp_path: Path) -> None:
    src = tmp_path / "src.bin"
    src.write_bytes(PAYLOAD)
    assert cache.put_file(src) == PAYLOAD_DIGEST
    with cache.put_stream(PAYLOAD_DIGEST, len(PAYLOAD)) as writer:
        for i in range(0, len(PAYLOAD), 100_000):
            writer.write(PAYLOAD[i : i + 100_000])
    assert writer.digest == PAYLOAD_DIGEST and writer.size == len(PAYLOAD)


def test_digest_mismatch_publishes_nothing(cache: BlobCache) -> None:
    wrong = Digest.of(b"something else")
    with pytest.raises(IntegrityError, match="does not match"), cache.put_stream(wrong) as writer:
        writer.write(PAYLOAD)
    assert not cache.has(wrong) and not cache.has(PAYLOAD_DIGEST)
    assert list((cache.root / "tmp").iterdir()) == []


def test_size_mismatch_is_caught_early_and_late(cache: BlobCache) -> None:
    with pytest.raises(IntegrityError, match="longer"), cache.put_stream(size=10) as writer:
        writer.write(b"x" * 11)
    with pytest.raises(IntegrityError, match="truncated"), cache.put_stream(size=10) as writer:
        writer.write(b"x" * 9)
    assert list((cache.root / "tmp").iterdir()) == []
    assert list((cache.root / "blobs" / "sha256").iterdir()) == []


def test_exception_in_writer_removes_temp(cache: BlobCache) -> None:
    """RELIABILITY 28."""
    with pytest.raises(RuntimeError), cache.put_stream() as writer:
        writer.write(b"partial")
        raise RuntimeError("interrupted")
    assert list((cache.root / "tmp").iterdir()) == []
    with pytest.raises(CacheError):
        _ = writer.digest


def test_existing_blob_is_kept(cache: BlobCache) -> None:
    digest = cache.put_bytes(PAYLOAD)
    inode = cache.path(digest).stat().st_ino
    assert cache.put_bytes(PAYLOAD) == digest
    assert cache.path(digest).stat().st_ino == inode
    assert list((cache.root / "tmp").iterdir()) == []


def _corrupt(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "bitflip":
        path.write_bytes(data[:1000] + bytes([data[1000] ^ 0x01]) + data[1001:])
    else:
        path.write_bytes(b"")


@pytest.mark.parametrize("how", ["truncated", "bitflip", "empty"])
def test_corrupt_entry_is_detected_and_evicted_on_read(cache: BlobCache, how: str) -> None:
    """RELIABILITY 27."""
    digest = cache.put_bytes(PAYLOAD)
    _corrupt(cache.path(digest), how)
    with pytest.raises(IntegrityError, match=digest.hex[:12]):
        _read(cache, digest)
    assert not cache.has(digest)
    # ... and a fresh copy can be stored again afterwards.
    assert cache.put_bytes(PAYLOAD) == digest and _read(cache, digest) == PAYLOAD


@pytest.mark.parametrize("how", ["truncated", "bitflip", "empty"])
def test_verify_evicts_corrupt_entries(cache: BlobCache, how: str) -> None:
    """RELIABILITY 27."""
    digest = cache.put_bytes(PAYLOAD)
    _corrupt(cache.path(digest), how)
    assert not cache.verify(digest)
    assert not cache.has(digest)
    assert not cache.verify(digest)  # missing is simply False


def test_size_mismatch_on_open_evicts_at_once(cache: BlobCache) -> None:
    """RELIABILITY 27."""
    digest = cache.put_bytes(PAYLOAD)
    _corrupt(cache.path(digest), "truncated")
    with pytest.raises(IntegrityError, match="evicted"):
        cache.open(digest, len(PAYLOAD))
    assert not cache.has(digest)


def test_missing_blob(cache: BlobCache) -> None:
    with pytest.raises(CacheError, match="not in the cache"):
        cache.open(PAYLOAD_DIGEST)
    cache.evict(PAYLOAD_DIGEST)  # no error


def test_truncated_blob_replaced_by_new_write(cache: BlobCache) -> None:
    digest = cache.put_bytes(PAYLOAD)
    _corrupt(cache.path(digest), "truncated")
    cache.put_bytes(PAYLOAD)
    assert cache.verify(digest)


def _write_same_blob(root: str) -> str:
    cache = BlobCache(Path(root))
    with cache.put_stream(PAYLOAD_DIGEST, len(PAYLOAD)) as writer:
        for i in range(0, len(PAYLOAD), 65536):
            writer.write(PAYLOAD[i : i + 65536])
    return str(writer.digest)


def test_concurrent_writers_threads(cache: BlobCache) -> None:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            _write_same_blob(str(cache.root))
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert cache.verify(PAYLOAD_DIGEST)
    assert list((cache.root / "tmp").iterdir()) == []


def test_concurrent_writers_processes(cache: BlobCache, tmp_path: Path) -> None:
    payload = tmp_path / "payload.bin"
    payload.write_bytes(PAYLOAD)
    script = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from imagesmith.store.cache import BlobCache\n"
        "data = Path(sys.argv[2]).read_bytes()\n"
        "with BlobCache(Path(sys.argv[1])).put_stream(size=len(data)) as w:\n"
        "    for i in range(0, len(data), 262144):\n"
        "        w.write(data[i:i + 262144])\n"
        "        time.sleep(0.005)\n"
        "print(w.digest)\n"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(cache.root), str(payload)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    outputs = [p.communicate(timeout=60)[0].strip() for p in procs]
    assert [p.returncode for p in procs] == [0] * 4
    assert outputs == [str(PAYLOAD_DIGEST)] * 4
    assert cache.verify(PAYLOAD_DIGEST)
    assert list((cache.root / "tmp").iterdir()) == []


def test_killed_writer_leaves_only_temp_files(cache: BlobCache) -> None:
    """RELIABILITY 28."""
    script = (
        "import os, signal, sys\n"
        "from pathlib import Path\n"
        "from imagesmith.store.cache import BlobCache\n"
        "c = BlobCache(Path(sys.argv[1]))\n"
        "with c.put_stream() as w:\n"
        "    w.write(b'x' * 100000)\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script, str(cache.root)], env=os.environ.copy())
    assert proc.returncode == -signal.SIGKILL
    assert list((cache.root / "blobs" / "sha256").iterdir()) == []
    leftovers = list((cache.root / "tmp").iterdir())
    assert len(leftovers) == 1
    # The next write sweeps the dead writer's file at once; a live writer's temp file is
    # never removed, however old it looks.
    with cache.put_stream() as live:
        live.write(b"still writing")
        assert not leftovers[0].exists()
        os.utime(live.path, (time.time() - 7200, time.time() - 7200))
        assert BlobCache(cache.root).clean_temp(older_than=0) == 0
        assert live.path.exists()
    assert list((cache.root / "tmp").iterdir()) == []
    # Files of another naming (older versions, other tools) still go by age.
    other = cache.root / "tmp" / "blob-1-legacy.tmp"
    other.write_bytes(b"x")
    assert cache.clean_temp() == 0
    os.utime(other, (time.time() - 7200, time.time() - 7200))
    assert cache.clean_temp() == 1


def test_clean_temp_on_missing_cache(tmp_path: Path) -> None:
    """RELIABILITY 28."""
    assert BlobCache(tmp_path / "nothing").clean_temp(0) == 0


def test_records(cache: BlobCache) -> None:
    assert cache.get_record("layer:abc") is None
    cache.put_record("layer:abc", {"digest": str(PAYLOAD_DIGEST), "size": 3})
    assert cache.get_record("layer:abc") == {"digest": str(PAYLOAD_DIGEST), "size": 3}
    cache.put_record("layer:abc", {"digest": "new"})
    assert cache.get_record("layer:abc") == {"digest": "new"}
    path = cache.root / "records" / (hashlib.sha256(b"layer:abc").hexdigest() + ".json")
    assert path.exists()
    for garbage in (b"{not json", b"[1, 2]", b"\xff\xfe", b'{"key": "other", "value": {}}'):
        path.write_bytes(garbage)
        assert cache.get_record("layer:abc") is None
    with pytest.raises(CacheError, match="JSON"):
        cache.put_record("bad", {"x": object()})
    assert list((cache.root / "tmp").iterdir()) == []


def test_unwritable_cache_is_a_cache_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(CacheError, match="cannot create"):
        BlobCache(blocker / "cache").put_bytes(b"x")


def test_a_fifo_in_place_of_a_blob_is_evicted_not_waited_on(tmp_path: Path) -> None:
    cache = BlobCache(tmp_path / "cache")
    digest = cache.put_bytes(b"")
    cache.evict(digest)
    os.mkfifo(cache.path(digest))  # as large as the empty blob: has() cannot tell
    assert cache.has(digest, 0)
    with pytest.raises(IntegrityError, match="was a FIFO, not a regular file: evicted"):
        cache.open(digest, 0)
    assert not cache.path(digest).exists()
    os.mkfifo(cache.path(digest))
    assert cache.verify(digest) is False and not cache.path(digest).exists()
