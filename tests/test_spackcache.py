"""Spack build caches as package sources: layouts 2 and 3 on disk, Spack OCI caches.

The caches here are written the way Spack writes them (tests/test_spack_kit.py reads the ones
real Spack 1.2 and 0.23 push); each package's tarball must become its layer byte for byte.
"""

from __future__ import annotations

import gzip
import io
import json
import tarfile
from pathlib import Path
from typing import Any

import pytest
from cli_support import build_argv, cli, ok

from imagesmith.errors import IntegrityError, PackageError
from imagesmith.inputs.load import load_package, load_packages
from imagesmith.inputs.spack import SpackRegistryLayer, SpackTarball
from imagesmith.oci.digests import Digest

STORE = "opt/spack/linux-x86_64"
ARCH = {"platform": "linux", "platform_os": "debian12", "target": "x86_64"}


def dag_hash(name: str) -> str:
    import base64
    import hashlib

    return base64.b32encode(hashlib.sha256(name.encode()).digest()).decode().lower()[:32]


def spec_of(name: str, *links: str, fmt: int = 5) -> dict[str, Any]:
    """A spec: ``name`` linking ``links`` (each a leaf), every node on this machine's target."""
    nodes = [
        {
            "name": name,
            "version": "1.0",
            "hash": dag_hash(name),
            "arch": ARCH,
            "dependencies": [
                {"name": d, "hash": dag_hash(d), "parameters": {"deptypes": ["link"], "virtuals": []}}
                for d in links
            ],
        }
    ]
    nodes += [{"name": d, "version": "1.0", "hash": dag_hash(d), "arch": ARCH} for d in links]
    if fmt < 5:
        for n in nodes:
            n["compiler"] = {"name": "gcc", "version": "12.2.0"}
    return {"spec": {"_meta": {"version": fmt}, "nodes": nodes}}


def spack_tarball(name: str, spec: dict[str, Any]) -> bytes:
    """A build-cache tarball as Spack writes it: parents, the prefix, its files, the record last."""
    prefix = f"{STORE}/{name}-1.0-{dag_hash(name)}"
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        parts = prefix.split("/")
        for i in range(len(parts)):
            tar.addfile(_dir("/".join(parts[: i + 1])))
        for directory in (".spack", "bin"):
            tar.addfile(_dir(f"{prefix}/{directory}"))
        for rel, data in (
            (".spack/spec.json", json.dumps(spec).encode()),
            (f"bin/{name}", f"#!/bin/sh\necho {name}\n".encode()),
            (".spack/binary_distribution", b"{relocate_textfiles: []}"),
        ):
            info = tarfile.TarInfo(f"{prefix}/{rel}")
            info.size, info.mode = len(data), 0o755 if rel.startswith("bin/") else 0o644
            tar.addfile(info, io.BytesIO(data))
    return gzip.compress(raw.getvalue(), mtime=0)


