"""Spack's relocation record for an install prefix: ``.spack/binary_distribution``.

``spack buildcache push`` adds one file to the tarball of a prefix, ``<prefix>/.spack/
binary_distribution``, and ``spack install`` from a build cache needs it: without it the
install stops ("Tarball is not a Spack package, missing binary_distribution file"), and with it
Spack relocates the package to its own install tree. This module writes the same record for an
install prefix imagesmith archives itself, from Spack's own rules (``binary_distribution.
get_buildinfo_dict`` and ``tarfile_of_spec_prefix``, Spack 1.x; Spack 0.23 reads the same keys):

- ``buildpath``: the install tree root the prefix lives in (the directory holding ``.spack-db``),
  ``relative_prefix`` the prefix relative to it, ``sbang_install_path`` the tree's
  ``bin/sbang`` (without path padding), ``spackprefix`` Spack's own prefix where the tree is
  Spack's default ``$spack/opt/spack`` (it only ever served an sbang line of Spack < 0.17);
- ``hash_to_prefix``: where each spec the package may refer to was installed (the package, its
  link dependencies transitively, its direct run dependencies; no externals), from the install
  tree's database, as Spack takes them;
- ``relocate_binaries``: every ELF or Mach-O file; ``relocate_textfiles``: every text file (UTF-8,
  or ISO-8859-1 without control characters) naming one of those prefixes, the sbang path or the
  tree root, with Spack's own pattern; ``relocate_links``: every symlink whose absolute target
  starts with one of them. Files under ``.spack/`` are never relocated, and of hardlinked files
  only the one that carries the data in the layer is listed (``hardlinks_deduped``).

The record is written as JSON, which is YAML in flow style: Spack reads it with its YAML loader.
When a prefix is not inside a Spack install tree, or the tree's database does not know where a
dependency is, :func:`find_relocation` says why instead: such a prefix still makes a runnable
image, but not one Spack can install.
"""

from __future__ import annotations

import codecs
import json
import os
import re
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imagesmith.errors import LayerError
from imagesmith.jsonfields import JsonFields
from imagesmith.tar.writer import TarEntry

__all__ = [
    "BUILDINFO_PATH",
    "Relocation",
    "buildinfo",
    "find_relocation",
]

#: Where the record lives, relative to the prefix.
BUILDINFO_PATH = ".spack/binary_distribution"
_DB_INDEX = Path(".spack-db") / "index.json"
_PADDING = "__spack_path_placeholder__"
_CHUNK = 4 << 20
# A prefix is found in a text file with Spack's pattern; a chunked search keeps this much of the
# previous chunk so that a match across a boundary, and the word characters before it, are seen.
_OVERLAP = 1 << 20
_NOT_LATIN1_TEXT = re.compile(b"[\x00\x7f-\x9f]")
_MACHO_MAGIC = (b"\xcf\xfa\xed\xfe", b"\xfe\xed\xfa\xcf", b"\xce\xfa\xed\xfe", b"\xfe\xed\xfa\xce")


@dataclass(frozen=True)
class Relocation(JsonFields):
    """Everything of a relocation record that does not depend on the prefix's files."""

    buildpath: str
    relative_prefix: str
    sbang_install_path: str
    spackprefix: str | None
    hash_to_prefix: tuple[tuple[str, str], ...]

    @property
    def prefixes(self) -> list[str]:
        """The paths Spack looks for in text files and symlinks (``prefixes_to_relocate``)."""
        return [*(p for _, p in self.hash_to_prefix), self.sbang_install_path, self.buildpath]


def _unpadded(root: str) -> str:
    """``root`` without the padding directories Spack appends with ``padded_length``."""
    parts = root.split("/")
    while (
        len(parts) > 1
        and parts[-1]
        and (_PADDING.startswith(parts[-1]) or _PADDING.startswith(parts[-1][:-1]))
    ):
        parts.pop()
    return "/".join(parts) or "/"


