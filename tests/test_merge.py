"""imagesmith merge: per-platform images assembled into one index, layers never downloaded.

``index_document`` is checked on its own (bytes, both families, refusals); everything else
runs against the real CNCF registry, with skopeo as an independent reader and podman pulling
and running the result. A fault proxy in front of the registry refuses a mount to prove the
streamed fallback; a tiny in-process server stands in for a registry serving Docker schema 1,
which distribution 2.8 no longer accepts on push.
"""

from __future__ import annotations

import io
import json
import re
import subprocess
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cli_support import cli, ok
from conftest import need_tool
from faultproxy import FaultProxy, Rule
from servers import DistributionRegistry, Podman

import imagesmith
from imagesmith.errors import ManifestError, UsageError
from imagesmith.oci import mediatypes as mt
from imagesmith.oci.digests import Digest
from imagesmith.oci.index import index_document
from imagesmith.oci.model import Descriptor, Manifest, Platform
from imagesmith.ops.merge import MergeResult, merge_images
from imagesmith.progress import ProgressEvent
from imagesmith.registry import RegistryOptions, RegistryPool

AMD64 = "linux/amd64"
ARM64 = "linux/arm64/v8"


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMAGESMITH_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)


def unique(prefix: str) -> str:
    return f"merge/{prefix}-{uuid.uuid4().hex[:8]}"


def flags(registry: DistributionRegistry) -> tuple[str, str]:
    return ("--insecure-registry", registry.host)


def raw_manifest(registry: DistributionRegistry, repository: str, reference: str) -> dict[str, Any]:
    accept = ", ".join(mt.MANIFEST_ACCEPT)
    r = registry.get(f"/v2/{repository}/manifests/{reference}", headers={"Accept": accept})
    r.raise_for_status()
    value: dict[str, Any] = r.json()
    return value


