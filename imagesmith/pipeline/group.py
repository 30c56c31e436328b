"""One layer holding several packages: their entries merged into one sorted stream.

When the layer budget (:mod:`imagesmith.pipeline.budget`) groups packages, their contents go into one
layer whose bytes depend only on the set of packages: the entries of every package, sorted by
path exactly as a single package's are (see :mod:`imagesmith.tar.layer`), each path once. The
same group so gives the same blob in every image, every run and every platform whose
contents are the same.

Packages are streamed one at a time, in the order of their install prefixes: two prefixes of
which neither contains the other hold disjoint ranges of the sorted order (only their common
parent directories, ``opt`` or ``opt/spack``, are shared, and they are written once), so
concatenating the packages' own sorted streams is the sorted stream of the group. Memory holds
one package's entry index at a time, never a list of the whole group's files.

Only a package installed inside another one's prefix (``/opt/suite`` and
``/opt/suite/plugins/x``) can claim a path the other has. Such nested packages are merged
entry by entry; a path both hold must be the same (same kind, mode, link target and bytes)
and is then written once; otherwise :class:`~imagesmith.errors.PackageError` names both packages
and the path, never silently keeping one of them. (In separate layers the upper one would
shadow the lower; one layer has no "upper".)
"""

from __future__ import annotations

import hashlib
import heapq
import json
import os
from collections.abc import Generator, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from imagesmith.errors import LayerError, PackageError
from imagesmith.oci.digests import Digest
from imagesmith.oci.mediatypes import Compression, MediaTypes
from imagesmith.pipeline.records import RECORD_VERSION
from imagesmith.tar.compression import codec_id
from imagesmith.tar.entries import (
    archive_sort_key,
    directory_entries,
    normalise_prefix,
    source_date_epoch,
    tarball_entries,
)
from imagesmith.tar.writer import TarEntry

__all__ = ["GROUP_FORMAT", "GroupMember", "group_entries", "group_record_key"]

#: Bumped whenever the rules that merge packages into one layer change its bytes.
GROUP_FORMAT = 1
_CHUNK = 1 << 20


@dataclass(frozen=True)
class GroupMember:
    """A package going into a group layer: ``label`` names it in messages (``name-version``),
    ``content`` is its directory or tarball, ``prefix`` its install prefix (absolute or not)."""

    label: str
    content: Path
    prefix: str


def group_entries(
    members: Sequence[GroupMember], *, tmpdir: Path | None = None
) -> Generator[TarEntry, None, None]:
    """The sorted entries of one layer holding every member at its prefix.

    Each member's entries are those :func:`~imagesmith.tar.entries.directory_entries` or
    :func:`~imagesmith.tar.entries.tarball_entries` give for it alone (package modes and owners);
    their common parent directories appear once. A path two members hold differently raises
    :class:`PackageError` naming both. ``tmpdir`` is where compressed tarballs are decompressed.
    Close the iterator (or exhaust it) to release the member being read.
    """
    parts = sorted(
        ((normalise_prefix(m.prefix), m) for m in members), key=lambda item: (item[0] + "/").encode("utf-8")
    )
    written_parents: set[str] = set()
    index = 0
    while index < len(parts):
        # A cluster: one package and every following one installed inside its prefix.
        root = parts[index][0]
        end = index + 1
        while end < len(parts) and (parts[end][0] + "/").startswith(root + "/"):
            end += 1
        cluster = parts[index:end]
        index = end
        ancestors = _ancestors(root)
        if len(cluster) == 1:
            prefix, member = cluster[0]
            with ExitStack() as stack:
                for entry in _member_entries(member, prefix, tmpdir, stack):
                    if entry.name in ancestors:
                        if entry.name in written_parents:
                            continue
                        written_parents.add(entry.name)
                    yield entry
            continue
        yield from _merged(cluster, ancestors, written_parents, tmpdir)


