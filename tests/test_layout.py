"""OCILayout: blobs, index.json, tags, atomicity under concurrent and killed writers, and
cross-checks with skopeo and umoci on a real busybox image."""

from __future__ import annotations

import errno
import json
import multiprocessing
import os
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from cli_support import HELLO, cli, ok
from conftest import need_tool

from imagesmith.errors import (
    DigestFormatError,
    IntegrityError,
    LayoutError,
    ManifestError,
    ReferenceFormatError,
)
from imagesmith.oci import mediatypes as mt
from imagesmith.oci.digests import Digest
from imagesmith.oci.model import Descriptor, HistoryEntry, ImageConfig, Manifest, Platform, canonical_json
from imagesmith.store.cache import BlobCache
from imagesmith.store.layout import REF_NAME, TEMP_DIR, OCILayout
from imagesmith.tar.entries import directory_entries
from imagesmith.tar.layer import build_layer

EMPTY_CONFIG = b"{}"


def make_manifest(layout: OCILayout, label: str, **extra: object) -> bytes:
    """A small image manifest whose config and layer blobs are stored in ``layout``."""
    config = canonical_json(
        {"architecture": "amd64", "os": "linux", "label": label, "rootfs": {"type": "layers", "diff_ids": []}}
    )
    layer = f"layer of {label}".encode()
    config_digest = layout.put_bytes(config)
    layer_digest = layout.put_bytes(layer)
    doc = {
        "schemaVersion": 2,
        "mediaType": mt.OCI_MANIFEST,
        "config": {"mediaType": mt.OCI_CONFIG, "digest": str(config_digest), "size": len(config)},
        "layers": [{"mediaType": mt.OCI_LAYER, "digest": str(layer_digest), "size": len(layer)}],
        **extra,
    }
    return canonical_json(doc)


def write_busybox_image(
    layout: OCILayout, busybox_dir: Path, cache: BlobCache, tag: str = "busybox"
) -> Descriptor:
    """A one-layer busybox image for the host platform, written into ``layout`` as ``tag``."""
    layer = build_layer(directory_entries(busybox_dir, preserve=True), cache, media_types=mt.OCI)
    with cache.open(layer.digest, layer.size) as reader:
        layout.put_blob_from(reader, layer.digest, layer.size)
    config = (
        ImageConfig.empty(Platform.host())
        .with_layers([layer.diff_id], [HistoryEntry("imagesmith test: busybox rootfs")])
        .with_config_fields(Env=["PATH=/usr/bin:/bin"], Cmd=["sh"])
    )
    config_bytes = config.to_bytes()
    config_digest = layout.put_bytes(config_bytes)
    manifest = Manifest(
        mt.OCI_MANIFEST,
        Descriptor(mt.OCI_CONFIG, config_digest, len(config_bytes)),
        (layer.descriptor(),),
    )
    return layout.add_manifest(manifest.to_bytes(), mt.OCI_MANIFEST, tag=tag)


@pytest.fixture
def layout(tmp_path: Path) -> OCILayout:
    return OCILayout(tmp_path / "layout", create=True)


def _files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


# -- creation ----------------------------------------------------------------------------


def test_create_writes_a_valid_empty_layout(tmp_path: Path) -> None:
    root = tmp_path / "new" / "layout"
    layout = OCILayout(root, create=True)
    assert layout.root == root
    assert json.loads((root / "oci-layout").read_bytes()) == {"imageLayoutVersion": "1.0.0"}
    index = json.loads((root / "index.json").read_bytes())
    assert index == {"schemaVersion": 2, "mediaType": mt.OCI_INDEX, "manifests": []}
    assert (root / "blobs" / "sha256").is_dir()
    assert not (root / TEMP_DIR).exists()  # no leftovers from the atomic writes
    assert layout.manifests() == ()
    assert layout.tags() == []
    # Reopening (with or without create) keeps what is there.
    tag = layout.add_manifest(make_manifest(layout, "a"), mt.OCI_MANIFEST, tag="a")
    assert OCILayout(root, create=True).resolve("a") == tag
    assert OCILayout(root).resolve("a") == tag


def test_not_a_layout(tmp_path: Path) -> None:
    with pytest.raises(LayoutError, match="is not an OCI image layout \\(no oci-layout file\\)"):
        OCILayout(tmp_path)
    with pytest.raises(LayoutError, match="no oci-layout file"):
        OCILayout(tmp_path / "missing")
    (tmp_path / "oci-layout").write_text('{"imageLayoutVersion": "2.0.0"}')
    with pytest.raises(LayoutError, match=r"only 1\.x"):
        OCILayout(tmp_path)
    (tmp_path / "oci-layout").write_text("garbage")
    with pytest.raises(LayoutError, match="oci-layout is corrupt"):
        OCILayout(tmp_path)