def _dir(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode = tarfile.DIRTYPE, 0o755
    return info


def _blob(root: Path, data: bytes) -> str:
    checksum = Digest.of(data).hex
    path = root / "blobs" / "sha256" / checksum[:2] / checksum
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return checksum


def clearsigned(text: str) -> str:
    """``text`` as ``gpg --clearsign`` wraps it (the signature itself is not checked here)."""
    return f"-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA512\n\n{text}\n-----BEGIN PGP SIGNATURE-----\nx\n"


def layout3(root: Path, *specs: tuple[str, dict[str, Any]], sign: bool = False) -> Path:
    """A layout-3 build cache (Spack 1.x) holding each (name, spec)."""
    (root / "v3").mkdir(parents=True, exist_ok=True)
    (root / "v3" / "layout.json").write_text('{"signing": "gpg"}')
    for name, spec in specs:
        tarball = spack_tarball(name, spec)
        spec_blob = gzip.compress(json.dumps({**spec, "buildcache_layout_version": 2}).encode(), mtime=0)
        records = [
            {
                "contentLength": len(tarball),
                "mediaType": "application/vnd.spack.install.v2.tar+gzip",
                "compression": "gzip",
                "checksumAlgorithm": "sha256",
                "checksum": _blob(root, tarball),
            },
            {
                "contentLength": len(spec_blob),
                "mediaType": "application/vnd.spack.spec.v5+json",
                "compression": "gzip",
                "checksumAlgorithm": "sha256",
                "checksum": _blob(root, spec_blob),
            },
        ]
        text = json.dumps({"version": 3, "data": records}, indent=0)
        if sign:
            text = clearsigned(text)
        folder = root / "v3" / "manifests" / "spec" / name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{name}-1.0-{dag_hash(name)}.spec.manifest.json").write_text(text)
    return root


def layout2(root: Path, *specs: tuple[str, dict[str, Any]], signed: bool = False) -> Path:
    """A layout-2 build cache (Spack 0.22 and 0.23) holding each (name, spec)."""
    for name, spec in specs:
        tarball = spack_tarball(name, spec)
        stem = f"linux-debian12-x86_64-gcc-12.2.0-{name}-1.0-{dag_hash(name)}"
        folder = root / "build_cache" / "linux-debian12-x86_64" / "gcc-12.2.0" / f"{name}-1.0"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{stem}.spack").write_bytes(tarball)
        checksum = {"hash_algorithm": "sha256", "hash": Digest.of(tarball).hex}
        doc = {**spec, "buildcache_layout_version": 2, "binary_cache_checksum": checksum}
        text = json.dumps(doc)
        suffix = ".spec.json"
        if signed:
            text = clearsigned(text)
            suffix = ".spec.json.sig"
        (root / "build_cache" / f"{stem}{suffix}").write_text(text)
    return root


STACK = (("leaf", spec_of("leaf")), ("mid", spec_of("mid", "leaf")))


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMAGESMITH_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)


def test_layout_3_whole_cache_selectors_manifests_and_blobs(tmp_path: Path) -> None:
    root = layout3(tmp_path / "cache3", *STACK)
    both = load_packages([root])
    assert [p.name for p in both] == ["leaf", "mid"]
    mid = both[1]
    assert isinstance(mid.spack_content, SpackTarball) and mid.spack_content.checksum is not None
    assert mid.content is not None and mid.content.parent.parent.name == "sha256"
    assert mid.prefix == f"/{STORE}/mid-1.0-{dag_hash('mid')}"
    assert mid.depends == (both[0].key,) and mid.spack_cache == str(root)
    # A selector names one package; its runtime dependencies come from the same cache.
    for selector in ("mid", "mid@1.0", f"/{dag_hash('mid')[:7]}", f"mid/{dag_hash('mid')[:5]}"):
        assert [p.name for p in load_packages([f"{root}:{selector}"])] == ["leaf", "mid"]
    manifest = next((root / "v3" / "manifests" / "spec" / "mid").glob("*.spec.manifest.json"))
    assert [p.name for p in load_packages([manifest])] == ["leaf", "mid"]
    assert load_package(manifest).source == manifest.absolute()
    blob = mid.content
    assert [p.name for p in load_packages([blob])] == ["leaf", "mid"]  # the blob's manifest is found
    # A symlink keeps the name it is given: x.tar.gz is a tarball, read through the link.
    (tmp_path / "mid.tar.gz").symlink_to(blob)
    alone = load_package(tmp_path / "mid.tar.gz")
    assert (alone.name, alone.source, alone.content) == ("mid", tmp_path / "mid.tar.gz", blob)
    with pytest.raises(PackageError, match=r"needs leaf@1\.0/"):
        load_packages([tmp_path / "mid.tar.gz"])  # no cache around it: its dependency is not there
    with pytest.raises(PackageError, match="holds 2 Spack packages"):
        load_package(root)
    with pytest.raises(PackageError, match="no package matching 'nothing'"):
        load_packages([f"{root}:nothing"])


