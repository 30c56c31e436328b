"""Layers uploaded while they are built (imagesmith.registry.overlap), against the real registry.

The overlap must never change what is pushed (same digests with and without it), must
really send the layer before the build ends (PATCH requests during the build; the push then
does not check the blob again), and must fall back to the ordinary upload on any fault.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from faultproxy import FaultProxy, Rule
from servers import DistributionRegistry

from imagesmith.errors import LayerError
from imagesmith.inputs.load import load_packages
from imagesmith.oci.digests import Digest
from imagesmith.oci.mediatypes import OCI
from imagesmith.pipeline.results import BuildOptions
from imagesmith.pipeline.run import build
from imagesmith.progress import ProgressEvent
from imagesmith.registry import RegistryClient, RegistryOptions, RegistryPool
from imagesmith.registry.overlap import EarlyUploads, LayerUpload
from imagesmith.store.cache import BlobCache
from imagesmith.tar.layer import build_layer
from imagesmith.tar.writer import TarEntry

MiB = 1024 * 1024


@pytest.fixture
def proxy(registry: DistributionRegistry) -> Iterator[FaultProxy]:
    with FaultProxy(registry.host) as p:
        yield p


def _options(*hosts: str) -> RegistryOptions:
    return RegistryOptions(insecure=frozenset(hosts), timeout=10.0, retries=2, backoff=0.01, max_backoff=0.05)


def _package(tmp_path: Path, name: str, size: int) -> Path:
    """A package whose content is ``size`` incompressible bytes (so the layer is that big)."""
    content = tmp_path / f"{name}-prefix"
    (content / "lib").mkdir(parents=True)
    (content / "lib" / "data.bin").write_bytes(os.urandom(size))
    (content / "bin").mkdir()
    (content / "bin" / name).write_text("#!/bin/sh\necho hi\n")
    pkg = tmp_path / f"{name}.json"
    pkg.write_text(
        json.dumps({"name": name, "version": "1.0", "prefix": f"/opt/{name}", "content": content.name})
    )
    return pkg


def _build(
    host: str, base_host: str, pkg: Path, cache: BlobCache, repo: str, **options: object
) -> tuple[str, list[ProgressEvent]]:
    events: list[ProgressEvent] = []
    lock = threading.Lock()

    def record(event: ProgressEvent) -> None:
        with lock:
            events.append(event)

    with RegistryPool(_options(host, base_host)) as pool:
        result = build(
            f"{base_host}/base/busybox:1",
            load_packages([pkg]),
            repo=f"{host}/{repo}",
            options=BuildOptions(**options),  # type: ignore[arg-type]
            cache=cache,
            pool=pool,
            progress=record,
        )
    return result.digest, events


def _early(events: list[ProgressEvent]) -> set[str]:
    return {e.subject for e in events if e.kind == "blob-uploaded" and e.detail == "while building"}


def test_layer_is_uploaded_while_built_and_digests_do_not_change(
    registry: DistributionRegistry, base: str, proxy: FaultProxy, tmp_path: Path
) -> None:
    pkg = _package(tmp_path, "big", 20 * MiB)
    digest, events = _build(proxy.host, proxy.host, pkg, BlobCache(tmp_path / "c1"), "overlap/on")
    built = [e for e in events if e.kind == "layer-built"]
    assert len(built) == 1
    layer = built[0].detail
    assert _early(events) == {layer}
    # The layer went up in PATCH chunks during the build; the push trusts the registry's 201
    # for it and does not even check it again.
    assert proxy.count("PATCH", r"/v2/overlap/on/blobs/uploads/") >= 2
    assert proxy.count("HEAD", rf"/v2/overlap/on/blobs/{layer}") == 0
    pushed = [e for e in events if e.subject == layer and e.detail != "while building"]
    assert not any(e.kind in ("blob-exists", "blob-uploaded") for e in pushed)
    with RegistryClient(registry.host, _options(registry.host)) as client:
        manifest = json.loads(client.get_manifest("overlap/on", digest).data)
        assert manifest["layers"][-1]["digest"] == layer
        assert client.blob_exists("overlap/on", Digest.parse(layer))

    # Without the overlap (and a fresh cache): the same bytes, uploaded by the push.
    before = proxy.count("PATCH")
    digest_off, events_off = _build(
        proxy.host, proxy.host, pkg, BlobCache(tmp_path / "c2"), "overlap/off", overlap_upload=False
    )
    assert not _early(events_off)
    assert [e.detail for e in events_off if e.kind == "layer-built"] == [layer]
    assert digest_off == digest  # the image does not depend on how the layer got there
    # The ordinary upload: 20 MiB in two chunks of RegistryOptions.chunk_size (16 MiB), not 8.
    assert proxy.count("PATCH") == before + 2


def test_a_small_layer_never_opens_a_session(tmp_path: Path, registry: DistributionRegistry) -> None:
    with RegistryClient(registry.host, _options(registry.host)) as client:
        follower = LayerUpload(client, "overlap/small")
        entries = [TarEntry("f", "file", 0o644, 3 * MiB, source=_random_file(tmp_path / "f", 3 * MiB))]
        blob = build_layer(entries, BlobCache(tmp_path / "c"), media_types=OCI, follower=follower)
        assert not follower.started
        assert follower.wait() is None
        assert not client.blob_exists("overlap/small", blob.digest)


@pytest.mark.parametrize(
    "rule",
    [
        Rule("PATCH", r"/blobs/uploads/", "status", on=frozenset({1}), status=500),
        Rule("PUT", r"/blobs/uploads/", "status", on=frozenset({1}), status=503),
    ],
    # A fault after a chunk went through is test_a_dropped_later_chunk_cancels_the_session:
    # through a whole build, whether a second PATCH exists depends on thread timing.
    ids=["first-chunk-500", "final-put-503"],
)
def test_a_fault_falls_back_to_the_ordinary_upload(
    registry: DistributionRegistry, base: str, proxy: FaultProxy, tmp_path: Path, rule: Rule
) -> None:
    proxy.rules.append(rule)
    pkg = _package(tmp_path, "faulty", 24 * MiB)
    digest, events = _build(proxy.host, proxy.host, pkg, BlobCache(tmp_path / "c"), "overlap/fault")
    assert rule.fired == 1
    layer = next(e.detail for e in events if e.kind == "layer-built")
    assert not _early(events)
    # The push uploaded the layer itself, and the image is complete.
    pushed = [e for e in events if e.kind == "blob-uploaded" and e.subject == layer]
    assert pushed and all(e.detail != "while building" for e in pushed)
    assert proxy.count("DELETE", r"/blobs/uploads/") >= 1  # the broken session was cancelled
    with RegistryClient(registry.host, _options(registry.host)) as client:
        manifest = json.loads(client.get_manifest("overlap/fault", digest).data)
        for blob in manifest["layers"]:
            assert client.blob_exists("overlap/fault", Digest.parse(blob["digest"]))


def test_a_dropped_later_chunk_cancels_the_session(
    registry: DistributionRegistry, proxy: FaultProxy, tmp_path: Path
) -> None:
    """The first chunk goes through, the second is cut off mid-request: the upload gives up,
    cancels its session and reports nothing uploaded, so the ordinary push sends the blob.
    The layer's growth is driven by hand, so there are two PATCHes whatever the machine's load."""
    data = _random_file(tmp_path / "blob", 8 * MiB)
    proxy.rules.append(Rule("PATCH", r"/blobs/uploads/", "drop_request", on=frozenset({2})))
    with RegistryClient(proxy.host, _options(proxy.host)) as client:
        upload = LayerUpload(client, "overlap/dropped", chunk=2 * MiB)
        upload.grow(data, 3 * MiB)  # one whole chunk: the session opens, the first PATCH goes
        deadline = time.monotonic() + 30
        while proxy.count("PATCH", r"/v2/overlap/dropped/") < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert proxy.count("PATCH", r"/v2/overlap/dropped/") == 1
        upload.grow(data, 8 * MiB)  # two more whole chunks: the second PATCH, dropped
        upload.finish(Digest.of(data.read_bytes()), 8 * MiB)
        assert upload.wait() is None
        assert upload.failure
    assert proxy.rules[0].fired == 1
    assert proxy.count("DELETE", r"/v2/overlap/dropped/blobs/uploads/") == 1
    assert proxy.count("PUT", r"/v2/overlap/dropped/") == 0


def test_a_failed_build_cancels_its_upload(
    registry: DistributionRegistry, proxy: FaultProxy, tmp_path: Path
) -> None:
    source = _random_file(tmp_path / "data", 30 * MiB)

    def entries() -> Iterator[TarEntry]:
        yield TarEntry("data", "file", 0o644, 30 * MiB, source=source)
        # The build fails once the upload is under way (its first chunk sent): on a fast or
        # loaded machine alike, never before the uploader thread got going.
        deadline = time.monotonic() + 30
        while not proxy.count("PATCH", r"/v2/overlap/failed/") and time.monotonic() < deadline:
            time.sleep(0.01)
        raise LayerError("the content changed while it was read")

    cache = BlobCache(tmp_path / "c")
    client = RegistryClient(proxy.host, _options(proxy.host))
    with client, pytest.raises(LayerError), EarlyUploads(client, "overlap/failed", chunk=4 * MiB) as uploads:
        build_layer(entries(), cache, media_types=OCI, follower=uploads.follower())
    assert proxy.count("PATCH", r"/v2/overlap/failed/") >= 1  # it had started
    assert proxy.count("DELETE", r"/v2/overlap/failed/blobs/uploads/") == 1
    assert proxy.count("PUT", r"/v2/overlap/failed/") == 0
    assert not any(t.name == "imagesmith-upload" for t in threading.enumerate())
    assert not list((cache.tmp_dir).iterdir())


def _random_file(path: Path, size: int) -> Path:
    path.write_bytes(os.urandom(size))
    return path


def test_a_layer_the_registry_has_is_not_sent_again_when_a_record_knows_it(
    registry: DistributionRegistry, base: str, proxy: FaultProxy, tmp_path: Path
) -> None:
    """The cache lost the layer (pruned) but its record says what the digest will be: the
    registry is asked first, has it, and not one byte of the layer goes out again; the layer
    is not even built again."""
    pkg = _package(tmp_path, "known", 20 * MiB)
    cache = BlobCache(tmp_path / "c")
    digest, events = _build(proxy.host, proxy.host, pkg, cache, "overlap/known")
    layer = Digest.parse(next(e.detail for e in events if e.kind == "layer-built"))
    cache.evict(layer)  # the blob goes (a pruned cache), its record stays
    patches, posts = proxy.count("PATCH"), proxy.count("POST")
    again, events = _build(proxy.host, proxy.host, pkg, cache, "overlap/known")
    assert again == digest
    assert proxy.count("PATCH") == patches and proxy.count("POST") == posts  # nothing sent
    assert [e.kind for e in events if str(layer) in (e.subject, e.detail)] == ["layer-reused", "blob-exists"]
    assert not cache.has(layer)  # nothing needed its bytes
    # A layout output needs the bytes: the layer is built again, the same.
    with RegistryPool(_options(proxy.host)) as pool:
        out = build(
            f"{proxy.host}/base/busybox:1",
            load_packages([pkg]),
            output=f"oci:{tmp_path / 'l'}",
            cache=cache,
            pool=pool,
        )
    assert cache.verify(layer) and (tmp_path / "l" / "blobs" / "sha256" / layer.hex).is_file()
    assert out.digest != "" and out.packages[0].layer.digest == layer


def test_a_used_record_survives_pruning_by_age(tmp_path: Path) -> None:
    from imagesmith.pipeline.layers import content_layer

    content = _package(tmp_path, "aged", 1024).parent / "aged-prefix"
    cache = BlobCache(tmp_path / "c")
    blob, _ = content_layer(content, "opt/aged", cache, OCI)
    old = 1_000_000_000
    for path in (cache.root / "records").iterdir():
        os.utime(path, (old, old))
    os.utime(cache.path(blob.digest), (old, old))
    assert content_layer(content, "opt/aged", cache, OCI)[1]  # reused: a use, like a read
    pruned = cache.prune(older_than=86400)
    assert pruned.records == 0 and pruned.blobs == 0
