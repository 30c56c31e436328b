"""Reuse of built layers: a record from an input's identity to the layer it gave.

Rebuilding an unchanged 1 GiB prefix means reading, archiving, compressing and hashing it
all again, only to learn the digests it had last time. Instead, the identity of the input is
computed from metadata alone -- a walk that stats every entry (path, type, mode, owner, size,
mtime and ctime in nanoseconds, inode, link target) -- and combined with everything else that
shapes the layer's bytes (prefix, mode policy, codec and level, media-type family, the fixed
mtime, the layer format version). The record maps that key to the layer's digests, sizes and
directory list, in the blob cache's records.

A record is used only while its blob is still in the cache, so a pruned cache just means a
rebuild. Like make and ccache, this trusts file metadata: content changed without touching
size, mtime or ctime is not noticed (ctime cannot be set back by ordinary tools).

A reused blob was verified when it was written, possibly long ago; the cache file may have
been damaged since. A record only checks the size, so the bytes are checked when something
reads them (an upload hashes what it sends, a layout copy reads through the cache's
verifying reader). :class:`RebuildOrigin` is where such a layer's bytes come from when its
cached copy turns out damaged or gone: the input it was built from, built again (the cache
entry is evicted on detection, and the rebuild puts the good bytes back under the same record).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import operator
import os
import stat
import threading
import time
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from imagesmith.errors import CacheError, DigestFormatError, LayerError
from imagesmith.oci.digests import Digest
from imagesmith.oci.mediatypes import Compression, MediaTypes
from imagesmith.oci.model import Descriptor
from imagesmith.store.cache import BlobCache
from imagesmith.tar.compression import codec_id
from imagesmith.tar.entries import input_error, source_date_epoch
from imagesmith.tar.layer import LayerBlob

if TYPE_CHECKING:
    from imagesmith.oci.image import Readable
    from imagesmith.registry.client import RegistryPool

__all__ = ["RECORD_VERSION", "RebuildOrigin", "input_key", "input_key_size", "lookup", "recorded", "remember"]

_NAME = operator.attrgetter("name")

# Bump when the layer bytes for the same input could change (tar writer rules, for example).
RECORD_VERSION = 1


# A directory's listing is reused while the directory has the inode, mtime and ctime it had
# when the listing was read, and only if its times were at least this old then: a change in
# the same clock tick as the listed state would leave the times as they were ("racy git").
_SETTLED_NS = 2_000_000_000
_LISTINGS_VERSION = 1
# Listings are kept for inputs of at least this many directories: below it, reading them is
# cheaper than the record's write (fsynced) when they change, as in a stack of small packages.
_LISTINGS_MIN_DIRS = 64

# A cached listing: [dev, inode, mtime_ns, ctime_ns, [names in order]].
Listings = dict[str, list[Any]]


def _walk_identity(
    root: Path, digest: Any, listings: Listings | None = None, fresh: Listings | None = None
) -> int:
    # Sorted, depth-first, without following symlinks; every entry contributes its metadata as
    # one line naming its full relative path, so the order only has to be deterministic. This
    # runs on every build (it is how an unchanged input is recognised), so it is kept lean:
    # string paths, one hash update per directory, no per-entry objects beyond the stat.
    # A failing system call becomes one LayerError naming the path (the same words the layer
    # builder uses): an unreadable directory, a file removed meanwhile, a path over PATH_MAX.
    # Returns the regular files' bytes: a progress display's total for archiving the tree.
    #
    # ``listings`` (from the last walk) spares the directory reads: a directory whose device,
    # inode, mtime and ctime are those recorded has the names recorded (creating, removing or
    # renaming an entry sets both times, and ctime cannot be set back). Every entry is still
    # stat()ed: a file written in place changes its own times, never its directory's. ``fresh``
    # collects the listings of this walk whose times had settled (see _SETTLED_NS).
    settled = time.time_ns() - _SETTLED_NS
    try:
        top = root.stat()  # scandir follows a symlink named as the root: so does its identity
    except OSError as exc:
        raise input_error(root, exc) from None
    stack: list[tuple[str, str, os.stat_result]] = [(os.fspath(root), "", top)]
    total = 0
    while stack:
        directory, rel, dst = stack.pop()
        listed = listings.get(rel) if listings is not None else None
        lines = []
        subdirs = []
        if listed is not None and listed[:4] == [dst.st_dev, dst.st_ino, dst.st_mtime_ns, dst.st_ctime_ns]:
            names: list[str] = listed[4]
            for entry_name in names:
                path = f"{directory}/{entry_name}"
                try:
                    st = os.lstat(path)
                    mode = st.st_mode
                    link = os.readlink(path) if stat.S_ISLNK(mode) else ""  # noqa: PTH115 (no Path per entry)
                except OSError as exc:
                    raise input_error(path, exc) from None
                name = rel + entry_name
                lines.append(
                    f"{name}\0{mode:o}\0{st.st_uid}\0{st.st_gid}\0{st.st_size}\0{st.st_mtime_ns}\0"
                    f"{st.st_ctime_ns}\0{st.st_ino}\0{st.st_nlink}\0{link}\n"
                )
                if stat.S_ISDIR(mode):
                    subdirs.append((path, name + "/", st))
                elif stat.S_ISREG(mode):
                    total += st.st_size
        else:
            try:
                with os.scandir(directory) as scan:
                    entries = sorted(scan, key=_NAME)
            except OSError as exc:
                raise input_error(directory, exc) from None
            names = []
            for entry in entries:
                try:
                    st = entry.stat(follow_symlinks=False)
                    mode = st.st_mode
                    link = os.readlink(entry.path) if stat.S_ISLNK(mode) else ""  # noqa: PTH115 (no Path per entry)
                except OSError as exc:
                    raise input_error(entry.path, exc) from None
                names.append(entry.name)
                name = rel + entry.name
                lines.append(
                    f"{name}\0{mode:o}\0{st.st_uid}\0{st.st_gid}\0{st.st_size}\0{st.st_mtime_ns}\0"
                    f"{st.st_ctime_ns}\0{st.st_ino}\0{st.st_nlink}\0{link}\n"
                )
                if stat.S_ISDIR(mode):
                    subdirs.append((entry.path, name + "/", st))
                elif stat.S_ISREG(mode):
                    total += st.st_size
        if fresh is not None and max(dst.st_mtime_ns, dst.st_ctime_ns) < settled:
            fresh[rel] = [dst.st_dev, dst.st_ino, dst.st_mtime_ns, dst.st_ctime_ns, names]
        digest.update("".join(lines).encode("utf-8", "surrogateescape"))
        stack.extend(reversed(subdirs))
    return total


def _listings_key(content: Path) -> str:
    return (
        f"listings:v{_LISTINGS_VERSION}:" + hashlib.sha256(os.fsencode(os.path.realpath(content))).hexdigest()
    )


def _load_listings(cache: BlobCache, key: str) -> Listings:
    record = cache.get_record(key)
    dirs = record.get("dirs") if record is not None else None
    if not isinstance(dirs, dict):
        return {}
    good: Listings = {}
    for rel, value in dirs.items():
        # Anything not shaped as written is ignored (read the directory again), never trusted.
        # Checked with a few C-level operations per directory: a tree of 50,000 directories
        # loads its listings on every warm build.
        if type(value) is not list or len(value) != 5:
            continue
        dev, ino, mtime, ctime, names = value
        if not (type(dev) is type(ino) is type(mtime) is type(ctime) is int) or type(names) is not list:
            continue  # (type() is int also refuses a bool)
        try:
            joined = "/".join(names)
        except TypeError:
            continue  # a name that is not a string
        if (
            joined.count("/") != len(names) - 1
            or "\0" in joined
            or "" in names
            or "." in names
            or ".." in names
        ):
            continue
        good[rel] = value
    return good


def input_key(
    content: Path,
    prefix: str,
    *,
    preserve: bool,
    compression: Compression,
    level: int | None,
    media_types: MediaTypes,
    extra: Mapping[str, Any] | None = None,
    cache: BlobCache | None = None,
) -> str:
    """The identity of a layer input: its content's metadata plus every setting that shapes it
    (``extra``: anything else that does, such as a generated file's inputs)."""
    return input_key_size(
        content,
        prefix,
        preserve=preserve,
        compression=compression,
        level=level,
        media_types=media_types,
        extra=extra,
        cache=cache,
    )[0]


def input_key_size(
    content: Path,
    prefix: str,
    *,
    preserve: bool,
    compression: Compression,
    level: int | None,
    media_types: MediaTypes,
    extra: Mapping[str, Any] | None = None,
    cache: BlobCache | None = None,
) -> tuple[str, int]:
    """:func:`input_key` and the bytes of the input's regular files, from the same walk (a
    tarball's size is not its content's: 0 for a file). With ``cache``, the directory
    listings of the last walk of the same input are kept there and reused for directories
    whose inode and times have not changed (every entry is still stat()ed)."""
    digest = hashlib.sha256()
    settings: dict[str, Any] = {
        "version": RECORD_VERSION,
        "content": os.path.realpath(content),
        "prefix": prefix,
        "preserve": preserve,
        "codec": codec_id(compression, level),
        "family": media_types.family,
        "mtime": source_date_epoch(),
    }
    if extra is not None:
        settings["extra"] = dict(extra)
    digest.update(json.dumps(settings, sort_keys=True).encode())
    try:
        st = content.stat()
    except OSError as exc:
        raise input_error(content, exc, walking=False) from None
    digest.update(f"{st.st_mode:o}\0{st.st_size}\0{st.st_mtime_ns}\0{st.st_ctime_ns}\0{st.st_ino}\n".encode())
    if not stat.S_ISDIR(st.st_mode):
        return "layer:" + digest.hexdigest(), 0
    if cache is None:
        total = _walk_identity(content, digest)
        return "layer:" + digest.hexdigest(), total
    key = _listings_key(content)
    listings = _load_listings(cache, key)
    fresh: Listings = {}
    total = _walk_identity(content, digest, listings, fresh)
    if fresh != listings and (len(fresh) >= _LISTINGS_MIN_DIRS or listings):
        with contextlib.suppress(CacheError):  # a hint that saves work: never worth failing for
            cache.put_record(key, {"dirs": fresh})
    return "layer:" + digest.hexdigest(), total


def recorded(cache: BlobCache, key: str) -> LayerBlob | None:
    """The layer recorded for ``key``, whether or not its blob is still in the cache.

    A record outlives its blob (a pruned cache): it still says which digest the input gives,
    so a registry can be asked for the blob before anything is built or sent.
    """
    record = cache.get_record(key)
    if record is None:
        return None
    try:
        return LayerBlob(
            digest=Digest.parse(record["digest"]),
            diff_id=Digest.parse(record["diff_id"]),
            size=int(record["size"]),
            media_type=str(record["media_type"]),
            directories=frozenset(str(d) for d in record["directories"]),
            uncompressed_size=int(record.get("uncompressed_size", 0)),
        )
    except (KeyError, TypeError, ValueError, DigestFormatError):
        return None  # a record from another version, or damaged: rebuild


def lookup(cache: BlobCache, key: str) -> LayerBlob | None:
    """The layer recorded for ``key``, if its blob is still in the cache; else ``None``.

    A hit is a use of the blob (see :meth:`BlobCache.touch`), even when nothing reads it.
    """
    blob = recorded(cache, key)
    if blob is None or not cache.has(blob.digest, blob.size):
        return None
    cache.touch(blob.digest)
    return blob


def remember(cache: BlobCache, key: str, blob: LayerBlob) -> None:
    """Record that ``key`` gave ``blob``."""
    cache.put_record(
        key,
        {
            "digest": str(blob.digest),
            "diff_id": str(blob.diff_id),
            "size": blob.size,
            "media_type": blob.media_type,
            "directories": sorted(blob.directories),
            "uncompressed_size": blob.uncompressed_size,
        },
    )


class RebuildOrigin:
    """Where the bytes of a package layer come from when its cached copy is gone or damaged:
    its input, built again by ``rebuild`` (a :class:`~imagesmith.oci.image.BlobOrigin`).

    ``what`` names the input in messages. Building again must give the same digest (layers
    are reproducible); a different one means the content changed without its size or times
    changing, and raises :class:`LayerError` rather than publishing other bytes under the
    digest the image already names.
    """

    def __init__(
        self, blob: LayerBlob, cache: BlobCache, what: str, rebuild: Callable[[], LayerBlob]
    ) -> None:
        self.blob = blob
        self.cache = cache
        self.what = what
        self._rebuild = rebuild
        self._lock = threading.Lock()

    def __str__(self) -> str:
        return self.what

    @property
    def local(self) -> bool:
        return True

    def restore(self) -> None:
        """Make sure the cache holds the blob's verified bytes, building it again if not."""
        digest, size = self.blob.digest, self.blob.size
        with self._lock:
            if self.cache.has(digest, size) and self.cache.verify(digest):
                return
            rebuilt = self._rebuild()
        if rebuilt.digest != digest:
            raise LayerError(
                f"building {self.what} again gave layer {rebuilt.digest}, not {digest} as before: "
                "its content changed during the build; build again"
            )

    def open_blob(self, descriptor: Descriptor, pool: RegistryPool) -> AbstractContextManager[Readable]:
        """Build the layer again when the cache lacks good bytes, then read it from the cache."""
        self.restore()
        return self.cache.open(descriptor.digest, descriptor.size)

    def blob_file(self, descriptor: Descriptor) -> Path | None:
        """None: the file is the cache's own (callers look there first)."""
        return None