def test_layout_3_signed_manifests_and_layout_2_caches(tmp_path: Path) -> None:
    signed = layout3(tmp_path / "signed", *STACK, sign=True)
    assert [p.name for p in load_packages([signed])] == ["leaf", "mid"]
    old = layout2(
        tmp_path / "cache2", ("leaf", spec_of("leaf", fmt=4)), ("mid", spec_of("mid", "leaf", fmt=4))
    )
    packages = load_packages([f"{old}:mid"])
    assert [p.name for p in packages] == ["leaf", "mid"]
    tarball = next((old / "build_cache").glob("*/*/mid-1.0/*.spack"))
    assert packages[1].content == tarball.resolve()
    assert packages[1].spack_content == SpackTarball(Digest.of(tarball.read_bytes()))
    assert [p.name for p in load_packages([tarball])] == ["leaf", "mid"]  # the .spack file in its cache
    sig = layout2(tmp_path / "sig", ("leaf", spec_of("leaf", fmt=4)), signed=True)
    assert [p.name for p in load_packages([sig])] == ["leaf"]


def test_bad_build_caches_get_one_clear_line(tmp_path: Path) -> None:
    root = layout3(tmp_path / "c", *STACK)
    manifest = next((root / "v3" / "manifests" / "spec" / "mid").glob("*.json"))
    records = json.loads(manifest.read_text())["data"]
    tarball_blob = root / "blobs" / "sha256" / records[0]["checksum"][:2] / records[0]["checksum"]
    spec_blob = root / "blobs" / "sha256" / records[1]["checksum"][:2] / records[1]["checksum"]

    def fails(argument: object, match: str) -> None:
        with pytest.raises(PackageError, match=match) as info:
            load_packages([argument])  # type: ignore[list-item]
        assert "\n" not in str(info.value)

    data = spec_blob.read_bytes()
    spec_blob.write_bytes(data + b"x")
    fails(manifest, "does not match its checksum")
    spec_blob.unlink()
    fails(manifest, r"names its spec blob sha256:.*which is missing")
    spec_blob.write_bytes(data)
    saved = tarball_blob.read_bytes()
    tarball_blob.unlink()
    fails(root, r"names its tarball blob sha256:.*which is missing")
    tarball_blob.write_bytes(saved)
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "version": 4}))
    fails(manifest, "has layout version 4; imagesmith reads layouts 2 and 3")
    future = tmp_path / "future"
    (future / "v4" / "manifests" / "spec").mkdir(parents=True)
    fails(future, r"layout version 4 \(v4/\); imagesmith reads layouts 2 and 3")
    notar = tmp_path / "notar.tar.gz"
    notar.write_bytes(gzip.compress(b"\0" * 1024))
    fails(notar, r"holds no <prefix>/\.spack/spec\.json, so it is not a Spack build-cache tarball")
    v2 = layout2(tmp_path / "v2", ("leaf", spec_of("leaf", fmt=4)))
    spec_file = next((v2 / "build_cache").glob("*.spec.json"))
    doc = json.loads(spec_file.read_text())
    spec_file.write_text(json.dumps({**doc, "buildcache_layout_version": 0}))
    fails(spec_file, "old-style .spack archive")
    next((v2 / "build_cache").glob("*/*/*/*.spack")).unlink()
    spec_file.write_text(json.dumps(doc))
    fails(spec_file, r"names a tarball .*\.spack that is not in")


def test_a_cache_tarball_becomes_its_layer_and_is_checked_then(tmp_path: Path) -> None:
    root = layout3(tmp_path / "c", *STACK)
    out = tmp_path / "out"
    ok("import", str(_rootfs(tmp_path)), "--output", f"oci:{tmp_path / 'base'}:1")
    results = json.loads(
        ok(
            "build",
            "--each",
            "--base-image",
            f"oci:{tmp_path / 'base'}:1",
            "--output",
            f"oci:{out}",
            "--json",
            str(root),
        )
    )
    assert [r["tag"] for r in results] == [f"{n}-1.0-{dag_hash(n)}.spack" for n in ("leaf", "mid")]
    for result, (name, _spec) in zip(results, STACK, strict=True):
        manifest = next((root / "v3" / "manifests" / "spec" / name).glob("*.json"))
        checksum = json.loads(manifest.read_text())["data"][0]["checksum"]
        assert result["spack"] and result["layers"][-1]["digest"] == f"sha256:{checksum}"
        assert (out / "blobs" / "sha256" / checksum).read_bytes() == (
            root / "blobs" / "sha256" / checksum[:2] / checksum
        ).read_bytes()  # byte for byte
    # A tarball that does not match its manifest's checksum fails the build, nothing written.
    blob = load_packages([f"{root}:leaf"])[0].content
    assert blob is not None
    blob.write_bytes(gzip.compress(gzip.decompress(blob.read_bytes()), compresslevel=1))  # other bytes
    code, _, err = cli(
        "build",
        "--base-image",
        f"oci:{tmp_path / 'base'}:1",
        "--output",
        f"oci:{tmp_path / 'out2'}",
        f"{root}:leaf",
    )
    assert code != 0 and "but its build cache records" in err and err.count("\n") == 1
    assert not (tmp_path / "out2" / "index.json").exists()
    with pytest.raises(IntegrityError):
        from imagesmith.oci.mediatypes import OCI
        from imagesmith.pipeline.layers import adopted_layer
        from imagesmith.store.cache import BlobCache

        package = load_packages([f"{root}:leaf"])[0]
        assert package.content is not None and isinstance(package.spack_content, SpackTarball)
        adopted_layer(
            package.content,
            package.prefix,
            BlobCache(tmp_path / "c2"),
            OCI,
            checksum=package.spack_content.checksum,
        )


