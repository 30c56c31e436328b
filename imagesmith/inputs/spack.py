"""Spack packages: install prefixes, build-cache tarballs and spec.json files as packages.

Spack records what it installed in ``<prefix>/.spack/spec.json``: the package's DAG (the root
node first, then every dependency, each with its 32-character DAG hash) in specfile format 2 to
5. This module reads that file from an install prefix directory, from a build-cache tarball
(members relative to ``/``, as ``spack buildcache push`` writes them: only its first few KiB)
or through a package file that names it with ``spack_spec``, and turns it into a
:class:`~imagesmith.inputs.packages.Package` whose name, version and hash are the root node's, so the
image tag is exactly Spack's ``name-version-hash.spack`` (:func:`spack_tag`). Each package says
how it becomes a layer Spack installs from (``Package.spack_content``): a tarball used as is
(:class:`SpackTarball`), a layer already in a registry (:class:`SpackRegistryLayer`, from
:mod:`imagesmith.inputs.spackcache`), or an install prefix with Spack's relocation record
(:class:`SpackPrefix`, :mod:`imagesmith.inputs.spackrelocation`). The package's runtime dependencies
(``link`` or ``run`` edges, transitively; build-only dependencies and externals are not layers)
are matched by hash against the other packages of the same
:func:`~imagesmith.inputs.load.load_packages` call. Finally :func:`spack_config_fields` gives the
extra image config keys Spack's OCI build cache reads. The formats are documented in
``docs/spack.md``.

Size: one format, Spack's inputs (specs, prefixes, tarballs, dependencies by DAG hash, the
config keys Spack reads), whose parts all read the same spec.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, ClassVar

from imagesmith.errors import LayerError, PackageError
from imagesmith.inputs.packages import (
    _NAME,
    HASH_LENGTH,
    TARBALL_SUFFIXES,
    Package,
    _check_prefix,
    _check_version,
    is_valid_hash,
)
from imagesmith.inputs.spackrelocation import Relocation, find_relocation
from imagesmith.oci.digests import Digest
from imagesmith.oci.model import Descriptor
from imagesmith.oci.references import sanitize_tag
from imagesmith.tar.compression import open_decompressor
from imagesmith.tar.entries import MAX_TARBALL_BYTES
from imagesmith.tar.format import TarReader

__all__ = [
    "BUILDCACHE_LAYOUT_VERSION",
    "BUILDCACHE_SUFFIXES",
    "SPACK_CONFIG_KEYS",
    "SPEC_FORMAT_VERSIONS",
    "SpackContent",
    "SpackDependency",
    "SpackPrefix",
    "SpackRegistryLayer",
    "SpackSpec",
    "SpackTarball",
    "is_spack_spec",
    "load_spack_package",
    "node_platform",
    "parse_spack_spec",
    "prefix_content",
    "read_spack_spec",
    "read_tarball_spec",
    "resolve_spack_dependencies",
    "spack_config_fields",
    "spack_tag",
    "tarball_package",
]

#: Spack's build-cache layout 2: package tarballs hold the prefix relative to ``/`` with its
#: parent directories, which is what imagesmith's package layers are.
BUILDCACHE_LAYOUT_VERSION = 2
#: Specfile format versions read here (``_meta.version``): 2 and 3 give dependency types as
#: ``type``, 4 and 5 as ``parameters.deptypes``.
SPEC_FORMAT_VERSIONS = (2, 3, 4, 5)
#: The top-level image config keys :func:`spack_config_fields` sets: a caller building on a base
#: image that has them (a Spack image as base) removes them when the top package is not Spack's.
SPACK_CONFIG_KEYS = ("spec", "buildcache_layout_version", "binary_cache_checksum")
#: File names taken for build-cache tarballs: the usual tarballs plus Spack's ``.spack``.
BUILDCACHE_SUFFIXES = (*TARBALL_SUFFIXES, ".spack")

_SPEC_PATH = ".spack/spec.json"
# A spec.json of a large DAG is a few MiB; anything far bigger is not one.
_MAX_SPEC_BYTES = 64 << 20
_RUNTIME_DEPTYPES = frozenset({"link", "run"})


@dataclass(frozen=True)
class SpackDependency:
    """A runtime dependency of a Spack package: the node's name, version (if known) and hash."""

    name: str
    version: str | None
    hash: str

    @property
    def label(self) -> str:
        """``name@version/hash``, the way Spack users recognise a concrete spec."""
        version = f"@{self.version}" if self.version else ""
        return f"{self.name}{version}/{self.hash}"


