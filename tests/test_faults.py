"""Pushes and pulls through a fault-injecting proxy (tests/faultproxy.py) in front of a real
CNCF distribution registry. Every push either succeeds with an image whose blobs all verify
when read back DIRECTLY from the registry, or fails with one clear error and no tag."""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from faultproxy import FaultProxy, Rule
from servers import DistributionRegistry

from imagesmith.errors import IntegrityError, RateLimitError, RegistryError
from imagesmith.oci.digests import Digest
from imagesmith.oci.image import RawManifest
from imagesmith.oci.model import Descriptor, Manifest
from imagesmith.oci.references import Reference
from imagesmith.registry import RegistryClient, RegistryOptions, RegistryPool
from imagesmith.registry.transport import Transport
from imagesmith.store.cache import BlobCache
from imagesmith.transports.base import fetch_blob
from imagesmith.transports.registry import RegistrySink, RemoteOrigin

pytestmark = pytest.mark.integration

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
MIB = 1024 * 1024
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def proxy(registry: DistributionRegistry) -> Iterator[FaultProxy]:
    with FaultProxy(registry.host) as p:
        yield p


def options(proxy: FaultProxy, **kw: object) -> RegistryOptions:
    base: dict[str, object] = {"timeout": 5.0, "retries": 3, "backoff": 0.01, "max_backoff": 0.05}
    base.update(kw)
    return RegistryOptions(insecure=frozenset({proxy.host}), **base)  # type: ignore[arg-type]


def client_for(proxy: FaultProxy, sleeps: list[float] | None = None, **kw: object) -> RegistryClient:
    opts = options(proxy, **kw)
    transport = Transport(opts, sleep=sleeps.append if sleeps is not None else (lambda _s: None))
    return RegistryClient(proxy.host, opts, transport=transport)


