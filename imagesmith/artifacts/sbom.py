"""SBOMs of what a build added to its base: SPDX 2.3 and CycloneDX 1.5, as JSON.

One document per image: the image (named, with its manifest digest), the base it descends
from (pinned by digest), and every package added as a layer, with its name, version, the hash
its tag carries, its Spack DAG hash and spec where it is a Spack package, the layer's digest
(the layer *is* the package: a Spack build-cache tarball is the blob), its install prefix,
its licence where the metadata has one, and the dependency relationships of the stack.

Licences come from the package file's ``license`` field (an SPDX expression), else from the
``license("...")`` directives of the ``package.py`` Spack archives in an install prefix
(``.spack/repos/.../packages/<name>/package.py``), read with :mod:`ast`, never executed;
directives with a ``when=`` condition depend on the version and are left out.

Documents are deterministic: identifiers and the namespace derive from the image digest, and
the creation time is the image's (``SOURCE_DATE_EPOCH``). The tests validate both formats with
their own validators (spdx-tools, cyclonedx-python-lib).
"""

from __future__ import annotations

import ast
import json
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from imagesmith._version import __version__
from imagesmith.errors import UsageError
from imagesmith.inputs.packages import Package

__all__ = [
    "SBOM_FORMATS",
    "SBOM_MEDIA_TYPES",
    "SbomFormat",
    "SbomImage",
    "SbomPackage",
    "package_license",
    "render_sbom",
    "sbom_packages",
]

SbomFormat = Literal["spdx", "cyclonedx"]
SBOM_FORMATS: tuple[SbomFormat, ...] = ("spdx", "cyclonedx")
# The artifactType of the referrer, and the media type of its one layer.
SBOM_MEDIA_TYPES: dict[SbomFormat, str] = {
    "spdx": "application/spdx+json",
    "cyclonedx": "application/vnd.cyclonedx+json",
}
SBOM_FILENAMES: dict[SbomFormat, str] = {"spdx": "sbom.spdx.json", "cyclonedx": "sbom.cdx.json"}
_NAMESPACE = uuid.UUID("7d0f2d39-52b8-4f71-9b3c-4b4a8d0a8a11")  # imagesmith's, for uuid5
_SPDX_ID = re.compile(r"[^A-Za-z0-9.-]")


@dataclass(frozen=True)
class SbomPackage:
    """A package as the SBOM describes it; ``key`` identifies it within the stack and
    ``depends`` names its direct dependencies by their keys."""

    key: str
    name: str
    version: str
    hash: str
    layer_digest: str
    prefix: str
    depends: tuple[str, ...] = ()
    spack_hash: str | None = None
    spec: str | None = None
    license: str | None = None


@dataclass(frozen=True)
class SbomImage:
    """The image the SBOM describes: its name (None when unnamed), manifest digest, platform,
    creation time, the base pinned by digest, and the packages added, dependencies first."""

    name: str | None
    digest: str
    platform: str
    created: str
    base: str
    packages: tuple[SbomPackage, ...]


def _unconditional_licenses(source: str) -> list[str]:
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return []
    found: list[str] = []
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id == "license"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
            and not any(k.arg == "when" for k in node.keywords)
        ):
            value = node.args[0].value.strip()
            if value and value not in found:
                found.append(value)
    return found


def package_license(package: Package) -> str | None:
    """The SPDX licence expression of ``package`` when its metadata states one: the package
    file's ``license`` field, else the unconditional ``license()`` directives of the Spack
    ``package.py`` archived in an install-prefix directory (joined with ``AND``)."""
    declared = package.metadata.get("license")
    if isinstance(declared, str) and declared.strip():
        return declared.strip()
    content = package.content
    if content is None or not content.is_dir():
        return None
    names = {package.name, package.name.replace("-", "_")}
    repos = content / ".spack" / "repos"
    try:
        candidates = sorted(p for p in repos.glob("**/packages/*/package.py") if p.parent.name in names)
    except OSError:
        return None
    for candidate in candidates:
        try:
            found = _unconditional_licenses(candidate.read_text(encoding="utf-8", errors="replace"))
        except OSError:
            continue
        if found:
            return found[0] if len(found) == 1 else " AND ".join(f"({x})" for x in found)
    return None


def _spdx_id(*parts: str) -> str:
    return "SPDXRef-" + "-".join(_SPDX_ID.sub("-", p) for p in parts if p)


def _purl(package: SbomPackage) -> str:
    qualifiers = f"?spack_hash={package.spack_hash}" if package.spack_hash else ""
    name = re.sub(r"[^A-Za-z0-9._-]", "-", package.name)
    return f"pkg:generic/{name}@{package.version}{qualifiers}"


def _identity(image: SbomImage) -> uuid.UUID:
    return uuid.uuid5(_NAMESPACE, f"{image.name}@{image.digest}")


