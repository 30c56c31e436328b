"""End to end through the CLI, without a registry: layouts, archives, the daemon, copy, pull, serve.

The real readers prove the outputs: podman runs ``oci:`` layouts and loaded archives, the
docker CLI loads archives through podman's API, skopeo and umoci read layouts, and
``imagesmith serve`` runs as a separate process that podman pulls from.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_support import HELLO, build_argv, cli, ok, on
from conftest import need_tool
from servers import DistributionRegistry, Podman

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMAGESMITH_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache-local"))
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)


@pytest.fixture(scope="session")
def base_layout(busybox_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A busybox base written straight into an OCI layout: no registry at all."""
    layout = tmp_path_factory.mktemp("base-layout") / "busybox"
    os.environ.setdefault("IMAGESMITH_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache-local"))
    ok("import", str(busybox_dir), "--output", f"oci:{layout}:1")
    return f"oci:{layout}:1"


def _refuse_network(monkeypatch: pytest.MonkeyPatch) -> None:
    import requests

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a network request was made")

    monkeypatch.setattr(requests.Session, "send", refuse)


def test_layout_to_layout_needs_no_network(
    base_layout: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, podman: Podman
) -> None:
    _refuse_network(monkeypatch)
    out_dir = tmp_path / "out"
    result = json.loads(
        ok("build", "--base-image", base_layout, "--output", f"oci:{out_dir}:mytag", "--json", HELLO)
    )
    assert result["digest"].startswith("sha256:")
    monkeypatch.undo()
    ran = podman.podman("run", "--rm", f"oci:{out_dir}:mytag", "hello")
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.startswith("Hello, world, from hello 2.12")
    need_tool("skopeo")
    raw = subprocess.run(
        ["skopeo", "inspect", "--raw", f"oci:{out_dir}:mytag"], capture_output=True, text=True, check=True
    ).stdout
    assert json.loads(raw)["layers"][0]["mediaType"].startswith("application/vnd.oci.image.layer")
    need_tool("umoci")
    bundle = tmp_path / "bundle"
    subprocess.run(
        ["umoci", "unpack", "--image", f"{out_dir}:mytag", str(bundle)], check=True, capture_output=True
    )
    assert (bundle / "rootfs/opt/stack/hello-2.12/bin/hello").is_file()


def test_docker_archive_loads_and_runs(base_layout: str, tmp_path: Path, podman: Podman) -> None:
    archive = tmp_path / "img.tar"
    ok(
        "build",
        "--base-image",
        base_layout,
        "--output",
        f"docker-archive:{archive}:example/hello:archived",
        HELLO,
    )
    loaded = podman.docker("load", "-i", str(archive))
    assert loaded.returncode == 0, loaded.stderr
    ran = podman.docker("run", "--rm", "example/hello:archived", "hello")
    assert ran.returncode == 0 and ran.stdout.startswith("Hello, world"), ran.stderr


def test_build_load_into_the_daemon(base_layout: str, podman: Podman) -> None:
    out = ok(
        "build",
        "--base-image",
        base_layout,
        "--tag",
        "example/hello:loaded",
        "--load",
        "--docker-host",
        podman.docker_host,
        HELLO,
    )
    assert "Loaded" in out
    ran = podman.docker("run", "--rm", "example/hello:loaded", "hello")
    assert ran.returncode == 0 and ran.stdout.startswith("Hello, world"), ran.stderr


def test_load_without_a_daemon_is_one_clear_line(base_layout: str) -> None:
    code, out, err = cli(
        "build",
        "--base-image",
        base_layout,
        "--tag",
        "example/x:1",
        "--load",
        "--docker-host",
        "unix:///nonexistent/docker.sock",
        HELLO,
    )
    assert code == 3 and out == ""
    assert err.count("\n") == 1 and "/nonexistent/docker.sock" in err