def make_blobs(tmp_path: Path, seed: str, sizes: list[int]) -> list[tuple[Path, Descriptor]]:
    out = []
    for i, size in enumerate(sizes):
        data = (hashlib.sha256(f"{seed}-{i}".encode()).digest() * (size // 32 + 1))[:size]
        data = os.urandom(16) + data[16:]  # unique per run: never already in the registry
        path = tmp_path / f"{seed}-{i}"
        path.write_bytes(data)
        out.append((path, Descriptor(OCI_LAYER, Digest.of(data), size)))
    return out


def push(client: RegistryClient, repo: str, tag: str, blobs: list[tuple[Path, Descriptor]]) -> Digest:
    """Blobs first, config next, manifest last (the order imagesmith.push uses)."""
    for path, desc in blobs:
        if not client.blob_exists(repo, desc.digest):
            client.upload_blob(repo, desc.digest, desc.size, lambda p=path: p.open("rb"))  # type: ignore[misc]
    diff_ids = [str(d.digest) for _, d in blobs]
    config = json.dumps(
        {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": diff_ids}}
    ).encode()
    cfg = Descriptor(OCI_CONFIG, Digest.of(config), len(config))
    if not client.blob_exists(repo, cfg.digest):
        client.upload_blob(repo, cfg.digest, cfg.size, lambda: io.BytesIO(config))
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": str(cfg.digest), "size": cfg.size},
            "layers": [{"mediaType": OCI_LAYER, "digest": str(d.digest), "size": d.size} for _, d in blobs],
        }
    ).encode()
    return client.put_manifest(repo, tag, manifest, OCI_MANIFEST)


def verify_direct(registry: DistributionRegistry, repo: str, tag: str) -> bool:
    """False when the tag does not exist; otherwise every blob must exist and hash right."""
    resp = registry.get(f"/v2/{repo}/manifests/{tag}", headers={"Accept": OCI_MANIFEST})
    if resp.status_code == 404:
        return False
    assert resp.status_code == 200, resp.text
    manifest = resp.json()
    for desc in [manifest["config"], *manifest["layers"]]:
        blob = registry.get(f"/v2/{repo}/blobs/{desc['digest']}")
        assert blob.status_code == 200, f"tag {tag} points at missing blob {desc['digest']}"
        assert "sha256:" + hashlib.sha256(blob.content).hexdigest() == desc["digest"]
        assert len(blob.content) == desc["size"]
    return True


def test_500_on_blob_put_then_success(
    registry: DistributionRegistry, proxy: FaultProxy, tmp_path: Path
) -> None:
    """RELIABILITY 2: a 5xx on the upload PUT restarts the blob; the image is complete."""
    proxy.rules = [
        Rule("PUT", r"/blobs/uploads/", "status", on=frozenset({1, 3}), status=500),
        Rule("PUT", r"/manifests/", "status", on=frozenset({1}), status=503),
    ]
    blobs = make_blobs(tmp_path, "a", [2 * MIB, 1 * MIB, 3 * MIB])
    push(client_for(proxy), "faults/five", "v1", blobs)
    assert verify_direct(registry, "faults/five", "v1")
    assert all(r.fired == 1 for r in proxy.rules[1:]) and proxy.rules[0].fired == 2


def _manifest_blob_unknown(digest: Digest) -> bytes:
    error = {"code": "MANIFEST_BLOB_UNKNOWN", "message": "blob unknown to registry", "detail": str(digest)}
    return json.dumps({"errors": [error]}).encode()


def _sink_push(proxy: FaultProxy, tmp_path: Path, tag: str) -> tuple[RawManifest, list[Descriptor]]:
    """An image of one layer and its config, pushed through a RegistrySink (blobs first)."""
    ((path, layer),) = make_blobs(tmp_path, tag, [64 * 1024])
    config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers"}}).encode()
    cfg = Descriptor(OCI_CONFIG, Digest.of(config), len(config))
    manifest = Manifest(OCI_MANIFEST, cfg, (layer,)).to_bytes()
    raw = RawManifest(manifest, OCI_MANIFEST, Digest.of(manifest))
    with RegistryPool(options(proxy)) as pool:
        sink = RegistrySink(Reference.parse(f"{proxy.host}/faults/race:{tag}"), pool=pool, cache=None)
        sink.put_blob_bytes(cfg, config, lambda _e: None)
        if tag != "missing":
            pool.client(proxy.host).upload_blob(
                "faults/race", layer.digest, layer.size, lambda: path.open("rb")
            )
        sink.put_manifest(raw, top=True, platform=None, progress=lambda _e: None)
    return raw, [cfg, layer]


def test_manifest_refused_for_a_blob_the_registry_has_is_tried_again(
    registry: DistributionRegistry, proxy: FaultProxy, tmp_path: Path
) -> None:
    """A registry storing a blob another client writes at the same moment may miss it for an
    instant (seen in CI: two index updates racing): the sink checks the blobs and PUTs again."""
    proxy.rules = [
        Rule("PUT", r"/manifests/", "status", status=400, body=_manifest_blob_unknown(Digest.of(b"x")))
    ]
    _sink_push(proxy, tmp_path, "raced")
    assert verify_direct(registry, "faults/race", "raced")
    assert proxy.count("PUT", "/manifests/") == 2


def test_manifest_refused_for_a_blob_really_missing_is_an_error(
    registry: DistributionRegistry, proxy: FaultProxy, tmp_path: Path
) -> None:
    """No retry hides a blob that is really missing: one PUT, the registry's error, no tag."""
    with pytest.raises(RegistryError, match="MANIFEST_BLOB_UNKNOWN"):
        _sink_push(proxy, tmp_path, "missing")
    assert proxy.count("PUT", "/manifests/") == 1
    assert not verify_direct(registry, "faults/race", "missing")


def test_429_retry_after_is_honoured_then_bounded(
    registry: DistributionRegistry, proxy: FaultProxy, tmp_path: Path
) -> None:
    """RELIABILITY 1, 2: Retry-After seconds are waited (recorded), capped; a registry that
    keeps answering 429 gives a rate-limit error naming the host, and no tag."""
    sleeps: list[float] = []
    proxy.rules = [
        Rule(
            "POST",
            r"/blobs/uploads/",
            "status",
            on=frozenset({1, 2}),
            status=429,
            headers={"Retry-After": "7"},
        )
    ]
    blobs = make_blobs(tmp_path, "b", [1 * MIB, 1 * MIB])
    push(client_for(proxy, sleeps), "faults/rate", "v1", blobs)
    assert sleeps.count(7.0) == 2
    assert verify_direct(registry, "faults/rate", "v1")

    sleeps.clear()
    proxy.rules = [
        Rule(
            "POST",
            r"/blobs/uploads/",
            "status",
            on=frozenset(range(1, 50)),
            status=429,
            headers={"Retry-After": "100"},
        )
    ]
    with pytest.raises(RateLimitError, match=f"rate limited by {proxy.host}"):
        push(
            client_for(proxy, sleeps, max_retry_after=2.0),
            "faults/rate",
            "v2",
            make_blobs(tmp_path, "b2", [MIB]),
        )
    assert sleeps and all(s == 2.0 for s in sleeps) and len(sleeps) <= 3
    assert not verify_direct(registry, "faults/rate", "v2")


def test_connection_dropped_mid_upload_restarts(
    registry: DistributionRegistry, proxy: FaultProxy, tmp_path: Path
) -> None:
    """RELIABILITY 2, 10: a request dropped mid-body and a response lost after the registry
    stored the blob both end in a complete image."""
    proxy.rules = [
        Rule("PUT", r"/blobs/uploads/", "drop_request", on=frozenset({1})),
        Rule("PUT", r"/blobs/uploads/", "drop_response", on=frozenset({3})),
    ]
    blobs = make_blobs(tmp_path, "c", [3 * MIB, 2 * MIB, 1 * MIB])
    push(client_for(proxy), "faults/drop", "v1", blobs)
    assert all(r.fired == 1 for r in proxy.rules)
    assert verify_direct(registry, "faults/drop", "v1")


def test_chunked_upload_resumes_after_a_drop(
    registry: DistributionRegistry, proxy: FaultProxy, tmp_path: Path
) -> None:
    """RELIABILITY 2, 8: chunked PATCH uploads (small chunk_size) ask the upload status after
    a dropped chunk or a 500 and resume from the committed Range, without a new POST."""
    proxy.rules = [
        Rule("PATCH", r"/blobs/uploads/", "drop_request", on=frozenset({3})),
        Rule("PATCH", r"/blobs/uploads/", "status", on=frozenset({6}), status=500),
    ]
    blobs = make_blobs(tmp_path, "d", [2 * MIB + 123])
    client = client_for(proxy, chunk_size=256 * 1024)
    push(client, "faults/chunks", "v1", blobs)
    assert all(r.fired == 1 for r in proxy.rules)
    layer_posts = proxy.count("POST", r"/blobs/uploads/")
    assert layer_posts == 2  # one per blob (layer, config): resumed, never restarted
    assert proxy.count("GET", r"/blobs/uploads/") == 2  # one status question per fault
    assert proxy.count("PATCH", r"/blobs/uploads/") >= 9
    assert verify_direct(registry, "faults/chunks", "v1")


def test_stalled_response_times_out_and_is_retried(
    registry: DistributionRegistry, proxy: FaultProxy, tmp_path: Path
) -> None:
    """RELIABILITY 2, 9: a stalled HEAD and a stalled manifest PUT hit the client timeout and
    are retried (manifest PUTs are idempotent)."""
    proxy.rules = [
        Rule("HEAD", r"/blobs/", "stall", seconds=2.0),
        Rule("PUT", r"/manifests/", "stall", seconds=2.0),
    ]
    blobs = make_blobs(tmp_path, "e", [MIB])
    push(client_for(proxy, timeout=0.5), "faults/stall", "v1", blobs)
    assert all(r.fired == 1 for r in proxy.rules)
    assert verify_direct(registry, "faults/stall", "v1")


def test_corrupted_download_is_an_integrity_error_and_leaves_the_cache_clean(
    registry: DistributionRegistry, proxy: FaultProxy, tmp_path: Path
) -> None:
    """RELIABILITY 3, 4, 5: corrupted blob bytes raise IntegrityError and leave nothing in the
    cache; a download dropped midway resumes and is verified."""
    blobs = make_blobs(tmp_path, "f", [2 * MIB])
    direct = RegistryClient(registry.host, RegistryOptions(insecure=frozenset({registry.host})))
    push(direct, "faults/pull", "v1", blobs)
    [(_, desc)] = blobs
    cache = BlobCache(tmp_path / "cache")
    origin = RemoteOrigin(proxy.host, "faults/pull")
    proxy.rules = [Rule("GET", r"/blobs/sha256:", "corrupt", on=frozenset(range(1, 50)))]
    with RegistryPool(options(proxy)) as pool, pytest.raises(IntegrityError):
        fetch_blob(pool, cache, desc, origin)
    assert not cache.has(desc.digest, desc.size)
    assert not any(p.is_file() for p in cache.tmp_dir.rglob("*")) if cache.tmp_dir.exists() else True

    proxy.rules = [Rule("GET", r"/blobs/sha256:", "drop_response")]
    with RegistryPool(options(proxy)) as pool:
        path = fetch_blob(pool, cache, desc, origin)
    assert Digest.of(path.read_bytes()) == desc.digest
    assert proxy.rules[0].fired == 1


_PUSHER = textwrap.dedent("""
    import sys
    sys.path.insert(0, {tests!r})
    from pathlib import Path
    from test_faults import push, client_for_host, load_blobs
    push(client_for_host({host!r}), "faults/kill", "v1", load_blobs(Path({tmp!r})))
""")


def client_for_host(host: str) -> RegistryClient:
    opts = RegistryOptions(insecure=frozenset({host}), timeout=5.0, backoff=0.01, max_backoff=0.05)
    return RegistryClient(host, opts)


def load_blobs(tmp: Path) -> list[tuple[Path, Descriptor]]:
    paths = sorted(tmp.glob("g-*"))
    return [(p, Descriptor(OCI_LAYER, Digest.of(p.read_bytes()), p.stat().st_size)) for p in paths]


def test_push_killed_mid_upload_then_rerun(
    registry: DistributionRegistry, proxy: FaultProxy, tmp_path: Path
) -> None:
    """RELIABILITY 10, 2: a push process SIGKILLed at its 2nd blob upload leaves no tag; the
    rerun completes and does not upload again the blob that had arrived."""
    make_blobs(tmp_path, "g", [2 * MIB, 2 * MIB, 2 * MIB])
    script = _PUSHER.format(tests=str(ROOT / "tests"), host=proxy.host, tmp=str(tmp_path))
    pids: list[int] = []
    proxy.rules = [
        Rule(
            "PUT",
            r"/blobs/uploads/",
            "callback",
            on=frozenset({2}),
            callback=lambda: os.kill(pids[0], signal.SIGKILL),
        )
    ]
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT)
    pids.append(proc.pid)
    assert proc.wait(timeout=30) == -signal.SIGKILL
    assert not verify_direct(registry, "faults/kill", "v1")
    proxy.rules = []
    proxy.log.clear()
    push(client_for_host(proxy.host), "faults/kill", "v1", load_blobs(tmp_path))
    # blob 1 had arrived: only blobs 2, 3 and the config are uploaded by the rerun.
    assert proxy.count("PUT", r"/blobs/uploads/") + proxy.count("PATCH", r"/blobs/uploads/") == 3
    assert verify_direct(registry, "faults/kill", "v1")