def _rootfs(tmp_path: Path) -> Path:
    root = tmp_path / "rootfs"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "motd").write_text("base\n")
    return root


@pytest.mark.integration
def test_a_spack_oci_cache_is_a_source_whose_layers_are_mounted(
    registry: Any, base: str, tmp_path: Path
) -> None:
    from imagesmith.pipeline.run import build
    from imagesmith.progress import ProgressEvent
    from imagesmith.registry.client import RegistryPool
    from imagesmith.registry.transport import RegistryOptions

    host = registry.host
    root = layout3(tmp_path / "c", *STACK)
    pushed = json.loads(
        ok(*build_argv(host, base, "--each", "--repo", f"{host}/spackcache", "--json", str(root)))
    )
    mid_tag = pushed[1]["tag"]
    options = RegistryOptions(insecure=frozenset({host}))
    with RegistryPool(options) as pool:
        packages = load_packages([f"oci://{host}/spackcache:{mid_tag}"], pool=pool)
        assert [p.name for p in packages] == ["leaf", "mid"]
        mid = packages[1]
        assert isinstance(mid.spack_content, SpackRegistryLayer) and mid.content is None
        assert mid.prefix == f"/{STORE}/mid-1.0-{dag_hash('mid')}" and mid.origin.startswith("oci://")
        events: list[ProgressEvent] = []
        result = build(base, packages, repo=f"{host}/elsewhere", pool=pool, progress=events.append)
    kinds = {e.kind for e in events}
    assert "blob-mounted" in kinds and "blob-fetched" not in kinds and "layer-built" not in kinds
    assert result.tag == mid_tag and result.spack
    assert [str(p.layer.digest) for p in result.packages] == [p["layers"][-1]["digest"] for p in pushed]
    env = dict(item.split("=", 1) for item in result.image.config.env)
    assert f"{mid.prefix}/bin" in env["PATH"]  # the layer's directories, read off Spack's config
    # Also by name, by hash and as a whole repository.
    by_name = load_packages([f"oci://{host}/spackcache:mid"], registry=options)
    assert [p.name for p in by_name] == ["leaf", "mid"]
    whole = load_packages([f"oci://{host}/spackcache"], registry=options)
    assert sorted(p.name for p in whole) == ["leaf", "mid"]


@pytest.mark.integration
def test_a_registry_tag_that_is_not_a_spack_image_is_refused(registry: Any, base: str) -> None:
    host = registry.host
    hello = Path(__file__).parent / "fixtures" / "packages" / "hello.toml"
    plain = json.loads(ok(*build_argv(host, base, "--repo", f"{host}/plain", "--json", str(hello))))
    code, _, err = cli(*build_argv(host, base, "--repo", f"{host}/x", f"oci://{host}/plain:{plain['tag']}"))
    assert code == 2 and "is not a Spack image: its config has no Spack spec" in err and err.count("\n") == 1
    code, _, err = cli(*build_argv(host, base, "--repo", f"{host}/x", f"oci://{host}/plain:nothing-here"))
    assert code == 2 and "no package matching 'nothing-here'" in err