def test_corrupt_index_json_is_named(layout: OCILayout) -> None:
    index = layout.root / "index.json"
    bad_entry = '{"schemaVersion": 2, "manifests": [{"digest": "sha256:../x"}]}'
    wrong_type = '{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json"}'
    for text in ("{not json", "[]", bad_entry, wrong_type):
        index.write_text(text)
        with pytest.raises(LayoutError, match=r"index\.json"):
            layout.manifests()
        with pytest.raises(LayoutError, match=r"index\.json"):
            layout.add_manifest(make_manifest(layout, "x"), mt.OCI_MANIFEST, tag="x")
        assert index.read_text() == text  # never overwritten by a failed update
    index.unlink()
    with pytest.raises(LayoutError, match=r"index\.json is missing"):
        layout.tags()


# -- blobs -------------------------------------------------------------------------------


def test_blob_round_trip(layout: OCILayout) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)  # several read chunks
    digest = Digest.of(data)
    assert not layout.has_blob(digest)
    with layout.put_blob(digest, len(data)) as writer:
        for i in range(0, len(data), 65536):
            writer.write(data[i : i + 65536])
    assert writer.digest == digest and writer.size == len(data)
    assert layout.blob_path(digest) == layout.root / "blobs" / "sha256" / digest.hex
    assert layout.has_blob(digest) and layout.has_blob(digest, len(data))
    assert not layout.has_blob(digest, len(data) + 1)
    desc = Descriptor(mt.OCI_LAYER, digest, len(data))
    with layout.open_blob(desc) as reader:
        assert reader.read_all_chunks() == data
    assert layout.read_blob(Descriptor("x", layout.put_bytes(b"small"), 5), 100) == b"small"
    with pytest.raises(LayoutError, match="more than the 100 allowed"):
        layout.read_blob(desc, 100)
    # Copying from a stream is verified too.
    other = OCILayout(layout.root.parent / "other", create=True)
    with layout.open_blob(desc) as reader:
        other.put_blob_from(reader, digest, len(data))
    assert other.blob_path(digest).read_bytes() == data
    assert (layout.blob_path(digest).stat().st_mode & 0o777) == 0o644
    assert not (layout.root / TEMP_DIR).exists()


def test_put_blob_refuses_wrong_content(layout: OCILayout) -> None:
    before = _files(layout.root)
    with pytest.raises(IntegrityError, match="does not match"), layout.put_blob(Digest.of(b"a")) as w:
        w.write(b"b")
    with pytest.raises(IntegrityError, match="truncated"), layout.put_blob(size=10) as w:
        w.write(b"short")
    with pytest.raises(IntegrityError, match="longer than"), layout.put_blob(size=2) as w:
        w.write(b"too long")
    with pytest.raises(IntegrityError):
        layout.put_blob_from(_Reader(b"0123456789" * 1000), Digest.of(b"x"), 3)
    assert _files(layout.root) == before  # no blob, no temp file


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.read_bytes = 0

    def read(self, n: int = -1, /) -> bytes:
        out = self.data[self.read_bytes : self.read_bytes + n]
        self.read_bytes += len(out)
        return out


def test_put_blob_from_stops_one_byte_past_the_size(layout: OCILayout) -> None:
    reader = _Reader(b"x" * 10_000_000)
    with pytest.raises(IntegrityError, match="longer than"):
        layout.put_blob_from(reader, Digest.of(b"xxx"), 3)
    assert reader.read_bytes == 4


def test_existing_blob_is_kept_and_temp_discarded(layout: OCILayout) -> None:
    digest = layout.put_bytes(b"content")
    inode = layout.blob_path(digest).stat().st_ino
    assert layout.put_bytes(b"content") == digest
    assert layout.blob_path(digest).stat().st_ino == inode
    assert not (layout.root / TEMP_DIR).exists()
    # A truncated copy on disk is replaced by a complete write.
    layout.blob_path(digest).write_bytes(b"cont")
    layout.put_bytes(b"content")
    assert layout.blob_path(digest).read_bytes() == b"content"