def _interrupted_push(
    registry: DistributionRegistry, proxy: FaultProxy, base: str, tmp_path: Path, tag: str
) -> subprocess.Popen[str]:
    """A push through a registry whose cancelling DELETE never answers, sent one Ctrl-C while
    its layer uploads; returned once the DELETE is under way."""
    content = tmp_path / "big" / "data"
    content.mkdir(parents=True)
    (content / "random.bin").write_bytes(os.urandom(48 * MIB))
    package = tmp_path / "big.json"
    package.write_text(json.dumps({"name": "big", "version": "1.0", "prefix": "/opt/big", "content": "big"}))
    proxy.rules = [Rule("DELETE", r"/blobs/uploads/", "stall", on=frozenset(range(1, 10)), seconds=60)]
    env = {**os.environ, "IMAGESMITH_CACHE_DIR": str(tmp_path / "cache"), "IMAGESMITH_PROGRESS": "none"}
    command = [sys.executable, "-m", "imagesmith", "--insecure-registry", proxy.host]
    command += ["build", "--base-image", base.replace(registry.host, proxy.host)]
    command += ["--tag", f"{proxy.host}/faults/{tag}:1", str(package)]
    proc = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not proxy.count("PATCH", r"/blobs/uploads/") and time.monotonic() < deadline:
        time.sleep(0.02)
    assert proxy.count("PATCH", r"/blobs/uploads/"), f"the layer upload never started: {proc.poll()}"
    proc.send_signal(signal.SIGINT)
    while not proxy.count("DELETE", r"/blobs/uploads/") and time.monotonic() < deadline:
        time.sleep(0.02)
    assert proxy.count("DELETE", r"/blobs/uploads/"), "the Ctrl-C cancelled no upload session"
    return proc


