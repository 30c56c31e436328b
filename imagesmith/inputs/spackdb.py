"""Spack's build-cache database: the document Spack reads from a mirror's ``index.spack``.

A Spack build cache lists what it holds in one JSON document, the same format Spack keeps its
install database in (``spack.database``), written by ``spack buildcache update-index``
(``BuildCacheDatabase``, record fields ``spec``, ``ref_count`` and ``in_buildcache``)::

    {"database": {"version": "8",
                  "installs": {"<dag hash>": {"spec": {<node, as in a spec.json>},
                                              "ref_count": 2, "in_buildcache": true}, ...}}}

Every node of every DAG in the cache has a record, keyed by its DAG hash: the packages
themselves (``in_buildcache`` true) and every dependency they name, build-only and external
ones included (false, unless the cache also holds that package). ``ref_count`` counts the
records that depend on a record. The records' nodes are the nodes of the spec files, exactly as
read; only the database version decides how Spack parses them:

- ``"7"`` (Spack 0.21 to 0.23) holds specfile format 4 nodes; Spack 1.x reads version 7 too.
- ``"8"`` (Spack 1.x) holds format 5 nodes. Spack 0.23 refuses it with a warning and skips the
  mirror's index, exactly as for a database written by Spack 1.x itself.

:func:`build_database` therefore writes version 7 when every spec is format 4 or older (nodes of
formats 2 and 3 get their dependency types as ``parameters.deptypes``), so every Spack in use
reads it, and version 8 as soon as one spec is format 5, older nodes then converted as Spack 1.x
converts them (the node's ``compiler`` becomes ``annotations.compiler``). Records come
dependencies first, in the order of the specs given, and the bytes are compact JSON as Spack
writes them, so the same specs always give the same document. :func:`parse_database` reads a
database back (Spack's or imagesmith's) with the checks a reader needs.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from imagesmith.errors import ManifestError

__all__ = [
    "DATABASE_VERSIONS",
    "MAX_DATABASE_SIZE",
    "DatabaseRecord",
    "SpackDatabase",
    "build_database",
    "database_media_type",
    "parse_database",
]

#: The database versions written and read here: 7 (specfile format 4) and 8 (format 5).
DATABASE_VERSIONS = ("7", "8")
#: A database is one JSON document held in memory; a cache of 100,000 specs is tens of MiB.
MAX_DATABASE_SIZE = 256 << 20
# Older database versions Spack still reads without reindexing (database.py): read, never written.
_READABLE_VERSIONS = ("5", "6", *DATABASE_VERSIONS)


def database_media_type(version: str) -> str:
    """The media type Spack 1.x gives a database of ``version`` in a layout-3 build cache
    (``application/vnd.spack.db.v8+json``), used for the payload of ``index.spack``."""
    return f"application/vnd.spack.db.v{version}+json"


@dataclass(frozen=True)
class DatabaseRecord:
    """One record: the node (``spec``), how many records depend on it and whether the build
    cache holds the package itself."""

    node: Mapping[str, Any]
    ref_count: int
    in_buildcache: bool

    @property
    def name(self) -> str:
        return str(self.node.get("name", ""))

    @property
    def version(self) -> str:
        value = self.node.get("version", "")
        return value if isinstance(value, str) else ""

    def to_json(self) -> dict[str, Any]:
        """The record as Spack writes it: ``spec``, ``ref_count``, ``in_buildcache``."""
        return {"spec": self.node, "ref_count": self.ref_count, "in_buildcache": self.in_buildcache}


@dataclass(frozen=True)
class SpackDatabase:
    """A build-cache database: its ``version`` and its ``records`` by DAG hash, in order."""

    version: str
    records: Mapping[str, DatabaseRecord]

    @property
    def packages(self) -> tuple[str, ...]:
        """The hashes of the packages the build cache holds (``in_buildcache``), in order."""
        return tuple(h for h, record in self.records.items() if record.in_buildcache)

    def to_bytes(self) -> bytes:
        """The document as Spack writes it: compact JSON, records in order."""
        installs = {h: record.to_json() for h, record in self.records.items()}
        doc = {"database": {"version": self.version, "installs": installs}}
        return json.dumps(doc, separators=(",", ":")).encode("utf-8")

    @property
    def media_type(self) -> str:
        return database_media_type(self.version)

    def spec_nodes(self, root: str) -> list[Mapping[str, Any]] | None:
        """The nodes of the DAG rooted at ``root`` (root first, then every node it reaches, each
        once), or None when a node of it is missing: what a spec's ``spec.nodes`` would hold."""
        if root not in self.records:
            return None
        nodes: list[Mapping[str, Any]] = []
        seen = {root}
        pending = [root]
        while pending:
            record = self.records.get(pending.pop(0))
            if record is None:
                return None
            nodes.append(record.node)
            for dep_hash in _dependency_hashes(record.node):
                if dep_hash not in seen:
                    seen.add(dep_hash)
                    pending.append(dep_hash)
        return nodes


def _dependency_hashes(node: Mapping[str, Any]) -> Iterator[str]:
    deps = node.get("dependencies")
    if isinstance(deps, list):
        for dep in deps:
            if isinstance(dep, Mapping) and isinstance(dep.get("hash"), str):
                yield dep["hash"]