def test_corrupt_blob_detected_on_read(layout: OCILayout) -> None:
    data = b"a config document" * 100
    digest = layout.put_bytes(data)
    desc = Descriptor(mt.OCI_CONFIG, digest, len(data))
    path = layout.blob_path(digest)
    path.write_bytes(b"X" + data[1:])  # same size, one byte flipped
    with pytest.raises(IntegrityError, match="does not match its digest"):
        layout.read_blob(desc, 1 << 20)
    path.write_bytes(data[:-1])
    with pytest.raises(IntegrityError, match="has 1699 bytes, expected 1700"):
        layout.read_blob(desc, 1 << 20)
    path.unlink()
    with pytest.raises(LayoutError, match="is missing from the OCI layout"):
        layout.read_blob(desc, 1 << 20)


def test_digests_are_validated_before_paths(layout: OCILayout) -> None:
    for text in ("sha256:../../x", "sha256:" + "A" * 64, "md5:" + "a" * 32, "sha256:abc"):
        with pytest.raises(DigestFormatError):
            layout.blob_path(Digest.parse(text))
    with pytest.raises(DigestFormatError):
        layout.blob_path("sha256:../../etc/passwd")  # type: ignore[arg-type]


def test_mount_blob_links_between_layouts(layout: OCILayout, tmp_path: Path) -> None:
    other = OCILayout(tmp_path / "other", create=True)
    digest = layout.put_bytes(b"shared layer")
    assert other.mount_blob(layout, digest)
    assert other.blob_path(digest).read_bytes() == b"shared layer"
    assert other.blob_path(digest).stat().st_ino == layout.blob_path(digest).stat().st_ino
    assert other.mount_blob(layout, digest)  # already there
    assert not other.mount_blob(layout, Digest.of(b"absent"))


# -- index.json and tags -----------------------------------------------------------------


def test_manifests_tags_and_resolve(layout: OCILayout) -> None:
    m1, m2 = make_manifest(layout, "one"), make_manifest(layout, "two")
    d1 = layout.add_manifest(
        m1, mt.OCI_MANIFEST, tag="v1", annotations={"x": "y"}, platform=Platform("linux", "amd64")
    )
    assert d1.digest == Digest.of(m1) and d1.size == len(m1) and d1.media_type == mt.OCI_MANIFEST
    assert d1.annotations == {"x": "y", REF_NAME: "v1"}
    assert layout.read_blob(d1, 1 << 20) == m1  # bytes stored as given
    assert layout.resolve() == d1  # the only entry
    assert layout.resolve("v1") == d1
    layout.add_manifest(m2, mt.OCI_MANIFEST, tag="v2")
    layout.add_manifest(m1, mt.OCI_MANIFEST, tag="latest")
    assert layout.tags() == ["latest", "v1", "v2"]
    with pytest.raises(LayoutError, match=r"holds 3 images: name one of its tags \(latest, v1, v2\)"):
        layout.resolve()
    with pytest.raises(LayoutError, match=r"no tag 'nope' .*its tags: latest, v1, v2"):
        layout.resolve("nope")
    # The raw file is what other tools read.
    raw = json.loads((layout.root / "index.json").read_bytes())
    assert raw["mediaType"] == mt.OCI_INDEX
    assert raw["manifests"][0]["platform"] == {"architecture": "amd64", "os": "linux"}
    assert [m["annotations"][REF_NAME] for m in raw["manifests"]] == ["v1", "v2", "latest"]


def test_tag_moves_and_entries_are_unique(layout: OCILayout) -> None:
    m1, m2 = make_manifest(layout, "one"), make_manifest(layout, "two")
    layout.add_manifest(m1, mt.OCI_MANIFEST, tag="t")
    layout.add_manifest(m1, mt.OCI_MANIFEST, tag="t")  # re-adding is a no-op
    assert len(layout.manifests()) == 1
    layout.add_manifest(m2, mt.OCI_MANIFEST, tag="t")  # the tag moves; m1's entry goes
    assert [d.digest for d in layout.manifests()] == [Digest.of(m2)]
    # Untagged entries are unique per digest and survive tag moves.
    layout.add_manifest(m1, mt.OCI_MANIFEST)
    layout.add_manifest(m1, mt.OCI_MANIFEST)
    layout.add_manifest(m1, mt.OCI_MANIFEST, tag="u")
    layout.add_manifest(m2, mt.OCI_MANIFEST, tag="u")
    entries = layout.manifests()
    assert [(d.digest, (d.annotations or {}).get(REF_NAME)) for d in entries] == [
        (Digest.of(m2), "t"),
        (Digest.of(m1), None),
        (Digest.of(m2), "u"),
    ]
    assert layout.find_manifest(Digest.of(m1)) == entries[1]
    layout.remove_tag("t")
    assert layout.tags() == ["u"]
    with pytest.raises(LayoutError, match="no tag 't'"):
        layout.remove_tag("t")
    assert layout.remove_manifest(Digest.of(m1)) == 1
    assert layout.remove_manifest(Digest.of(m1)) == 0
    assert layout.blob_path(Digest.of(m1)).exists()  # blobs stay