def test_clean_up_after_ctrl_c_waits_seconds_not_the_timeout(
    registry: DistributionRegistry, proxy: FaultProxy, base: str, tmp_path: Path
) -> None:
    """After Ctrl-C only clean-up runs, with a short timeout of its own: a registry that never
    answers the DELETE holds the exit about 3 s, not the 30 s request timeout."""
    proc = _interrupted_push(registry, proxy, base, tmp_path, "once")
    sent = time.monotonic()
    try:
        code = proc.wait(timeout=20)
        waited = time.monotonic() - sent
    finally:
        proc.kill()
        _, stderr = proc.communicate()
    assert code == 130 and stderr.strip().splitlines()[-1] == "imagesmith: interrupted", stderr
    assert waited < 10, f"exited {waited:.1f} s after the DELETE started"
    assert not verify_direct(registry, "faults/once", "1")


def test_a_second_ctrl_c_during_clean_up_exits_at_once(
    registry: DistributionRegistry, proxy: FaultProxy, base: str, tmp_path: Path
) -> None:
    """A second Ctrl-C while the clean-up waits exits at once: one line, exit 130, no
    traceback."""
    proc = _interrupted_push(registry, proxy, base, tmp_path, "twice")
    sent = time.monotonic()
    try:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=10)
        waited = time.monotonic() - sent
    finally:
        proc.kill()
        _, stderr = proc.communicate()
    assert code == 130, stderr
    assert waited < 2.5, f"exited {waited:.1f} s after the second Ctrl-C"
    assert "interrupted again: exiting without cleaning up" in stderr and "Traceback" not in stderr, stderr
    assert not verify_direct(registry, "faults/twice", "1")
