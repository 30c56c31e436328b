"""Packages: content (an install prefix directory or a tarball) plus the metadata around it.

A package file (JSON or TOML) names the package, its version, the absolute prefix it lands at in
the image, its content, its dependencies (other package files) and optionally its hash and its
environment modifications. A Spack install prefix, its ``.spack/spec.json`` or a Spack
build-cache tarball stands in for a package file (see :mod:`imagesmith.inputs.spack`).
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

from imagesmith.errors import ManifestError, PackageError, UsageError
from imagesmith.inputs.envmods import EnvModification, env_to_json
from imagesmith.oci.digests import Digest
from imagesmith.oci.model import Platform

if TYPE_CHECKING:
    from imagesmith.inputs.spack import SpackContent, SpackSpec

__all__ = [
    "TARBALL_SUFFIXES",
    "ContentKind",
    "Package",
    "is_valid_hash",
    "package_hash",
]


if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib  # type: ignore[import-not-found,unused-ignore]


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
    its relocation record: see :mod:`imagesmith.inputs.spack`); ``spack_cache`` names the build cache
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
        remote = self.is_remote
        content, kind = (self.content, self.content_kind) if remote else self.content_for(platform)
        if self.spack is not None and not any(platform.matches(p) for p, _, _ in self.platforms):
            built_for = self.spack.architecture()
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
        return self.spack_content is not None and self.spack_content.remote

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
            'to content path, e.g. {"linux/amd64": "build-x86_64", "linux/arm64": "build-aarch64"}'
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
            f"package file {path}: 'depends' must be a list of package file paths (relative to this file)"
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