def test_add_manifest_validates(layout: OCILayout) -> None:
    data = make_manifest(layout, "x")
    for bad in ("", "-x", "tag with space", "é", "a//b", "../x", "x/", "a:"):
        with pytest.raises(ReferenceFormatError):
            layout.add_manifest(data, mt.OCI_MANIFEST, tag=bad)
    # Distribution tags and image-spec ref.name values are both fine.
    for good in ("_private", "v1-", "1.0+build.5", "team/app:1.0", "a--b"):
        layout.add_manifest(data, mt.OCI_MANIFEST, tag=good)
    assert layout.tags() == sorted(["_private", "v1-", "1.0+build.5", "team/app:1.0", "a--b"])
    for tag in layout.tags():
        layout.remove_tag(tag)
    with pytest.raises(ManifestError):
        layout.add_manifest(b"not json", mt.OCI_MANIFEST, tag="x")
    with pytest.raises(ManifestError, match="declares mediaType"):
        layout.add_manifest(data, mt.DOCKER_MANIFEST, tag="x")
    assert layout.manifests() == ()


def test_index_write_failure_leaves_index_intact(layout: OCILayout, monkeypatch: pytest.MonkeyPatch) -> None:
    layout.add_manifest(make_manifest(layout, "a"), mt.OCI_MANIFEST, tag="a")
    before = (layout.root / "index.json").read_bytes()
    data = make_manifest(layout, "b")
    real_fsync = os.fsync

    def full_disk(fd: int) -> None:
        if os.fstat(fd).st_size == len(data):
            real_fsync(fd)  # the manifest blob itself goes through
            return
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("imagesmith.store.layout.os.fsync", full_disk)
    with pytest.raises(LayoutError, match="disk is full"):
        layout.add_manifest(data, mt.OCI_MANIFEST, tag="b")
    monkeypatch.undo()
    assert (layout.root / "index.json").read_bytes() == before
    assert layout.tags() == ["a"]
    assert not (layout.root / TEMP_DIR).exists()


def test_referrers(layout: OCILayout) -> None:
    image = layout.add_manifest(make_manifest(layout, "img"), mt.OCI_MANIFEST, tag="img")
    subject = {"mediaType": mt.OCI_MANIFEST, "digest": str(image.digest), "size": image.size}
    sbom = make_manifest(
        layout,
        "sbom",
        artifactType="application/vnd.example.sbom",
        subject=subject,
        annotations={"org.example": "1"},
    )
    sig = make_manifest(layout, "sig", subject=subject)
    sbom_entry = layout.add_manifest(sbom, mt.OCI_MANIFEST)
    layout.add_manifest(sig, mt.OCI_MANIFEST, tag="sig")
    found = layout.referrers(image.digest)
    assert [d.digest for d in found] == [sbom_entry.digest, Digest.of(sig)]
    assert found[0].artifact_type == "application/vnd.example.sbom"
    assert found[0].annotations == {"org.example": "1"}
    assert found[1].artifact_type == mt.OCI_CONFIG  # no artifactType: the config's type
    assert layout.referrers(Digest.of(b"nothing")) == []
    # A manifest whose blob went missing is skipped, not fatal.
    layout.blob_path(Digest.of(sig)).unlink()
    assert [d.digest for d in OCILayout(layout.root).referrers(image.digest)] == [sbom_entry.digest]


# -- atomicity across processes ----------------------------------------------------------


def _add_tags(root: str, worker: int, count: int) -> None:
    layout = OCILayout(Path(root))
    for i in range(count):
        data = make_manifest(layout, f"{worker}-{i}")
        layout.add_manifest(data, mt.OCI_MANIFEST, tag=f"w{worker}-{i}")