def _ancestors(prefix: str) -> frozenset[str]:
    parts = prefix.split("/") if prefix else []
    return frozenset("/".join(parts[:i]) for i in range(1, len(parts)))


def _member_entries(
    member: GroupMember, prefix: str, tmpdir: Path | None, stack: ExitStack
) -> Iterator[TarEntry]:
    if member.content.is_dir():
        return directory_entries(member.content, prefix)
    return iter(stack.enter_context(tarball_entries(member.content, prefix, tmpdir=tmpdir)))


def _merged(
    cluster: Sequence[tuple[str, GroupMember]],
    ancestors: frozenset[str],
    written_parents: set[str],
    tmpdir: Path | None,
) -> Iterator[TarEntry]:
    """Nested packages, merged entry by entry; a path is written once, and only if every
    member holding it holds the same thing."""
    with ExitStack() as stack:
        streams = [
            _keyed(position, _member_entries(member, prefix, tmpdir, stack))
            for position, (prefix, member) in enumerate(cluster)
        ]
        # Which member wrote each path of this cluster: only nested packages come here, and a
        # file and a directory of one name sort apart, so adjacency cannot find every clash.
        owner: dict[str, tuple[int, TarEntry]] = {}
        for _, position, entry in heapq.merge(*streams):
            if entry.name in ancestors:
                if entry.name in written_parents:
                    continue
                written_parents.add(entry.name)
            earlier = owner.get(entry.name)
            if earlier is not None:
                first, other = earlier
                if not _same(other, entry):
                    raise PackageError(
                        f"packages {cluster[first][1].label} and {cluster[position][1].label} both "
                        f"install /{entry.name}, with different contents: one layer cannot hold "
                        "both (the layer budget grouped them); remove the file from one of them, "
                        "or raise --max-layers so they keep layers of their own"
                    )
                continue
            owner[entry.name] = (position, entry)
            yield entry


def _keyed(position: int, entries: Iterator[TarEntry]) -> Iterator[tuple[bytes, int, TarEntry]]:
    for entry in entries:
        yield archive_sort_key(entry), position, entry


def _same(a: TarEntry, b: TarEntry) -> bool:
    """Whether two entries of one path are the same member (metadata, then bytes)."""
    if a != b:  # every field but the data source
        return False
    if a.kind != "file" or a.size == 0:
        return True
    with _open(a) as fa, _open(b) as fb:
        remaining = a.size
        while remaining:
            left = fa.read(min(_CHUNK, remaining))
            right = fb.read(min(_CHUNK, remaining))
            if not left or left != right:
                return False
            remaining -= len(left)
    return True


@contextmanager
def _open(entry: TarEntry) -> Iterator[IO[bytes]]:
    """A reader of an entry's data from its start (a path, or a tarball at an offset)."""
    source = entry.source
    try:
        if isinstance(source, tuple):
            fileobj, offset = source
            fileobj.seek(offset)
            yield fileobj
            return
        if source is None:
            raise LayerError(f"{entry.name}: no data to compare")
        with open(os.fspath(source), "rb") as f:
            yield f
    except OSError as exc:
        raise LayerError(f"cannot read {entry.name}: {exc.strerror or exc}") from None


def group_record_key(
    members: Sequence[tuple[str, Digest]],
    *,
    compression: Compression,
    level: int | None,
    media_types: MediaTypes,
) -> str:
    """The cache-record key of a group layer: its members' install prefixes and diff_ids (which
    identify their contents exactly) plus every setting that shapes the layer's bytes, so an
    unchanged group is found without reading its packages again."""
    settings = {
        "version": RECORD_VERSION,
        "group": GROUP_FORMAT,
        "codec": codec_id(compression, level),
        "family": media_types.family,
        "mtime": source_date_epoch(),
        "members": sorted([normalise_prefix(prefix), str(diff_id)] for prefix, diff_id in members),
    }
    return "group:" + hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()
