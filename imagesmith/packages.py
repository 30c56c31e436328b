"""Packages: content (an install prefix directory or a tarball) plus the metadata around it.

A package file (JSON or TOML) names the package, its version, the absolute prefix it lands at in
the image, its content, its dependencies (other package files) and optionally its hash and its
environment modifications. A Spack install prefix, its ``.spack/spec.json`` or a Spack
build-cache tarball stands in for a package file (see :mod:`imagesmith.spack`).
:func:`load_packages` follows dependencies and returns every package once, dependencies first,
which is the order layers are stacked in. :func:`package_hash` derives a Spack-style
32-character base32 hash when the file gives none. The formats are documented in
``docs/packages.md`` and ``docs/spack.md``.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import posixpath
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from .digests import Digest
from .envmods import EnvModification, env_from_json, env_to_json
from .errors import ManifestError, PackageError, UsageError
from .model import Platform

if TYPE_CHECKING:
    from .registry.client import RegistryPool
    from .registry.transport import RegistryOptions
    from .spack import SpackContent, SpackSpec
    from .spackcache import SpackSources

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib  # type: ignore[import-not-found,unused-ignore]

__all__ = [
    "TARBALL_SUFFIXES",
    "ContentKind",
    "Package",
    "is_valid_hash",
    "load_package",
    "load_packages",
    "package_hash",
]

ContentKind = Literal["directory", "tarball"]

TARBALL_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.zst")
HASH_LENGTH = 32

_NAME = re.compile(r"[A-Za-z0-9_.+-]+")
_HASH = re.compile(rf"[a-z2-7]{{{HASH_LENGTH}}}")
_KNOWN_KEYS = (
    "name",
    "version",
    "prefix",
    "content",
    "platforms",
    "hash",
    "depends",
    "env",
    "ld_library_path",
    "description",
    "license",
    "spack_spec",
)
# Bumped whenever the hashed document changes shape, so old and new hashes never collide.
_HASH_SCHEMA = 1


@dataclass(frozen=True)
class Package:
    """One package: where its content is on disk and what it means once inside an image.

    ``prefix`` is the absolute install prefix inside the image; ``content`` the absolute path of
    the directory or tarball holding it; ``hash`` the hash given in the package file, or None
    when the pipeline is to compute it with :func:`package_hash`; ``depends`` the :attr:`key` of
    each direct dependency; ``env`` the explicit modifications with ``{prefix}`` already
    expanded, or None to infer them from the content's layout; ``source`` the package file and
    ``metadata`` everything it contained; ``spack`` the Spack spec the package came with (from
    an install prefix, a build-cache tarball or a package file's ``spack_spec``), whose root
    hash is then ``hash``. ``ld_library_path``, ``metadata``, ``spack`` and ``platforms`` are
    keyword-only.

    ``platforms`` holds per-platform content (the package file's ``platforms`` table): for a
    platform it names, that content goes into the platform's image instead of ``content``,
    which is then the platform-independent content (scripts, data) every other platform gets.
    ``content`` is None when the package has per-platform content only. See
    :meth:`for_platform`.

    ``spack_content`` says how a Spack package becomes a layer Spack can install from (a
    build-cache tarball used as is, a layer already in a registry, or an install prefix with
    its relocation record: see :mod:`imagesmith.spack`); ``spack_cache`` names the build cache
    it came from (a directory, or ``oci://registry/repository``), where its runtime
    dependencies are looked up. A package whose layer is in a registry has no ``content``.
    """

    name: str
    version: str
    prefix: str
    content: Path | None
    content_kind: ContentKind | None
    hash: str | None
    depends: tuple[str, ...]
    env: tuple[EnvModification, ...] | None
    ld_library_path: bool = field(default=False, kw_only=True)
    source: Path
    # Excluded from hashing so a Package stays hashable; the parsed fields carry its identity.
    metadata: Mapping[str, Any] = field(default_factory=dict, kw_only=True, hash=False)
    spack: SpackSpec | None = field(default=None, kw_only=True)
    platforms: tuple[tuple[Platform, Path, ContentKind], ...] = field(default=(), kw_only=True)
    spack_content: SpackContent | None = field(default=None, kw_only=True)
    spack_cache: str | None = field(default=None, kw_only=True)

    def content_for(self, platform: Platform) -> tuple[Path, ContentKind]:
        """The content ``platform``'s image gets: the ``platforms`` entry matching it (an
        entry without a variant stands for the architecture's default one: arm64 is v8),
        else the platform-independent ``content``; :class:`PackageError` when neither."""
        for candidate, path, kind in self.platforms:
            if platform.matches(candidate):
                return path, kind
        if self.content is None or self.content_kind is None:
            offered = ", ".join(str(p) for p, _, _ in self.platforms)
            raise PackageError(
                f"package {self.label} ({self.source}) has no content for {platform}: its "
                f"'platforms' table names {offered}; add an entry for {platform}, or a "
                "platform-independent 'content'"
            )
        return self.content, self.content_kind

    def for_platform(self, platform: Platform) -> Package:
        """This package as it goes into ``platform``'s image: ``content`` is that platform's.

        A Spack package whose content is its own build (not a ``platforms`` entry) is refused
        for a platform of another architecture than its spec's target: a binary for aarch64
        in an amd64 image only fails when it runs.
        """
        from .spack import SpackRegistryLayer, spec_architecture  # imagesmith.spack builds on this module

        remote = isinstance(self.spack_content, SpackRegistryLayer)
        content, kind = (self.content, self.content_kind) if remote else self.content_for(platform)
        if self.spack is not None and not any(platform.matches(p) for p, _, _ in self.platforms):
            built_for = spec_architecture(self.spack)
            if built_for is not None and built_for[0] != platform.normalized().architecture:
                raise PackageError(
                    f"package {self.label} ({self.source}) is a Spack build for {built_for[1]} "
                    f"({built_for[0]}): it cannot go into the {platform} image; build it for "
                    f"{platform.architecture}, or give per-platform content in a package file"
                )
        return replace(self, content=content, content_kind=kind, platforms=())

    @property
    def contents(self) -> tuple[Path, ...]:
        """Every content path of the package (platform-independent first)."""
        common = (self.content,) if self.content is not None else ()
        return common + tuple(path for _, path, _ in self.platforms)

    @functools.cached_property
    def key(self) -> str:
        """The identity of the package within one load: its package file's resolved path (for
        a package in a registry, the reference it was read from)."""
        # Cached: a stack of hundreds of packages asks for keys hundreds of thousands of times,
        # and each resolve() is a realpath walk of system calls.
        if self.is_remote:
            return self.origin
        return str(self.source.resolve())

    @property
    def is_remote(self) -> bool:
        """Whether the package's layer is in a registry (it has no local content; its
        ``source`` is then ``oci:/REGISTRY/REPOSITORY:TAG``)."""
        from .spack import SpackRegistryLayer  # imagesmith.spack builds on this module

        return isinstance(self.spack_content, SpackRegistryLayer)

    @property
    def origin(self) -> str:
        """Where the package was read, as a user writes it (``oci://...`` for a registry)."""
        text = str(self.source)
        return "oci://" + text.removeprefix("oci:/") if self.is_remote else text

    @property
    def label(self) -> str:
        """``name-version``, the way messages and tags refer to the package."""
        return f"{self.name}-{self.version}"


def is_valid_hash(text: object) -> bool:
    """Whether ``text`` is a package hash: 32 characters of lowercase base32 (``a-z``, ``2-7``)."""
    return isinstance(text, str) and _HASH.fullmatch(text) is not None


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            # json.loads would silently keep the last one; a repeated key is a mistake.
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _read_document(path: Path) -> dict[str, Any]:
    suffix = path.suffix.lower()
    if suffix not in (".json", ".toml"):
        raise PackageError(f"package file {path}: unknown type {suffix or '(none)'!r}; use .json or .toml")
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise PackageError(f"package file {path} not found") from None
    except OSError as exc:
        raise PackageError(f"cannot read package file {path}: {exc.strerror or exc}") from None
    try:
        text = data.decode("utf-8")
        if suffix == ".json":
            doc = json.loads(text, object_pairs_hook=_no_duplicate_keys)
        else:
            doc = tomllib.loads(text)
    except UnicodeDecodeError:
        raise PackageError(f"package file {path}: not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise PackageError(f"package file {path}: invalid JSON: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise PackageError(f"package file {path}: invalid TOML: {exc}") from None
    except (ValueError, RecursionError) as exc:
        raise PackageError(f"package file {path}: invalid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise PackageError(f"package file {path}: the top level must be an object/table")
    return doc


def _string(path: Path, doc: Mapping[str, Any], key: str) -> str:
    if key not in doc:
        raise PackageError(f"package file {path}: '{key}' is required")
    value = doc[key]
    if not isinstance(value, str):
        raise PackageError(f"package file {path}: '{key}' must be a string (quote it), not {value!r}")
    return value


def _check_version(version: str, what: str) -> str:
    if not version or any(c.isspace() for c in version) or not version.isprintable():
        raise PackageError(f"{what} {version!r} must be non-empty, without whitespace")
    return version


def _check_prefix(path: Path, prefix: str, *, what: str = "package file") -> str:
    problem = None
    if not prefix.startswith("/"):
        problem = "must be absolute (start with /)"
    elif prefix == "/" or prefix.strip("/") == "":
        problem = "cannot be / itself"
    elif ".." in prefix.split("/"):
        problem = "must not contain .."
    elif ":" in prefix:
        problem = "must not contain ':' (it would split PATH-like variables)"
    elif any(ord(c) < 32 or ord(c) == 127 for c in prefix):
        problem = "must not contain control characters"
    elif prefix.startswith("//") or posixpath.normpath(prefix) != prefix:
        problem = f"must be normalised (write {posixpath.normpath('/' + prefix.lstrip('/'))!r})"
    if problem:
        raise PackageError(f"{what} {path}: prefix {prefix!r} {problem}")
    return prefix


def _platform_contents(path: Path, doc: Mapping[str, Any]) -> tuple[tuple[Platform, Path, ContentKind], ...]:
    table = doc.get("platforms")
    if table is None:
        return ()
    if not isinstance(table, Mapping) or not table:
        raise PackageError(
            f"package file {path}: 'platforms' must be a non-empty table of platform (os/arch[/variant]) "
            "to content path, e.g. {\"linux/amd64\": \"build-x86_64\", \"linux/arm64\": \"build-aarch64\"}"
        )
    out: list[tuple[Platform, Path, ContentKind]] = []
    for key, raw in table.items():
        try:
            platform = Platform.parse(str(key))
        except (ManifestError, UsageError, ValueError) as exc:
            raise PackageError(
                f"package file {path}: platforms: {key!r} is not os/arch[/variant]: {exc}"
            ) from None
        for other, _, _ in out:
            if platform.matches(other) or other.matches(platform):
                raise PackageError(f"package file {path}: platforms: {key!r} and {str(other)!r} overlap")
        if not isinstance(raw, str):
            raise PackageError(
                f"package file {path}: platforms: the content of {key!r} must be a path string"
            )
        content, kind = _content_path(path, raw, f"content for {key}")
        out.append((platform, content, kind))
    return tuple(out)


def _content(path: Path, doc: Mapping[str, Any]) -> tuple[Path, ContentKind]:
    return _content_path(path, _string(path, doc, "content"), "content")


def _content_path(path: Path, raw: str, field_name: str) -> tuple[Path, ContentKind]:
    if not raw:
        raise PackageError(f"package file {path}: '{field_name}' must not be empty")
    content = path.parent / raw
    if not content.exists():
        raise PackageError(f"package file {path}: {field_name} {raw!r} not found (looked for {content})")
    content = content.resolve()
    if content.is_dir():
        return content, "directory"
    if not content.is_file():
        raise PackageError(
            f"package file {path}: {field_name} {raw!r} is neither a directory nor a regular file"
        )
    if not content.name.lower().endswith(TARBALL_SUFFIXES):
        raise PackageError(
            f"package file {path}: {field_name} {raw!r} is a file but not a tarball; "
            f"use a directory or a {', '.join(TARBALL_SUFFIXES)} file"
        )
    return content, "tarball"


def _depends(path: Path, doc: Mapping[str, Any]) -> tuple[str, ...]:
    raw = doc.get("depends", [])
    if not isinstance(raw, list) or not all(isinstance(item, str) and item for item in raw):
        raise PackageError(
            f"package file {path}: 'depends' must be a list of package file paths "
            "(relative to this file)"
        )
    own = str(path.resolve())
    keys: list[str] = []
    for item in raw:
        key = str((path.parent / item).resolve())
        if key == own:
            raise PackageError(f"package file {path}: 'depends' lists the package itself ({item!r})")
        if key not in keys:
            keys.append(key)
    return tuple(keys)


def _wrapped_spec(path: Path, doc: Mapping[str, Any]) -> SpackSpec:
    """The Spack spec a package file names with ``spack_spec``, checked against its fields."""
    from .spack import read_spack_spec  # imported here: imagesmith.spack builds on this module

    raw = doc["spack_spec"]
    if not isinstance(raw, str) or not raw:
        raise PackageError(f"package file {path}: 'spack_spec' must be the path of a spec.json")
    spec_path = path.parent / raw
    if spec_path.is_dir():
        spec_path = spec_path / ".spack" / "spec.json"
    if not spec_path.is_file():
        raise PackageError(
            f"package file {path}: spack_spec {raw!r} not found (looked for {spec_path})"
        )
    spec = read_spack_spec(spec_path)
    for key, value in (("name", spec.name), ("version", spec.version), ("hash", spec.hash)):
        if key in doc and doc[key] != value:
            raise PackageError(
                f"package file {path}: {key} {doc[key]!r} differs from the {key} in spack_spec "
                f"{raw!r} ({value!r}); leave it out, the spec gives it"
            )
    return spec


def load_package(
    path: str | Path, *, pool: RegistryPool | None = None, registry: RegistryOptions | None = None
) -> Package:
    """Load and validate one package, without its dependencies.

    ``path`` is a package file (``.json`` or ``.toml``), or a Spack install prefix, its
    ``.spack/spec.json`` or a Spack build-cache tarball (see
    :func:`~imagesmith.spack.load_spack_package`). In a package file, required are ``name``
    (``[A-Za-z0-9_.+-]+``), ``version`` (no whitespace), ``prefix`` (absolute, normalised, not
    ``/``, no ``..`` or ``:``) and ``content`` (a directory or a ``.tar``, ``.tar.gz``, ``.tgz``
    or ``.tar.zst`` file, relative to the package file, which must exist). Optional: ``hash``
    (32 lowercase base32 characters), ``depends`` (package files relative to this one), ``env``
    (see :func:`~imagesmith.envmods.env_from_json`; ``{prefix}`` is expanded here),
    ``ld_library_path`` (a boolean, only with an inferred env), ``description``, ``spack_spec``
    (a Spack spec.json relative to this file, which then gives name, version and hash) and any
    key starting with ``x-``. A Spack build cache, or an entry of one (see
    :mod:`imagesmith.spackcache`), must name exactly one package; ``pool`` or ``registry``
    serve one in a registry. Every problem raises :class:`PackageError` naming the file and
    the field.
    """
    from . import spack, spackcache  # imported here: imagesmith.spack builds on this module

    if spackcache.is_cache_argument(str(path)):
        with spackcache.SpackSources(pool=pool, registry=registry) as sources:
            found = sources.load(str(path))
        if len(found) != 1:
            raise PackageError(
                f"{path} holds {len(found)} Spack packages: name one (DIR:NAME, DIR:/HASH), or "
                "load them all with load_packages"
            )
        return found[0]
    given = Path(path)
    source = given.resolve()
    suffix = given.suffix.lower()
    # Anything that cannot be a package file goes to the Spack loader, which names what it
    # expected; a directory called x.json still gets the package-file error below. The name
    # as given decides: a symlink x.tar.gz to a build-cache blob is a tarball.
    if source.is_dir() and suffix not in (".json", ".toml"):
        return spack.load_spack_package(path)
    if given.name.lower().endswith(spack.BUILDCACHE_SUFFIXES):
        return spack.load_spack_package(path)
    if suffix not in (".json", ".toml") and source.is_file() and _looks_like_tarball(source):
        return spack.tarball_package(given)
    doc = _read_document(source)
    if suffix == ".json" and spack.is_spack_spec(doc):
        return spack.load_spack_package(path)
    unknown = [k for k in doc if k not in _KNOWN_KEYS and not str(k).startswith("x-")]
    if unknown:
        raise PackageError(
            f"package file {source}: unknown key(s) {', '.join(map(repr, unknown))}; "
            f"known keys are {', '.join(_KNOWN_KEYS)} (prefix your own keys with x-)"
        )
    spack_spec = _wrapped_spec(source, doc) if "spack_spec" in doc else None
    if spack_spec is not None:
        name, version = spack_spec.name, spack_spec.version
    else:
        name = _string(source, doc, "name")
        version = _string(source, doc, "version")
    if not _NAME.fullmatch(name):
        raise PackageError(
            f"package file {source}: name {name!r} must be letters, digits and . _ + -"
        )
    _check_version(version, f"package file {source}: version")
    prefix = _check_prefix(source, _string(source, doc, "prefix"))
    platforms = _platform_contents(source, doc)
    content: Path | None = None
    kind: ContentKind | None = None
    if "content" in doc or not platforms:
        content, kind = _content(source, doc)
    explicit_hash = doc.get("hash") if spack_spec is None else spack_spec.hash
    if explicit_hash is not None and not is_valid_hash(explicit_hash):
        raise PackageError(
            f"package file {source}: hash {explicit_hash!r} must be {HASH_LENGTH} characters "
            "of lowercase base32 (a-z, 2-7)"
        )
    depends = _depends(source, doc)
    env: tuple[EnvModification, ...] | None = None
    if "env" in doc:
        env = tuple(mod.expand(prefix) for mod in env_from_json(doc["env"], f"package file {source}"))
    ld_library_path = doc.get("ld_library_path", False)
    if not isinstance(ld_library_path, bool):
        raise PackageError(f"package file {source}: 'ld_library_path' must be true or false")
    if ld_library_path and env is not None:
        raise PackageError(
            f"package file {source}: 'ld_library_path' only applies to an inferred env; "
            "with an explicit env, add LD_LIBRARY_PATH under env.prepend_path"
        )
    description = doc.get("description")
    if description is not None and not isinstance(description, str):
        raise PackageError(f"package file {source}: 'description' must be a string")
    licence = doc.get("license")
    if licence is not None and (not isinstance(licence, str) or not licence.strip()):
        raise PackageError(f"package file {source}: 'license' must be an SPDX expression such as \"MIT\"")
    spack_content = (
        _wrapped_content(spack_spec, prefix, content, kind, doc) if spack_spec is not None else None
    )
    return Package(
        name=name,
        version=version,
        prefix=prefix,
        content=content,
        content_kind=kind,
        hash=explicit_hash,
        depends=depends,
        env=env,
        ld_library_path=ld_library_path,
        source=source,
        metadata=doc,
        spack=spack_spec,
        platforms=platforms,
        spack_content=spack_content,
    )


def _wrapped_content(
    spec: SpackSpec, prefix: str, content: Path | None, kind: ContentKind | None, doc: Mapping[str, Any]
) -> SpackContent:
    """How the content a package file gives a Spack spec becomes a layer Spack installs from:
    an install prefix of that spec (its relocation record is written), or the spec's own
    build-cache tarball at the same prefix (used as is); anything else makes a runnable image
    that Spack cannot install."""
    from .spack import SpackPrefix, SpackTarball, prefix_content, read_tarball_spec

    if content is None or kind is None:
        return SpackPrefix(None, "its content is per platform, and a Spack build is for one target")
    if kind == "directory":
        if not (content / ".spack" / "spec.json").is_file():
            return SpackPrefix(
                None, f"its content {content} is not a Spack install prefix (no .spack/spec.json)"
            )
        return prefix_content(content, spec)
    try:
        with open(content, "rb") as f:
            prefix_rel, data = read_tarball_spec(f, f"content {doc.get('content')!r}")
        same = json.loads(data)["spec"]["nodes"][0]["hash"] == spec.hash
    except (PackageError, OSError, ValueError, KeyError, IndexError, TypeError):
        same, prefix_rel = False, ""
    if same and "/" + prefix_rel == prefix:
        return SpackTarball()
    return SpackPrefix(
        None, "its content tarball is not the spec's build-cache tarball at the same prefix, so it is "
        "re-archived, without Spack's relocation record"
    )


def _looks_like_tarball(path: Path) -> bool:
    """Whether a file without a tarball suffix (a build-cache blob) starts like one: gzip or
    zstd magic, or a ustar header."""
    try:
        with open(path, "rb") as f:
            head = f.read(265)
    except OSError:
        return False
    return head[:2] == b"\x1f\x8b" or head[:4] == b"\x28\xb5\x2f\xfd" or head[257:262] == b"ustar"


def load_packages(
    paths: Sequence[str | Path], *, pool: RegistryPool | None = None, registry: RegistryOptions | None = None
) -> list[Package]:
    """Load packages and all their dependencies, each once, dependencies first.

    ``paths`` are package files, Spack install prefixes, spec.json files inside them, Spack
    build-cache tarballs, or Spack build caches and entries of them (directories of layout 2
    or 3, manifests, blobs, ``oci://REGISTRY/REPOSITORY[:TAG]``; see
    :mod:`imagesmith.spackcache`: ``pool`` or ``registry`` serve the registries). A package
    file's ``depends`` are loaded too; a Spack package's runtime dependencies (transitive
    ``link``/``run``) are matched by hash against every package loaded here (a Spack package's
    DAG hash or a package file's explicit ``hash``), and those missing are taken from the build
    cache the package came from; all must be there. Two packages with the same hash, one of
    them from Spack, are one package: the first loaded wins.
    The order is a depth-first walk: each package comes right after its dependencies, which are
    visited in the order they are listed (a Spack package's in dependency order), and the given
    paths are visited in the order given, so the result is deterministic. A dependency cycle
    raises :class:`PackageError` showing the cycle; a missing dependency file raises one naming
    the package that depends on it, a missing Spack dependency one naming it and how to give
    it; two different packages installing to the same prefix raise one naming both.
    """
    from .spackcache import SpackSources  # imported here: it builds on this module

    if isinstance(paths, (str, Path)):
        raise UsageError("load_packages takes a list of package files, not a single path")
    with SpackSources(pool=pool, registry=registry) as sources:
        return _load_all(paths, sources)


def _load_all(paths: Sequence[str | Path], sources: SpackSources) -> list[Package]:
    from .spack import resolve_spack_dependencies  # imported here: it builds on this module
    from .spackcache import is_cache_argument

    # The same package can be reached under several paths (a prefix and its spec.json, two
    # spellings of a file) and, for Spack, from several sources with one DAG hash; ``by_path``
    # maps each path to the one package that stands for it, keyed by its own ``key``.
    by_path: dict[str, Package] = {}
    by_key: dict[str, Package] = {}
    by_hash: dict[str, Package] = {}
    loaded: list[Package] = []

    def add(package: Package) -> Package:
        package = by_key.get(package.key, package)
        if package.hash is not None:
            same = by_hash.setdefault(package.hash, package)
            # A Spack hash names one build of one package, whoever provides it; two plain
            # package files that happen to share a hash stay two packages, as they always were.
            if same.spack is not None or package.spack is not None:
                package = same
        if package.key not in by_key:
            by_key[package.key] = package
            loaded.append(package)
        return package

    def load(path: str | Path, dependent: Package | None) -> list[Package]:
        if dependent is None and is_cache_argument(str(path)):
            # A build cache may name several packages at once (a whole cache).
            return [add(p) for p in sources.load(str(path))]
        path_key = str(Path(path).resolve())
        package = by_path.get(path_key)
        if package is None:
            if dependent is not None and not Path(path_key).exists():
                raise PackageError(
                    f"package {dependent.label} ({dependent.source}) depends on {path_key}, "
                    "which does not exist"
                )
            # The path as given, not resolved: a Spack prefix keeps its spelling in the image.
            package = add(load_package(path))
            by_path[path_key] = package
        return [package]

    roots = [package for root in paths for package in load(root, None)]
    # Every package file dependency, and every runtime dependency a build cache holds,
    # transitively, iteratively (long chains must not recurse).
    index = 0
    while index < len(loaded):
        package = loaded[index]
        index += 1
        for dep_path in package.depends:
            load(dep_path, package)
        if package.spack is not None and package.spack_cache is not None:
            for needed in package.spack.runtime:
                if needed.hash not in by_hash:
                    found = sources.dependency(package, needed)
                    if found is not None:
                        add(found)

    final: dict[str, Package] = {}
    for package in loaded:
        keys = [by_path[dep].key for dep in package.depends]
        keys.extend(resolve_spack_dependencies(package, by_hash))
        # Aliases can make a package list itself or a dependency twice; both mean nothing.
        depends = tuple(dict.fromkeys(k for k in keys if k != package.key))
        final[package.key] = package if depends == package.depends else replace(package, depends=depends)

    ordered: list[Package] = []
    done: set[str] = set()
    for root in roots:
        root_key = root.key
        if root_key in done:
            continue
        # Iterative depth-first walk: (package, index of the next dependency to visit).
        stack: list[tuple[Package, int]] = [(final[root_key], 0)]
        on_stack = {root_key}
        while stack:
            package, position = stack[-1]
            if position < len(package.depends):
                stack[-1] = (package, position + 1)
                dep_key = package.depends[position]
                if dep_key in done:
                    continue
                dep = final[dep_key]
                if dep_key in on_stack:
                    chain = [p for p, _ in stack]
                    start = next(i for i, p in enumerate(chain) if p.key == dep_key)
                    cycle = [*chain[start:], dep]
                    raise PackageError(
                        "dependency cycle: "
                        + " -> ".join(f"{p.label} ({p.source.name})" for p in cycle)
                    )
                stack.append((dep, 0))
                on_stack.add(dep_key)
                continue
            stack.pop()
            on_stack.discard(package.key)
            done.add(package.key)
            ordered.append(package)

    by_prefix: dict[str, Package] = {}
    for package in ordered:
        other = by_prefix.setdefault(package.prefix, package)
        if other is not package:
            raise PackageError(
                f"packages {other.label} ({other.source}) and {package.label} ({package.source}) "
                f"both install to {package.prefix}"
            )
    return ordered


def package_hash(package: Package, dependency_hashes: Sequence[str], diff_id: Digest) -> str:
    """The package's hash: its Spack DAG hash, else the one from its file, else a derived one.

    The derived hash is the first 32 characters of the lowercase, unpadded base32 encoding of
    the sha256 of a canonical JSON document holding the name, version, prefix, the explicit env
    (or null when it is inferred, with the ``ld_library_path`` flag), the sorted hashes of the
    direct dependencies and the content's ``diff_id``; the same inputs always give the same
    hash, and changing any of them changes it.
    """
    if package.spack is not None:
        return package.spack.hash
    if package.hash is not None:
        return package.hash
    for dep in dependency_hashes:
        if not is_valid_hash(dep):
            raise PackageError(
                f"package {package.label}: dependency hash {dep!r} is not {HASH_LENGTH} "
                "characters of lowercase base32"
            )
    document = {
        "schema": _HASH_SCHEMA,
        "name": package.name,
        "version": package.version,
        "prefix": package.prefix,
        "env": None if package.env is None else env_to_json(package.env),
        "ld_library_path": package.ld_library_path,
        "dependencies": sorted(dependency_hashes),
        "diff_id": str(diff_id),
    }
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    digest = hashlib.sha256(canonical.encode("utf-8")).digest()
    return base64.b32encode(digest).decode("ascii").lower()[:HASH_LENGTH]
