"""Spack environments as image inputs: the roots of a concretized, installed environment.

A Spack environment is a directory holding ``spack.yaml`` (what the user asked for) and, once
concretized, ``spack.lock``: JSON with ``_meta.lockfile-version``, ``roots`` (each
``{"hash", "spec"}``, in the order the user listed them) and ``concrete_specs`` (every node of
every root's DAG by DAG hash, in the node format of Spack's spec.json). Spack 0.23 writes
lockfile version 5 (specfile format 4), Spack 1.x version 6 (specfile format 5); versions 3
and 4 (specfile formats 2 and 3, Spack 0.17-0.20) are read too. Versions 1 and 2 keyed nodes
by build hash and predate Spack 0.17: they are refused with a hint to concretize again.

The lockfile says what is installed, not where: install prefixes come from the Spack database
of the install tree, ``<install tree>/.spack-db/index.json`` (``installs``: DAG hash ->
``{"path", "installed", ...}``). The install tree is given, or Spack's default
``$SPACK_ROOT/opt/spack``. Each root's runtime closure (``link`` and ``run`` dependencies,
transitively, externals left out, as for a single Spack package) must be installed; the
packages themselves are then read from their prefixes by
:func:`~imagesmith.inputs.load.load_packages`, exactly as if every prefix had been named.

Nothing here runs Spack: a machine with the install tree and the environment directory (a
build node, a CI job) is enough.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imagesmith.errors import PackageError, UsageError
from imagesmith.inputs.load import load_packages
from imagesmith.inputs.packages import Package
from imagesmith.inputs.spack import parse_spack_spec

__all__ = [
    "LOCKFILE_VERSIONS",
    "SpackEnvironment",
    "load_environment",
    "read_environment",
]

#: ``_meta.lockfile-version`` values read, and the specfile format of their nodes.
LOCKFILE_VERSIONS: Mapping[int, int] = {3: 2, 4: 3, 5: 4, 6: 5}
_MAX_LOCK_BYTES = 256 << 20  # a lockfile of thousands of specs is tens of MiB


@dataclass(frozen=True)
class EnvironmentRoot:
    """A root of an environment: the user's spec as written (``"r-tidyverse@2"``), the
    concrete node's name, version and DAG hash."""

    spec: str
    name: str
    version: str
    hash: str

    @property
    def label(self) -> str:
        return f"{self.name}@{self.version}/{self.hash[:7]}"


@dataclass(frozen=True)
class SpackEnvironment:
    """A concretized, installed environment: its ``roots`` (lock order, each once) and the
    install ``prefixes`` of everything they need at run time, roots first, then dependencies
    in the order the roots reach them."""

    path: Path
    lockfile_version: int
    roots: tuple[EnvironmentRoot, ...]
    prefixes: tuple[Path, ...]
    root_prefixes: tuple[Path, ...]


def _fail(path: Path, problem: str) -> PackageError:
    return PackageError(f"Spack environment {path}: {problem}")


def _read_json(path: Path, what: str, where: Path) -> Any:
    try:
        with path.open("rb") as f:
            data = f.read(_MAX_LOCK_BYTES + 1)
    except FileNotFoundError:
        raise _fail(where, f"{what} {path} not found") from None
    except OSError as exc:
        raise _fail(where, f"cannot read {what} {path}: {exc.strerror or exc}") from None
    if len(data) > _MAX_LOCK_BYTES:
        raise _fail(where, f"{what} {path} is larger than {_MAX_LOCK_BYTES >> 20} MiB")
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise _fail(where, f"{what} {path} is not valid JSON: {exc}") from None


def _lock(directory: Path) -> tuple[int, list[tuple[str, str]], Mapping[str, Mapping[str, Any]]]:
    """(lockfile version, roots as (hash, spec), concrete_specs) of the environment."""
    lock = directory / "spack.lock"
    if not lock.is_file():
        if (directory / "spack.yaml").is_file():
            raise _fail(
                directory,
                f"it is not concretized (no spack.lock beside spack.yaml): run "
                f"`spack -e {directory} concretize` and `spack -e {directory} install` first",
            )
        raise UsageError(f"{directory} is not a Spack environment: it has neither spack.yaml nor spack.lock")
    doc = _read_json(lock, "lockfile", directory)
    meta = doc.get("_meta") if isinstance(doc, dict) else None
    version = meta.get("lockfile-version") if isinstance(meta, dict) else None
    if isinstance(version, bool) or not isinstance(version, int):
        raise _fail(directory, "spack.lock has no _meta.lockfile-version: it is not a Spack lockfile")
    if version not in LOCKFILE_VERSIONS:
        newer = version > max(LOCKFILE_VERSIONS)
        hint = (
            "it was written by a newer Spack than imagesmith knows"
            if newer
            else "it was written by Spack older than 0.17: concretize the environment again"
        )
        raise _fail(
            directory,
            f"spack.lock is lockfile version {version}; imagesmith reads versions "
            f"{min(LOCKFILE_VERSIONS)}-{max(LOCKFILE_VERSIONS)} ({hint})",
        )
    assert isinstance(doc, dict)
    roots, specs = doc.get("roots"), doc.get("concrete_specs")
    if not isinstance(roots, list) or not isinstance(specs, dict):
        raise _fail(directory, "spack.lock needs 'roots' (a list) and 'concrete_specs' (an object)")
    if not roots:
        raise _fail(directory, "spack.lock has no roots: add specs to the environment and concretize it")
    out = []
    for index, root in enumerate(roots):
        if not isinstance(root, dict) or not isinstance(root.get("hash"), str):
            raise _fail(directory, f"spack.lock roots[{index}] needs a 'hash'")
        if root["hash"] not in specs:
            raise _fail(
                directory, f"spack.lock roots[{index}] ({root.get('spec')}) is not among concrete_specs"
            )
        out.append((root["hash"], str(root.get("spec", ""))))
    return version, out, specs


