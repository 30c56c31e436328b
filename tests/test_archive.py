"""Docker archives: what the writer puts in the tar, reading both archive formats back,
integrity, and that a failed write leaves nothing behind. No servers needed."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from pathlib import Path

import pytest
import zstandard

from imagesmith.errors import IntegrityError, LayoutError
from imagesmith.oci import mediatypes as mt
from imagesmith.oci.digests import Digest
from imagesmith.oci.image import RawManifest
from imagesmith.oci.model import Descriptor, Index, Platform
from imagesmith.oci.references import Reference
from imagesmith.pipeline.run import import_rootfs
from imagesmith.registry.client import RegistryPool
from imagesmith.store.cache import BlobCache
from imagesmith.store.layout import OCILayout
from imagesmith.transports.archive import ArchiveSource, ArchiveWriter
from imagesmith.transports.copy import copy_image
from imagesmith.transports.locations import resolve_base


@pytest.fixture
def cache(tmp_path: Path) -> BlobCache:
    return BlobCache(tmp_path / "cache")


@pytest.fixture
def pool() -> RegistryPool:
    # Never used for a request here: every location in this file is local.
    return RegistryPool()


@pytest.fixture
def layout_image(tmp_path: Path, cache: BlobCache) -> tuple[Path, str]:
    """A one-layer image in an OCI layout under tag 1; returns (layout dir, manifest digest)."""
    rootfs = tmp_path / "rootfs"
    (rootfs / "etc").mkdir(parents=True)
    (rootfs / "etc" / "greeting").write_text("hello\n")
    layout = tmp_path / "layout"
    result = import_rootfs(rootfs, output=f"oci:{layout}:1", cache=cache, platform=Platform("linux", "amd64"))
    return layout, result.digest


@pytest.fixture
def archived(
    layout_image: tuple[Path, str], tmp_path: Path, pool: RegistryPool, cache: BlobCache
) -> tuple[Path, Path, str]:
    """``layout_image`` copied into the docker archive ``tmp_path/img.tar`` as ``x:1``;
    returns (archive, layout dir, manifest digest)."""
    layout, digest = layout_image
    archive = tmp_path / "img.tar"
    copy_image(f"oci:{layout}:1", f"docker-archive:{archive}:x:1", pool=pool, cache=cache)
    return archive, layout, digest


def members(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        out = {}
        for m in tar.getmembers():
            f = tar.extractfile(m) if m.isreg() else None
            out[m.name] = f.read() if f is not None else b""
        return out


def test_archive_holds_the_docker_and_the_oci_view(
    layout_image: tuple[Path, str], tmp_path: Path, pool: RegistryPool, cache: BlobCache
) -> None:
    layout, digest = layout_image
    archive = tmp_path / "img.tar"
    result = copy_image(f"oci:{layout}:1", f"docker-archive:{archive}:example/app:1", pool=pool, cache=cache)
    assert str(result.digest) == digest

    files = members(archive)
    assert json.loads(files["oci-layout"]) == {"imageLayoutVersion": "1.0.0"}
    for name, data in files.items():
        if name.startswith("blobs/sha256/"):
            assert hashlib.sha256(data).hexdigest() == name.rsplit("/", 1)[1]
    manifest = json.loads(files[f"blobs/sha256/{digest.split(':')[1]}"])
    [entry] = json.loads(files["manifest.json"])
    assert entry["RepoTags"] == ["example/app:1"]
    assert entry["Config"] == "blobs/sha256/" + manifest["config"]["digest"].split(":")[1]
    assert entry["Layers"] == ["blobs/sha256/" + d["digest"].split(":")[1] for d in manifest["layers"]]
    # Layers stay compressed: docker load and podman load decompress them.
    assert files[entry["Layers"][0]][:2] == b"\x1f\x8b"
    index = json.loads(files["index.json"])
    [described] = index["manifests"]
    assert described["digest"] == digest
    assert described["annotations"] == {
        "io.containerd.image.name": "docker.io/example/app:1",
        "org.opencontainers.image.ref.name": "1",
    }
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_archive_bytes_are_reproducible(
    layout_image: tuple[Path, str], tmp_path: Path, pool: RegistryPool, cache: BlobCache
) -> None:
    layout, _ = layout_image
    first, second = tmp_path / "a.tar", tmp_path / "b.tar"
    copy_image(f"oci:{layout}:1", f"docker-archive:{first}:x:1", pool=pool, cache=cache)
    copy_image(f"oci:{layout}:1", f"docker-archive:{second}:x:1", pool=pool, cache=cache)
    assert first.read_bytes() == second.read_bytes()


def test_copy_out_of_an_archive_keeps_the_digest(
    archived: tuple[Path, Path, str], tmp_path: Path, pool: RegistryPool, cache: BlobCache
) -> None:
    archive, layout, digest = archived
    again = tmp_path / "again"
    result = copy_image(f"docker-archive:{archive}", f"oci:{again}:copy", pool=pool, cache=cache)
    assert str(result.digest) == digest
    assert str(OCILayout(again).resolve("copy").digest) == digest
    for blob in (layout / "blobs" / "sha256").iterdir():
        assert (again / "blobs" / "sha256" / blob.name).read_bytes() == blob.read_bytes()


def _legacy_archive(path: Path, *, compress: bool, link: bool) -> tuple[bytes, bytes]:
    """An archive as docker save < 25 (or podman save) writes it; returns (layer, config)."""
    content = io.BytesIO()
    with tarfile.open(fileobj=content, mode="w") as layer_tar:
        info = tarfile.TarInfo("etc/motd")
        info.size = 3
        layer_tar.addfile(info, io.BytesIO(b"hi\n"))
    plain = content.getvalue()
    layer = gzip.compress(plain, mtime=0) if compress else plain
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Env": ["PATH=/bin"]},
            "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(plain).hexdigest()]},
            "history": [{"created_by": "test"}],
        }
    ).encode()
    config_hex = hashlib.sha256(config).hexdigest()
    layer_hex = hashlib.sha256(layer).hexdigest()
    layer_name = "0123abcd/layer.tar"
    files: list[tuple[str, bytes | str]] = [(f"{config_hex}.json", config)]
    if link:
        files += [(f"{layer_hex}.tar", layer), (layer_name, f"../{layer_hex}.tar")]
    else:
        files += [(layer_name, layer)]
    manifest = [{"Config": f"{config_hex}.json", "RepoTags": ["legacy/app:2"], "Layers": [layer_name]}]
    files.append(("manifest.json", json.dumps(manifest).encode()))
    with tarfile.open(path, "w") as tar:
        for name, data in files:
            info = tarfile.TarInfo(name)
            if isinstance(data, str):
                info.type, info.linkname = tarfile.SYMTYPE, data
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return layer, config


@pytest.mark.parametrize(("compress", "link"), [(False, False), (False, True), (True, False)])
def test_legacy_archive_gets_a_synthesised_manifest(
    tmp_path: Path, pool: RegistryPool, cache: BlobCache, compress: bool, link: bool
) -> None:
    archive = tmp_path / "legacy.tar"
    layer, config = _legacy_archive(archive, compress=compress, link=link)
    with ArchiveSource(archive) as source:
        top = source.top()
    with ArchiveSource(archive, Reference.parse("legacy/app:2")) as source:
        assert source.top() == top  # canonical JSON: the same digest every time
    manifest = json.loads(top.data)
    assert top.media_type == mt.DOCKER_MANIFEST
    assert manifest["config"] == {
        "mediaType": mt.DOCKER_CONFIG,
        "digest": str(Digest.of(config)),
        "size": len(config),
    }
    [described] = manifest["layers"]
    assert described["digest"] == str(Digest.of(layer)) and described["size"] == len(layer)
    assert described["mediaType"] == (mt.DOCKER_LAYER_GZIP if compress else mt.DOCKER_LAYER)

    out = tmp_path / "out"
    result = copy_image(f"docker-archive:{archive}:legacy/app:2", f"oci:{out}:x", pool=pool, cache=cache)
    assert result.digest == top.digest
    assert OCILayout(out).blob_path(Digest.of(layer)).read_bytes() == layer


def _two_image_archive(path: Path, layout: Path) -> None:
    source = OCILayout(layout)
    entry = source.resolve("1")
    raw = RawManifest(source.read_blob(entry, 1 << 20), entry.media_type, entry.digest)
    manifest = raw.parse()
    assert not isinstance(manifest, Index)
    with ArchiveWriter(path) as writer:
        for blob in (manifest.config, *manifest.layers):
            with source.open_blob(blob) as reader:
                writer.add_blob(blob, reader)
        writer.add_image(raw, Reference.parse("first/img:1"))
        writer.add_image(raw, Reference.parse("second/img:2"))


def test_several_images_are_chosen_by_name(layout_image: tuple[Path, str], tmp_path: Path) -> None:
    layout, digest = layout_image
    archive = tmp_path / "two.tar"
    _two_image_archive(archive, layout)
    with pytest.raises(LayoutError, match=r"holds 2 images \(.*first/img:1.*second/img:2.*NAME:TAG"):
        ArchiveSource(archive)
    with ArchiveSource(archive, Reference.parse("second/img:2")) as source:
        assert str(source.top().digest) == digest
    with pytest.raises(LayoutError, match="no image named third/img:3; it holds: first/img:1, second/img:2"):
        ArchiveSource(archive, Reference.parse("third/img:3"))


def test_corrupt_blob_in_an_archive_is_detected(
    archived: tuple[Path, Path, str], tmp_path: Path, pool: RegistryPool, cache: BlobCache
) -> None:
    archive, _, _ = archived
    files = members(archive)
    [entry] = json.loads(files["manifest.json"])
    layer = bytearray(files[entry["Layers"][0]])
    layer[len(layer) // 2] ^= 0xFF  # same size, other bytes
    tampered = tmp_path / "tampered.tar"
    with tarfile.open(tampered, "w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            if not data and name.startswith("blobs") and name.count("/") != 2:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
                continue
            payload = bytes(layer) if name == entry["Layers"][0] else data
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    out = tmp_path / "out"
    fresh = BlobCache(tmp_path / "fresh-cache")  # the built layer's good copy is in `cache`
    with pytest.raises(IntegrityError, match="does not match its digest"):
        copy_image(f"docker-archive:{tampered}", f"oci:{out}:x", pool=pool, cache=fresh)
    assert OCILayout(out).tags() == []
    # Into another archive: nothing is left under the name, nor any temp file.
    with pytest.raises(IntegrityError, match="does not match its digest"):
        copy_image(
            f"docker-archive:{tampered}",
            f"docker-archive:{tmp_path}/copy.tar",
            pool=pool,
            cache=BlobCache(tmp_path / "other-cache"),
        )
    assert not (tmp_path / "copy.tar").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_failed_write_leaves_the_destination_alone(tmp_path: Path) -> None:
    archive = tmp_path / "img.tar"
    archive.write_bytes(b"previous content")
    data = b"some blob"
    wrong = Descriptor("application/octet-stream", Digest.of(b"other bytes"), len(data))
    with pytest.raises(IntegrityError), ArchiveWriter(archive) as writer:
        writer.add_blob(wrong, io.BytesIO(data))
    assert archive.read_bytes() == b"previous content"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["img.tar"]


def test_missing_blob_or_an_index_is_refused(tmp_path: Path) -> None:
    config = b"{}"
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": mt.OCI_MANIFEST,
            "config": {"mediaType": mt.OCI_CONFIG, "digest": str(Digest.of(config)), "size": 2},
            "layers": [],
        }
    ).encode()
    raw = RawManifest(manifest, mt.OCI_MANIFEST, Digest.of(manifest))
    archive = tmp_path / "img.tar"
    writer = ArchiveWriter(archive)
    writer.add_image(raw, Reference.parse("x:1"))
    with pytest.raises(LayoutError, match="was never written"):
        writer.commit()
    assert not archive.exists()

    index = Index(mt.OCI_INDEX, (Descriptor(mt.OCI_MANIFEST, raw.digest, len(manifest)),)).to_bytes()
    with ArchiveWriter(archive) as writer, pytest.raises(LayoutError, match="single-platform"):
        writer.add_image(RawManifest(index, mt.OCI_INDEX, Digest.of(index)), None)


def test_not_an_archive(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.tar"
    bogus.write_bytes(b"not a tar at all" * 100)
    with pytest.raises(LayoutError, match="not a readable tar archive"):
        ArchiveSource(bogus)
    with pytest.raises(LayoutError, match="not found"):
        ArchiveSource(tmp_path / "missing.tar")
    empty = tmp_path / "empty.tar"
    with tarfile.open(empty, "w") as tar:
        info = tarfile.TarInfo("README")
        tar.addfile(info, io.BytesIO(b""))
    with pytest.raises(LayoutError, match="not a docker archive"):
        ArchiveSource(empty)


@pytest.mark.parametrize("codec", ["none", "gzip", "zstd"])
def test_an_archive_is_read_in_one_pass_and_blobs_by_offset(
    layout_image: tuple[Path, str], tmp_path: Path, pool: RegistryPool, cache: BlobCache, codec: str
) -> None:
    """Issue 14, item 2: every blob read re-opened the archive, rescanned it from the start and,
    for ``docker save | gzip``, decompressed it again. Now it is indexed (and decompressed) once:
    once open, the archive file is not needed any more, even by origins that outlive their source."""
    layout, digest = layout_image
    plain = tmp_path / "img.tar"
    copy_image(f"oci:{layout}:1", f"docker-archive:{plain}:x:1", pool=pool, cache=cache)
    archive = plain
    if codec == "gzip":
        archive = tmp_path / "img.tar.gz"
        archive.write_bytes(gzip.compress(plain.read_bytes()))
    elif codec == "zstd":
        archive = tmp_path / "img.tar.zst"
        archive.write_bytes(zstandard.ZstdCompressor().compress(plain.read_bytes()))
    with ArchiveSource(archive, tmpdir=tmp_path / "scratch") as source:
        resolved = resolve_base(None, source, Platform("linux", "amd64"))
        assert str(resolved.digest) == digest
    archive.unlink()  # an archive read again would fail from here on
    for layer in resolved.image.layers:
        assert layer.origin is not None
        with layer.origin.open_blob(layer.descriptor, pool) as reader:
            assert Digest.of(reader.read()) == layer.digest  # verified again at the end, too
    scratch = tmp_path / "scratch"
    assert not scratch.exists() or not list(scratch.iterdir())  # a decompressed copy is unlinked


def test_an_archive_holding_a_huge_pax_record_is_refused_early(tmp_path: Path) -> None:
    """Issue 14, item 2: a 64 MiB pax record in a 64 KiB .tar.gz was read whole into memory (a
    GiB one cost 3 GB); the archive reader has the limits of every tar reader, so it is refused
    after its first MiB, before the rest is even decompressed."""
    record = b" comment=" + b"y" * (64 << 20) + b"\n"
    payload = b"%d" % (len(record) + 8) + record  # the length counts its own 8 digits
    header = tarfile.TarInfo("././@PaxHeader")
    header.type, header.size = tarfile.XHDTYPE, len(payload)
    manifest = tarfile.TarInfo("manifest.json")
    manifest.size = 2
    raw = (
        header.tobuf(format=tarfile.USTAR_FORMAT)
        + payload
        + bytes(-len(payload) % 512)
        + manifest.tobuf(format=tarfile.USTAR_FORMAT)
        + b"[]"
        + bytes(510)
        + bytes(1024)
    )
    archive = tmp_path / "bomb.tar.gz"
    archive.write_bytes(gzip.compress(raw, compresslevel=1))
    with pytest.raises(LayoutError, match="extended headers of more than 1048576 bytes"):
        ArchiveSource(archive, tmpdir=tmp_path / "scratch")