@dataclass(frozen=True)
class SpackSpec:
    """What imagesmith keeps of a Spack spec.json.

    ``name``, ``version`` and ``hash`` are the root node's; ``format_version`` is
    ``_meta.version`` as read; ``nodes`` every node exactly as read (written back into the image
    config, so Spack sees its own spec); ``runtime`` the dependencies that must be layers below
    the package — the transitive ``link`` and ``run`` dependencies, externals left out,
    dependencies before their dependents; ``source`` where the spec was read, for messages.
    """

    name: str
    version: str
    hash: str
    format_version: int
    # Excluded from hashing (dicts are not hashable); the root hash already identifies the DAG.
    nodes: tuple[Mapping[str, Any], ...] = field(repr=False, hash=False)
    runtime: tuple[SpackDependency, ...]
    # Where it was read says nothing about what it is: the same spec read twice is equal.
    source: str = field(compare=False)

    def architecture(self) -> tuple[str, str] | None:
        """The root's ``(OCI architecture, Spack target)``: see :func:`spec_architecture`."""
        return spec_architecture(self)

    def document(self) -> Mapping[str, Any]:
        """The spec as read, not copied (read-only: :meth:`to_json` gives a copy to edit). A
        stack loads hundreds of specs of hundreds of nodes each: copying them all costs seconds."""
        return {"_meta": {"version": self.format_version}, "nodes": self.nodes}

    def to_json(self) -> dict[str, Any]:
        """The spec as Spack writes it under the ``spec`` key: ``{"_meta": …, "nodes": […]}``."""
        return {
            "_meta": {"version": self.format_version},
            # A deep copy: callers may edit the result without touching this frozen value.
            "nodes": [copy.deepcopy(dict(node)) for node in self.nodes],
        }


# Spack names microarchitectures (archspec); an image names an OCI architecture. The generic
# family names, and the microarchitectures Spack builds for most, map to one; anything else is
# unknown and never refused on that account.
_ARCH_FAMILIES: dict[str, frozenset[str]] = {
    "amd64": frozenset(
        {
            "x86_64",
            "x86_64_v2",
            "x86_64_v3",
            "x86_64_v4",
            "nocona",
            "core2",
            "nehalem",
            "westmere",
            "sandybridge",
            "ivybridge",
            "haswell",
            "broadwell",
            "skylake",
            "mic_knl",
            "skylake_avx512",
            "cannonlake",
            "cascadelake",
            "icelake",
            "sapphirerapids",
            "k10",
            "bulldozer",
            "piledriver",
            "steamroller",
            "excavator",
            "zen",
            "zen2",
            "zen3",
            "zen4",
            "zen5",
        }
    ),
    "arm64": frozenset(
        {
            "aarch64",
            "armv8.1a",
            "armv8.2a",
            "armv8.3a",
            "armv8.4a",
            "armv8.5a",
            "armv9.0a",
            "thunderx2",
            "a64fx",
            "cortex_a72",
            "neoverse_n1",
            "neoverse_n2",
            "neoverse_v1",
            "neoverse_v2",
            "graviton",
            "graviton2",
            "graviton3",
            "graviton4",
            "m1",
            "m2",
            "m3",
        }
    ),
    "ppc64le": frozenset({"ppc64le", "power8le", "power9le", "power10le"}),
    "ppc64": frozenset({"ppc64", "power7", "power8", "power9", "power10"}),
    "s390x": frozenset({"s390x", "z13", "z14", "z15", "z16"}),
    "riscv64": frozenset({"riscv64", "u74mc"}),
}
_FAMILY_OF = {name: arch for arch, names in _ARCH_FAMILIES.items() for name in names}


def _node_architecture(node: Mapping[str, Any]) -> tuple[str, str] | None:
    """A node's ``(OCI architecture, Spack target)``, or None (see :func:`spec_architecture`)."""
    arch = node.get("arch")
    target = arch.get("target") if isinstance(arch, Mapping) else None
    names: list[str] = []
    if isinstance(target, str):
        names.append(target)
    elif isinstance(target, Mapping):
        names.append(str(target.get("name", "")))
        parents = target.get("parents")
        if isinstance(parents, list):
            names.extend(str(p) for p in parents)
    for name in names:
        family = _FAMILY_OF.get(name.lower())
        if family is not None:
            return family, names[0]
    return None