@pytest.mark.slow
def test_concurrent_writers_never_lose_a_tag(layout: OCILayout) -> None:
    workers, count = 4, 6
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_add_tags, args=(str(layout.root), w, count)) for w in range(workers)]
    for p in procs:
        p.start()
    index = layout.root / "index.json"
    reads = 0
    deadline = time.monotonic() + 60
    while any(p.is_alive() for p in procs) and time.monotonic() < deadline:
        doc = json.loads(index.read_bytes())  # never torn: always complete JSON
        time.sleep(0.002)
        assert doc["schemaVersion"] == 2
        reads += 1
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    assert reads > 0
    expected = sorted(f"w{w}-{i}" for w in range(workers) for i in range(count))
    assert layout.tags() == expected
    for tag in expected:
        layout.read_blob(layout.resolve(tag), 1 << 20)  # every tag names a stored manifest
    assert not (layout.root / TEMP_DIR).exists()


def _die_mid_write(root: str) -> None:
    layout = OCILayout(Path(root))
    with layout.put_blob() as writer:
        writer.write(b"partial layer" * 1000)
        os._exit(9)  # like kill -9: no cleanup runs


def test_killed_writer_leaves_only_temp_files(layout: OCILayout) -> None:
    layout.add_manifest(make_manifest(layout, "a"), mt.OCI_MANIFEST, tag="a")
    index_before = (layout.root / "index.json").read_bytes()
    blobs_before = set((layout.root / "blobs" / "sha256").iterdir())
    proc = multiprocessing.get_context("spawn").Process(target=_die_mid_write, args=(str(layout.root),))
    proc.start()
    proc.join(30)
    assert proc.exitcode == 9
    leftovers = list((layout.root / TEMP_DIR).iterdir())
    assert len(leftovers) == 1 and leftovers[0].name.startswith("blob@")
    assert set((layout.root / "blobs" / "sha256").iterdir()) == blobs_before
    assert (layout.root / "index.json").read_bytes() == index_before
    assert layout.clean_temp() == 1  # its writer's lock is gone: however recent, it is stale
    assert not (layout.root / TEMP_DIR).exists()


def _write_and_wait(root: str, started: Any, finish: Any) -> None:
    layout = OCILayout(Path(root))
    with layout.put_blob() as writer:
        writer.write(b"a live writer's layer")
        started.set()
        finish.wait(60)


@pytest.mark.slow
def test_the_next_write_removes_a_killed_writers_temp_file_but_never_a_live_one(
    layout: OCILayout, tmp_path: Path
) -> None:
    """A kill -9 during a write leaves a temp file; the next successful write into the layout
    (here `imagesmith import --output oci:`) removes it at once, while a temp file whose
    writer still runs stays."""
    spawn = multiprocessing.get_context("spawn")
    killed = spawn.Process(target=_die_mid_write, args=(str(layout.root),))
    killed.start()
    killed.join(30)
    assert killed.exitcode == 9
    (dead,) = (layout.root / TEMP_DIR).iterdir()
    started, finish = spawn.Event(), spawn.Event()
    live = spawn.Process(target=_write_and_wait, args=(str(layout.root), started, finish))
    live.start()
    try:
        assert started.wait(30)
        (live_file,) = set((layout.root / TEMP_DIR).iterdir()) - {dead}
        rootfs = tmp_path / "rootfs"
        (rootfs / "etc").mkdir(parents=True)
        (rootfs / "etc" / "hostname").write_text("x\n")
        cache = {"IMAGESMITH_CACHE_DIR": str(tmp_path / "cache")}
        ok("import", str(rootfs), "--output", f"oci:{layout.root}:next", env=cache)
        assert not dead.exists()
        assert live_file.exists()  # its writer is alive: never touched
    finally:
        finish.set()
        live.join(30)
    assert live.exitcode == 0
    assert not (layout.root / TEMP_DIR).exists()


def test_exception_mid_write_removes_the_temp_file(layout: OCILayout) -> None:
    before = _files(layout.root)
    with pytest.raises(RuntimeError, match="boom"), layout.put_blob() as writer:
        writer.write(b"some bytes")
        raise RuntimeError("boom")
    assert _files(layout.root) == before


def test_old_temp_files_are_swept_on_first_write(layout: OCILayout) -> None:
    tmp = layout.root / TEMP_DIR
    tmp.mkdir()
    stale = tmp / "blob-1-stale.tmp"
    stale.write_bytes(b"left by a killed writer")
    os.utime(stale, (time.time() - 7200, time.time() - 7200))
    OCILayout(layout.root).put_bytes(b"new")
    assert not tmp.exists()


