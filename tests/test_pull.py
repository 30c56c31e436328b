"""``pull`` of hostile or broken images from an OCI layout, through the CLI: integrity of the
uncompressed layers, a target left as it was after a refusal, errors that name layers by
digest, nested indexes, and output that an image cannot use to crash or drive the terminal.
No servers needed: every image is written into an OCI layout by hand."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile
from pathlib import Path

import pytest
from cli_support import cli, ok

from imagesmith.cli import main
from imagesmith.oci import mediatypes as mt
from imagesmith.oci.digests import Digest
from imagesmith.oci.model import Descriptor, Index, Platform
from imagesmith.store.layout import OCILayout

AMD64 = Platform("linux", "amd64")


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMAGESMITH_CACHE_DIR", str(tmp_path / "cache"))


def layer_tar(*members: tuple[tarfile.TarInfo, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            info.size = len(data) if info.isreg() else 0
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return buf.getvalue()


def file_member(name: str, data: bytes = b"x") -> tuple[tarfile.TarInfo, bytes]:
    return tarfile.TarInfo(name), data


def image(
    layout: OCILayout,
    layers: list[bytes],
    *,
    diff_ids: list[str] | None = None,
    config: dict[str, object] | None = None,
    history: list[dict[str, str]] | None = None,
    annotations: dict[str, str] | None = None,
    tag: str | None = "1",
) -> Descriptor:
    """An image of ``layers`` (uncompressed tars, stored gzipped) in ``layout``."""
    blobs = [gzip.compress(data, mtime=0) for data in layers]
    descriptors = [
        {"mediaType": mt.OCI_LAYER_GZIP, "digest": str(layout.put_bytes(blob)), "size": len(blob)}
        for blob in blobs
    ]
    document = {
        "architecture": "amd64",
        "os": "linux",
        "config": dict(config or {}),
        "rootfs": {
            "type": "layers",
            "diff_ids": diff_ids or ["sha256:" + hashlib.sha256(data).hexdigest() for data in layers],
        },
        **({"history": history} if history else {}),
    }
    config_bytes = json.dumps(document).encode()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": mt.OCI_MANIFEST,
            "config": {
                "mediaType": mt.OCI_CONFIG,
                "digest": str(layout.put_bytes(config_bytes)),
                "size": len(config_bytes),
            },
            "layers": descriptors,
            **({"annotations": annotations} if annotations else {}),
        }
    ).encode()
    return layout.add_manifest(manifest, mt.OCI_MANIFEST, tag=tag)


def test_a_layer_that_does_not_match_its_diff_id_is_refused_and_the_target_left_alone(
    tmp_path: Path,
) -> None:
    """Issue 14, items 11 and 12: a config whose diff_id for a layer is zeros unpacked with
    exit 0; now the uncompressed stream is hashed while it is unpacked (as containerd does),
    the pull fails with an integrity error naming the layer, and ``--rootfs`` is left as it
    was, so the same command works again once the image is right."""
    layout = OCILayout(tmp_path / "layout", create=True)
    good = layer_tar(file_member("etc/motd", b"hello"))
    image(
        layout,
        [good, layer_tar(file_member("x"))],
        diff_ids=[
            "sha256:" + hashlib.sha256(good).hexdigest(),
            "sha256:" + "0" * 64,
        ],
    )
    rootfs = tmp_path / "rootfs"
    code, _, err = cli("pull", f"oci:{layout.root}:1", "--rootfs", str(rootfs))
    assert code == 4, err
    assert "layer 2 (sha256:" in err and "diff_id sha256:" + "0" * 64 in err
    assert f"{rootfs} was left as it was" in err
    assert not rootfs.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".rootfs")]
    rootfs.mkdir(mode=0o750)  # an empty directory given as the target stays empty, mode kept
    code, _, err = cli("pull", f"oci:{layout.root}:1", "--rootfs", str(rootfs))
    assert code == 4 and os.listdir(rootfs) == []
    image(layout, [good], tag="1")
    ok("pull", f"oci:{layout.root}:1", "--rootfs", str(rootfs))
    assert (rootfs / "etc/motd").read_bytes() == b"hello"
    assert (rootfs.stat().st_mode & 0o777) == 0o750


def test_an_unsafe_layer_leaves_no_half_unpacked_tree(tmp_path: Path) -> None:
    """Issue 14, item 12: an escape refused in the second layer left the first one unpacked in
    ``--rootfs``, and the rerun then failed with "not empty"."""
    layout = OCILayout(tmp_path / "layout", create=True)
    image(layout, [layer_tar(file_member("bin/sh")), layer_tar(file_member("../escape"))])
    rootfs = tmp_path / "rootfs"
    code, _, err = cli("pull", f"oci:{layout.root}:1", "--rootfs", str(rootfs))
    assert code == 4 and "climbs above the root" in err and "was left as it was" in err
    assert not rootfs.exists() and not (tmp_path / "escape").exists()
    image(layout, [layer_tar(file_member("bin/sh"))], tag="1")
    ok("pull", f"oci:{layout.root}:1", "--rootfs", str(rootfs))  # not "not empty"
    assert (rootfs / "bin/sh").exists()


def test_unpack_errors_name_layers_by_digest_and_too_long_names_as_such(tmp_path: Path) -> None:
    """Issue 14, item 20: errors named a layer by its path in the blob cache, and a name
    component over 255 bytes got advice about free space."""
    layout = OCILayout(tmp_path / "layout", create=True)
    long = "n" * 300
    image(layout, [layer_tar(file_member(f"opt/{long}"))])
    manifest = json.loads(layout.read_blob(layout.resolve("1"), 1 << 20))
    digest = manifest["layers"][0]["digest"]
    code, _, err = cli("pull", f"oci:{layout.root}:1", "--rootfs", str(tmp_path / "rootfs"))
    assert code == 4, err
    assert f"layer 1 ({digest})" in err and "/blobs/" not in err
    assert "name component of 300 bytes" in err and "255 bytes" in err
    assert "free space" not in err


def test_skipped_names_are_printed_escaped_whatever_their_bytes(tmp_path: Path) -> None:
    """Issue 14, items 3 and 8: a skipped device node whose name is not UTF-8 crashed the
    report under a UTF-8 locale (UnicodeEncodeError), and escape sequences in names reached
    the terminal raw."""
    device = tarfile.TarInfo(os.fsdecode(b"dev/\xff\x1b[2Jtty"))
    device.type, device.devmajor, device.devminor = tarfile.CHRTYPE, 5, 0
    layout = OCILayout(tmp_path / "layout", create=True)
    image(layout, [layer_tar((device, b""), file_member("etc/motd"))])
    out = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors="strict")  # as sys.stdout is
    err = io.StringIO()
    code = main(
        ["pull", f"oci:{layout.root}:1", "--rootfs", str(tmp_path / "rootfs")], stdout=out, stderr=err
    )
    assert code == 0, err.getvalue()
    out.flush()
    text = out.buffer.getvalue().decode()
    assert "skipped dev/\\xff\\x1b[2Jtty" in text
    assert "\x1b" not in text
    code, json_out, _ = cli("pull", f"oci:{layout.root}:1", "--rootfs", str(tmp_path / "again"), "--json")
    assert json.loads(json_out)["skipped"] == [os.fsdecode(b"dev/\xff\x1b[2Jtty")]  # exact in JSON


def test_a_nested_index_is_followed_to_the_platform(tmp_path: Path) -> None:
    """Issue 14, item 14: an index whose linux/amd64 entry is itself an index said "no image for
    platform linux/amd64 in the index; it offers: linux/amd64"."""
    layout = OCILayout(tmp_path / "layout", create=True)
    entry = image(layout, [layer_tar(file_member("etc/motd", b"nested"))], tag=None)
    child = Index(mt.OCI_INDEX, (Descriptor(mt.OCI_MANIFEST, entry.digest, entry.size, platform=AMD64),))
    child_bytes = child.to_bytes()
    top = Index(
        mt.OCI_INDEX, (Descriptor(mt.OCI_INDEX, Digest.of(child_bytes), len(child_bytes), platform=AMD64),)
    )
    layout.put_bytes(child_bytes)
    layout.add_manifest(top.to_bytes(), mt.OCI_INDEX, tag="nested")
    rootfs = tmp_path / "rootfs"
    ok("pull", f"oci:{layout.root}:nested", "--rootfs", str(rootfs), "--platform", "linux/amd64")
    assert (rootfs / "etc/motd").read_bytes() == b"nested"
    shown = json.loads(ok("inspect", f"oci:{layout.root}:nested", "--platform", "linux/amd64", "--json"))
    assert shown["digest"] == str(entry.digest)
    # A nested index without the platform says which index that is.
    arm = Index(
        mt.OCI_INDEX,
        (
            Descriptor(
                mt.OCI_INDEX, Digest.of(child_bytes), len(child_bytes), platform=Platform("linux", "arm64")
            ),
        ),
    )
    child_arm = Index(
        mt.OCI_INDEX,
        (Descriptor(mt.OCI_MANIFEST, entry.digest, entry.size, platform=Platform("linux", "s390x")),),
    )
    layout.put_bytes(child_arm.to_bytes())
    wrong = Index(
        mt.OCI_INDEX,
        (
            Descriptor(
                mt.OCI_INDEX, Digest.of(child_arm.to_bytes()), len(child_arm.to_bytes()), platform=AMD64
            ),
        ),
    )
    layout.add_manifest(wrong.to_bytes(), mt.OCI_INDEX, tag="wrong")
    layout.add_manifest(arm.to_bytes(), mt.OCI_INDEX, tag="arm")
    code, _, err = cli(
        "pull", f"oci:{layout.root}:wrong", "--rootfs", str(tmp_path / "w"), "--platform", "linux/amd64"
    )
    assert code != 0
    assert f"lists {Digest.of(child_arm.to_bytes())} for linux/amd64, but that is an index too" in err
    assert "offers: linux/s390x" in err