_DB_CACHE: dict[tuple[str, int, int], Mapping[str, Any]] = {}
_DB_LOCK = threading.Lock()


def _database_paths(store: Path) -> Mapping[str, Any]:
    """``hash -> install record`` of the install tree's database, read once per version of it."""
    index = store / _DB_INDEX
    st = index.stat()
    key = (str(index), st.st_mtime_ns, st.st_size)
    with _DB_LOCK:
        found = _DB_CACHE.get(key)
    if found is not None:
        return found
    doc = json.loads(index.read_bytes())
    installs = doc["database"]["installs"]
    if not isinstance(installs, dict):
        raise ValueError("'installs' is not an object")
    with _DB_LOCK:
        _DB_CACHE[key] = installs
    return installs


def _specs_to_relocate(nodes: Iterable[Mapping[str, Any]], root: str) -> list[str]:
    """Spack's ``specs_to_relocate``: the root, its link dependencies breadth first and
    transitively, then its direct run dependencies; each once, externals left out."""
    by_hash = {n["hash"]: n for n in nodes if isinstance(n.get("hash"), str)}

    def deps(node_hash: str, deptype: str) -> list[str]:
        out = []
        for dep in by_hash.get(node_hash, {}).get("dependencies") or ():
            params = dep.get("parameters")
            types = params.get("deptypes") if isinstance(params, Mapping) else dep.get("type")
            if isinstance(types, str):
                types = [types]
            if deptype in (types or ()):
                out.append(dep["hash"])
        return out

    order = [root]
    seen = {root}
    queue = [root]
    while queue:
        for dep_hash in deps(queue.pop(0), "link"):
            if dep_hash not in seen:
                seen.add(dep_hash)
                order.append(dep_hash)
                queue.append(dep_hash)
    for dep_hash in deps(root, "run"):
        if dep_hash not in seen:
            seen.add(dep_hash)
            order.append(dep_hash)
    return [h for h in order if not by_hash.get(h, {}).get("external")]


def find_relocation(prefix: Path, nodes: Iterable[Mapping[str, Any]]) -> Relocation | str:
    """The relocation record fields of the install prefix ``prefix`` (an absolute path as
    given, symlinks kept) of the spec ``nodes`` (root first), or a one-line reason why Spack
    could not install the package from an image of it."""
    nodes = list(nodes)
    root = nodes[0]["hash"]
    store = next((parent for parent in prefix.parents if (parent / ".spack-db").is_dir()), None)
    if store is None:
        return (
            f"{prefix} is not inside a Spack install tree (no .spack-db above it), so where Spack "
            "installed it, and its dependencies, is unknown"
        )
    try:
        installs = _database_paths(store)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"the Spack database {store / _DB_INDEX} cannot be read ({exc})"

    def path_of(dag_hash: str) -> str | None:
        record = installs.get(dag_hash)
        path = record.get("path") if isinstance(record, Mapping) else None
        return path if isinstance(path, str) and path.startswith("/") else None

    recorded = path_of(root)
    if recorded is None or os.path.realpath(recorded) != os.path.realpath(prefix):
        return f"the Spack database of {store} does not record {prefix} as the install prefix of /{root}"
    # The tree root as Spack spells it (its configured path), read off the recorded prefix.
    relative = os.path.relpath(prefix, store)
    buildpath = recorded[: -len(relative) - 1] if recorded.endswith("/" + relative) else str(store)
    pairs = []
    for dag_hash in _specs_to_relocate(nodes, root):
        path = path_of(dag_hash)
        if path is None:
            name = next((n.get("name") for n in nodes if n.get("hash") == dag_hash), "?")
            return (
                f"the Spack database of {store} does not know where {name}/{dag_hash} is installed "
                "(an upstream install?), which relocation needs"
            )
        pairs.append((dag_hash, path))
    unpadded = _unpadded(buildpath)
    return Relocation(
        buildpath=buildpath,
        relative_prefix=os.path.relpath(recorded, buildpath),
        sbang_install_path=f"{unpadded}/bin/sbang",
        spackprefix=unpadded[: -len("/opt/spack")] if unpadded.endswith("/opt/spack") else None,
        hash_to_prefix=tuple(pairs),
    )