def spec_architecture(spec: SpackSpec) -> tuple[str, str] | None:
    """The root's ``(OCI architecture, Spack target)`` (``("arm64", "neoverse_n1")``), or None
    when the spec names no target, or one this table does not know."""
    return _node_architecture(spec.nodes[0]) if spec.nodes else None


def node_platform(node: Mapping[str, Any]) -> tuple[str, ...]:
    """``("linux/amd64",)`` for a spec node built for a Linux target this module knows, else
    ``()``: the platform an image of that package is for."""
    arch = node.get("arch")
    found = _node_architecture(node)
    if not isinstance(arch, Mapping) or arch.get("platform") != "linux" or found is None:
        return ()
    return (f"linux/{found[0]}",)


def spack_tag(name: str, version: str, dag_hash: str) -> str:
    """The tag Spack gives a package in an OCI build cache (``_oci_default_tag``):
    ``{name}-{version}-{hash}.spack``, made a valid tag as Spack makes it."""
    return sanitize_tag(f"{name}-{version}-{dag_hash}.spack")


def is_spack_spec(obj: object) -> bool:
    """Whether ``obj`` (a parsed JSON document) looks like a Spack spec.json: ``spec.nodes``."""
    return isinstance(obj, Mapping) and isinstance(obj.get("spec"), Mapping) and "nodes" in obj["spec"]


def _fail(where: str, problem: str) -> PackageError:
    return PackageError(f"Spack spec {where}: {problem}")


def _hash_problem(value: object) -> str:
    return f"{value!r} must be a Spack DAG hash: {HASH_LENGTH} characters of lowercase base32 (a-z, 2-7)"


def _name_and_hash(obj: object, at: str, where: str) -> tuple[str, str]:
    """The ``name`` and ``hash`` every node and dependency edge carries, checked."""
    if not isinstance(obj, Mapping):
        raise _fail(where, f"{at} must be an object")
    name = obj.get("name")
    if not isinstance(name, str) or not name:
        raise _fail(where, f"{at}.name is required")
    value = obj.get("hash")
    if not is_valid_hash(value):
        raise _fail(where, f"{at}.hash {_hash_problem(value)}")
    assert isinstance(value, str)
    return name, value


def _edges(raw: object, at: str, where: str) -> list[tuple[str, str, frozenset[str]]]:
    """A node's ``dependencies`` as (name, hash, deptypes), in the order listed."""
    if not isinstance(raw, list):
        raise _fail(where, f"{at} must be a list")
    out: list[tuple[str, str, frozenset[str]]] = []
    for index, dep in enumerate(raw):
        here = f"{at}[{index}]"
        name, dep_hash = _name_and_hash(dep, here, where)
        parameters = dep.get("parameters")
        # Format 4 and later: parameters.deptypes; formats 2 and 3: type.
        if isinstance(parameters, Mapping) and "deptypes" in parameters:
            deptypes, key = parameters["deptypes"], "parameters.deptypes"
        elif "type" in dep:
            deptypes, key = dep["type"], "type"
        else:
            raise _fail(where, f"{here} has neither parameters.deptypes nor type")
        if isinstance(deptypes, str):
            deptypes = [deptypes]
        if not isinstance(deptypes, list) or not all(isinstance(t, str) for t in deptypes):
            raise _fail(where, f"{here}.{key} must be a list of dependency types")
        out.append((name, dep_hash, frozenset(deptypes)))
    return out


def _runtime_closure(
    root: str,
    nodes: Mapping[str, Mapping[str, Any]],
    edges: Mapping[str, list[tuple[str, str, frozenset[str]]]],
    where: str,
) -> list[str]:
    """Hashes reachable from ``root`` over link/run edges, dependencies first (post-order)."""
    order: list[str] = []
    done: set[str] = set()
    on_path = {root}

    def runtime_edges(node_hash: str) -> Iterator[tuple[str, str]]:
        for name, dep_hash, deptypes in edges[node_hash]:
            if deptypes & _RUNTIME_DEPTYPES:
                yield name, dep_hash

    # Iterative depth-first walk: a deep DAG must not hit Python's recursion limit.
    stack = [(root, runtime_edges(root))]
    while stack:
        node_hash, pending = stack[-1]
        for name, dep_hash in pending:
            if dep_hash in done:
                continue
            if dep_hash in on_path:
                raise _fail(where, f"the dependencies of {name}/{dep_hash} form a cycle")
            if dep_hash not in nodes:
                parent = nodes[node_hash]["name"]
                raise _fail(
                    where,
                    f"{parent} depends on {name}/{dep_hash}, which is not among spec.nodes",
                )
            on_path.add(dep_hash)
            stack.append((dep_hash, runtime_edges(dep_hash)))
            break
        else:
            stack.pop()
            on_path.discard(node_hash)
            done.add(node_hash)
            order.append(node_hash)
    return order


