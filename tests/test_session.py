"""``Session``: one object holds a run's pool, cache and progress; its methods are the operations
with that state filled in, and arguments given explicitly still win."""

from __future__ import annotations

from pathlib import Path

import pytest

import imagesmith
from imagesmith.oci.model import Platform
from imagesmith.progress import ProgressEvent
from imagesmith.store.cache import BlobCache

AMD64 = Platform("linux", "amd64")


def _rootfs(tmp_path: Path) -> Path:
    root = tmp_path / "rootfs"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "hello").write_text("hello\n")
    return root


def test_a_session_fills_in_its_cache_and_progress(tmp_path: Path) -> None:
    events: list[ProgressEvent] = []
    with imagesmith.Session(cache=tmp_path / "cache", progress=events.append) as session:
        assert session.cache.root == tmp_path / "cache"
        result = session.import_rootfs(_rootfs(tmp_path), output=f"oci:{tmp_path}/a:1", platform=AMD64)
        assert session.cache.has(result.layer.digest, result.layer.size)  # the session's cache
        copied = session.copy(f"oci:{tmp_path}/a:1", f"oci:{tmp_path}/b:1")
        shown = session.inspect(f"oci:{tmp_path}/b:1")
    assert events, "the session's progress callback saw the run"
    assert str(copied.digest) == result.digest == shown.digest


def test_an_explicit_argument_wins_over_the_session(tmp_path: Path) -> None:
    own = BlobCache(tmp_path / "own")
    with imagesmith.Session(cache=tmp_path / "session") as session:
        result = session.import_rootfs(
            _rootfs(tmp_path), output=f"oci:{tmp_path}/a:1", platform=AMD64, cache=own
        )
        assert own.has(result.layer.digest, result.layer.size)
        assert not session.cache.has(result.layer.digest, result.layer.size)


def test_a_closed_session_has_closed_its_pool(tmp_path: Path) -> None:
    session = imagesmith.Session(cache=tmp_path / "cache")
    client = session.pool.client("registry.example")
    assert client is session.pool.client("registry.example")
    session.close()
    assert session.pool.client("registry.example") is not client  # a new client after close


def test_the_operations_are_documented_as_their_functions() -> None:
    for name in (
        "build",
        "build_each",
        "build_platforms",
        "build_each_platforms",
        "import_rootfs",
        "pull",
        "inspect",
        "load_packages",
    ):
        with imagesmith.Session() as session:
            method = getattr(session, name)
        assert method.__doc__ and method.__name__ == name, name
    with pytest.raises(KeyError):
        imagesmith.Session().state("registry")