def _prefix_pattern(prefixes: Iterable[str]) -> re.Pattern[bytes]:
    # spack.relocate_text.utf8_paths_to_single_binary_regex, verbatim.
    alternatives = b"|".join(re.escape(p.encode("utf-8")) for p in prefixes)
    return re.compile(b"(?<![\\w\\-_/])([\\w\\-_]*?)(%s)([\\w\\-_/]*)" % alternatives)


def _universal_binary(head: bytes) -> bool:
    # Mach-O universal binaries, told from Java class files by their small architecture count.
    if head[:4] == b"\xca\xfe\xba\xbe":
        return int.from_bytes(head[4:8], "big") < 10
    return head[:4] == b"\xbe\xba\xfe\xca" and int.from_bytes(head[4:8], "little") < 10


def _classify(path: str, pattern: re.Pattern[bytes]) -> str | None:
    """``"binary"``, ``"text"`` (a text file naming a prefix) or None, as Spack decides."""
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return None
        if head[:4] == b"\x7fELF" or head[:4] in _MACHO_MAGIC or _universal_binary(head):
            return "binary"
        f.seek(0)
        utf8: codecs.IncrementalDecoder | None = codecs.getincrementaldecoder("utf-8")("strict")
        latin1 = True
        found = False
        tail = b""
        while True:
            chunk = f.read(_CHUNK)
            if utf8 is not None:
                try:
                    utf8.decode(chunk, final=not chunk)
                except UnicodeDecodeError:
                    utf8 = None
            if latin1 and _NOT_LATIN1_TEXT.search(chunk):
                latin1 = False
            if utf8 is None and not latin1:
                return None
            if not chunk:
                break
            window = tail + chunk
            if not found and pattern.search(window):
                found = True
            tail = window[-_OVERLAP:]
        return "text" if found else None


def buildinfo(relocation: Relocation, entries: Iterable[TarEntry], prefix: str) -> bytes:
    """The bytes of ``.spack/binary_distribution`` for the layer ``entries`` (as
    :func:`~imagesmith.tar.entries.directory_entries` yields them; ``prefix`` is their install
    prefix as an archive path): every file's content is read once to classify it."""
    pattern = _prefix_pattern(relocation.prefixes)
    base = prefix + "/"
    binaries: list[str] = []
    textfiles: list[str] = []
    links: list[str] = []
    for entry in entries:
        if not entry.name.startswith(base):
            continue
        rel = entry.name[len(base) :]
        if entry.kind == "symlink":
            target = entry.linkname
            if target.startswith("/") and pattern.match(target.encode("utf-8")):
                links.append(rel)
        elif entry.kind == "file" and rel.split("/", 1)[0] != ".spack" and isinstance(entry.source, str):
            try:
                kind = _classify(entry.source, pattern)
            except OSError as exc:
                raise LayerError(f"cannot read {entry.source}: {exc.strerror or exc}") from None
            if kind == "binary":
                binaries.append(rel)
            elif kind == "text":
                textfiles.append(rel)
    record: dict[str, Any] = {
        "sbang_install_path": relocation.sbang_install_path,
        "buildpath": relocation.buildpath,
    }
    if relocation.spackprefix is not None:
        record["spackprefix"] = relocation.spackprefix
    record.update(
        relative_prefix=relocation.relative_prefix,
        hardlinks_deduped=True,
        hash_to_prefix=dict(relocation.hash_to_prefix),
        relocate_binaries=binaries,
        relocate_links=links,
        relocate_textfiles=textfiles,
    )
    return (json.dumps(record, indent=1, ensure_ascii=False) + "\n").encode("utf-8")
