"""imagesmith: assemble runnable container images from install prefixes and tarballs.

The library is the product; the CLI is a thin layer over it. Typical use::

    import imagesmith
    pkgs = imagesmith.load_packages(["python.json"])          # + dependencies, in order
    result = imagesmith.build("ubuntu:23.04", pkgs, repo="ghcr.io/acme/stack")
    print(result.reference, result.digest)

Everything raised on purpose derives from :class:`ImagesmithError`.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

from imagesmith._version import __version__
from imagesmith.errors import (
    AuthenticationError,
    CacheError,
    DaemonError,
    DigestFormatError,
    ImagesmithError,
    IntegrityError,
    LayerError,
    LayoutError,
    ManifestError,
    NotFoundError,
    PackageError,
    PlatformError,
    RateLimitError,
    ReferenceFormatError,
    RegistryError,
    RegistryUnreachableError,
    TemplateError,
    UnpackError,
    UsageError,
)

if TYPE_CHECKING:
    from imagesmith.artifacts.referrers import Attached, attach, list_attachments
    from imagesmith.artifacts.sbom import render_sbom
    from imagesmith.artifacts.signing import (
        Signed,
        SigningKey,
        generate_key,
        load_signing_key,
        sign_image,
        sign_reference,
    )
    from imagesmith.generate.ci import pin_base, render_pipeline
    from imagesmith.generate.makefile import render_makefile
    from imagesmith.inputs.envmods import EnvModification, apply_env, infer_env
    from imagesmith.inputs.load import load_package, load_packages
    from imagesmith.inputs.packages import Package
    from imagesmith.inputs.spackenv import load_environment
    from imagesmith.oci.digests import Digest
    from imagesmith.oci.image import BaseImage, Image, Layer, RawManifest
    from imagesmith.oci.index import index_document
    from imagesmith.oci.model import Descriptor, ImageConfig, Index, Manifest, Platform
    from imagesmith.oci.references import Reference
    from imagesmith.ops.inspect import InspectResult, inspect
    from imagesmith.ops.merge import MergeResult, merge_images
    from imagesmith.ops.platformmerge import merge_builds
    from imagesmith.ops.pull import PullResult, pull
    from imagesmith.ops.repoindex import (
        IndexEntry,
        IndexUpdate,
        RepositoryIndex,
        list_index,
        read_index,
        read_spack_index,
        update_index,
    )
    from imagesmith.ops.verbs import (
        Deleted,
        Tagged,
        delete_image,
        image_digest,
        list_tags,
        read_config,
        read_manifest,
        tag_image,
    )
    from imagesmith.pipeline.budget import LayerPlan, plan_layers
    from imagesmith.pipeline.closure import ClosureError, ClosureReport, Finding, check_closure
    from imagesmith.pipeline.results import (
        BuildOptions,
        BuildResult,
        BuiltPackage,
        ImportResult,
        MultiBuildResult,
        StackLayer,
    )
    from imagesmith.pipeline.run import (
        build,
        build_each,
        build_each_platforms,
        build_platforms,
        import_rootfs,
    )
    from imagesmith.progress import ProgressEvent
    from imagesmith.registry.client import RegistryClient, RegistryPool
    from imagesmith.registry.credentials import Credentials, CredentialStore
    from imagesmith.registry.login import login, logout
    from imagesmith.registry.server import RegistryServer
    from imagesmith.registry.transport import RegistryOptions
    from imagesmith.session import Session
    from imagesmith.store.cache import BlobCache
    from imagesmith.store.layout import OCILayout
    from imagesmith.tar.unpack import UnpackPolicy, UnpackStats, unpack_layer, unpack_layers
    from imagesmith.transports.archive import ArchiveLocation
    from imagesmith.transports.copy import CopyResult, copy_image
    from imagesmith.transports.daemon import DaemonLocation, load_into_daemon
    from imagesmith.transports.layout import LayoutLocation
    from imagesmith.transports.locations import Location, parse_location, resolve_base
    from imagesmith.transports.registry import RegistryLocation

# Every other name is imported on first use (PEP 562), so that `import imagesmith` -- and the
# CLI's `--version`, `--help` and `completion` -- do not load the whole pipeline (requests,
# cryptography, jinja2...): 0.05 s instead of 1 s.
_LAZY: dict[str, str] = {
    "ArchiveLocation": ".transports.archive",
    "Attached": ".artifacts.referrers",
    "BaseImage": ".oci.image",
    "BlobCache": ".store.cache",
    "BuildOptions": ".pipeline.results",
    "BuildResult": ".pipeline.results",
    "BuiltPackage": ".pipeline.results",
    "ClosureError": ".pipeline.closure",
    "ClosureReport": ".pipeline.closure",
    "CopyResult": ".transports.copy",
    "CredentialStore": ".registry.credentials",
    "Credentials": ".registry.credentials",
    "DaemonLocation": ".transports.daemon",
    "Deleted": ".ops.verbs",
    "Descriptor": ".oci.model",
    "Digest": ".oci.digests",
    "EnvModification": ".inputs.envmods",
    "Finding": ".pipeline.closure",
    "Image": ".oci.image",
    "ImageConfig": ".oci.model",
    "ImportResult": ".pipeline.results",
    "Index": ".oci.model",
    "IndexEntry": ".ops.repoindex",
    "IndexUpdate": ".ops.repoindex",
    "InspectResult": ".ops.inspect",
    "Layer": ".oci.image",
    "LayerPlan": ".pipeline.budget",
    "LayoutLocation": ".transports.layout",
    "Location": ".transports.locations",
    "Manifest": ".oci.model",
    "MergeResult": ".ops.merge",
    "MultiBuildResult": ".pipeline.results",
    "OCILayout": ".store.layout",
    "Package": ".inputs.packages",
    "Platform": ".oci.model",
    "ProgressEvent": ".progress",
    "PullResult": ".ops.pull",
    "RawManifest": ".oci.image",
    "Reference": ".oci.references",
    "RegistryClient": ".registry.client",
    "RegistryLocation": ".transports.registry",
    "RegistryOptions": ".registry.transport",
    "RegistryPool": ".registry.client",
    "RegistryServer": ".registry.server",
    "RepositoryIndex": ".ops.repoindex",
    "Session": ".session",
    "Signed": ".artifacts.signing",
    "SigningKey": ".artifacts.signing",
    "StackLayer": ".pipeline.results",
    "Tagged": ".ops.verbs",
    "UnpackPolicy": ".tar.unpack",
    "UnpackStats": ".tar.unpack",
    "apply_env": ".inputs.envmods",
    "attach": ".artifacts.referrers",
    "build": ".pipeline.run",
    "build_each": ".pipeline.run",
    "build_each_platforms": ".pipeline.run",
    "build_platforms": ".pipeline.run",
    "check_closure": ".pipeline.closure",
    "copy_image": ".transports.copy",
    "delete_image": ".ops.verbs",
    "generate_key": ".artifacts.signing",
    "image_digest": ".ops.verbs",
    "import_rootfs": ".pipeline.run",
    "index_document": ".oci.index",
    "infer_env": ".inputs.envmods",
    "inspect": ".ops.inspect",
    "list_attachments": ".artifacts.referrers",
    "list_index": ".ops.repoindex",
    "list_tags": ".ops.verbs",
    "load_environment": ".inputs.spackenv",
    "load_into_daemon": ".transports.daemon",
    "load_package": ".inputs.load",
    "load_packages": ".inputs.load",
    "load_signing_key": ".artifacts.signing",
    "login": ".registry.login",
    "logout": ".registry.login",
    "merge_builds": ".ops.platformmerge",
    "merge_images": ".ops.merge",
    "parse_location": ".transports.locations",
    "pin_base": ".generate.ci",
    "plan_layers": ".pipeline.budget",
    "pull": ".ops.pull",
    "read_config": ".ops.verbs",
    "read_index": ".ops.repoindex",
    "read_manifest": ".ops.verbs",
    "read_spack_index": ".ops.repoindex",
    "render_makefile": ".generate.makefile",
    "render_pipeline": ".generate.ci",
    "render_sbom": ".artifacts.sbom",
    "resolve_base": ".transports.locations",
    "sign_image": ".artifacts.signing",
    "sign_reference": ".artifacts.signing",
    "tag_image": ".ops.verbs",
    "unpack_layer": ".tar.unpack",
    "unpack_layers": ".tar.unpack",
    "update_index": ".ops.repoindex",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


class _Package(types.ModuleType):
    """This package, where a public function keeps its name when a submodule of the same name
    is imported (``pull``, ``login``): the import system binds every submodule it loads as an
    attribute of its package, which -- names being looked up lazily -- would hide the function.
    Eager imports had the same outcome by rebinding the name after the submodule."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _LAZY and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package

