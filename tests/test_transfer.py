"""Locations, copies and build outputs without a registry: OCI layouts, docker archives, a daemon.

The integration tests hop an image between a real registry, OCI layouts and archives and check
that the manifest digest never changes, then let independent tools read what was written:
podman (``podman run oci:``, ``podman load``, the docker CLI's ``docker load`` and the docker SDK
against podman's API), skopeo and umoci.
"""

from __future__ import annotations

import hashlib
import json
import socket
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import need_tool
from servers import DistributionRegistry, Podman, docker_sdk_run

from imagesmith.errors import DaemonError, LayoutError, ReferenceFormatError, UsageError
from imagesmith.inputs.load import load_packages
from imagesmith.oci import mediatypes as mt
from imagesmith.oci.digests import Digest
from imagesmith.oci.model import Descriptor, Index, Platform
from imagesmith.oci.references import Reference
from imagesmith.ops.inspect import inspect
from imagesmith.pipeline.run import build, import_rootfs
from imagesmith.progress import ProgressEvent
from imagesmith.registry.client import RegistryClient, RegistryPool
from imagesmith.registry.transport import RegistryOptions, Transport
from imagesmith.store.cache import BlobCache
from imagesmith.store.layout import OCILayout
from imagesmith.transports.archive import ArchiveLocation
from imagesmith.transports.copy import copy_image
from imagesmith.transports.daemon import DaemonLocation
from imagesmith.transports.layout import LayoutLocation
from imagesmith.transports.locations import parse_location
from imagesmith.transports.registry import RegistryLocation

HELLO = str(Path(__file__).resolve().parent.parent / "examples" / "stack" / "hello.json")
ACCEPT = ", ".join(mt.MANIFEST_ACCEPT)


# --------------------------------------------------------------------------- locations


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("ubuntu:23.04", RegistryLocation(Reference.parse("ubuntu:23.04"))),
        ("docker://127.0.0.1:5000/a/b:1", RegistryLocation(Reference.parse("127.0.0.1:5000/a/b:1"))),
        ("docker://busybox", RegistryLocation(Reference.parse("busybox:latest"))),
        ("oci:/srv/layout:v1.2", LayoutLocation(Path("/srv/layout"), "v1.2")),
        ("oci:/srv/layout", LayoutLocation(Path("/srv/layout"), None)),
        ("oci:/srv/l:docker.io/library/bb:1", LayoutLocation(Path("/srv/l"), "docker.io/library/bb:1")),
        ("docker-archive:/tmp/img.tar", ArchiveLocation(Path("/tmp/img.tar"), None)),
        ("docker-archive:/tmp/i.tar:app:2", ArchiveLocation(Path("/tmp/i.tar"), Reference.parse("app:2"))),
        ("docker-archive:/tmp/i.tar:app", ArchiveLocation(Path("/tmp/i.tar"), Reference.parse("app:latest"))),
        ("docker-daemon:acme/app:3", DaemonLocation(Reference.parse("acme/app:3"))),
    ],
)
def test_parse_location(text: str, expected: object) -> None:
    assert parse_location(text) == expected


def test_relative_paths_become_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert parse_location("oci:out:t") == LayoutLocation(tmp_path / "out", "t")
    assert str(parse_location("oci:out:t")) == f"oci:{tmp_path}/out:t"
    assert str(parse_location("docker-archive:a.tar:x/y:1")) == f"docker-archive:{tmp_path}/a.tar:x/y:1"


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("ftp://host/x", "unknown location scheme 'ftp'"),
        ("oci:", "the path is empty"),
        ("oci:/srv/l:", "empty tag"),
        ("oci:/srv/l:bad tag", "invalid tag"),
        ("oci:/srv/l:-x", "invalid tag"),
        ("oci-archive:/tmp/x.tar", "oci-archive: transport is not supported"),
        ("containers-storage:x", "not supported"),
        (f"docker-archive:/a.tar:app@sha256:{'0' * 64}", "not by digest"),
        ("docker-archive:/a.tar:Bad Name", "invalid location"),
        ("docker-daemon:app@sha256:" + "0" * 64, "NAME:TAG"),
        ("", "give a reference"),
    ],
)
def test_bad_locations_are_usage_errors(text: str, fragment: str) -> None:
    with pytest.raises(UsageError, match=fragment.replace("(", r"\(")):
        parse_location(text)


