"""The repository index: the payload format, the identity fallbacks, and the real registry.

Images are built with the CLI onto the busybox base, as in test_e2e; extra tags (a
multi-platform index, Spack-style configs, artifacts, hundreds of aliases) are PUT directly
with the registry client, which is cheap since their blobs are already in the repository.
"""

from __future__ import annotations

import dataclasses
import io
import json
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from servers import DistributionRegistry
from test_e2e import EXAMPLES, HELLO, ok

from imagesmith.errors import ManifestError, NotFoundError, UsageError
from imagesmith.oci import mediatypes as mt
from imagesmith.oci.digests import Digest
from imagesmith.oci.model import Descriptor, Index, Manifest, Platform, canonical_json
from imagesmith.oci.references import Reference, parse_repository
from imagesmith.ops import repoindex
from imagesmith.ops.repoindex import (
    INDEX_MEDIA_TYPE,
    INDEX_TAG,
    SPACK_INDEX_TAG,
    IndexEntry,
    RepositoryIndex,
    index_manifest,
    list_index,
    read_index,
    read_spack_index,
    scan_repository,
    update_index,
)
from imagesmith.registry.client import RegistryClient, RegistryPool
from imagesmith.registry.transport import RegistryOptions

LIBGREET = str(EXAMPLES / "libgreet.toml")
SPACK_HASH = "abcdefghijklmnopqrstuvwxyz234567"


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMAGESMITH_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)


# ------------------------------------------------------------------------------- unit


def _entry(tag: str, **fields: Any) -> IndexEntry:
    values: dict[str, Any] = {
        "digest": str(Digest.of(tag.encode())),
        "media_type": mt.OCI_MANIFEST,
        "name": "pkg",
        "version": "1.0",
        "hash": SPACK_HASH,
        "platforms": ("linux/amd64",),
        "size": 123,
    }
    values.update(fields)
    return IndexEntry(tag=tag, **values)


def test_payload_round_trips_sorted_and_canonical() -> None:
    sig = str(Digest.of(b"sig"))
    index = RepositoryIndex(
        "reg.example/stack", (_entry("b"), _entry("a", platforms=())), (("z.sig", sig), ("c.sig", sig))
    )
    assert [e.tag for e in index.entries] == ["a", "b"]
    assert index.skipped == (("c.sig", sig), ("z.sig", sig))
    data = index.to_bytes()
    assert data == canonical_json(index.to_json())
    obj = json.loads(data)
    assert obj["schemaVersion"] == 1 and obj["mediaType"] == INDEX_MEDIA_TYPE
    assert obj["entries"][1] == {
        "tag": "b",
        "digest": str(Digest.of(b"b")),
        "mediaType": mt.OCI_MANIFEST,
        "size": 123,
        "name": "pkg",
        "version": "1.0",
        "hash": SPACK_HASH,
        "platforms": ["linux/amd64"],
    }
    assert obj["skipped"] == [{"tag": "c.sig", "digest": sig}, {"tag": "z.sig", "digest": sig}]
    assert RepositoryIndex.from_bytes(data) == index
    # Order of input does not matter: equal indexes are equal bytes.
    shuffled = RepositoryIndex(
        "reg.example/stack", tuple(reversed(index.entries)), tuple(reversed(index.skipped))
    )
    assert shuffled.to_bytes() == data
    assert index.entry("a") == index.entries[0] and index.entry("zzz") is None


def test_payload_ignores_unknown_keys_and_refuses_bad_documents() -> None:
    obj = RepositoryIndex("r/x", (_entry("a"),)).to_json()
    obj["future"] = 1
    obj["entries"][0]["future"] = "x"
    del obj["skipped"]  # optional when empty
    assert RepositoryIndex.from_json(obj).entries[0].tag == "a"

    def refused(mutate: Callable[[dict[str, Any]], None], message: str) -> None:
        doc = RepositoryIndex("r/x", (_entry("a"),)).to_json()
        mutate(doc)
        with pytest.raises(ManifestError, match=message):
            RepositoryIndex.from_json(doc)

    refused(lambda d: d.update(schemaVersion=2), "schemaVersion 2")
    refused(lambda d: d.update(mediaType="application/json"), "mediaType")
    refused(lambda d: d.pop("entries"), "entries")
    refused(lambda d: d["entries"][0].update(digest="sha256:../x"), "invalid digest")
    refused(lambda d: d["entries"][0].update(tag="-bad"), "invalid tag")
    refused(lambda d: d["entries"][0].update(size=-1), "size")
    refused(lambda d: d["entries"][0].update(platforms="linux/amd64"), "platforms")
    refused(lambda d: d["entries"][0].pop("name"), "'name'")
    refused(lambda d: d["entries"].append(dict(d["entries"][0])), "twice")
    refused(lambda d: d.update(skipped=[{"tag": "a", "digest": str(Digest.of(b""))}]), "twice")
    refused(lambda d: d.update(skipped=[{"tag": "s", "digest": "md5:00"}]), "skipped entry 0")
    refused(lambda d: d.update(skipped={}), "'skipped' must be a list")
    with pytest.raises(ManifestError, match="not valid JSON"):
        RepositoryIndex.from_bytes(b"{")