def skopeo_raw(ref: str) -> dict[str, Any]:
    need_tool("skopeo")
    done = subprocess.run(
        ["skopeo", "inspect", "--tls-verify=false", "--raw", f"docker://{ref}"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    value: dict[str, Any] = json.loads(done.stdout)
    return value


def platforms_of(document: dict[str, Any]) -> list[str]:
    out = []
    for entry in document["manifests"]:
        platform = entry["platform"]
        parts = (platform["os"], platform["architecture"], platform.get("variant"))
        out.append("/".join(x for x in parts if x))
    return out


def import_image(registry: DistributionRegistry, rootfs: Path, ref: str, platform: str, *extra: str) -> str:
    out = ok(*flags(registry), "import", str(rootfs), "--tag", ref, "--platform", platform, "--json", *extra)
    digest: str = json.loads(out)["digest"]
    return digest


# ------------------------------------------------------------------------ index_document


def _descriptor(data: bytes, media_type: str, platform: Platform | None, **kw: Any) -> Descriptor:
    return Descriptor(media_type, Digest.of(data), len(data), platform=platform, **kw)


def test_index_document_oci_is_canonical_in_the_given_order() -> None:
    arm = _descriptor(b"arm", mt.OCI_MANIFEST, Platform("linux", "arm64", "v8"))
    amd = _descriptor(b"amd", mt.OCI_MANIFEST, Platform("linux", "amd64"))
    data = index_document([arm, amd], "oci")
    expected = (
        '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":['
        f'{{"mediaType":"{mt.OCI_MANIFEST}","digest":"{arm.digest}","size":3,'
        '"platform":{"architecture":"arm64","os":"linux","variant":"v8"}},'
        f'{{"mediaType":"{mt.OCI_MANIFEST}","digest":"{amd.digest}","size":3,'
        '"platform":{"architecture":"amd64","os":"linux"}}]}'
    )
    assert data.decode() == expected
    assert index_document([arm, amd], "oci") == data  # deterministic
    assert index_document([amd, arm], "oci") != data  # the caller's order is kept


def test_index_document_docker_manifest_list() -> None:
    amd = _descriptor(b"amd", mt.DOCKER_MANIFEST, Platform("linux", "amd64"))
    arm = _descriptor(b"arm", mt.DOCKER_MANIFEST, Platform("linux", "arm", "v7"))
    document = json.loads(index_document([amd, arm], "docker"))
    assert document["schemaVersion"] == 2
    assert document["mediaType"] == mt.DOCKER_MANIFEST_LIST
    assert [m["mediaType"] for m in document["manifests"]] == [mt.DOCKER_MANIFEST] * 2
    assert platforms_of(document) == ["linux/amd64", "linux/arm/v7"]
    assert "annotations" not in document


def test_index_document_keeps_every_platform_field_and_annotations() -> None:
    windows = Platform("windows", "amd64", None, "10.0.20348.2340", ("win32k",))
    child = _descriptor(b"win", mt.OCI_MANIFEST, windows, annotations={"a": "b"})
    document = json.loads(index_document([child], "oci", {"org.opencontainers.image.version": "1"}))
    assert document["manifests"][0]["platform"] == {
        "architecture": "amd64",
        "os": "windows",
        "os.version": "10.0.20348.2340",
        "os.features": ["win32k"],
    }
    assert document["manifests"][0]["annotations"] == {"a": "b"}
    assert document["annotations"] == {"org.opencontainers.image.version": "1"}
    # Two Windows builds are two slots of one index.
    other = _descriptor(b"win2", mt.OCI_MANIFEST, Platform("windows", "amd64", None, "10.0.17763.5576"))
    assert len(json.loads(index_document([child, other], "oci"))["manifests"]) == 2


def test_index_document_refusals() -> None:
    amd = _descriptor(b"amd", mt.OCI_MANIFEST, Platform("linux", "amd64"))
    arm = _descriptor(b"arm", mt.OCI_MANIFEST, Platform("linux", "arm64"))
    arm_v8 = _descriptor(b"arm-v8", mt.OCI_MANIFEST, Platform("linux", "arm64", "v8"))
    docker = _descriptor(b"docker", mt.DOCKER_MANIFEST, Platform("linux", "s390x"))
    with pytest.raises(ManifestError, match="both for linux/arm64/v8"):
        index_document([amd, arm, arm_v8], "oci")  # arm64 means arm64/v8
    with pytest.raises(ManifestError, match="listed twice"):
        index_document([amd, amd], "oci")
    with pytest.raises(ManifestError, match=r"lists 'application/vnd.oci.image.manifest.v1\+json'"):
        index_document([amd, docker], "oci")
    with pytest.raises(ManifestError, match="no platform"):
        index_document([_descriptor(b"x", mt.OCI_MANIFEST, None)], "oci")
    with pytest.raises(ManifestError, match="at least one"):
        index_document([], "oci")
    with pytest.raises(UsageError, match="annotations need an OCI"):
        index_document([docker], "docker", {"a": "b"})
    # Attestations share unknown/unknown and are not platforms.
    attest = [_descriptor(x, mt.OCI_MANIFEST, Platform("unknown", "unknown")) for x in (b"s1", b"s2")]
    assert len(json.loads(index_document([amd, *attest], "oci"))["manifests"]) == 3


def test_merge_result_json() -> None:
    digest = Digest.of(b"x")
    result = MergeResult(imagesmith.Reference.parse("r.example/a:1"), digest, mt.OCI_INDEX, (AMD64, ARM64), 2)
    assert result.to_json() == {
        "reference": "r.example/a:1",
        "digest": str(digest),
        "mediaType": mt.OCI_INDEX,
        "platforms": [AMD64, ARM64],
        "manifests": 2,
    }


# ------------------------------------------------------------------ the multi-platform base


@pytest.mark.integration
def test_multiarch_base_is_an_oci_index_of_both_platforms(
    multiarch_base: str, registry: DistributionRegistry
) -> None:
    index = skopeo_raw(multiarch_base)
    assert index["mediaType"] == mt.OCI_INDEX
    assert platforms_of(index) == [AMD64, ARM64]
    assert all(m["mediaType"] == mt.OCI_MANIFEST for m in index["manifests"])
    # Each entry is the imported image, byte for byte (same digest as its own tag).
    for entry, arch in zip(index["manifests"], ("amd64", "arm64"), strict=True):
        part = skopeo_raw(f"{multiarch_base}-{arch}")
        assert (
            part["config"]["digest"]
            == raw_manifest(registry, "base/busybox-multi", entry["digest"])["config"]["digest"]
        )
        head = registry.get(f"/v2/base/busybox-multi/manifests/1-{arch}", headers={"Accept": mt.OCI_MANIFEST})
        assert head.headers["Docker-Content-Digest"] == entry["digest"]


@pytest.mark.integration
def test_inspect_shows_the_index_and_its_platforms(
    multiarch_base: str, registry: DistributionRegistry
) -> None:
    text = ok(*flags(registry), "inspect", multiarch_base)
    assert f"Media type: {mt.OCI_INDEX}" in text
    lines = text.split("Platforms:\n", 1)[1].splitlines()
    assert [line.split()[0] for line in lines] == [AMD64, ARM64]
    info = json.loads(ok(*flags(registry), "inspect", multiarch_base, "--platform", "linux/arm64", "--json"))
    assert info["platform"] == ARM64


@pytest.mark.integration
def test_podman_pulls_the_arm64_image(multiarch_base: str, podman: Podman) -> None:
    pulled = podman.podman("pull", "--arch", "arm64", multiarch_base)
    assert pulled.returncode == 0, pulled.stderr
    image_id = pulled.stdout.strip().splitlines()[-1]
    try:
        shown = podman.podman("image", "inspect", image_id)
        assert shown.returncode == 0, shown.stderr
        (info,) = json.loads(shown.stdout)
        assert (info["Os"], info["Architecture"]) == ("linux", "arm64")
        index = skopeo_raw(multiarch_base)
        # Podman records the index digest and that of the manifest it chose.
        digests = {ref.split("@")[1] for ref in info["RepoDigests"]}
        assert index["manifests"][1]["digest"] in digests
        assert index["manifests"][0]["digest"] not in digests
    finally:
        # The local name must not keep pointing at the arm64 image for other tests.
        podman.podman("rmi", "--force", image_id)


@pytest.mark.integration
def test_podman_runs_the_amd64_image(multiarch_base: str, podman: Podman) -> None:
    ran = podman.podman(
        "run", "--rm", "--pull", "always", "--arch", "amd64", multiarch_base, "busybox", "echo", "hi"
    )
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip() == "hi"


@pytest.mark.integration
def test_docker_family_gives_a_manifest_list(
    multiarch_base_docker: str, registry: DistributionRegistry, podman: Podman
) -> None:
    index = skopeo_raw(multiarch_base_docker)
    assert index["mediaType"] == mt.DOCKER_MANIFEST_LIST
    assert platforms_of(index) == [AMD64, ARM64]
    assert all(m["mediaType"] == mt.DOCKER_MANIFEST for m in index["manifests"])
    ran = podman.podman(
        "run", "--rm", "--pull", "always", "--arch", "amd64", multiarch_base_docker, "busybox", "echo", "hi"
    )
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip() == "hi"


@pytest.mark.integration
def test_merging_again_gives_the_same_digest(multiarch_base: str, registry: DistributionRegistry) -> None:
    first = skopeo_raw(multiarch_base)
    before = registry.get("/v2/base/busybox-multi/manifests/1", headers={"Accept": mt.OCI_INDEX})
    target = f"{registry.host}/{unique('again')}:1"
    parts = [f"{multiarch_base}-amd64", f"{multiarch_base}-arm64"]
    result = json.loads(ok(*flags(registry), "merge", *parts, "--tag", target, "--json"))
    assert result["digest"] == before.headers["Docker-Content-Digest"]
    assert result["platforms"] == [AMD64, ARM64] and result["manifests"] == 2
    assert skopeo_raw(target) == first
    again = json.loads(ok(*flags(registry), "merge", *parts, "--tag", target, "--json"))
    assert again["digest"] == result["digest"]


@pytest.mark.integration
def test_text_output(multiarch_base: str, registry: DistributionRegistry) -> None:
    target = f"{registry.host}/{unique('text')}:1"
    out = ok(*flags(registry), "merge", f"{multiarch_base}-amd64", f"{multiarch_base}-arm64", "--tag", target)
    first, second = out.splitlines()
    assert re.fullmatch(rf"Pushed {re.escape(target)} \(sha256:[0-9a-f]{{64}}\)", first)
    assert second == f"Platforms: {AMD64}, {ARM64}"


# ------------------------------------------------------------------ across repositories


def _layer_digests(registry: DistributionRegistry, repository: str, tag: str) -> list[str]:
    manifest = raw_manifest(registry, repository, tag)
    return [manifest["config"]["digest"], *(layer["digest"] for layer in manifest["layers"])]


@pytest.mark.integration
def test_sources_in_other_repositories_are_mounted_not_uploaded(
    registry: DistributionRegistry, busybox_dir: Path, busybox_arm64_dir: Path
) -> None:
    amd_repo, arm_repo, target_repo = unique("amd"), unique("arm"), unique("multi")
    import_image(registry, busybox_dir, f"{registry.host}/{amd_repo}:1", AMD64)
    import_image(registry, busybox_arm64_dir, f"{registry.host}/{arm_repo}:1", ARM64)
    target = f"{registry.host}/{target_repo}:1"
    code, out, log = cli(
        "--debug",
        *flags(registry),
        "merge",
        f"{registry.host}/{amd_repo}:1",
        f"{registry.host}/{arm_repo}@" + raw_digest(registry, arm_repo, "1"),
        "--tag",
        target,
        "--json",
    )
    assert code == 0, log
    result = json.loads(out)
    blobs = _layer_digests(registry, amd_repo, "1") + _layer_digests(registry, arm_repo, "1")
    requests = [line for line in log.splitlines() if "imagesmith.http" in line]
    assert sum(f"mount={digest}" in line and "-> 201" in line for line in requests for digest in blobs) == 4
    # No upload, and no blob read but the two configs (they name the platforms).
    assert not [line for line in requests if re.search(r"(PATCH|PUT) \S+/blobs/uploads/", line)]
    fetched = [line for line in requests if re.search(r"GET \S+/blobs/sha256:", line)]
    assert len(fetched) == 2
    layers = [d for d in blobs if not any(d in line for line in fetched)]
    assert len(layers) == 2
    for digest in blobs:
        assert registry.get(f"/v2/{target_repo}/blobs/{digest}").status_code == 200
    # The children are in the target repository under their own digests, bytes unchanged.
    index = raw_manifest(registry, target_repo, "1")
    assert [m["digest"] for m in index["manifests"]] == [
        raw_digest(registry, amd_repo, "1"),
        raw_digest(registry, arm_repo, "1"),
    ]
    assert result["digest"] == raw_digest(registry, target_repo, "1")
    assert platforms_of(skopeo_raw(target)) == [AMD64, ARM64]


def raw_digest(registry: DistributionRegistry, repository: str, reference: str) -> str:
    accept = ", ".join(mt.MANIFEST_ACCEPT)
    r = registry.get(f"/v2/{repository}/manifests/{reference}", headers={"Accept": accept})
    r.raise_for_status()
    return str(Digest.of(r.content))


@pytest.mark.integration
def test_library_reports_mounts_and_blobs_already_there(
    registry: DistributionRegistry, multiarch_base: str
) -> None:
    target = f"{registry.host}/{unique('events')}:1"
    parts = [f"{multiarch_base}-amd64", f"{multiarch_base}-arm64"]
    events: list[ProgressEvent] = []
    lock = threading.Lock()

    def record(event: ProgressEvent) -> None:
        with lock:
            events.append(event)

    with RegistryPool(RegistryOptions(insecure=frozenset({registry.host}))) as pool:
        first = merge_images(parts, target, pool=pool, progress=record)
        kinds = sorted(e.kind for e in events if e.kind.startswith("blob-"))
        assert kinds == ["blob-mounted"] * 4
        events.clear()
        second = merge_images(parts, target, pool=pool, progress=record)
    assert sorted(e.kind for e in events if e.kind.startswith("blob-")) == ["blob-exists"] * 4
    assert second == first
    assert first.platforms == (AMD64, ARM64) and first.media_type == mt.OCI_INDEX


@pytest.mark.integration
def test_refused_mount_streams_the_blob_once(registry: DistributionRegistry, multiarch_base: str) -> None:
    # The second mount request (jobs=1: the amd64 layer, after its config) answers 202 without
    # a session, as a registry that will not mount does; small chunks make the upload chunked.
    rule = Rule("POST", r"/blobs/uploads/$", "status", on=frozenset({2}), status=202)
    with FaultProxy(registry.host, [rule]) as proxy:
        parts = [f"{proxy.host}/base/busybox-multi:1-amd64", f"{proxy.host}/base/busybox-multi:1-arm64"]
        target_repo = unique("streamed")
        options = RegistryOptions(insecure=frozenset({proxy.host}), chunk_size=64 * 1024)
        events: list[ProgressEvent] = []
        with RegistryPool(options) as pool:
            result = merge_images(
                parts, f"{proxy.host}/{target_repo}:1", pool=pool, progress=events.append, jobs=1
            )
    assert rule.fired == 1
    layer = raw_manifest(registry, "base/busybox-multi", "1-amd64")["layers"][0]
    assert layer["size"] > 4 * 64 * 1024  # several chunks
    uploaded = [e for e in events if e.kind == "blob-uploaded"]
    assert [e.subject for e in uploaded] == [layer["digest"]]
    kinds = sorted(e.kind for e in events if e.kind.startswith("blob-"))
    assert kinds == ["blob-mounted"] * 3 + ["blob-uploaded"]
    # Read once from the source, however many chunks it took to upload.
    assert proxy.count("GET", f"/blobs/{layer['digest']}$") == 1
    assert proxy.count("PATCH", "/blobs/uploads/") > 1
    assert registry.get(f"/v2/{target_repo}/blobs/{layer['digest']}").status_code == 200
    assert result.digest == Digest.parse(raw_digest(registry, "base/busybox-multi", "1"))


@pytest.mark.integration
def test_index_source_plus_manifest_source(
    registry: DistributionRegistry, multiarch_base: str, busybox_dir: Path
) -> None:
    extra_repo = unique("armv7")
    # A busybox that claims arm/v7: enough for an index (nothing runs it).
    import_image(registry, busybox_dir, f"{registry.host}/{extra_repo}:1", "linux/arm/v7")
    target_repo = unique("three")
    result = json.loads(
        ok(
            *flags(registry),
            "merge",
            multiarch_base,
            f"{registry.host}/{extra_repo}:1",
            "--tag",
            f"{registry.host}/{target_repo}:1",
            "--json",
        )
    )
    assert result["platforms"] == [AMD64, ARM64, "linux/arm/v7"]
    merged = raw_manifest(registry, target_repo, "1")
    original = raw_manifest(registry, "base/busybox-multi", "1")
    assert merged["manifests"][:2] == original["manifests"]  # entries taken as they are
    assert platforms_of(skopeo_raw(f"{registry.host}/{target_repo}:1")) == [AMD64, ARM64, "linux/arm/v7"]


@pytest.mark.integration
def test_the_same_manifest_twice_is_listed_once(registry: DistributionRegistry, multiarch_base: str) -> None:
    target = f"{registry.host}/{unique('dedupe')}:1"
    result = json.loads(
        ok(
            *flags(registry),
            "merge",
            multiarch_base,
            f"{multiarch_base}-amd64",
            f"{multiarch_base}-arm64",
            "--tag",
            target,
            "--json",
        )
    )
    assert result["platforms"] == [AMD64, ARM64] and result["manifests"] == 2
    assert result["digest"] == raw_digest(registry, "base/busybox-multi", "1")


@pytest.mark.integration
def test_attestations_and_artifacts_are_dropped(registry: DistributionRegistry, multiarch_base: str) -> None:
    # An index as buildkit writes it (an image, and an attestation manifest for unknown/unknown)
    # plus an OCI 1.1 artifact without a platform (a signature, say).
    repository = "base/busybox-multi"
    index = raw_manifest(registry, repository, "1")
    amd = index["manifests"][0]
    attestation = dict(
        index["manifests"][1],
        platform={"architecture": "unknown", "os": "unknown"},
        annotations={"vnd.docker.reference.type": "attestation-manifest"},
    )
    empty = Descriptor(mt.OCI_EMPTY, Digest.of(b"{}"), 2)
    kind = "application/vnd.example.signature"
    artifact = Manifest(mt.OCI_MANIFEST, empty, (), artifact_type=kind).to_bytes()
    artifact_entry = {
        "mediaType": mt.OCI_MANIFEST,
        "digest": str(Digest.of(artifact)),
        "size": len(artifact),
        "artifactType": kind,
    }
    data = json.dumps(dict(index, manifests=[amd, attestation, artifact_entry])).encode()
    source_repo = unique("attested")
    with RegistryPool(RegistryOptions(insecure=frozenset({registry.host}))) as pool:
        client = pool.client(registry.host)
        for blob in [
            *_layer_digests(registry, repository, "1-amd64"),
            *_layer_digests(registry, repository, "1-arm64"),
        ]:
            assert client.mount_blob(source_repo, Digest.parse(blob), repository)
        for entry in index["manifests"]:
            got = client.get_manifest(repository, entry["digest"])
            client.put_manifest(source_repo, entry["digest"], got.data, got.media_type)
        client.upload_blob(source_repo, empty.digest, empty.size, lambda: io.BytesIO(b"{}"))
        client.put_manifest(source_repo, str(artifact_entry["digest"]), artifact, mt.OCI_MANIFEST)
        client.put_manifest(source_repo, "1", data, mt.OCI_INDEX)
        target = f"{registry.host}/{unique('clean')}:1"
        result = merge_images([f"{registry.host}/{source_repo}:1"], target, pool=pool)
    assert result.platforms == (AMD64,) and result.manifests == 1
    assert [m["digest"] for m in skopeo_raw(target)["manifests"]] == [amd["digest"]]


# -------------------------------------------------------------------------------- errors


@pytest.mark.integration
def test_two_images_for_one_platform_are_refused(
    registry: DistributionRegistry, multiarch_base: str, busybox_dir: Path
) -> None:
    other = f"{registry.host}/{unique('other-amd64')}:1"
    import_image(registry, busybox_dir, other, AMD64, "--env", "FLAVOUR=other")
    code, _, err = cli(
        *flags(registry),
        "merge",
        f"{multiarch_base}-amd64",
        other,
        "--tag",
        f"{registry.host}/{unique('dup')}:1",
    )
    assert code == 2
    assert f"{multiarch_base}-amd64" in err and other in err and "for linux/amd64" in err
    assert "leave one of them out" in err


@pytest.mark.integration
def test_mixed_families_are_refused(
    registry: DistributionRegistry, multiarch_base: str, multiarch_base_docker: str
) -> None:
    oci, docker = f"{multiarch_base}-amd64", f"{multiarch_base_docker}-arm64"
    target = f"{registry.host}/{unique('mixed')}:1"
    code, _, err = cli(*flags(registry), "merge", oci, docker, "--tag", target)
    assert code == 2
    assert f"{oci} is OCI" in err and f"{docker} is Docker v2" in err and "--format" in err


@pytest.mark.integration
def test_sources_on_another_registry_are_refused(registry: DistributionRegistry, multiarch_base: str) -> None:
    code, _, err = cli(
        *flags(registry),
        "merge",
        f"{multiarch_base}-amd64",
        "elsewhere.example/busybox:1",
        "--tag",
        f"{registry.host}/{unique('far')}:1",
    )
    assert code == 2
    assert "elsewhere.example/busybox:1 is on elsewhere.example" in err
    assert f"imagesmith copy elsewhere.example/busybox:1 {registry.host}/busybox:TAG" in err


def test_bad_targets_and_sources_are_refused(tmp_path: Path) -> None:
    digest = Digest.of(b"x")
    code, _, err = cli("merge", "r.example/a:1", "--tag", f"r.example/a@{digest}")
    assert code == 2 and "must name a tag" in err
    code, _, err = cli("merge", f"oci:{tmp_path}:1", "--tag", "r.example/a:1")
    assert code == 2 and "is not in a registry" in err
    code, _, err = cli("merge", "--tag", "r.example/a:1")
    assert code == 2


@pytest.mark.integration
def test_missing_source_is_a_registry_error(registry: DistributionRegistry) -> None:
    code, _, err = cli(
        *flags(registry),
        "merge",
        f"{registry.host}/{unique('absent')}:1",
        "--tag",
        f"{registry.host}/{unique('nothing')}:1",
    )
    assert code == 3 and "manifest unknown" in err


class _Schema1Registry:
    """Serves one Docker schema 1 manifest for every manifest request (distribution 2.8
    refuses schema 1 pushes, so a real registry cannot be made to hold one)."""

    MANIFEST = json.dumps(
        {
            "schemaVersion": 1,
            "name": "old/app",
            "tag": "1",
            "architecture": "amd64",
            "fsLayers": [{"blobSum": str(Digest.of(b"layer"))}],
            "history": [{"v1Compatibility": "{}"}],
            "signatures": [],
        }
    ).encode()

    def __init__(self) -> None:
        body = self.MANIFEST

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                found = "/manifests/" in self.path
                self.send_response(200 if found or self.path == "/v2/" else 404)
                self.send_header("Content-Type", "application/vnd.docker.distribution.manifest.v1+prettyjws")
                self.send_header("Content-Length", str(len(body) if found else 0))
                self.end_headers()
                if found:
                    self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()
        self.host = f"127.0.0.1:{self._server.server_address[1]}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def schema1_registry() -> Iterator[_Schema1Registry]:
    server = _Schema1Registry()
    yield server
    server.close()


def test_schema1_is_refused(schema1_registry: _Schema1Registry) -> None:
    host = schema1_registry.host
    code, _, err = cli("--insecure-registry", host, "merge", f"{host}/old/app:1", "--tag", f"{host}/new:1")
    assert code == 1
    assert "Docker schema 1" in err and "v2s2" in err


# -------------------------------------------------------------------- the repository index


@pytest.mark.integration
def test_repository_index_lists_the_platforms_of_an_index_tag(
    registry: DistributionRegistry, multiarch_base: str
) -> None:
    repository = unique("indexed")
    ok(
        *flags(registry),
        "merge",
        f"{multiarch_base}-amd64",
        f"{multiarch_base}-arm64",
        "--tag",
        f"{registry.host}/{repository}:multi",
    )
    ok(*flags(registry), "index", "update", f"{registry.host}/{repository}")
    for extra in ((), ("--live",)):
        listed = json.loads(
            ok(*flags(registry), "index", "list", f"{registry.host}/{repository}", "--json", *extra)
        )
        (entry,) = listed["entries"]
        assert (entry["tag"], entry["mediaType"]) == ("multi", mt.OCI_INDEX)
        assert entry["platforms"] == [AMD64, ARM64]
    text = ok(*flags(registry), "index", "list", f"{registry.host}/{repository}")
    assert re.search(rf"^multi\s.*\s{AMD64},{ARM64}\s+sha256:", text, re.MULTILINE)