def _as_format4(node: Mapping[str, Any]) -> dict[str, Any]:
    """A node of specfile format 2, 3 or 4 in format 4's shape: dependency types under
    ``parameters.deptypes`` (formats 2 and 3 give them as ``type``)."""
    out = copy.deepcopy(dict(node))
    deps = out.get("dependencies")
    if isinstance(deps, list):
        for dep in deps:
            if isinstance(dep, dict) and "parameters" not in dep and "type" in dep:
                deptypes = dep.pop("type")
                dep["parameters"] = {
                    "deptypes": [deptypes] if isinstance(deptypes, str) else list(deptypes),
                    "virtuals": [],
                }
    return out


def _as_format5(node: Mapping[str, Any], format_version: int) -> dict[str, Any]:
    """A node of specfile format 4 or older as Spack 1.x writes it back in format 5: the
    original format and the compiler move to ``annotations`` (``gcc@=12.2.0``)."""
    out = _as_format4(node)
    if "annotations" in out:
        return out
    annotations: dict[str, Any] = {"original_specfile_version": format_version}
    compiler = out.pop("compiler", None)
    if isinstance(compiler, Mapping) and compiler.get("name"):
        version = compiler.get("version") or compiler.get("versions") or ""
        annotations["compiler"] = f"{compiler['name']}@={version}" if version else str(compiler["name"])
    out["annotations"] = annotations
    return out


def build_database(specs: Iterable[tuple[int, Iterable[Mapping[str, Any]]]]) -> SpackDatabase:
    """The database of a build cache holding the packages ``specs`` describe.

    Each item is ``(format version, nodes)`` of one package's spec (``spec._meta.version`` and
    ``spec.nodes``, the package itself first). Every node reachable from a package over its
    dependencies gets a record; the packages are ``in_buildcache``. A node that several specs
    hold is recorded once, as first seen. See the module docstring for the version chosen.
    """
    items = [(version, list(nodes)) for version, nodes in specs]
    db_version = "8" if any(version >= 5 for version, _ in items) else "7"
    records: dict[str, dict[str, Any]] = {}
    formats: dict[str, int] = {}
    in_cache: set[str] = set()
    for format_version, nodes in items:
        by_hash: dict[str, Mapping[str, Any]] = {}
        for node in nodes:
            node_hash = node.get("hash")
            if isinstance(node_hash, str):
                by_hash.setdefault(node_hash, node)
        if not nodes or not isinstance(nodes[0].get("hash"), str):
            continue
        root = nodes[0]["hash"]
        in_cache.add(root)
        # Dependencies first (post-order), as Spack adds them; iterative for deep DAGs.
        stack: list[tuple[str, Iterator[str]]] = [(root, _dependency_hashes(by_hash[root]))]
        visiting = {root}
        while stack:
            node_hash, pending = stack[-1]
            for dep_hash in pending:
                if dep_hash in records or dep_hash in visiting or dep_hash not in by_hash:
                    continue
                visiting.add(dep_hash)
                stack.append((dep_hash, _dependency_hashes(by_hash[dep_hash])))
                break
            else:
                stack.pop()
                if node_hash not in records:
                    records[node_hash] = dict(by_hash[node_hash])
                    formats[node_hash] = format_version
    ref_counts = dict.fromkeys(records, 0)
    for node in records.values():
        for dep_hash in set(_dependency_hashes(node)):
            if dep_hash in ref_counts:
                ref_counts[dep_hash] += 1

    def convert(node: Mapping[str, Any], format_version: int) -> dict[str, Any]:
        if db_version == "7":
            return _as_format4(node)
        return _as_format5(node, format_version) if format_version < 5 else copy.deepcopy(dict(node))

    return SpackDatabase(
        db_version,
        {
            h: DatabaseRecord(convert(node, formats[h]), ref_counts[h], h in in_cache)
            for h, node in records.items()
        },
    )


def parse_database(data: bytes, what: str) -> SpackDatabase:
    """Read a build-cache database (see the module docstring); :class:`ManifestError` naming
    ``what`` when it is not one, or has a version Spack never wrote."""
    if len(data) > MAX_DATABASE_SIZE:
        raise ManifestError(f"{what} is larger than {MAX_DATABASE_SIZE} bytes: refused")
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ManifestError(f"{what} is not JSON: {exc}") from None
    database = doc.get("database") if isinstance(doc, dict) else None
    if not isinstance(database, dict):
        raise ManifestError(f"{what} is not a Spack build-cache database (no 'database' object)")
    version = database.get("version")
    if not isinstance(version, str) or version not in _READABLE_VERSIONS:
        raise ManifestError(
            f"{what} is a Spack database of version {version!r}; imagesmith reads versions "
            f"{', '.join(_READABLE_VERSIONS)}"
        )
    installs = database.get("installs", {})
    if not isinstance(installs, dict):
        raise ManifestError(f"{what}: 'installs' must be an object")
    records: dict[str, DatabaseRecord] = {}
    for key, raw in installs.items():
        if not isinstance(raw, dict) or not isinstance(raw.get("spec"), dict):
            raise ManifestError(f"{what}: the record of {key!r} has no 'spec' object")
        node = raw["spec"]
        ref_count = raw.get("ref_count", 0)
        if isinstance(ref_count, bool) or not isinstance(ref_count, int):
            raise ManifestError(f"{what}: the record of {key!r} has a 'ref_count' that is not a number")
        records[str(key)] = DatabaseRecord(node, ref_count, raw.get("in_buildcache") is True)
    return SpackDatabase(version, records)