def test_a_bare_reference_keeps_the_reference_errors() -> None:
    with pytest.raises(ReferenceFormatError, match="invalid reference"):
        parse_location("Bad Ref")


# -------------------------------------------------------------------- offline / local


def forbid_network(mp: pytest.MonkeyPatch) -> None:
    """Make any attempt to open a connection fail the test."""

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"a network request was attempted: {args[1:]!r}")

    mp.setattr(socket.socket, "connect", refuse)
    mp.setattr(socket, "create_connection", refuse)
    mp.setattr(Transport, "send", refuse)


@pytest.fixture
def tiny_rootfs(tmp_path: Path) -> Path:
    rootfs = tmp_path / "rootfs"
    (rootfs / "etc").mkdir(parents=True)
    (rootfs / "etc" / "motd").write_text("hi\n")
    return rootfs


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({}, "give exactly one of --repo"),
        ({"repo": "x/y", "tag": "x/y:1"}, "give exactly one of --repo"),
        ({"load": True}, "--load needs a name"),
        ({"load": True, "output": "oci:/tmp/never:1"}, "--load needs a name"),
        ({"tag": "x/y:1", "output": "docker://reg.example/x/y:2"}, "names the image already"),
        ({"output": "docker-daemon:x/y:1", "repo": "x/y"}, "names the image already"),
    ],
)
def test_outputs_are_checked_before_any_work(kwargs: dict[str, Any], fragment: str, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=fragment):
        build(f"oci:{tmp_path}/missing:1", [], cache=BlobCache(tmp_path / "cache"), **kwargs)


def test_load_without_a_daemon_says_what_to_do(tiny_rootfs: Path, tmp_path: Path) -> None:
    cache = BlobCache(tmp_path / "cache")
    socket_path = tmp_path / "no-daemon.sock"
    with pytest.raises(DaemonError) as caught:
        import_rootfs(tiny_rootfs, "acme/tiny:1", load=True, docker_host=f"unix://{socket_path}", cache=cache)
    assert str(caught.value).startswith(
        f"no docker daemon at unix://{socket_path}: set DOCKER_HOST or start the daemon"
    )
    assert list(cache.tmp_dir.iterdir()) == []  # the temp archive is gone


def test_a_layout_base_that_is_not_a_layout(tmp_path: Path) -> None:
    with pytest.raises(LayoutError, match="is not an OCI image layout"):
        build(
            f"oci:{tmp_path}:1",
            load_packages([HELLO]),
            output=f"oci:{tmp_path}/out:1",
            cache=BlobCache(tmp_path / "cache"),
        )


