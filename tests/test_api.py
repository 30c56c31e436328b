"""The public API: what `import imagesmith` offers is a decision, so a test pins it."""

import imagesmith

EXPECTED = [
    "ArchiveLocation",
    "AuthenticationError",
    "BaseImage",
    "BlobCache",
    "BuildOptions",
    "BuildResult",
    "BuiltPackage",
    "CacheError",
    "CopyResult",
    "CredentialStore",
    "Credentials",
    "DaemonError",
    "DaemonLocation",
    "Descriptor",
    "Digest",
    "DigestFormatError",
    "EnvModification",
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
    "TemplateError",
    "UnpackError",
    "UnpackPolicy",
    "UnpackStats",
    "UsageError",
    "__version__",
    "apply_env",
    "build",
    "build_each",
    "build_each_platforms",
    "build_platforms",
    "copy_image",
    "import_rootfs",
    "index_document",
    "infer_env",
    "inspect",
    "list_index",
    "load_into_daemon",
    "load_package",
    "load_packages",
    "login",
    "logout",
    "merge_builds",
    "merge_images",
    "parse_location",
    "pin_base",
    "pull",
    "read_index",
    "read_spack_index",
    "render_makefile",
    "render_pipeline",
    "resolve_base",
    "unpack_layer",
    "unpack_layers",
    "update_index",
]


def test_public_names_are_exactly_these() -> None:
    assert sorted(imagesmith.__all__) == sorted(EXPECTED)


def test_every_public_name_exists_and_is_documented() -> None:
    for name in imagesmith.__all__:
        value = getattr(imagesmith, name)
        if callable(value) and not name.endswith("Error"):
            assert (value.__doc__ or "").strip(), f"imagesmith.{name} has no docstring"


def test_errors_share_one_root() -> None:
    for name in imagesmith.__all__:
        value = getattr(imagesmith, name)
        if isinstance(value, type) and issubclass(value, Exception):
            assert issubclass(value, imagesmith.ImagesmithError), name