def _version_of(node: Mapping[str, Any]) -> str | None:
    version = node.get("version")
    return version if isinstance(version, str) else None


def parse_spack_spec(doc: object, where: str) -> SpackSpec:
    """Validate a parsed spec.json and extract what imagesmith needs from it.

    ``doc`` must be ``{"spec": {"_meta": {"version": 2…5}, "nodes": [...]}}``; every node needs
    a ``name`` and a valid ``hash``, the root (the first node) also a ``version`` without
    whitespace and a name of ``[A-Za-z0-9_.+-]``; dependencies need ``name``, ``hash`` and their
    types as ``parameters.deptypes`` or ``type``. Other keys are kept untouched. Problems raise
    :class:`PackageError` starting with ``Spack spec <where>:`` and naming the field.
    """
    if not is_spack_spec(doc):
        raise _fail(where, "not a Spack spec.json (it has no spec.nodes)")
    assert isinstance(doc, Mapping)
    spec = doc["spec"]
    meta = spec.get("_meta")
    if not isinstance(meta, Mapping) or "version" not in meta:
        raise _fail(where, "spec._meta.version is required")
    format_version = meta["version"]
    if isinstance(format_version, bool) or format_version not in SPEC_FORMAT_VERSIONS:
        raise _fail(
            where,
            f"spec._meta.version {format_version!r} is not a specfile format imagesmith reads "
            f"({', '.join(map(str, SPEC_FORMAT_VERSIONS))})",
        )
    raw_nodes = spec["nodes"]
    if not isinstance(raw_nodes, list):
        raise _fail(where, "spec.nodes must be a list")
    if not raw_nodes:
        raise _fail(where, "spec.nodes is empty: a spec lists at least its root node")
    nodes: dict[str, Mapping[str, Any]] = {}
    edges: dict[str, list[tuple[str, str, frozenset[str]]]] = {}
    for index, node in enumerate(raw_nodes):
        at = f"spec.nodes[{index}]"
        name, node_hash = _name_and_hash(node, at, where)
        node_edges = _edges(node.get("dependencies", []), f"{at}.dependencies", where)
        # Spack writes each hash once; should one repeat, the first node stands, as it does for
        # the root.
        if node_hash not in nodes:
            nodes[node_hash] = node
            edges[node_hash] = node_edges
    root = raw_nodes[0]
    name = root["name"]
    if not _NAME.fullmatch(name):
        raise _fail(where, f"spec.nodes[0].name {name!r} must be letters, digits and . _ + -")
    version = root.get("version")
    if not isinstance(version, str):
        raise _fail(where, f"spec.nodes[0].version is required (a string), not {version!r}")
    _check_version(version, f"Spack spec {where}: spec.nodes[0].version")
    if root.get("external"):
        raise _fail(
            where,
            f"{name} is an external package (installed outside Spack): there is nothing to put in a layer",
        )
    root_hash = root["hash"]
    closure = _runtime_closure(root_hash, nodes, edges, where)
    runtime = tuple(
        SpackDependency(nodes[h]["name"], _version_of(nodes[h]), h)
        for h in closure[:-1]  # the root comes last
        # Spack leaves externals out of its images: they live in the base image.
        if not nodes[h].get("external")
    )
    return SpackSpec(
        name=name,
        version=version,
        hash=root_hash,
        format_version=format_version,
        nodes=tuple(raw_nodes),
        runtime=runtime,
        source=where,
    )


def _parse_json(data: bytes, where: str) -> object:
    try:
        return json.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise _fail(where, "not UTF-8 text") from None
    except (ValueError, RecursionError) as exc:
        raise _fail(where, f"invalid JSON: {exc}") from None