@pytest.fixture(scope="module")
def offline(busybox_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A busybox base imported into a layout, then the example stack built from that layout
    into another one, with every network connection forbidden."""
    tmp = tmp_path_factory.mktemp("offline")
    cache = BlobCache(tmp / "cache")
    events: list[ProgressEvent] = []
    with pytest.MonkeyPatch.context() as mp:
        forbid_network(mp)
        base = import_rootfs(busybox_dir, output=f"oci:{tmp}/base:1", cache=cache)
        result = build(
            f"oci:{tmp}/base:1",
            load_packages([HELLO]),
            output=f"oci:{tmp}/out:app",
            cache=cache,
            progress=events.append,
        )
    return {"dir": tmp, "base": base, "result": result, "events": events}


def test_offline_build_from_a_layout_into_a_layout(offline: dict[str, Any]) -> None:
    tmp, result = offline["dir"], offline["result"]
    assert result.reference is None and result.tag == "app"
    assert result.destinations == (LayoutLocation(tmp / "out", "app"),)
    assert result.base.reference is None
    assert result.base.pinned == f"oci:{tmp}/base:1@{offline['base'].digest}"
    layout = OCILayout(tmp / "out")
    entry = layout.resolve("app")
    assert str(entry.digest) == result.digest
    assert entry.platform is not None and entry.platform.os == "linux"
    manifest = json.loads(layout.read_blob(entry, 1 << 20))
    annotations = manifest["annotations"]
    # A local path never lands in the image: it would make the digest depend on it.
    assert "org.opencontainers.image.base.name" not in annotations
    assert annotations["org.opencontainers.image.base.digest"] == offline["base"].digest
    assert manifest["layers"][0]["digest"] == str(offline["base"].layer.digest)
    kinds = [e.kind for e in offline["events"]]
    assert kinds.count("manifest-pushed") == 1 and "blob-fetched" not in kinds


def test_inspect_reads_layouts_and_archives(offline: dict[str, Any]) -> None:
    tmp, result = offline["dir"], offline["result"]
    shown = inspect(f"oci:{tmp}/out:app")
    assert (shown.digest, shown.reference, shown.source) == (result.digest, None, f"oci:{tmp}/out:app")
    assert "sha256:" + hashlib.sha256(shown.raw).hexdigest() == result.digest
    assert shown.config is not None and shown.config.env[0].startswith("PATH=/opt/stack/hello-2.12/bin:")
    assert shown.to_json()["reference"] == f"oci:{tmp}/out:app"
    archive = tmp / "app.tar"
    with RegistryPool() as pool:
        copy_image(
            f"oci:{tmp}/out:app",
            f"docker-archive:{archive}:acme/app:1",
            pool=pool,
            cache=BlobCache(tmp / "cache"),
        )
    assert inspect(f"docker-archive:{archive}").digest == result.digest


@pytest.mark.integration
def test_podman_runs_the_layout(offline: dict[str, Any], podman: Podman) -> None:
    ran = podman.podman("run", "--rm", f"oci:{offline['dir']}/out:app", "sh", "-c", "echo ok; hello")
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.startswith("ok\nHello, world, from hello 2.12")


@pytest.mark.integration
def test_skopeo_and_umoci_read_the_layout(offline: dict[str, Any], tmp_path: Path) -> None:
    need_tool("skopeo")
    need_tool("umoci")
    out = offline["dir"] / "out"
    raw = subprocess.run(["skopeo", "inspect", "--raw", f"oci:{out}:app"], capture_output=True, check=True)
    raw_bytes = raw.stdout
    assert "sha256:" + hashlib.sha256(raw_bytes).hexdigest() == offline["result"].digest
    bundle = tmp_path / "bundle"
    subprocess.run(["umoci", "unpack", "--image", f"{out}:app", str(bundle)], check=True, capture_output=True)
    assert (bundle / "rootfs" / "opt/stack/hello-2.12/bin/hello").is_file()
    assert (bundle / "rootfs" / "bin/busybox").is_file()


# ------------------------------------------------------------------------ registry


@pytest.fixture(scope="module")
def pool(registry: DistributionRegistry) -> Iterator[RegistryPool]:
    with RegistryPool(RegistryOptions(insecure=frozenset({registry.host}))) as p:
        yield p


@pytest.fixture(scope="module")
def base_ref(
    registry: DistributionRegistry,
    busybox_dir: Path,
    pool: RegistryPool,
    tmp_path_factory: pytest.TempPathFactory,
) -> str:
    """A busybox base in the registry."""
    ref = f"{registry.host}/transfer/busybox:1"
    import_rootfs(busybox_dir, ref, pool=pool, cache=BlobCache(tmp_path_factory.mktemp("base-cache")))
    return ref


def registry_manifest(registry: DistributionRegistry, repo: str, ref: str) -> tuple[str, dict[str, Any]]:
    """(sha256 of the stored bytes, parsed manifest) as the registry serves them."""
    response = registry.get(f"/v2/{repo}/manifests/{ref}", headers={"Accept": ACCEPT})
    assert response.status_code == 200, response.text
    return "sha256:" + hashlib.sha256(response.content).hexdigest(), response.json()


def archive_files(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {m.name: f.read() for m in tar.getmembers() if (f := tar.extractfile(m)) is not None}


@pytest.mark.integration
def test_round_trip_keeps_the_manifest_digest(
    registry: DistributionRegistry, base_ref: str, pool: RegistryPool, tmp_path: Path
) -> None:
    cache = BlobCache(tmp_path / "cache")
    digest, manifest = registry_manifest(registry, "transfer/busybox", "1")

    first = copy_image(base_ref, f"oci:{tmp_path}/one:a", pool=pool, cache=cache)
    assert str(first.digest) == digest == str(OCILayout(tmp_path / "one").resolve("a").digest)

    archive = tmp_path / "img.tar"
    copy_image(f"oci:{tmp_path}/one:a", f"docker-archive:{archive}:transfer/rt:1", pool=pool, cache=cache)
    files = archive_files(archive)
    assert json.loads(files["index.json"])["manifests"][0]["digest"] == digest
    [entry] = json.loads(files["manifest.json"])
    assert entry["Config"] == "blobs/sha256/" + manifest["config"]["digest"].split(":")[1]

    events: list[ProgressEvent] = []
    back = copy_image(
        f"docker-archive:{archive}",
        f"docker://{registry.host}/transfer/rt:1",
        pool=pool,
        cache=cache,
        progress=events.append,
    )
    assert str(back.digest) == digest
    assert registry_manifest(registry, "transfer/rt", "1")[0] == digest
    assert "blob-uploaded" in {e.kind for e in events}

    # Same registry, another repository: blobs are mounted, never downloaded.
    events.clear()
    copy_image(
        f"{registry.host}/transfer/rt:1",
        f"{registry.host}/transfer/rt-mounted:1",
        pool=pool,
        cache=BlobCache(tmp_path / "empty-cache"),
        progress=events.append,
    )
    kinds = {e.kind for e in events}
    assert "blob-mounted" in kinds and "blob-fetched" not in kinds and "blob-uploaded" not in kinds
    assert registry_manifest(registry, "transfer/rt-mounted", "1")[0] == digest

    again = copy_image(
        f"{registry.host}/transfer/rt-mounted:1", f"oci:{tmp_path}/two", pool=pool, cache=cache
    )
    assert str(again.digest) == digest
    assert [str(d.digest) for d in OCILayout(tmp_path / "two").manifests()] == [digest]
    # An archive is named after the registry image it came from, as docker save does.
    named = tmp_path / "named.tar"
    copy_image(base_ref, f"docker-archive:{named}", pool=pool, cache=cache)
    assert json.loads(archive_files(named)["manifest.json"])[0]["RepoTags"] == [base_ref]


@pytest.mark.integration
def test_docker_load_of_a_built_archive(
    registry: DistributionRegistry, base_ref: str, pool: RegistryPool, podman: Podman, tmp_path: Path
) -> None:
    need_tool("docker")
    need_tool("skopeo")
    cache = BlobCache(tmp_path / "cache")
    archive = tmp_path / "hello.tar"
    result = build(
        base_ref,
        load_packages([HELLO]),
        tag="transfer/hello:1",
        output=f"docker-archive:{archive}",
        pool=pool,
        cache=cache,
    )
    assert result.destination == f"docker-archive:{archive}:transfer/hello:1"
    assert not result.pushed

    loaded = podman.docker("load", "-i", str(archive))
    assert loaded.returncode == 0, loaded.stderr
    assert "transfer/hello:1" in loaded.stdout
    ran = podman.docker("run", "--rm", "transfer/hello:1", "hello")
    assert ran.returncode == 0 and ran.stdout.startswith("Hello, world, from hello 2.12"), ran.stderr

    assert podman.podman("load", "-i", str(archive)).returncode == 0
    seen = subprocess.run(["skopeo", "inspect", f"docker-archive:{archive}"], capture_output=True, text=True)
    assert seen.returncode == 0 and json.loads(seen.stdout)["Os"] == "linux", seen.stderr

    # The older archive format (podman save writes it) is read back, uncompressed layers and all.
    legacy = tmp_path / "legacy.tar"
    saved = podman.podman("save", "--format", "docker-archive", "-o", str(legacy), "transfer/hello:1")
    assert saved.returncode == 0, saved.stderr
    target = f"{registry.host}/transfer/from-legacy:1"
    copied = copy_image(f"docker-archive:{legacy}:transfer/hello:1", target, pool=pool, cache=cache)
    assert copied.media_type == mt.DOCKER_MANIFEST
    ran = podman.docker("run", "--rm", target, "hello")
    assert ran.returncode == 0 and ran.stdout.startswith("Hello, world"), ran.stderr
    # ... and written again as an archive of that Docker v2 image, which docker load takes too.
    again = tmp_path / "again.tar"
    copy_image(f"docker-archive:{legacy}", f"docker-archive:{again}:transfer/again:1", pool=pool, cache=cache)
    assert podman.docker("load", "-i", str(again)).returncode == 0
    ran = podman.docker("run", "--rm", "transfer/again:1", "hello")
    assert ran.returncode == 0 and ran.stdout.startswith("Hello, world"), ran.stderr


@pytest.mark.integration
def test_build_loads_into_the_daemon_with_the_sdk(
    base_ref: str, pool: RegistryPool, podman: Podman, tmp_path: Path
) -> None:
    cache = BlobCache(tmp_path / "cache")
    result = build(
        base_ref,
        load_packages([HELLO]),
        tag="transfer/loaded:1",
        load=True,
        docker_host=podman.docker_host,
        pool=pool,
        cache=cache,
    )
    assert result.destinations == (DaemonLocation(Reference.parse("transfer/loaded:1")),)
    assert any(name.endswith("transfer/loaded:1") for name in result.loaded), result.loaded
    assert list(cache.tmp_dir.iterdir()) == []
    out = docker_sdk_run(podman.docker_host, "transfer/loaded:1", ["hello"])
    assert out.decode().startswith("Hello, world, from hello 2.12")

    # copy also writes to a daemon: docker-daemon:NAME:TAG.
    copied = copy_image(
        base_ref, "docker-daemon:transfer/copied:1", docker_host=podman.docker_host, pool=pool, cache=cache
    )
    assert copied.destination == "docker-daemon:transfer/copied:1"
    ran = podman.docker("run", "--rm", "transfer/copied:1", "echo", "ok")
    assert ran.returncode == 0 and ran.stdout == "ok\n", ran.stderr


@pytest.mark.integration
def test_base_layers_are_fetched_once_for_two_outputs(
    registry: DistributionRegistry,
    base_ref: str,
    pool: RegistryPool,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fetched: list[Digest] = []
    original = RegistryClient.open_blob

    def spy(self: RegistryClient, repository: str, descriptor: Descriptor, **kwargs: Any) -> Any:
        fetched.append(descriptor.digest)
        return original(self, repository, descriptor, **kwargs)

    monkeypatch.setattr(RegistryClient, "open_blob", spy)
    cache = BlobCache(tmp_path / "cache")
    packages = load_packages([HELLO])
    build(base_ref, packages, output=f"oci:{tmp_path}/layout", pool=pool, cache=cache)
    build(
        base_ref,
        packages,
        tag="transfer/twice:1",
        output=f"docker-archive:{tmp_path}/img.tar",
        pool=pool,
        cache=cache,
    )
    _, manifest = registry_manifest(registry, "transfer/busybox", "1")
    base_layer = Digest.parse(manifest["layers"][0]["digest"])
    assert fetched.count(base_layer) == 1
    # The layout took the rendered tag template, as a push with --repo would.
    assert OCILayout(tmp_path / "layout").tags()[0].startswith("hello-2.12-")


@pytest.mark.integration
def test_index_copy_keeps_the_index_digest(
    registry: DistributionRegistry, busybox_dir: Path, pool: RegistryPool, tmp_path: Path
) -> None:
    host, repo = registry.host, "transfer/multi"
    cache = BlobCache(tmp_path / "cache")
    entries = []
    for arch in ("amd64", "arm64"):
        imported = import_rootfs(
            busybox_dir, f"{host}/{repo}:{arch}", platform=Platform("linux", arch), pool=pool, cache=cache
        )
        size = len(pool.client(host).get_manifest(repo, imported.digest).data)
        entries.append(
            Descriptor(mt.OCI_MANIFEST, Digest.parse(imported.digest), size, platform=Platform("linux", arch))
        )
    # An attestation-like entry, as buildx writes: never a platform, but copied with the rest.
    entries.append(
        Descriptor(
            mt.OCI_MANIFEST, entries[0].digest, entries[0].size, platform=Platform("unknown", "unknown")
        )
    )
    index = Index(mt.OCI_INDEX, tuple(entries)).to_bytes()
    pool.client(host).put_manifest(repo, "1", index, mt.OCI_INDEX)
    index_digest = "sha256:" + hashlib.sha256(index).hexdigest()

    layout = tmp_path / "multi"
    copied = copy_image(f"{host}/{repo}:1", f"oci:{layout}:multi", pool=pool, cache=cache)
    assert str(copied.digest) == index_digest and copied.media_type == mt.OCI_INDEX
    assert sorted(copied.platforms) == ["linux/amd64", "linux/arm64"]
    entry = OCILayout(layout).resolve("multi")
    assert (str(entry.digest), entry.media_type) == (index_digest, mt.OCI_INDEX)
    for child in entries:
        assert OCILayout(layout).has_blob(child.digest, child.size)

    back = copy_image(f"oci:{layout}:multi", f"{host}/transfer/multi-copy:1", pool=pool, cache=cache)
    assert str(back.digest) == index_digest
    assert registry_manifest(registry, "transfer/multi-copy", "1")[0] == index_digest
    for child in entries:
        assert registry_manifest(registry, "transfer/multi-copy", str(child.digest))[0] == str(child.digest)

    # One platform of the index into an archive (which holds single images only).
    archive = tmp_path / "arm.tar"
    arm = copy_image(
        f"oci:{layout}:multi",
        f"docker-archive:{archive}:transfer/arm:1",
        platform=Platform.parse("linux/arm64"),
        pool=pool,
        cache=cache,
    )
    assert arm.digest == entries[1].digest
    # Without a platform, an archive takes this machine's image of the index, as skopeo does.
    host_arch = Platform.host().architecture
    default = copy_image(
        f"oci:{layout}:multi", f"docker-archive:{tmp_path}/host.tar:transfer/host:1", pool=pool, cache=cache
    )
    if host_arch in ("amd64", "arm64"):
        assert default.digest == entries[("amd64", "arm64").index(host_arch)].digest
    with pytest.raises(UsageError, match=r"single-platform images.*linux/amd64, linux/arm64"):
        copy_image(f"oci:{layout}:multi", f"docker-archive:{archive}", platform="all", pool=pool, cache=cache)

    need_tool("skopeo")
    raw = subprocess.run(
        ["skopeo", "inspect", "--raw", f"oci:{layout}:multi"], capture_output=True, check=True
    )
    assert "sha256:" + hashlib.sha256(raw.stdout).hexdigest() == index_digest


@pytest.mark.parametrize("text", ["ftp:/srv/img", "layout:/tmp/x", "s3:/bucket/key"])
def test_an_unknown_location_type_is_named(text: str) -> None:
    from imagesmith.errors import UsageError
    from imagesmith.transports.locations import parse_location

    with pytest.raises(UsageError, match="unknown location type"):
        parse_location(text)
    # Registry references with ports and plain tags still parse as references.
    assert str(parse_location("localhost:5000/x:1")) == "localhost:5000/x:1"
    # Printed as `docker pull` takes it; a name that would read as a transport keeps docker://.
    assert str(parse_location("docker://oci:5000/x:1")) == "docker://oci:5000/x:1"
    assert parse_location(str(parse_location("docker://oci:5000/x:1"))) == parse_location(
        "docker://oci:5000/x:1"
    )