@pytest.mark.parametrize("which", ["config", "layer"])
def test_a_fifo_where_a_blob_should_be_is_an_error_not_a_hang(tmp_path: Path, which: str) -> None:
    rootfs = tmp_path / "rootfs"
    (rootfs / "etc").mkdir(parents=True)
    (rootfs / "etc" / "hostname").write_text("x\n")
    layout = OCILayout(tmp_path / "image", create=True)
    entry = write_busybox_image(layout, rootfs, BlobCache(tmp_path / "build-cache"), tag="1")
    manifest = Manifest.from_json(json.loads(layout.read_blob(entry, 1 << 20)), mt.OCI_MANIFEST)
    blob = manifest.config if which == "config" else manifest.layers[0]
    path = layout.blob_path(blob.digest)
    path.unlink()
    os.mkfifo(path)
    image = f"oci:{tmp_path / 'image'}:1"
    commands = [
        ["inspect", image],
        ["pull", image, "--rootfs", str(tmp_path / "rootfs-out")],
        ["copy", image, f"oci:{tmp_path / 'copy'}:1"],
        ["build", "--base-image", image, "--output", f"oci:{tmp_path / 'built'}:1", HELLO],
    ]
    expected = [f"imagesmith: error: cannot open {path}: a FIFO, not a regular file"]
    for args in commands:
        if which == "config" or args[0] != "inspect":
            code, err = _cli_or_hang(args, {"IMAGESMITH_CACHE_DIR": str(tmp_path / "cache")})
            assert code == 5 and err.strip().splitlines() == expected, (args, err)


def _cli_or_hang(args: list[str], env: dict[str, str]) -> tuple[int, str]:
    """The CLI's exit code and stderr; a run that has not ended after a minute fails the test
    (it runs in a daemon thread, so a blocked open() cannot stop the whole test run)."""
    done: list[tuple[int, str, str]] = []
    runner = threading.Thread(target=lambda: done.append(cli(*args, env=env)), daemon=True)
    runner.start()
    runner.join(60)
    if not done:
        pytest.fail(f"imagesmith {args[0]} hung on a FIFO blob")
    return done[0][0], done[0][2]


# -- real tools --------------------------------------------------------------------------


@pytest.mark.integration
def test_skopeo_and_umoci_read_a_written_layout(tmp_path: Path, busybox_dir: Path) -> None:
    need_tool("skopeo")
    need_tool("umoci")
    layout = OCILayout(tmp_path / "layout", create=True)
    written = write_busybox_image(layout, busybox_dir, BlobCache(tmp_path / "cache"))
    layout.add_manifest(layout.read_blob(written, 1 << 20), mt.OCI_MANIFEST, tag="second")

    inspected = subprocess.run(
        ["skopeo", "inspect", f"oci:{layout.root}:busybox"], capture_output=True, text=True, check=True
    )
    info = json.loads(inspected.stdout)
    assert info["Digest"] == str(written.digest)
    assert info["Architecture"] == Platform.host().architecture and info["Os"] == "linux"
    assert len(info["Layers"]) == 1

    listed = subprocess.run(
        ["umoci", "ls", "--layout", str(layout.root)], capture_output=True, text=True, check=True
    )
    assert sorted(listed.stdout.split()) == ["busybox", "second"]
    stat = subprocess.run(
        ["umoci", "stat", "--image", f"{layout.root}:busybox", "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(stat.stdout)["history"]

    # And the other way round: a layout skopeo writes reads back verified.
    out = tmp_path / "copy"
    subprocess.run(
        ["skopeo", "copy", f"oci:{layout.root}:busybox", f"oci:{out}:copied"], capture_output=True, check=True
    )
    copied = OCILayout(out)
    entry = copied.resolve("copied")
    assert entry.digest == written.digest
    manifest = Manifest.from_json(json.loads(copied.read_blob(entry, 1 << 20)), entry.media_type)
    for blob in (manifest.config, *manifest.layers):
        with copied.open_blob(blob) as reader:
            while reader.read(1 << 20):
                pass


def test_parallel_writers_survive_temp_dir_tidying(tmp_path: Path) -> None:
    """Writers in threads race the removal of the empty temp dir; none may fail."""
    import io
    from concurrent.futures import ThreadPoolExecutor

    layout = OCILayout(tmp_path / "layout", create=True)

    def write(i: int) -> None:
        data = f"blob {i}".encode()
        layout.put_blob_from(io.BytesIO(data), Digest.of(data), len(data))

    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(write, range(1200)))
    assert all(layout.has_blob(Digest.of(f"blob {i}".encode())) for i in range(1200))