def _dag(root: str, specs: Mapping[str, Mapping[str, Any]], directory: Path) -> list[dict[str, Any]]:
    """The nodes reachable from ``root`` (every edge), the root first: a spec.json's nodes."""
    order = [root]
    seen = {root}
    index = 0
    while index < len(order):
        node = specs[order[index]]
        index += 1
        if not isinstance(node, Mapping):
            raise _fail(directory, f"spack.lock concrete_specs[{order[index - 1]!r}] is not an object")
        for dep in node.get("dependencies") or ():
            dep_hash = dep.get("hash") if isinstance(dep, Mapping) else None
            if isinstance(dep_hash, str) and dep_hash not in seen:
                if dep_hash not in specs:
                    raise _fail(
                        directory,
                        f"{node.get('name')} depends on {dep.get('name')}/{dep_hash}, which is not "
                        "among spack.lock's concrete_specs: concretize the environment again",
                    )
                seen.add(dep_hash)
                order.append(dep_hash)
    nodes = []
    for node_hash in order:
        node = dict(specs[node_hash])
        node.setdefault("hash", node_hash)  # the key is the DAG hash in every version read here
        nodes.append(node)
    return nodes


def _database(install_tree: Path, directory: Path) -> Mapping[str, Any]:
    index = install_tree / ".spack-db" / "index.json"
    if not index.is_file():
        raise UsageError(
            f"no Spack database at {index}: give the install tree of the Spack that installed "
            f"{directory} (--spack-install-tree DIR, the directory holding .spack-db)"
        )
    doc = _read_json(index, "Spack database", directory)
    installs = doc.get("database", {}).get("installs") if isinstance(doc, dict) else None
    if not isinstance(installs, dict):
        raise _fail(directory, f"{index} has no database.installs: it is not a Spack database")
    return installs


def _default_install_tree() -> Path | None:
    root = os.environ.get("SPACK_ROOT")
    return Path(root) / "opt" / "spack" if root else None


def read_environment(path: str | Path, *, install_tree: str | Path | None = None) -> SpackEnvironment:
    """Read a Spack environment directory and find every prefix its roots need at run time.

    ``install_tree`` is the root of the Spack install tree (holding ``.spack-db``); by default
    ``$SPACK_ROOT/opt/spack``. Raises :class:`UsageError` for a directory that is no
    environment or a missing database, and :class:`PackageError` for an environment that is
    not concretized, a lockfile that cannot be read, or specs that are not installed: the
    message names the first spec missing in dependency order (and how many more are).
    """
    directory = Path(path)
    if not directory.is_dir():
        raise UsageError(f"Spack environment {directory} not found: give the directory holding spack.yaml")
    directory = directory.resolve()
    version, roots, specs = _lock(directory)
    format_version = LOCKFILE_VERSIONS[version]
    tree = Path(install_tree) if install_tree is not None else _default_install_tree()
    if tree is None:
        raise UsageError(
            f"where is {directory} installed? give --spack-install-tree DIR (the directory holding "
            ".spack-db) or set SPACK_ROOT"
        )
    installs = _database(tree, directory)

    found: list[EnvironmentRoot] = []
    needed: dict[str, str] = {}  # hash -> label, in dependency order (each root after its needs)
    root_hashes: list[str] = []
    for root_hash, user_spec in roots:
        if root_hash in root_hashes:
            continue  # two user specs concretized to one spec: one root
        nodes = _dag(root_hash, specs, directory)
        where = f"{directory}/spack.lock ({user_spec or root_hash})"
        spec = parse_spack_spec({"spec": {"_meta": {"version": format_version}, "nodes": nodes}}, where)
        root_hashes.append(root_hash)
        found.append(EnvironmentRoot(user_spec, spec.name, spec.version, spec.hash))
        for dep in spec.runtime:
            needed.setdefault(dep.hash, dep.label)
        needed.setdefault(spec.hash, f"{spec.name}@{spec.version}/{spec.hash}")

    prefixes: dict[str, Path] = {}
    missing: list[str] = []
    for node_hash, label in needed.items():
        record = installs.get(node_hash)
        prefix = record.get("path") if isinstance(record, Mapping) else None
        if (
            not isinstance(record, Mapping)
            or not record.get("installed")
            or not isinstance(prefix, str)
            or not (Path(prefix) / ".spack" / "spec.json").is_file()
        ):
            missing.append(label)
            continue
        prefixes[node_hash] = Path(prefix)
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise _fail(
            directory,
            f"{missing[0]} is not installed in {tree}{more}: run `spack -e {directory} install` "
            "(or give the install tree that has it with --spack-install-tree)",
        )
    return SpackEnvironment(
        path=directory,
        lockfile_version=version,
        roots=tuple(found),
        prefixes=tuple(prefixes.values()),
        root_prefixes=tuple(prefixes[h] for h in root_hashes),
    )


def load_environment(
    path: str | Path, *, install_tree: str | Path | None = None
) -> tuple[list[Package], list[Package]]:
    """The packages of an environment's image, dependencies first, and its roots.

    See :func:`read_environment`; the prefixes are loaded with
    :func:`~imagesmith.inputs.load.load_packages` (roots first, so each root's dependencies come
    right before it), which matches every runtime dependency by hash as for prefixes named on
    the command line. The last package is the last root that no other root depends on.
    """
    env = read_environment(path, install_tree=install_tree)
    packages = load_packages([*env.root_prefixes, *env.prefixes])
    by_hash = {p.hash: p for p in packages}
    roots = [by_hash[root.hash] for root in env.roots]
    return packages, roots