def test_index_manifest_is_a_deterministic_artifact() -> None:
    index = RepositoryIndex("r/x", (_entry("a"),))
    manifest, payload = index_manifest(index)
    assert payload == index.to_bytes()
    doc = manifest.to_json()
    assert doc["mediaType"] == mt.OCI_MANIFEST and doc["artifactType"] == INDEX_MEDIA_TYPE
    assert doc["config"] == {"mediaType": mt.OCI_EMPTY, "digest": str(Digest.of(b"{}")), "size": 2}
    assert doc["layers"][0]["mediaType"] == INDEX_MEDIA_TYPE
    assert doc["layers"][0]["digest"] == str(Digest.of(payload))
    assert "annotations" not in doc  # no timestamp: an unchanged repository keeps its digest
    assert index_manifest(RepositoryIndex("r/x", (_entry("a"),)))[0].to_bytes() == manifest.to_bytes()


def test_documented_schema_matches_the_payload() -> None:
    docs = (EXAMPLES.parent.parent / "docs" / "index.md").read_text()
    blocks = [json.loads(b.split("```", 1)[0]) for b in docs.split("```json\n")[1:]]
    schema = next(b for b in blocks if "$schema" in b)
    payload = RepositoryIndex("r/x", (_entry("a", spack=False),), (("s", str(Digest.of(b"s"))),)).to_json()
    assert set(schema["properties"]) == set(payload)
    items = schema["properties"]["entries"]["items"]
    # "spack" is optional: indexes written before it existed lack it.
    assert set(items["required"]) | {"spack"} == set(items["properties"]) == set(payload["entries"][0])
    assert set(schema["properties"]["skipped"]["items"]["required"]) == set(payload["skipped"][0])
    artifact = next(b for b in blocks if b.get("artifactType"))
    manifest = index_manifest(RepositoryIndex("ghcr.io/acme/stack"))[0].to_json()
    assert list(artifact) == list(manifest) and artifact["config"] == manifest["config"]


def _doc(labels: dict[str, str] | None = None, spec: tuple[str, str, str] | None = None) -> Any:
    return repoindex._Document(mt.OCI_MANIFEST, 1, labels or {}, spec, ())


def test_identity_prefers_labels_then_spack_spec_then_tag() -> None:
    full = {
        "org.opencontainers.image.title": "hello",
        "org.opencontainers.image.version": "2.12",
        "io.imagesmith.package.hash": "h" * 32,
    }
    tag = f"py-numpy-1.26.4-{SPACK_HASH}.spack"
    assert repoindex._identity(_doc(full, ("x", "y", "z")), tag) == ("hello", "2.12", "h" * 32)
    partial = {k: v for k, v in full.items() if "hash" not in k}
    assert repoindex._identity(_doc(partial, ("zlib", "1.3", "q" * 32)), tag) == ("zlib", "1.3", "q" * 32)
    assert repoindex._identity(_doc(partial), tag) == ("py-numpy", "1.26.4", SPACK_HASH)
    assert repoindex._identity(_doc(partial), "latest") == ("hello", "2.12", "")
    # A base image's lone version label says nothing about the package.
    assert repoindex._identity(_doc({"org.opencontainers.image.version": "22.04"}), "latest") == ("", "", "")
    # Not Spack's hash alphabet (no 0, 1, 8, 9; lowercase): not the template form.
    assert repoindex._identity(_doc(), "zlib-1.3-" + "0" * 32 + ".spack") == ("", "", "")


