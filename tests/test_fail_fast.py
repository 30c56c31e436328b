"""A dead target registry is reported before any work: `build` and `import` probe the registry
they push to (one GET /v2/) before archiving a single layer, so a 100 MB package costs
nothing when the push could never happen (issue 15: the layer used to be built first)."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
from cli_support import build_argv, cli, ok, on


@pytest.fixture
def dead() -> str:
    """host:port of a loopback port nothing listens on (connection refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"127.0.0.1:{port}"


@pytest.fixture
def big(tmp_path: Path) -> Path:
    content = tmp_path / "big" / "content"
    content.mkdir(parents=True)
    with open(content / "data", "wb") as f:
        f.truncate(100 << 20)  # 100 MiB (sparse: cheap to make, not to archive)
    package = tmp_path / "big" / "big.json"
    package.write_text(
        json.dumps({"name": "big", "version": "1", "prefix": "/opt/big", "content": "content"})
    )
    return package


@pytest.fixture
def base(tmp_path: Path) -> str:
    rootfs = tmp_path / "rootfs" / "etc"
    rootfs.mkdir(parents=True)
    (rootfs / "hostname").write_text("x\n")
    ok(
        "import",
        str(rootfs.parent),
        "--output",
        f"oci:{tmp_path / 'base'}:1",
        env={"IMAGESMITH_CACHE_DIR": str(tmp_path / "base-cache")},
    )
    return f"oci:{tmp_path / 'base'}:1"


def _nothing_built(cache: Path) -> bool:
    return not any(p.is_file() for p in cache.rglob("*")) if cache.exists() else True


@pytest.mark.parametrize(
    "where",
    [
        ("--repo", "{dead}/stack"),
        ("--tag", "{dead}/stack:1"),
        ("--output", "docker://{dead}/stack:1"),
        ("--each", "--repo", "{dead}/stack"),
    ],
    ids=["repo", "tag", "output", "each"],
)
def test_build_to_a_dead_registry_fails_before_any_layer(
    tmp_path: Path, base: str, big: Path, dead: str, where: tuple[str, ...]
) -> None:
    cache = tmp_path / "cache"
    code, out, err = cli(
        *build_argv(dead, base, *(w.format(dead=dead) for w in where), str(big)),
        env={"IMAGESMITH_CACHE_DIR": str(cache)},
    )
    assert code == 3 and out == "" and err.count("\n") == 1, err
    expected = f"imagesmith: error: cannot reach {dead} (GET http://{dead}/v2/): Connection refused"
    assert err.startswith(expected)
    assert _nothing_built(cache)


def test_import_to_a_dead_registry_fails_before_archiving(tmp_path: Path, big: Path, dead: str) -> None:
    cache = tmp_path / "cache"
    code, _, err = cli(
        *on(dead, "import", str(big.parent / "content"), "--tag", f"{dead}/base:1"),
        env={"IMAGESMITH_CACHE_DIR": str(cache)},
    )
    assert code == 3 and err.count("\n") == 1 and f"cannot reach {dead} (GET" in err, err
    assert _nothing_built(cache)