def test_copy_round_trip_keeps_the_digest(
    registry: DistributionRegistry, base_layout: str, tmp_path: Path
) -> None:
    host = registry.host
    built = json.loads(
        ok("build", "--base-image", base_layout, "--output", f"oci:{tmp_path / 'a'}:v1", "--json", HELLO)
    )
    digest = built["digest"]
    steps = [
        (f"oci:{tmp_path / 'a'}:v1", f"{host}/copied/hello:v1"),
        (f"docker://{host}/copied/hello:v1", f"oci:{tmp_path / 'b'}:v1"),
        (f"oci:{tmp_path / 'b'}:v1", f"{host}/copied/again:v1"),
    ]
    for src, dst in steps:
        result = json.loads(ok("--insecure-registry", host, "copy", src, dst, "--json"))
        assert result["digest"] == digest, (src, dst)
    shown = json.loads(ok("--insecure-registry", host, "inspect", f"{host}/copied/again:v1", "--json"))
    assert shown["digest"] == digest
    archive = tmp_path / "c.tar"
    ok(*on(host, "copy", f"{host}/copied/again:v1", f"docker-archive:{archive}:copied/hello:v1"))
    back = json.loads(
        ok(*on(host, "copy", f"docker-archive:{archive}", f"oci:{tmp_path / 'd'}:v1", "--json"))
    )
    assert back["digest"].startswith("sha256:")


def test_pull_unpacks_safely(base_layout: str, tmp_path: Path) -> None:
    image = tmp_path / "image"
    ok("build", "--base-image", base_layout, "--output", f"oci:{image}:v1", HELLO)
    full = tmp_path / "full"
    result = json.loads(ok("pull", f"oci:{image}:v1", "--rootfs", str(full), "--json"))
    assert result["layers"] == 3
    assert (full / "bin/busybox").is_file()
    assert os.access(full / "opt/stack/hello-2.12/bin/hello", os.X_OK)
    only = tmp_path / "only"
    result = json.loads(ok("pull", f"oci:{image}:v1", "--rootfs", str(only), "--packages-only", "--json"))
    assert result["layers"] == 2
    assert not (only / "bin").exists()
    assert (only / "opt/stack/libgreet-1.0/share/libgreet/greeting.txt").read_text() == "Hello, world\n"
    code, _, err = cli("pull", f"oci:{image}:v1", "--rootfs", str(full))
    assert code == 2 and "not empty" in err
    code, _, err = cli(
        "pull", f"oci:{base_layout.split(':')[1]}:1", "--rootfs", str(tmp_path / "x"), "--packages-only"
    )
    assert code == 2 and "no layers imagesmith added" in err


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """`imagesmith serve` in its own process, on a free port it reports itself."""
    root = tmp_path / "served"
    proc = subprocess.Popen(
        [sys.executable, "-m", "imagesmith", "serve", "--root", str(root), "--addr", "127.0.0.1:0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("Serving "), line + (proc.stderr.read() if proc.stderr else "")
    address = line.split("http://", 1)[1].split()[0]
    try:
        yield address, root
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)  # also closes the pipes
        assert proc.returncode == 0, err


def test_serve_is_a_registry_podman_and_imagesmith_use(
    served: tuple[str, Path], busybox_dir: Path, podman: Podman
) -> None:
    address, root = served
    base = f"{address}/base/busybox:1"
    ok("--insecure-registry", address, "import", str(busybox_dir), "--tag", base)
    out = json.loads(ok(*build_argv(address, base, "--repo", f"{address}/stack", "--json", HELLO)))
    reference = out["reference"]
    # The served repository is an OCI layout on disk, readable as such.
    assert (root / "stack" / "oci-layout").is_file()
    podman.add_insecure_registry(address)
    ran = podman.docker("run", "--rm", reference, "hello")  # the docker CLI, through podman's API
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.startswith("Hello, world, from hello 2.12")
    tags = ok("--insecure-registry", address, "inspect", reference, "--json")
    assert json.loads(tags)["digest"] == out["digest"]


def test_a_corrupt_cache_entry_is_fetched_again(
    base_layout: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from imagesmith.oci.digests import Digest
    from imagesmith.store.cache import BlobCache

    cache_dir = tmp_path / "cache"
    monkeypatch.setenv("IMAGESMITH_CACHE_DIR", str(cache_dir))
    image = tmp_path / "image"
    ok("build", "--base-image", base_layout, "--output", f"oci:{image}:v1", HELLO)
    manifest = json.loads(ok("inspect", f"oci:{image}:v1", "--raw"))
    base_layer = Digest.parse(manifest["layers"][0]["digest"])
    cache = BlobCache(cache_dir)
    ok("pull", f"oci:{image}:v1", "--rootfs", str(tmp_path / "first"))  # puts the base layer in the cache
    assert cache.has(base_layer)
    # Flip one byte in the middle: same size, wrong content.
    path = cache.path(base_layer)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    rootfs = tmp_path / "rootfs"
    ok("pull", f"oci:{image}:v1", "--rootfs", str(rootfs))
    assert (rootfs / "bin/busybox").is_file()
    assert cache.verify(base_layer)  # replaced by a good copy
