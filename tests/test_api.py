"""The public API: what `import imagesmith` offers is a decision, so a test pins it."""

import subprocess
import sys

import imagesmith

EXPECTED = [
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


def test_a_function_keeps_its_name_when_its_module_of_the_same_name_is_imported() -> None:
    """``imagesmith.pull`` and ``imagesmith.login`` are functions, also after something imports
    the submodules of the same names (found by the docs' examples: a module is not callable)."""
    code = (
        "import importlib, types, imagesmith\n"
        "importlib.import_module('imagesmith.ops.pull')\n"
        "importlib.import_module('imagesmith.registry.login')\n"
        "import imagesmith.ops.pull\n"
        "assert not isinstance(imagesmith.pull, types.ModuleType), imagesmith.pull\n"
        "assert not isinstance(imagesmith.login, types.ModuleType), imagesmith.login\n"
        "assert imagesmith.pull.__name__ == 'pull' and callable(imagesmith.login)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
