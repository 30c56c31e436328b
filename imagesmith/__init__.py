"""imagesmith: assemble runnable container images from install prefixes and tarballs.

The library is the product; the CLI is a thin layer over it. Typical use::

    import imagesmith
    pkgs = imagesmith.load_packages(["python.json"])          # + dependencies, in order
    result = imagesmith.build("ubuntu:23.04", pkgs, repo="ghcr.io/acme/stack")
    print(result.reference, result.digest)

Everything raised on purpose derives from :class:`ImagesmithError`.
"""

from __future__ import annotations

from ._version import __version__
from .cache import BlobCache
from .digests import Digest
from .envmods import EnvModification, apply_env, infer_env
from .errors import (
    AuthenticationError,
    CacheError,
    DigestFormatError,
    ImagesmithError,
    IntegrityError,
    LayerError,
    ManifestError,
    NotFoundError,
    PackageError,
    PlatformError,
    RateLimitError,
    ReferenceFormatError,
    RegistryError,
    RegistryUnreachableError,
    TemplateError,
    UsageError,
)
from .images import BaseImage, Image, Layer, resolve_base
from .model import Descriptor, ImageConfig, Index, Manifest, Platform
from .packages import Package, load_package, load_packages
from .pipeline import (
    BuildOptions,
    BuildResult,
    BuiltPackage,
    ImportResult,
    InspectResult,
    build,
    import_rootfs,
    inspect,
)
from .progress import ProgressEvent
from .references import Reference
from .registry.client import RegistryClient, RegistryPool
from .registry.credentials import Credentials, CredentialStore
from .registry.transport import RegistryOptions

__all__ = [
    "AuthenticationError",
    "BaseImage",
    "BlobCache",
    "BuildOptions",
    "BuildResult",
    "BuiltPackage",
    "CacheError",
    "CredentialStore",
    "Credentials",
    "Descriptor",
    "Digest",
    "DigestFormatError",
    "EnvModification",
    "Image",
    "ImageConfig",
    "ImagesmithError",
    "ImportResult",
    "Index",
    "InspectResult",
    "IntegrityError",
    "Layer",
    "LayerError",
    "Manifest",
    "ManifestError",
    "NotFoundError",
    "Package",
    "PackageError",
    "Platform",
    "PlatformError",
    "ProgressEvent",
    "RateLimitError",
    "Reference",
    "ReferenceFormatError",
    "RegistryClient",
    "RegistryError",
    "RegistryOptions",
    "RegistryPool",
    "RegistryUnreachableError",
    "TemplateError",
    "UsageError",
    "__version__",
    "apply_env",
    "build",
    "import_rootfs",
    "infer_env",
    "inspect",
    "load_package",
    "load_packages",
    "resolve_base",
]