def _spdx(image: SbomImage) -> dict[str, Any]:
    subject = image.name or f"image@{image.digest}"
    image_id = "SPDXRef-Image"
    base_id = "SPDXRef-BaseImage"
    ids = {p.key: _spdx_id("Package", p.name, p.hash) for p in image.packages}
    packages: list[dict[str, Any]] = [
        {
            "SPDXID": image_id,
            "name": subject,
            "versionInfo": image.digest,
            "downloadLocation": "NOASSERTION",
            "filesAnalyzed": False,
            "primaryPackagePurpose": "CONTAINER",
            "checksums": [{"algorithm": "SHA256", "checksumValue": image.digest.partition(":")[2]}],
            "comment": f"platform {image.platform}",
        },
        {
            "SPDXID": base_id,
            "name": image.base.rpartition("@")[0] or image.base,
            "versionInfo": image.base.rpartition("@")[2],
            "downloadLocation": "NOASSERTION",
            "filesAnalyzed": False,
            "primaryPackagePurpose": "CONTAINER",
        },
    ]

    def relation(element: str, kind: str, related: str) -> dict[str, str]:
        return {"spdxElementId": element, "relationshipType": kind, "relatedSpdxElement": related}

    relationships = [
        relation("SPDXRef-DOCUMENT", "DESCRIBES", image_id),
        relation(image_id, "DESCENDANT_OF", base_id),
    ]
    for package in image.packages:
        comment = [
            f"imagesmith hash {package.hash}",
            f"layer {package.layer_digest}",
            f"prefix {package.prefix}",
        ]
        if package.spec:
            comment.append(f"spack spec {package.spec}")
        packages.append(
            {
                "SPDXID": ids[package.key],
                "name": package.name,
                "versionInfo": package.version,
                "downloadLocation": "NOASSERTION",
                "filesAnalyzed": False,
                "primaryPackagePurpose": "LIBRARY",
                "checksums": [
                    {"algorithm": "SHA256", "checksumValue": package.layer_digest.partition(":")[2]}
                ],
                "licenseConcluded": "NOASSERTION",
                "licenseDeclared": package.license or "NOASSERTION",
                "copyrightText": "NOASSERTION",
                "externalRefs": [
                    {
                        "referenceCategory": "PACKAGE-MANAGER",
                        "referenceType": "purl",
                        "referenceLocator": _purl(package),
                    }
                ],
                "comment": "; ".join(comment),
            }
        )
        relationships.append(relation(image_id, "CONTAINS", ids[package.key]))
        own = ids[package.key]
        relationships += [relation(own, "DEPENDS_ON", ids[d]) for d in package.depends if d in ids]
    return {
        "spdxVersion": "SPDX-2.3",
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": f"SBOM of {subject}",
        "documentNamespace": f"https://spdx.org/spdxdocs/imagesmith-{_identity(image)}",
        "creationInfo": {"created": image.created, "creators": [f"Tool: imagesmith-{__version__}"]},
        "packages": packages,
        "relationships": relationships,
    }


def _cyclonedx(image: SbomImage) -> dict[str, Any]:
    subject = image.name or f"image@{image.digest}"
    refs = {p.key: f"pkg:{p.name}-{p.version}-{p.hash}" for p in image.packages}
    components: list[dict[str, Any]] = [
        {
            "type": "container",
            "bom-ref": "base-image",
            "name": image.base.rpartition("@")[0] or image.base,
            "version": image.base.rpartition("@")[2],
        }
    ]
    for package in image.packages:
        properties = [
            {"name": "imagesmith:hash", "value": package.hash},
            {"name": "imagesmith:layer", "value": package.layer_digest},
            {"name": "imagesmith:prefix", "value": package.prefix},
        ]
        if package.spack_hash:
            properties.append({"name": "spack:hash", "value": package.spack_hash})
        if package.spec:
            properties.append({"name": "spack:spec", "value": package.spec})
        component: dict[str, Any] = {
            "type": "library",
            "bom-ref": refs[package.key],
            "name": package.name,
            "version": package.version,
            "hashes": [{"alg": "SHA-256", "content": package.layer_digest.partition(":")[2]}],
            "purl": _purl(package),
            "properties": properties,
        }
        if package.license:
            component["licenses"] = [{"expression": package.license}]
        components.append(component)
    dependencies = [{"ref": "image", "dependsOn": ["base-image", *refs.values()]}]
    dependencies += [{"ref": "base-image"}]
    dependencies += [
        {"ref": refs[p.key], "dependsOn": [refs[d] for d in p.depends if d in refs]} for p in image.packages
    ]
    return {
        "bomFormat": "CycloneDX",
        "specVersion": "1.5",
        "serialNumber": f"urn:uuid:{_identity(image)}",
        "version": 1,
        "metadata": {
            "timestamp": image.created,
            "tools": {"components": [{"type": "application", "name": "imagesmith", "version": __version__}]},
            "component": {
                "type": "container",
                "bom-ref": "image",
                "name": subject,
                "version": image.digest,
                "hashes": [{"alg": "SHA-256", "content": image.digest.partition(":")[2]}],
                "properties": [{"name": "imagesmith:platform", "value": image.platform}],
            },
        },
        "components": components,
        "dependencies": dependencies,
    }


def render_sbom(image: SbomImage, fmt: SbomFormat) -> bytes:
    """The SBOM of ``image`` in format ``fmt`` as UTF-8 JSON bytes (sorted keys, indented)."""
    if fmt == "spdx":
        document = _spdx(image)
    elif fmt == "cyclonedx":
        document = _cyclonedx(image)
    else:
        raise UsageError(f"unknown SBOM format {fmt!r}: choose {' or '.join(SBOM_FORMATS)}")
    return (json.dumps(document, indent=2, sort_keys=True) + "\n").encode("utf-8")


def sbom_packages(packages: Sequence[tuple[Package, str, str]]) -> tuple[SbomPackage, ...]:
    """:class:`SbomPackage` values for ``(package, hash, layer digest)`` of a stack in order."""
    out = []
    for package, digest_hash, layer_digest in packages:
        spack = package.spack
        spec = f"{spack.name}@{spack.version}/{spack.hash}" if spack is not None else None
        out.append(
            SbomPackage(
                key=package.key,
                name=package.name,
                version=package.version,
                hash=digest_hash,
                layer_digest=layer_digest,
                prefix=package.prefix,
                depends=tuple(package.depends),
                spack_hash=spack.hash if spack is not None else None,
                spec=spec,
                license=package_license(package),
            )
        )
    return tuple(out)
