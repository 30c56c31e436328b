"""Loading packages: package files, Spack prefixes, tarballs and build caches, in dependency order.

:func:`load_package` reads one input (a package file, a Spack install prefix or spec, a
build-cache tarball, or a Spack build cache), :func:`load_packages` a list of them with every
dependency, sorted so dependencies come first. It sits above both :mod:`imagesmith.inputs.packages`
(the package value) and :mod:`imagesmith.inputs.spack` (Spack's inputs), which is what keeps
the two from importing each other.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from imagesmith.errors import PackageError, UsageError
from imagesmith.inputs import spack, spackcache
from imagesmith.inputs.envmods import EnvModification, env_from_json
from imagesmith.inputs.packages import (
    _KNOWN_KEYS,
    _NAME,
    HASH_LENGTH,
    ContentKind,
    Package,
    _check_prefix,
    _check_version,
    _content,
    _depends,
    _platform_contents,
    _read_document,
    _string,
    is_valid_hash,
)
from imagesmith.inputs.spack import (
    SpackContent,
    SpackPrefix,
    SpackSpec,
    SpackTarball,
    prefix_content,
    read_spack_spec,
    read_tarball_spec,
    resolve_spack_dependencies,
)
from imagesmith.inputs.spackcache import SpackSources, is_cache_argument
from imagesmith.registry.client import RegistryPool
from imagesmith.registry.transport import RegistryOptions

__all__ = [
    "load_package",
    "load_packages",
]


def _wrapped_spec(path: Path, doc: Mapping[str, Any]) -> SpackSpec:
    """The Spack spec a package file names with ``spack_spec``, checked against its fields."""
    raw = doc["spack_spec"]
    if not isinstance(raw, str) or not raw:
        raise PackageError(f"package file {path}: 'spack_spec' must be the path of a spec.json")
    spec_path = path.parent / raw
    if spec_path.is_dir():
        spec_path = spec_path / ".spack" / "spec.json"
    if not spec_path.is_file():
        raise PackageError(f"package file {path}: spack_spec {raw!r} not found (looked for {spec_path})")
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
    :func:`~imagesmith.inputs.spack.load_spack_package`). In a package file, required are ``name``
    (``[A-Za-z0-9_.+-]+``), ``version`` (no whitespace), ``prefix`` (absolute, normalised, not
    ``/``, no ``..`` or ``:``) and ``content`` (a directory or a ``.tar``, ``.tar.gz``, ``.tgz``
    or ``.tar.zst`` file, relative to the package file, which must exist). Optional: ``hash``
    (32 lowercase base32 characters), ``depends`` (package files relative to this one), ``env``
    (see :func:`~imagesmith.inputs.envmods.env_from_json`; ``{prefix}`` is expanded here),
    ``ld_library_path`` (a boolean, only with an inferred env), ``description``, ``spack_spec``
    (a Spack spec.json relative to this file, which then gives name, version and hash) and any
    key starting with ``x-``. A Spack build cache, or an entry of one (see
    :mod:`imagesmith.inputs.spackcache`), must name exactly one package; ``pool`` or ``registry``
    serve one in a registry. Every problem raises :class:`PackageError` naming the file and
    the field.
    """
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
        raise PackageError(f"package file {source}: name {name!r} must be letters, digits and . _ + -")
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
        None,
        "its content tarball is not the spec's build-cache tarball at the same prefix, so it is "
        "re-archived, without Spack's relocation record",
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
    :mod:`imagesmith.inputs.spackcache`: ``pool`` or ``registry`` serve the registries). A package
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
    if isinstance(paths, (str, Path)):
        raise UsageError("load_packages takes a list of package files, not a single path")
    with SpackSources(pool=pool, registry=registry) as sources:
        return _load_all(paths, sources)


def _load_all(paths: Sequence[str | Path], sources: SpackSources) -> list[Package]:
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
                        "dependency cycle: " + " -> ".join(f"{p.label} ({p.source.name})" for p in cycle)
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
