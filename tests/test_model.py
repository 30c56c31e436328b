import json

import pytest

from imagesmith.errors import ManifestError, PlatformError
from imagesmith.oci import mediatypes as mt
from imagesmith.oci.digests import Digest
from imagesmith.oci.model import (
    Descriptor,
    HistoryEntry,
    ImageConfig,
    Index,
    Manifest,
    Platform,
    parse_manifest_document,
    select_platform,
)

D1 = Digest.of(b"1")
D2 = Digest.of(b"2")


def _desc(**extra: object) -> dict[str, object]:
    return {"mediaType": mt.OCI_LAYER_GZIP, "digest": str(D1), "size": 1, **extra}


def _manifest(**extra: object) -> bytes:
    doc = {
        "schemaVersion": 2,
        "mediaType": mt.OCI_MANIFEST,
        "config": {"mediaType": mt.OCI_CONFIG, "digest": str(D2), "size": 2},
        "layers": [_desc()],
        **extra,
    }
    return json.dumps(doc).encode()


def test_manifest_roundtrip_is_canonical() -> None:
    m = parse_manifest_document(_manifest(annotations={"a": "b"}), mt.OCI_MANIFEST)
    assert isinstance(m, Manifest)
    again = parse_manifest_document(m.to_bytes())
    assert again == m and again.to_bytes() == m.to_bytes()


def test_manifest_and_content_type_must_agree() -> None:
    with pytest.raises(ManifestError, match="served as"):
        parse_manifest_document(_manifest(), mt.DOCKER_MANIFEST)


def test_ambiguous_document() -> None:
    with pytest.raises(ManifestError, match="ambiguous"):
        parse_manifest_document(_manifest(manifests=[]))


@pytest.mark.parametrize(
    ("doc", "fragment"),
    [
        (b"[]", "not a JSON object"),
        (b"{", "not valid JSON"),
        (b'{"schemaVersion": 1}', "schemaVersion"),
        (_manifest(layers=[_desc(size=-1)]), "negative size"),
        (_manifest(layers=[_desc(digest="sha256:../../x")]), "invalid digest"),
        (_manifest(layers=[_desc(size="1")]), "integer"),
        (b" " * (4 * 1024 * 1024 + 1), "larger than"),
    ],
)
def test_malformed(doc: bytes, fragment: str) -> None:
    with pytest.raises(ManifestError, match=fragment):
        parse_manifest_document(doc)


def _index(*platforms: dict[str, str]) -> Index:
    entries = [
        {"mediaType": mt.OCI_MANIFEST, "digest": str(Digest.of(str(i).encode())), "size": 1, "platform": p}
        for i, p in enumerate(platforms)
    ]
    doc = {"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": entries}
    parsed = parse_manifest_document(json.dumps(doc).encode())
    assert isinstance(parsed, Index)
    return parsed


def test_select_platform_variants() -> None:
    index = _index(
        {"os": "unknown", "architecture": "unknown"},
        {"os": "linux", "architecture": "arm", "variant": "v7"},
        {"os": "linux", "architecture": "arm64", "variant": "v8"},
        {"os": "linux", "architecture": "amd64"},
    )
    assert select_platform(index, Platform.parse("linux/amd64")) is index.manifests[3]
    assert select_platform(index, Platform.parse("linux/arm64")) is index.manifests[2]
    assert select_platform(index, Platform.parse("linux/aarch64")) is index.manifests[2]
    assert select_platform(index, Platform.parse("linux/arm/v7")) is index.manifests[1]
    with pytest.raises(PlatformError) as err:
        select_platform(index, Platform.parse("linux/ppc64le"))
    assert "linux/arm/v7, linux/arm64/v8, linux/amd64" in str(err.value)
    assert "unknown" not in str(err.value)


def test_arm64_without_variant_matches_v8() -> None:
    index = _index({"os": "linux", "architecture": "arm64"})
    assert select_platform(index, Platform.parse("linux/arm64/v8")) is index.manifests[0]


def test_attestation_only_index() -> None:
    with pytest.raises(PlatformError, match="no runnable platform"):
        select_platform(_index({"os": "unknown", "architecture": "unknown"}), Platform.host())


def test_config_keeps_unknown_fields_and_appends() -> None:
    raw = {
        "architecture": "amd64",
        "os": "linux",
        "spec": {"x": 1},
        "config": {"Env": ["PATH=/bin"]},
        "rootfs": {"type": "layers", "diff_ids": [str(D1)]},
    }
    config = ImageConfig.parse(json.dumps(raw).encode())
    new = config.with_layers([D2], [HistoryEntry("imagesmith: hello")])
    assert new.raw["spec"] == {"x": 1}
    assert new.diff_ids == (D1, D2)
    # a base without history gets one synthetic entry per layer, so counts stay 1:1
    assert len(new.history) == 2
    new.check_layers(2)
    assert config.diff_ids == (D1,)  # copy on write


def test_config_rejects_bad_env() -> None:
    raw = {"config": {"Env": ["NOEQUALS"]}, "rootfs": {"type": "layers", "diff_ids": []}}
    with pytest.raises(ManifestError, match="KEY=VALUE"):
        ImageConfig.parse(json.dumps(raw).encode())


def test_check_layers_counts() -> None:
    raw = {"rootfs": {"type": "layers", "diff_ids": [str(D1)]}, "history": [{}, {}]}
    config = ImageConfig.parse(json.dumps(raw).encode())
    with pytest.raises(ManifestError, match="diff_ids for 2"):
        config.check_layers(2)
    with pytest.raises(ManifestError, match="history"):
        config.check_layers(1)


def test_descriptor_platform_json() -> None:
    d = Descriptor(mt.OCI_MANIFEST, D1, 3, platform=Platform("linux", "arm64", "v8"))
    assert Descriptor.from_json(d.to_json()) == d


def test_nested_indexes_are_followed_but_only_so_deep(tmp_path: object) -> None:
    """RELIABILITY 13: an index entry for the platform that is an index itself is followed
    (test_pull.py::test_a_nested_index_is_followed_to_the_platform), but nesting deeper than
    MAX_INDEX_DEPTH ends in a clear error, never a long walk."""
    from pathlib import Path

    from imagesmith.oci.image import MAX_INDEX_DEPTH
    from imagesmith.store.layout import OCILayout
    from imagesmith.transports.layout import LayoutSource
    from imagesmith.transports.locations import resolve_base

    assert isinstance(tmp_path, Path)
    layout = OCILayout(tmp_path / "layout", create=True)
    amd64 = Platform("linux", "amd64")
    entry = Descriptor(mt.OCI_MANIFEST, D1, 1, platform=amd64)
    for _ in range(MAX_INDEX_DEPTH + 1):
        data = Index(mt.OCI_INDEX, (entry,)).to_bytes()
        entry = Descriptor(mt.OCI_INDEX, layout.put_bytes(data), len(data), platform=amd64)
    layout.add_manifest(layout.blob_path(entry.digest).read_bytes(), mt.OCI_INDEX, tag="deep")
    with pytest.raises(ManifestError, match=f"nests more than {MAX_INDEX_DEPTH} levels"):
        resolve_base(None, LayoutSource(layout.root, "deep"), amd64)
    # An index entry is chosen only when no image manifest matches.
    both = Index(mt.OCI_INDEX, (entry, Descriptor(mt.OCI_MANIFEST, D2, 1, platform=amd64)))
    assert select_platform(both, amd64).digest == D2