def read_spack_spec(path: str | Path) -> SpackSpec:
    """Read and validate the spec.json file at ``path`` (see :func:`parse_spack_spec`)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise PackageError(f"Spack spec {path} not found") from None
    except OSError as exc:
        raise PackageError(f"cannot read Spack spec {path}: {exc.strerror or exc}") from None
    return parse_spack_spec(_parse_json(data, str(path)), str(path))


def _spec_in_prefix(path: Path) -> bool:
    return path.name == "spec.json" and path.parent.name == ".spack"


# ------------------------------------------------------------------ where a package's layer comes from


@dataclass(frozen=True)
class SpackTarball:
    """The package's content is a Spack build-cache tarball: it becomes the layer byte for
    byte (:func:`~imagesmith.tar.layer.adopt_tarball`), so the layer's digest is Spack's checksum.
    ``checksum`` is the one its build cache records, when it came from one."""

    checksum: Digest | None = None
    #: Whether the layer is in a registry (no local content): see ``Package.is_remote``.
    remote: ClassVar[bool] = False


@dataclass(frozen=True)
class SpackRegistryLayer:
    """The package's layer is already in a registry, in a Spack OCI build cache: the image
    refers to it (mounted, never downloaded). ``directories`` are those of the layer that the
    environment inference needs, read off the image's config."""

    registry: str
    repository: str
    layer: Descriptor
    diff_id: Digest
    directories: frozenset[str] = field(default=frozenset(), hash=False)
    remote: ClassVar[bool] = True


@dataclass(frozen=True)
class SpackPrefix:
    """The package's content is a Spack install prefix: its layer gets the relocation record
    ``spack buildcache push`` would write (``relocation``), or, when that cannot be made right,
    ``problem`` says why and the image is not a Spack build-cache entry."""

    relocation: Relocation | None
    problem: str | None = None
    remote: ClassVar[bool] = False


#: Where a Spack package's layer comes from (``Package.spack_content``).
SpackContent = SpackTarball | SpackRegistryLayer | SpackPrefix


def prefix_content(directory: Path, spec: SpackSpec) -> SpackPrefix:
    """What a Spack install prefix ``directory`` (absolute, as given) needs to become a layer
    Spack installs from (see :mod:`imagesmith.inputs.spackrelocation`)."""
    found = find_relocation(directory, spec.nodes)
    if isinstance(found, str):
        return SpackPrefix(None, found)
    return SpackPrefix(found)


def _from_prefix(directory: Path) -> Package:
    # The prefix keeps the path as given (made absolute, not resolved): Spack bakes the install
    # path into rpaths and scripts, and an install tree reached through a symlink must land at
    # the path its binaries expect.
    prefix_dir = Path(os.path.normpath(directory.absolute()))
    spec_file = prefix_dir / _SPEC_PATH
    if not spec_file.is_file():
        raise PackageError(
            f"{prefix_dir} is a directory without {_SPEC_PATH}, so not a Spack install prefix: "
            "give a package file (.json or .toml), a Spack install prefix, a Spack build-cache "
            "tarball or a Spack build cache"
        )
    spec = read_spack_spec(spec_file)
    prefix = _check_prefix(prefix_dir, str(prefix_dir), what="Spack install prefix")
    return Package(
        name=spec.name,
        version=spec.version,
        prefix=prefix,
        content=prefix_dir.resolve(),
        content_kind="directory",
        hash=spec.hash,
        depends=(),
        env=None,
        source=prefix_dir,
        metadata={"spec": spec.document()},
        spack=spec,
        spack_content=prefix_content(prefix_dir, spec),
    )


def _clean_member(name: str, where: str) -> str:
    if name.startswith("/"):
        raise PackageError(f"{where}: member {name!r} is an absolute path")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise PackageError(f"{where}: member {name!r} contains '..'")
    return "/".join(parts)


