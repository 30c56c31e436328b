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

from ._version import __version__
from .errors import (
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
    from .budget import LayerPlan, plan_layers
    from .cache import BlobCache
    from .ci import pin_base, render_pipeline
    from .closure import ClosureError, ClosureReport, Finding, check_closure
    from .daemon import load_into_daemon
    from .digests import Digest
    from .envmods import EnvModification, apply_env, infer_env
    from .images import BaseImage, Image, Layer, RawManifest, resolve_base
    from .layout import OCILayout
    from .locations import (
        ArchiveLocation,
        DaemonLocation,
        LayoutLocation,
        Location,
        RegistryLocation,
        parse_location,
    )
    from .login import login, logout
    from .makefile import render_makefile
    from .merge import MergeResult, index_document, merge_images
    from .model import Descriptor, ImageConfig, Index, Manifest, Platform
    from .packages import Package, load_package, load_packages
    from .pipeline import (
        BuildOptions,
        BuildResult,
        BuiltPackage,
        ImportResult,
        InspectResult,
        MultiBuildResult,
        StackLayer,
        build,
        build_each,
        build_each_platforms,
        build_platforms,
        import_rootfs,
        inspect,
    )
    from .platformmerge import merge_builds
    from .progress import ProgressEvent
    from .pull import PullResult, pull
    from .references import Reference
    from .referrers import Attached, attach, list_attachments
    from .registry.client import RegistryClient, RegistryPool
    from .registry.credentials import Credentials, CredentialStore
    from .registry.transport import RegistryOptions
    from .registryops import (
        Deleted,
        Tagged,
        delete_image,
        image_digest,
        list_tags,
        read_config,
        read_manifest,
        tag_image,
    )
    from .repoindex import (
        IndexEntry,
        IndexUpdate,
        RepositoryIndex,
        list_index,
        read_index,
        read_spack_index,
        update_index,
    )
    from .sbom import render_sbom
    from .server import RegistryServer
    from .signing import Signed, SigningKey, generate_key, load_signing_key, sign_image, sign_reference
    from .spackenv import load_environment
    from .transfer import CopyResult, copy_image
    from .unpack import UnpackPolicy, UnpackStats, unpack_layer, unpack_layers

# Every other name is imported on first use (PEP 562), so that `import imagesmith` -- and the
# CLI's `--version`, `--help` and `completion` -- do not load the whole pipeline (requests,
# cryptography, jinja2...): 0.05 s instead of 1 s.
_LAZY: dict[str, str] = {
    "ArchiveLocation": ".locations",
    "Attached": ".referrers",
    "BaseImage": ".images",
    "BlobCache": ".cache",
    "BuildOptions": ".pipeline",
    "BuildResult": ".pipeline",
    "BuiltPackage": ".pipeline",
    "ClosureError": ".closure",
    "ClosureReport": ".closure",
    "CopyResult": ".transfer",
    "CredentialStore": ".registry.credentials",
    "Credentials": ".registry.credentials",
    "DaemonLocation": ".locations",
    "Deleted": ".registryops",
    "Descriptor": ".model",
    "Digest": ".digests",
    "EnvModification": ".envmods",
    "Finding": ".closure",
    "Image": ".images",
    "ImageConfig": ".model",
    "ImportResult": ".pipeline",
    "Index": ".model",
    "IndexEntry": ".repoindex",
    "IndexUpdate": ".repoindex",
    "InspectResult": ".pipeline",
    "Layer": ".images",
    "LayerPlan": ".budget",
    "LayoutLocation": ".locations",
    "Location": ".locations",
    "Manifest": ".model",
    "MergeResult": ".merge",
    "MultiBuildResult": ".pipeline",
    "OCILayout": ".layout",
    "Package": ".packages",
    "Platform": ".model",
    "ProgressEvent": ".progress",
    "PullResult": ".pull",
    "RawManifest": ".images",
    "Reference": ".references",
    "RegistryClient": ".registry.client",
    "RegistryLocation": ".locations",
    "RegistryOptions": ".registry.transport",
    "RegistryPool": ".registry.client",
    "RegistryServer": ".server",
    "RepositoryIndex": ".repoindex",
    "Signed": ".signing",
    "SigningKey": ".signing",
    "StackLayer": ".pipeline",
    "Tagged": ".registryops",
    "UnpackPolicy": ".unpack",
    "UnpackStats": ".unpack",
    "apply_env": ".envmods",
    "attach": ".referrers",
    "build": ".pipeline",
    "build_each": ".pipeline",
    "build_each_platforms": ".pipeline",
    "build_platforms": ".pipeline",
    "check_closure": ".closure",
    "copy_image": ".transfer",
    "delete_image": ".registryops",
    "generate_key": ".signing",
    "image_digest": ".registryops",
    "import_rootfs": ".pipeline",
    "index_document": ".merge",
    "infer_env": ".envmods",
    "inspect": ".pipeline",
    "list_attachments": ".referrers",
    "list_index": ".repoindex",
    "list_tags": ".registryops",
    "load_environment": ".spackenv",
    "load_into_daemon": ".daemon",
    "load_package": ".packages",
    "load_packages": ".packages",
    "load_signing_key": ".signing",
    "login": ".login",
    "logout": ".login",
    "merge_builds": ".platformmerge",
    "merge_images": ".merge",
    "parse_location": ".locations",
    "pin_base": ".ci",
    "plan_layers": ".budget",
    "pull": ".pull",
    "read_config": ".registryops",
    "read_index": ".repoindex",
    "read_manifest": ".registryops",
    "read_spack_index": ".repoindex",
    "render_makefile": ".makefile",
    "render_pipeline": ".ci",
    "render_sbom": ".sbom",
    "resolve_base": ".images",
    "sign_image": ".signing",
    "sign_reference": ".signing",
    "tag_image": ".registryops",
    "unpack_layer": ".unpack",
    "unpack_layers": ".unpack",
    "update_index": ".repoindex",
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