def test_spack_identity_reads_the_root_node() -> None:
    raw = {
        "spec": {
            "_meta": {"version": 4},
            "nodes": [
                {"name": "zlib", "version": "1.3", "hash": SPACK_HASH},
                {"name": "dep", "version": "1", "hash": "x"},
            ],
        }
    }
    assert repoindex._spack_identity(raw) == ("zlib", "1.3", SPACK_HASH)
    assert repoindex._spack_identity({"spec": {"nodes": []}}) is None
    assert repoindex._spack_identity({"spec": {"nodes": [{"name": "zlib"}]}}) is None
    assert repoindex._spack_identity({}) is None


def test_jobs_must_be_positive() -> None:
    with RegistryPool() as pool, pytest.raises(UsageError, match="jobs"):
        scan_repository(pool, parse_repository("localhost:1/x"), jobs=0)


# ------------------------------------------------------------------------------- registry


def _build(registry: DistributionRegistry, base: str, *args: str) -> dict[str, Any]:
    out = ok("build", "--base-image", base, "--json", *args, "--insecure-registry", registry.host)
    result: dict[str, Any] = json.loads(out)
    return result


@pytest.fixture
def pool(registry: DistributionRegistry) -> Iterator[RegistryPool]:
    with RegistryPool(RegistryOptions(insecure=frozenset({registry.host}))) as p:
        yield p


def _client(pool: RegistryPool, registry: DistributionRegistry) -> RegistryClient:
    return pool.client(registry.host)


def _put_blob(client: RegistryClient, repo: str, data: bytes) -> Descriptor:
    digest = Digest.of(data)
    client.upload_blob(repo, digest, len(data), lambda: io.BytesIO(data))
    return Descriptor("", digest, len(data))


def _put_image_with_config(
    client: RegistryClient, repo: str, source_tag: str, tag: str, edit: Callable[[dict[str, Any]], None]
) -> str:
    """Push ``source_tag``'s image under ``tag`` with its config edited (layers shared)."""
    got = client.get_manifest(repo, source_tag)
    manifest = Manifest.from_json(json.loads(got.data), got.media_type)
    raw = json.loads(client.get_blob_bytes(repo, manifest.config, 1 << 20))
    edit(raw)
    data = canonical_json(raw)
    blob = _put_blob(client, repo, data)
    config = Descriptor(manifest.config.media_type, blob.digest, blob.size)
    new = Manifest(manifest.media_type, config, manifest.layers, manifest.annotations)
    return str(client.put_manifest(repo, tag, new.to_bytes(), new.media_type))