def read_tarball_spec(stream: IO[bytes], where: str) -> tuple[str, bytes]:
    """The install prefix (relative to ``/``) and ``spec.json`` bytes of a build-cache tarball,
    read from the start of its (compressed) ``stream``.

    Reading stops at the first ``<prefix>/.spack/spec.json`` (near the start of every tarball
    Spack writes), so a tarball of any size, or a layer in a registry, costs a few KiB here;
    every member before it must be the prefix or one of its parents. That every other member
    lies in the prefix is checked when the tarball becomes a layer
    (:func:`~imagesmith.tar.layer.adopt_tarball`).
    """
    seen: list[tuple[str, bool]] = []
    try:
        with open_decompressor(stream, where) as decompressed:
            reader = TarReader(decompressed, where, max_bytes=MAX_TARBALL_BYTES)
            for member in reader.members():
                name = _clean_member(member.name, where)
                if not name:
                    continue
                if member.kind == "file" and (name == _SPEC_PATH or name.endswith("/" + _SPEC_PATH)):
                    if member.size > _MAX_SPEC_BYTES:
                        raise PackageError(f"{where}: {name} is too large ({member.size} bytes) for a spec")
                    return _tarball_prefix(name, seen, where), b"".join(reader.data())
                seen.append((name, member.kind == "dir"))
    except LayerError as exc:
        raise PackageError(f"{where} cannot be read: {exc}") from None
    except OSError as exc:
        raise PackageError(f"{where} cannot be read: {exc.strerror or exc}") from None
    if any(
        "/" not in name and name.endswith((".spec.json", ".spec.json.sig", ".spec.yaml")) for name, _ in seen
    ):
        raise PackageError(
            f"{where} is an old-style Spack .spack archive (a tarball and its spec side by "
            "side); imagesmith reads build-cache tarballs of layouts 2 and 3, whose members are "
            "the install prefix relative to / (push it again with Spack 0.22 or later)"
        )
    raise PackageError(
        f"{where} holds no <prefix>/{_SPEC_PATH}, so it is not a Spack build-cache tarball: "
        "write a package file naming its prefix and content instead (see docs/packages.md)"
    )


def _tarball_prefix(spec_name: str, seen: list[tuple[str, bool]], where: str) -> str:
    if spec_name == _SPEC_PATH:
        raise PackageError(
            f"{where} holds {_SPEC_PATH} at its top: its members are relative to the prefix, not "
            "to /, so its install prefix is unknown; extract that spec.json and write a package "
            "file with spack_spec (the spec), prefix and content (this tarball), see docs/spack.md"
        )
    prefix = spec_name[: -len("/" + _SPEC_PATH)]
    for name, is_dir in seen:
        if name == prefix or name.startswith(prefix + "/") or (is_dir and prefix.startswith(name + "/")):
            continue
        raise PackageError(
            f"{where}: member {name!r} lies outside the install prefix /{prefix} (found from "
            f"{spec_name}); a build-cache tarball holds that prefix and its parent directories only"
        )
    return prefix


def tarball_package(
    tarball: Path,
    *,
    source: Path | None = None,
    spec: SpackSpec | None = None,
    checksum: Digest | None = None,
    cache: str | None = None,
) -> Package:
    """A Spack build-cache tarball as a package whose layer is the tarball itself.

    ``tarball`` is read through (a symlink is fine: the file it names is read); its prefix and
    spec come from its first members (:func:`read_tarball_spec`). A build cache passes the
    ``spec`` it lists for the tarball (which must be the tarball's own), the ``checksum`` it
    records and the cache's ``cache`` locator, where runtime dependencies are looked up;
    ``source`` is the file that named the package (default: the tarball).
    """
    where = f"build-cache tarball {tarball}"
    try:
        f = open(tarball, "rb")  # noqa: SIM115 - closed below
    except FileNotFoundError:
        raise PackageError(f"{where} not found") from None
    except OSError as exc:
        raise PackageError(f"{where} cannot be read: {exc.strerror or exc}") from None
    with f:
        prefix_rel, data = read_tarball_spec(f, where)
    inner_where = f"{tarball} ({prefix_rel}/{_SPEC_PATH})"
    own = parse_spack_spec(_parse_json(data, inner_where), inner_where)
    if spec is not None and own.hash != spec.hash:
        raise PackageError(
            f"{where} holds the spec of {own.name}/{own.hash}, but {spec.source} lists it for "
            f"{spec.name}/{spec.hash}: the build cache is inconsistent"
        )
    spec = spec or own
    named = source or Path(tarball).absolute()
    prefix = _check_prefix(named, "/" + prefix_rel, what="build-cache tarball")
    return Package(
        name=spec.name,
        version=spec.version,
        prefix=prefix,
        content=Path(tarball).resolve(),
        content_kind="tarball",
        hash=spec.hash,
        depends=(),
        env=None,
        source=named,
        metadata={"spec": spec.document()},
        spack=spec,
        spack_content=SpackTarball(checksum),
        spack_cache=cache,
    )