__all__ = [
    "ArchiveLocation",
    "Attached",
    "AuthenticationError",
    "BaseImage",
    "BlobCache",
    "BuildOptions",
    "BuildResult",
    "BuiltPackage",
    "CacheError",
    "ClosureError",
    "ClosureReport",
    "CopyResult",
    "CredentialStore",
    "Credentials",
    "DaemonError",
    "DaemonLocation",
    "Deleted",
    "Descriptor",
    "Digest",
    "DigestFormatError",
    "EnvModification",
    "Finding",
    "Image",
    "ImageConfig",
    "ImagesmithError",
    "ImportResult",
    "Index",
    "IndexEntry",
    "IndexUpdate",
    "InspectResult",
    "IntegrityError",
    "Layer",
    "LayerError",
    "LayerPlan",
    "LayoutError",
    "LayoutLocation",
    "Location",
    "Manifest",
    "ManifestError",
    "MergeResult",
    "MultiBuildResult",
    "NotFoundError",
    "OCILayout",
    "Package",
    "PackageError",
    "Platform",
    "PlatformError",
    "ProgressEvent",
    "PullResult",
    "RateLimitError",
    "RawManifest",
    "Reference",
    "ReferenceFormatError",
    "RegistryClient",
    "RegistryError",
    "RegistryLocation",
    "RegistryOptions",
    "RegistryPool",
    "RegistryServer",
    "RegistryUnreachableError",
    "RepositoryIndex",
    "Session",
    "Signed",
    "SigningKey",
    "StackLayer",
    "Tagged",
    "TemplateError",
    "UnpackError",
    "UnpackPolicy",
    "UnpackStats",
    "UsageError",
    "__version__",
    "apply_env",
    "attach",
    "build",
    "build_each",
    "build_each_platforms",
    "build_platforms",
    "check_closure",
    "copy_image",
    "delete_image",
    "generate_key",
    "image_digest",
    "import_rootfs",
    "index_document",
    "infer_env",
    "inspect",
    "list_attachments",
    "list_index",
    "list_tags",
    "load_environment",
    "load_into_daemon",
    "load_package",
    "load_packages",
    "load_signing_key",
    "login",
    "logout",
    "merge_builds",
    "merge_images",
    "parse_location",
    "pin_base",
    "plan_layers",
    "pull",
    "read_config",
    "read_index",
    "read_manifest",
    "read_spack_index",
    "render_makefile",
    "render_pipeline",
    "render_sbom",
    "resolve_base",
    "sign_image",
    "sign_reference",
    "tag_image",
    "unpack_layer",
    "unpack_layers",
    "update_index",
]
