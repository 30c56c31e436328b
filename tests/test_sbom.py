"""SBOMs: what they say about a stack, validated by each format's own validator (spdx-tools,
cyclonedx-python-lib), attached to the image and found again."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from cli_support import HELLO, ok
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator
from servers import DistributionRegistry
from spdx_tools.spdx.parser.parse_anything import parse_file
from spdx_tools.spdx.validation.document_validator import validate_full_spdx_document

from imagesmith import load_packages
from imagesmith.artifacts.sbom import SbomImage, package_license, render_sbom, sbom_packages
from imagesmith.oci.digests import Digest
from imagesmith.oci.model import Descriptor
from imagesmith.oci.references import Reference
from imagesmith.registry.client import RegistryPool
from imagesmith.registry.transport import RegistryOptions

SPACK_HASH = "abcdefghijklmnopqrstuvwxyz234567"


def _spack_prefix(root: Path) -> Path:
    """An install prefix of a Spack package 'zlib' whose archived package.py declares its licence."""
    prefix = root / f"zlib-1.3-{SPACK_HASH}"
    (prefix / "lib").mkdir(parents=True)
    (prefix / "lib/libz.so.1").write_bytes(b"not really a library")
    spec = {
        "spec": {
            "_meta": {"version": 5},
            "nodes": [
                {
                    "name": "zlib",
                    "version": "1.3",
                    "namespace": "builtin",
                    "arch": {"platform": "linux", "platform_os": "debian12", "target": "x86_64"},
                    "hash": SPACK_HASH,
                    "parameters": {},
                    "package_hash": "x" * 32,
                }
            ],
        }
    }
    (prefix / ".spack").mkdir()
    (prefix / ".spack/spec.json").write_text(json.dumps(spec))
    recipe = prefix / ".spack/repos/spack_repo/builtin/packages/zlib"
    recipe.mkdir(parents=True)
    (recipe / "package.py").write_text(
        "from spack.package import *\n\nclass Zlib(Package):\n"
        '    license("Zlib")\n    license("GPL-2.0-only", when="@:0.1")\n'
        "    def install(self, spec, prefix):\n        raise RuntimeError('never run')\n"
    )
    return prefix


def _stack(root: Path) -> list[Path]:
    prefix = _spack_prefix(root)
    app = root / "app"
    (app / "bin").mkdir(parents=True)
    (app / "bin/app").write_text("#!/bin/sh\necho app\n")
    (root / "app.json").write_text(
        json.dumps(
            {
                "name": "app",
                "version": "2.0",
                "prefix": "/opt/app-2.0",
                "content": "app",
                "depends": [str(prefix)],
                "license": "MIT OR Apache-2.0",
            }
        )
    )
    return [root / "app.json"]


def _validate_spdx(path: Path) -> dict[str, Any]:
    errors = validate_full_spdx_document(parse_file(str(path)))
    assert errors == [], [e.validation_message for e in errors]
    return dict(json.loads(path.read_text()))


def _validate_cyclonedx(text: str) -> dict[str, Any]:
    error = JsonStrictValidator(SchemaVersion.V1_5).validate_str(text)
    assert error is None, str(error)
    return dict(json.loads(text))


def test_licences_come_from_the_package_file_or_spack_package_py(tmp_path: Path) -> None:
    packages = load_packages(_stack(tmp_path))
    by_name = {p.name: p for p in packages}
    assert package_license(by_name["app"]) == "MIT OR Apache-2.0"
    assert package_license(by_name["zlib"]) == "Zlib"  # the when= directive depends on the version


def _image(tmp_path: Path) -> SbomImage:
    packages = load_packages(_stack(tmp_path))
    layers = {p.name: str(Digest.of(p.name.encode())) for p in packages}
    described = sbom_packages([(p, p.hash or "h" * 32, layers[p.name]) for p in packages])
    base = f"registry.example/base@{Digest.of(b'b')}"
    name, digest = "registry.example/team/app:2.0", str(Digest.of(b"m"))
    return SbomImage(name, digest, "linux/amd64", "2024-01-02T03:04:05Z", base, described)


def test_spdx_document_validates_and_says_what_was_added(tmp_path: Path) -> None:
    path = tmp_path / "sbom.spdx.json"
    image = _image(tmp_path)
    path.write_bytes(render_sbom(image, "spdx"))
    doc = _validate_spdx(path)
    packages = {p["name"]: p for p in doc["packages"]}
    zlib = packages["zlib"]
    assert zlib["versionInfo"] == "1.3" and zlib["licenseDeclared"] == "Zlib"
    assert zlib["checksums"] == [{"algorithm": "SHA256", "checksumValue": Digest.of(b"zlib").hex}]
    assert f"spack spec zlib@1.3/{SPACK_HASH}" in zlib["comment"]
    assert f"spack_hash={SPACK_HASH}" in zlib["externalRefs"][0]["referenceLocator"]
    assert packages["app"]["licenseDeclared"] == "MIT OR Apache-2.0"
    relations = {
        (r["spdxElementId"], r["relationshipType"], r["relatedSpdxElement"]) for r in doc["relationships"]
    }
    app_id, zlib_id = packages["app"]["SPDXID"], zlib["SPDXID"]
    assert (app_id, "DEPENDS_ON", zlib_id) in relations
    assert ("SPDXRef-Image", "CONTAINS", zlib_id) in relations
    assert ("SPDXRef-Image", "DESCENDANT_OF", "SPDXRef-BaseImage") in relations
    assert render_sbom(image, "spdx") == path.read_bytes()  # deterministic


def test_cyclonedx_document_validates_and_lists_dependencies(tmp_path: Path) -> None:
    doc = _validate_cyclonedx(render_sbom(_image(tmp_path), "cyclonedx").decode())
    components = {c["name"]: c for c in doc["components"]}
    assert components["zlib"]["licenses"] == [{"expression": "Zlib"}]
    assert {"name": "spack:hash", "value": SPACK_HASH} in components["zlib"]["properties"]
    depends = {d["ref"]: d.get("dependsOn", []) for d in doc["dependencies"]}
    assert depends[components["app"]["bom-ref"]] == [components["zlib"]["bom-ref"]]


@pytest.mark.integration
def test_build_sbom_is_attached_listed_and_valid(
    registry: DistributionRegistry, base: str, tmp_path: Path
) -> None:
    flags = ("--insecure-registry", registry.host)
    target = f"{registry.host}/sbom/hello:1"
    sboms = ("--sbom", "spdx", "--sbom", "cyclonedx", "--sbom-output", str(tmp_path / "sboms"))
    result = json.loads(ok(*flags, "build", "--base-image", base, "--tag", target, *sboms, "--json", HELLO))
    assert [a["via"] for a in result["attached"]] == ["referrers tag", "referrers tag"]
    listed = json.loads(ok(*flags, "inspect", "--referrers", "--json", target))
    assert listed["subject"] == result["digest"]
    types = sorted(a["artifactType"] for a in listed["attached"])
    assert types == ["application/spdx+json", "application/vnd.cyclonedx+json"]
    text = ok(*flags, "inspect", "--referrers", target)
    assert "application/spdx+json" in text and "sbom.spdx.json" in text
    spdx_only = ("--artifact-type", "application/spdx+json")
    only = json.loads(ok(*flags, "inspect", "--referrers", *spdx_only, "--json", target))
    assert [a["artifactType"] for a in only["attached"]] == ["application/spdx+json"]
    # The attached bytes, fetched from the registry, are the files written and they validate.
    ref = Reference.parse(target)
    with RegistryPool(RegistryOptions.from_env(insecure=frozenset({registry.host}))) as pool:
        client = pool.client(ref.registry)
        for attachment in listed["attached"]:
            manifest = json.loads(client.get_manifest(ref.repository, attachment["digest"]).data)
            assert manifest["subject"]["digest"] == result["digest"]
            assert manifest["artifactType"] == attachment["artifactType"]
            layer = Descriptor.from_json(manifest["layers"][0], "layer")
            payload = client.get_blob_bytes(ref.repository, layer, 1 << 20)
            filename = layer.annotations["org.opencontainers.image.title"] if layer.annotations else ""
            assert payload == (tmp_path / "sboms" / filename).read_bytes()
    _validate_spdx(tmp_path / "sboms/sbom.spdx.json")
    doc = _validate_cyclonedx((tmp_path / "sboms/sbom.cdx.json").read_text())
    assert doc["metadata"]["component"]["version"] == result["digest"]
    assert {c["name"] for c in doc["components"]} >= {"hello", "libgreet"}