def load_spack_package(path: str | Path) -> Package:
    """Load a Spack install prefix, its ``.spack/spec.json`` or a build-cache tarball.

    A directory must hold ``.spack/spec.json``: its absolute path (as given, symlinks kept) is
    the prefix in the image and its contents the layer, with the relocation record Spack's
    push would add. A ``spec.json`` counts only inside an install prefix
    (``<prefix>/.spack/spec.json``) and stands for that prefix; anywhere else a package file
    with ``spack_spec`` must say where the content is. A ``.tar``, ``.tar.gz``, ``.tgz``,
    ``.tar.zst`` or ``.spack`` file must hold one install prefix relative to ``/`` (its parents
    allowed) with ``.spack/spec.json`` in it, and becomes the layer byte for byte; the name as
    given decides (a symlink ``x.tar.gz`` to a build-cache blob is a tarball). Name, version and
    hash come from the root node; ``depends`` stays empty until
    :func:`~imagesmith.inputs.load.load_packages` matches the runtime dependencies by hash; the
    environment is inferred from the prefix layout. Build caches (directories, manifests,
    blobs, registries) are read by :mod:`imagesmith.inputs.spackcache`. Problems raise
    :class:`PackageError`.
    """
    given = Path(path)
    if given.is_dir():
        return _from_prefix(given)
    lower = given.name.lower()
    if lower.endswith(".json"):
        if _spec_in_prefix(given.absolute()):
            return _from_prefix(given.absolute().parent.parent)
        if not given.is_file():
            raise PackageError(f"Spack spec {given.absolute()} not found")
        raise PackageError(
            f"package file {given.absolute()} is a Spack spec.json outside an install prefix "
            f"(<prefix>/{_SPEC_PATH}), so its content is unknown: give the install prefix "
            "directory, a build-cache tarball, or a package file with spack_spec, prefix and "
            "content (see docs/spack.md)"
        )
    if lower.endswith(BUILDCACHE_SUFFIXES):
        return tarball_package(given)
    raise PackageError(
        f"{given.absolute()} is not a Spack install prefix, spec.json or build-cache tarball "
        f"({', '.join(BUILDCACHE_SUFFIXES)})"
    )


def resolve_spack_dependencies(package: Package, providers: Mapping[str, Package]) -> tuple[str, ...]:
    """The keys of the packages providing ``package``'s runtime dependencies, in order.

    ``providers`` maps a hash to the package loaded with it (a Spack package's DAG hash or a
    package file's explicit ``hash``). Every transitive ``link``/``run`` dependency must be
    there, and under the same name; otherwise :class:`PackageError` lists each missing one and
    says how to provide it. A package without Spack metadata has none.
    """
    spec = package.spack
    if spec is None:
        return ()
    keys: list[str] = []
    missing: list[SpackDependency] = []
    for dep in spec.runtime:
        provider = providers.get(dep.hash)
        if provider is None:
            missing.append(dep)
            continue
        if provider.name != dep.name:
            raise PackageError(
                f"package {package.label} ({package.source}) needs {dep.label}, but the package "
                f"given with hash {dep.hash} is {provider.label} ({provider.source})"
            )
        if provider.key != package.key and provider.key not in keys:
            keys.append(provider.key)
    if missing:
        if len(missing) == 1:
            kind, how = (
                "dependency",
                "its install prefix or build-cache tarball (or a package file with its hash)",
            )
        else:
            kind, how = (
                "dependencies",
                "the install prefix or build-cache tarball of each (or a package file with the hash)",
            )
        raise PackageError(
            f"package {package.label} ({package.source}) needs "
            f"{', '.join(dep.label for dep in missing)} at run time (Spack link/run {kind}), "
            f"not among the packages given: add {how} to the same command"
        )
    return tuple(keys)


def spack_config_fields(package: Package, layer_digest: Digest) -> dict[str, Any]:
    """The top-level image config keys Spack's OCI build cache reads, for the top package.

    ``layer_digest`` is the digest of the package's own (compressed) layer, the image's last
    layer. For a package without Spack metadata the result is empty; otherwise it holds
    ``spec`` (the spec as read), ``buildcache_layout_version`` (2) and
    ``binary_cache_checksum`` (``{"hash_algorithm": "sha256", "hash": <hex of the layer
    digest>}``, as Spack records the checksum of the compressed tarball).
    """
    if package.spack is None:
        return {}
    return {
        "spec": package.spack.to_json(),
        "buildcache_layout_version": BUILDCACHE_LAYOUT_VERSION,
        "binary_cache_checksum": {"hash_algorithm": layer_digest.algorithm, "hash": layer_digest.hex},
    }