@pytest.fixture(scope="module")
def stack(
    registry: DistributionRegistry, base: str, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    """Repository ``indexed``: hello and libgreet under template tags, libgreet with an extra
    env under ``custom``, a two-platform index, Spack-style images and an artifact."""
    import os

    os.environ.setdefault("IMAGESMITH_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))
    repo = f"{registry.host}/indexed"
    hello = _build(registry, base, "--repo", repo, HELLO)
    libgreet = _build(registry, base, "--repo", repo, LIBGREET)
    custom = _build(registry, base, "--tag", f"{repo}:custom", "--env", "CUSTOM=1", LIBGREET)
    platform = json.loads(ok("inspect", "--json", hello["reference"], "--insecure-registry", registry.host))
    with RegistryPool(RegistryOptions(insecure=frozenset({registry.host}))) as pool:
        client = pool.client(registry.host)
        heads = {
            name: client.head_manifest("indexed", r["tag"])
            for name, r in (("hello", hello), ("libgreet", libgreet))
        }
        assert heads["hello"] is not None and heads["libgreet"] is not None
        multi = Index(
            mt.OCI_INDEX,
            (
                Descriptor(
                    mt.OCI_MANIFEST,
                    heads["hello"].digest,
                    heads["hello"].size,
                    platform=Platform("linux", "amd64"),
                ),
                Descriptor(
                    mt.OCI_MANIFEST,
                    heads["libgreet"].digest,
                    heads["libgreet"].size,
                    platform=Platform("linux", "arm64", "v8"),
                ),
                Descriptor(
                    mt.OCI_MANIFEST,
                    heads["libgreet"].digest,
                    heads["libgreet"].size,
                    platform=Platform("unknown", "unknown"),
                ),
            ),
        )
        multi_digest = client.put_manifest("indexed", "multi", multi.to_bytes(), mt.OCI_INDEX)

        def spackish(raw: dict[str, Any]) -> None:
            raw["config"].pop("Labels", None)
            raw["spec"] = {
                "_meta": {"version": 4},
                "nodes": [{"name": "zlib", "version": "1.3.1", "hash": SPACK_HASH}],
            }

        spack_digest = _put_image_with_config(client, "indexed", hello["tag"], "zlib-latest", spackish)
        bare_tag = f"py-numpy-1.26.4-{SPACK_HASH}.spack"
        bare_digest = _put_image_with_config(
            client, "indexed", hello["tag"], bare_tag, lambda raw: raw["config"].pop("Labels", None)
        )
        # An artifact (another index) is not an image: left out.
        other, payload = index_manifest(RepositoryIndex("elsewhere/x"))
        _put_blob(client, "indexed", b"{}")
        _put_blob(client, "indexed", payload)
        artifact = client.put_manifest("indexed", "some-artifact", other.to_bytes(), mt.OCI_MANIFEST)
    return {
        "repo": repo,
        "hello": hello,
        "libgreet": libgreet,
        "custom": custom,
        "platform": platform["platform"],
        "multi": str(multi_digest),
        "spack": spack_digest,
        "bare": (bare_tag, bare_digest),
        "artifact": str(artifact),
    }


def _hash_of(tag: str, prefix: str) -> str:
    return tag[len(prefix) :].split(".")[0]  # less Spack's .spack or a one-platform image's .linux-amd64


def _update(pool: RegistryPool, repository: Reference, **options: Any) -> tuple[RepositoryIndex, str]:
    """``update_index``, as (imagesmith's index, its digest)."""
    done = update_index(pool, repository, **options)
    return done.index, done.digest


class _Counter:
    """Records the manifest GETs, blob reads and HEADs every RegistryClient makes."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[tuple[str, str, str]] = []
        self._lock = threading.Lock()
        for name, key in (("get_manifest", 1), ("head_manifest", 1), ("get_blob_bytes", 1)):
            original = getattr(RegistryClient, name)
            monkeypatch.setattr(RegistryClient, name, self._wrap(name, original, key))

    def _wrap(self, name: str, original: Callable[..., Any], key: int) -> Callable[..., Any]:
        def wrapper(client: RegistryClient, repository: str, *args: Any, **kwargs: Any) -> Any:
            what = args[0]
            shown = str(what.digest) if isinstance(what, Descriptor) else str(what)
            with self._lock:
                self.calls.append((name, repository, shown))
            return original(client, repository, *args, **kwargs)

        return wrapper

    def of(self, name: str) -> list[str]:
        return [ref for kind, _repo, ref in self.calls if kind == name]

    def reset(self) -> None:
        self.calls.clear()


@pytest.mark.integration
def test_update_then_read_lists_every_image(
    stack: dict[str, Any], pool: RegistryPool, registry: DistributionRegistry
) -> None:
    repository = parse_repository(stack["repo"])
    index, digest = _update(pool, repository, jobs=4)
    assert digest.startswith("sha256:")
    assert read_index(pool, repository) == index
    assert index.repository == stack["repo"]
    hello, libgreet, custom = stack["hello"], stack["libgreet"], stack["custom"]
    bare_tag, bare_digest = stack["bare"]
    assert {e.tag for e in index.entries} == {
        hello["tag"],
        libgreet["tag"],
        "custom",
        "multi",
        "zlib-latest",
        bare_tag,
    }
    # The artifact is remembered as not an image; the index tag itself is not mentioned at all.
    assert index.skipped == (("some-artifact", stack["artifact"]),)
    assert INDEX_TAG in registry.tags("indexed")
    platform = (stack["platform"],)

    entry = index.entry(hello["tag"])
    assert entry is not None
    assert (entry.name, entry.version, entry.hash) == ("hello", "2.12", _hash_of(hello["tag"], "hello-2.12-"))
    assert (entry.digest, entry.media_type, entry.platforms) == (hello["digest"], mt.OCI_MANIFEST, platform)
    head = _client(pool, registry).head_manifest("indexed", hello["tag"])
    assert head is not None and entry.size == head.size

    greet_hash = _hash_of(libgreet["tag"], "libgreet-1.0-")
    entry = index.entry(libgreet["tag"])
    assert entry is not None and (entry.name, entry.version, entry.hash) == ("libgreet", "1.0", greet_hash)
    # A tag outside the template still gets its identity from the labels.
    entry = index.entry("custom")
    assert entry is not None and (entry.name, entry.version, entry.hash) == ("libgreet", "1.0", greet_hash)
    assert entry.digest == custom["digest"] != libgreet["digest"]

    entry = index.entry("multi")
    assert entry is not None
    assert (entry.media_type, entry.digest) == (mt.OCI_INDEX, stack["multi"])
    assert (entry.name, entry.version) == ("hello", "2.12")
    assert entry.platforms == ("linux/amd64", "linux/arm64/v8")  # the attestation left out

    entry = index.entry("zlib-latest")
    assert entry is not None and entry.digest == stack["spack"]
    assert (entry.name, entry.version, entry.hash) == ("zlib", "1.3.1", SPACK_HASH)
    entry = index.entry(bare_tag)
    assert entry is not None and entry.digest == bare_digest
    assert (entry.name, entry.version, entry.hash) == ("py-numpy", "1.26.4", SPACK_HASH)

    # Seen from the outside: an OCI artifact whose one layer is the JSON payload.
    raw = json.loads(
        ok("inspect", "--raw", f"{stack['repo']}:{INDEX_TAG}", "--insecure-registry", registry.host)
    )
    assert raw["mediaType"] == mt.OCI_MANIFEST and raw["artifactType"] == INDEX_MEDIA_TYPE
    assert raw["config"]["mediaType"] == mt.OCI_EMPTY
    assert [layer["mediaType"] for layer in raw["layers"]] == [INDEX_MEDIA_TYPE]
    shown = json.loads(
        ok("inspect", "--json", f"{stack['repo']}:{INDEX_TAG}", "--insecure-registry", registry.host)
    )
    assert shown["digest"] == digest and shown["mediaType"] == mt.OCI_MANIFEST
    payload = registry.get(f"/v2/indexed/blobs/{raw['layers'][0]['digest']}")
    assert RepositoryIndex.from_bytes(payload.content) == index

    # A live listing agrees with the stored one.
    assert list_index(pool, repository, live=True) == index
    assert list_index(pool, repository) == index


@pytest.mark.integration
def test_unchanged_update_costs_one_head_per_tag(
    stack: dict[str, Any], pool: RegistryPool, registry: DistributionRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    repository = parse_repository(stack["repo"])
    first, first_digest = _update(pool, repository)
    counter = _Counter(monkeypatch)
    second, second_digest = _update(pool, repository)
    assert (second, second_digest) == (first, first_digest)
    tags = [t for t in registry.tags("indexed") if t != INDEX_TAG]
    assert sorted(counter.of("head_manifest")) == sorted(tags)
    # Only the stored index itself is read: its manifest and its payload.
    # The stored indexes themselves are read: imagesmith's (manifest and payload), Spack's (absent).
    assert counter.of("get_manifest") == [INDEX_TAG, SPACK_INDEX_TAG]
    manifest = json.loads(
        registry.get(f"/v2/indexed/manifests/{INDEX_TAG}", headers={"Accept": mt.OCI_MANIFEST}).content
    )
    assert counter.of("get_blob_bytes") == [manifest["layers"][0]["digest"]]

    # A moved tag is the only one fetched again.
    client = _client(pool, registry)
    moved = client.get_manifest("indexed", stack["libgreet"]["tag"])
    client.put_manifest("indexed", "custom", moved.data, moved.media_type)
    counter.reset()
    third, third_digest = _update(pool, repository)
    assert third_digest != first_digest
    assert counter.of("get_manifest") == [INDEX_TAG, SPACK_INDEX_TAG, str(moved.digest)]
    entry = third.entry("custom")
    assert entry is not None and entry.digest == str(moved.digest)
    custom = stack["custom"]
    client.put_manifest(
        "indexed", "custom", client.get_manifest("indexed", custom["digest"]).data, mt.OCI_MANIFEST
    )
    assert _update(pool, repository)[1] == first_digest


@pytest.mark.integration
def test_concurrent_updates_and_pushes_stay_consistent(registry: DistributionRegistry, base: str) -> None:
    repo = f"{registry.host}/concurrent"
    hello = _build(registry, base, "--repo", repo, HELLO)
    repository = parse_repository(repo)
    options = RegistryOptions(insecure=frozenset({registry.host}))
    errors: list[BaseException] = []
    done = threading.Event()

    def updater() -> None:
        with RegistryPool(options) as pool:
            try:
                for _ in range(4):
                    update_index(pool, repository, jobs=4)
            except BaseException as exc:
                errors.append(exc)

    def pusher() -> None:
        with RegistryPool(options) as pool:
            try:
                client = pool.client(registry.host)
                got = client.get_manifest("concurrent", hello["tag"])
                for i in range(30):
                    client.put_manifest("concurrent", f"new-{i:02d}", got.data, got.media_type)
            except BaseException as exc:
                errors.append(exc)
            finally:
                done.set()

    threads = [threading.Thread(target=f) for f in (updater, updater, pusher)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    existing = set(registry.tags("concurrent"))
    with RegistryPool(options) as pool:
        stored = read_index(pool, repository)
        assert {e.tag for e in stored.entries} <= existing
        final, _digest = _update(pool, repository)
    assert {e.tag for e in final.entries} == existing - {INDEX_TAG}
    assert {e.digest for e in final.entries} == {hello["digest"]}


@pytest.mark.integration
def test_many_tags_are_listed_with_one_fetch_per_digest(
    registry: DistributionRegistry, base: str, pool: RegistryPool, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = f"{registry.host}/many"
    hello = _build(registry, base, "--repo", repo, HELLO)
    repository = parse_repository(repo)
    with pytest.raises(NotFoundError, match="imagesmith index update"):
        read_index(pool, repository)
    client = _client(pool, registry)
    got = client.get_manifest("many", hello["tag"])
    tags = [f"alias-{i:03d}" for i in range(300)]
    with ThreadPoolExecutor(max_workers=16) as executor:
        list(executor.map(lambda t: client.put_manifest("many", t, got.data, got.media_type), tags))
    counter = _Counter(monkeypatch)
    index, _digest = _update(pool, repository, jobs=16)
    assert [e.tag for e in index.entries] == sorted([*tags, hello["tag"]])
    assert all((e.name, e.version, e.digest) == ("hello", "2.12", hello["digest"]) for e in index.entries)
    assert counter.of("get_manifest") == [INDEX_TAG, SPACK_INDEX_TAG, hello["digest"]]  # 301 tags, one image
    assert len(counter.of("head_manifest")) == 301
    assert read_index(pool, repository) == index
    # The client follows pagination when the registry honours a page size.
    assert sorted(client.list_tags("many", page_size=50)) == sorted([*tags, hello["tag"], INDEX_TAG])


@pytest.mark.integration
def test_missing_repository_has_no_index(pool: RegistryPool, registry: DistributionRegistry) -> None:
    with pytest.raises(NotFoundError, match=r"`imagesmith index update .*/does-not-exist`"):
        read_index(pool, parse_repository(f"{registry.host}/does-not-exist"))
    with pytest.raises(NotFoundError, match=r"`imagesmith index update .*/does-not-exist --index-tag mine`"):
        read_index(pool, parse_repository(f"{registry.host}/does-not-exist"), tag="mine")


@pytest.mark.integration
def test_invalid_tags_from_the_registry_are_left_out(
    stack: dict[str, Any], pool: RegistryPool, monkeypatch: pytest.MonkeyPatch
) -> None:
    repository = parse_repository(stack["repo"])
    expected = scan_repository(pool, repository)
    original = RegistryClient.list_tags

    def list_tags(client: RegistryClient, repo: str, page_size: int | None = None) -> Iterator[str]:
        yield from original(client, repo, page_size)
        yield from (f"sha256:{'0' * 64}", "../x", "-dash")

    monkeypatch.setattr(RegistryClient, "list_tags", list_tags)
    assert scan_repository(pool, repository, jobs=2) == expected


def _spack_index(client: RegistryClient, repo: str, database: bytes) -> str:
    """Push an index.spack the way Spack writes one: an "image" whose layer is its database."""
    config = _put_blob(client, repo, b"{}")
    layer = _put_blob(client, repo, database)
    manifest = Manifest(
        mt.OCI_MANIFEST,
        Descriptor(mt.OCI_CONFIG, config.digest, config.size),
        (Descriptor(mt.OCI_LAYER_GZIP, layer.digest, layer.size),),
    )
    return str(client.put_manifest(repo, SPACK_INDEX_TAG, manifest.to_bytes(), mt.OCI_MANIFEST))


def _mirror(
    pool: RegistryPool, registry: DistributionRegistry, stack: dict[str, Any], repo: str
) -> tuple[RegistryClient, Reference]:
    """``repo`` holding the stack's hello image (blobs mounted from the stack's repository):
    the registry's client and the repository."""
    client = _client(pool, registry)
    got = client.get_manifest("indexed", stack["hello"]["tag"])
    manifest = Manifest.from_json(json.loads(got.data), got.media_type)
    for blob in (manifest.config, *manifest.layers):
        assert client.mount_blob(repo, blob.digest, "indexed")
    client.put_manifest(repo, stack["hello"]["tag"], got.data, got.media_type)
    return client, parse_repository(f"{registry.host}/{repo}")


@pytest.mark.integration
def test_index_spack_holds_only_what_spack_reads(
    stack: dict[str, Any], registry: DistributionRegistry, pool: RegistryPool
) -> None:
    _, repository = _mirror(pool, registry, stack, "nospack")
    # No Spack image: no index.spack, ever.
    done = update_index(pool, repository)
    assert (done.spack_database, done.spack_digest) == (None, None)
    assert SPACK_INDEX_TAG not in registry.tags("nospack")
    assert [e.tag for e in read_index(pool, repository).entries] == [stack["hello"]["tag"]]
    with pytest.raises(UsageError, match=r"index\.spack is where Spack reads"):
        update_index(pool, repository, tag=SPACK_INDEX_TAG)


@pytest.mark.integration
def test_spack_database_is_replaced_anything_else_only_by_force(
    stack: dict[str, Any], registry: DistributionRegistry, pool: RegistryPool
) -> None:
    client, repository = _mirror(pool, registry, stack, "spackmirror")
    # Spack's own (empty) database is Spack's: replaced, and kept (the repository had one).
    _spack_index(client, "spackmirror", b'{"database":{"version":"7","installs":{}}}')
    done = update_index(pool, repository)
    assert done.spack_database is not None and done.spack_database.packages == ()
    stored = read_spack_index(pool, repository)
    assert stored is not None and stored.version == "7"
    raw = json.loads(client.get_manifest("spackmirror", SPACK_INDEX_TAG).data)
    assert raw["artifactType"] == "application/vnd.spack.db.v7+json"

    # An index.spack that is neither Spack's nor imagesmith's (here an image) is refused.
    got = client.get_manifest("spackmirror", stack["hello"]["tag"])
    client.put_manifest("spackmirror", SPACK_INDEX_TAG, got.data, got.media_type)
    with pytest.raises(UsageError, match=r"neither Spack's build-cache database nor an imagesmith index"):
        update_index(pool, repository)
    assert client.head_manifest("spackmirror", SPACK_INDEX_TAG).digest == got.digest  # type: ignore[union-attr]
    forced = update_index(pool, repository, force=True)
    assert forced.spack_digest is not None
    assert read_spack_index(pool, repository) is not None

    # An index an older imagesmith kept under index.spack is taken over, and replaced.
    legacy, payload = index_manifest(RepositoryIndex(repository.name, read_index(pool, repository).entries))
    _put_blob(client, "spackmirror", payload)
    client.put_manifest("spackmirror", SPACK_INDEX_TAG, legacy.to_bytes(), mt.OCI_MANIFEST)
    listed = list_index(pool, repository, tag=SPACK_INDEX_TAG)
    assert [e.tag for e in listed.entries] == [stack["hello"]["tag"]]
    migrated = update_index(pool, repository)
    assert migrated.spack_database is not None and read_spack_index(pool, repository) is not None


@pytest.mark.integration
def test_read_index_verifies_what_it_reads(
    stack: dict[str, Any], registry: DistributionRegistry, pool: RegistryPool, monkeypatch: pytest.MonkeyPatch
) -> None:
    repository = parse_repository(stack["repo"])
    client = _client(pool, registry)
    update_index(pool, repository)
    monkeypatch.setattr(repoindex, "MAX_INDEX_SIZE", 16)
    with pytest.raises(ManifestError, match="more than the 16 allowed"):
        read_index(pool, repository)
    monkeypatch.undo()

    # Our artifact type on a malformed payload, then with a wrong layer type.
    garbage = _put_blob(client, "indexed", b"not json")
    manifest = Manifest(
        mt.OCI_MANIFEST,
        index_manifest(RepositoryIndex("x/y"))[0].config,
        (Descriptor(INDEX_MEDIA_TYPE, garbage.digest, garbage.size),),
        artifact_type=INDEX_MEDIA_TYPE,
    )
    client.put_manifest("indexed", "broken-index", manifest.to_bytes(), mt.OCI_MANIFEST)
    with pytest.raises(ManifestError, match="not valid JSON"):
        read_index(pool, repository, tag="broken-index")
    with pytest.raises(ManifestError, match="not valid JSON"):
        list_index(pool, repository, tag="broken-index")
    wrong = Manifest(
        manifest.media_type,
        manifest.config,
        (Descriptor("application/json", garbage.digest, garbage.size),),
        artifact_type=INDEX_MEDIA_TYPE,
    )
    client.put_manifest("indexed", "broken-index", wrong.to_bytes(), mt.OCI_MANIFEST)
    with pytest.raises(ManifestError, match="exactly one layer"):
        read_index(pool, repository, tag="broken-index")
    # A damaged imagesmith index is rebuilt, not refused.
    index, _digest = _update(pool, repository, tag="broken-index")
    assert read_index(pool, repository, tag="broken-index") == index
    assert index.entry("broken-index") is None and index.entry(INDEX_TAG) is None
    client_ref = Reference(registry.host, "indexed")
    assert read_index(pool, client_ref, tag="broken-index") == index


def test_index_cli_update_and_list(registry: DistributionRegistry, base: str) -> None:
    """The CLI and the generated Makefile's `index` target call `index update --index-tag`."""
    from cli_support import cli

    host = registry.host
    repo = f"{host}/cli-index"
    ok("--insecure-registry", host, "build", "--base-image", base, "--repo", repo, HELLO)
    out = json.loads(ok("--insecure-registry", host, "index", "update", repo, "--json"))
    assert out["images"] == 1 and out["reference"] == f"{repo}:{INDEX_TAG}" and out["spack"] is None
    listed = json.loads(ok("--insecure-registry", host, "index", "list", repo, "--json"))
    assert [e["name"] for e in listed["entries"]] == ["hello"]
    text = ok("--insecure-registry", host, "index", "list", repo)
    assert text.splitlines()[0].split()[:5] == ["TAG", "NAME", "VERSION", "HASH", "PLATFORMS"]
    assert "hello-2.12-" in text
    code, _, err = cli("--insecure-registry", host, "index", "list", f"{host}/never-indexed")
    assert code == 3 and "never-indexed" in err and err.count("\n") == 1
    code, _, err = cli("--insecure-registry", host, "index", "update", "--index-tag", SPACK_INDEX_TAG, repo)
    assert code == 2 and "index.spack is where Spack reads" in err and err.count("\n") == 1


def test_inspect_shows_the_index_artifact_type(registry: DistributionRegistry, base: str) -> None:
    host = registry.host
    repo = f"{host}/artifact-type"
    ok("--insecure-registry", host, "build", "--base-image", base, "--repo", repo, HELLO)
    ok("--insecure-registry", host, "index", "update", repo)
    shown = json.loads(ok("--insecure-registry", host, "inspect", f"{repo}:{INDEX_TAG}", "--json"))
    assert shown["artifactType"] == repoindex.INDEX_MEDIA_TYPE


@pytest.mark.integration
def test_spack_images_are_indexed_for_spack_even_from_an_older_index(
    registry: DistributionRegistry, base: str, pool: RegistryPool
) -> None:
    from test_spack import PYTHON_HASH, PYTHON_TGZ, SQLITE, ZLIB

    repo = f"{registry.host}/spack-entries"
    built = _build(registry, base, "--repo", repo, str(PYTHON_TGZ), str(SQLITE), str(ZLIB))
    assert built["tag"] == f"python-3.11.7-{PYTHON_HASH}.spack" and built["spack"]
    repository = parse_repository(repo)
    done = update_index(pool, repository)
    (entry,) = done.index.entries
    assert entry.spack is True and entry.to_json()["spack"] is True
    assert done.spack_database is not None and done.spack_database.packages == (PYTHON_HASH,)
    assert done.spack_database.version == "7"  # the python spec is format 4
    # An index written before entries said whether they are Spack's: the tag is read again.
    legacy = RepositoryIndex(repository.name, (dataclasses.replace(entry, spack=None),))
    manifest, payload = index_manifest(legacy)
    client = _client(pool, registry)
    _put_blob(client, "spack-entries", payload)
    client.put_manifest("spack-entries", INDEX_TAG, manifest.to_bytes(), mt.OCI_MANIFEST)
    again = update_index(pool, repository)
    assert again.index == done.index and again.spack_digest == done.spack_digest
