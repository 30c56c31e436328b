"""OCI image layouts on disk: verified blobs, an atomically updated ``index.json``, tags.

What a layout written by :class:`OCILayout` holds (image-spec v1.1)::

    ROOT/oci-layout            {"imageLayoutVersion":"1.0.0"}
    ROOT/index.json            an OCI index; a tag is an org.opencontainers.image.ref.name annotation
    ROOT/blobs/sha256/<hex>    every blob, manifests included, named by its digest
    ROOT/index.json.lock       taken (flock) by imagesmith while it rewrites index.json
    ROOT/.tmp-imagesmith/      files being written; present only while a write is in progress

Every file is written to a temp file on the same filesystem, fsynced, checked and renamed into
place, so a reader or a crash sees the old file or the new one, never a torn one: a killed
writer leaves only temp files, which :meth:`OCILayout.clean_temp` removes. ``index.json`` is
read, modified and replaced under an exclusive lock, so writers in different processes never
lose each other's updates, and it is written last: it never names a manifest whose blob is
missing. Blobs are verified (digest and size) whenever they are read.

Size: one class, `OCILayout`: the layout's reads and writes share one lock protocol over
`index.json`, which a split would put in two places.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import json
import logging
import os
import re
import stat
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol

from imagesmith.errors import (
    DigestFormatError,
    IntegrityError,
    LayoutError,
    ManifestError,
    ReferenceFormatError,
)
from imagesmith.oci import mediatypes as mt
from imagesmith.oci.digests import CHUNK, Digest, VerifyingReader
from imagesmith.oci.model import (
    MAX_MANIFEST_SIZE,
    Descriptor,
    Index,
    Manifest,
    Platform,
    canonical_json,
    parse_manifest_document,
)
from imagesmith.oci.references import validate_tag
from imagesmith.store.blobstore import (
    BlobWriter,
    NotARegularFile,
    atomic_blob,
    create_temp,
    fsync_dir,
    open_regular,
    remove_stale_temp,
    replace_from_temp,
)

__all__ = [
    "INDEX_FILE",
    "LAYOUT_FILE",
    "LAYOUT_VERSION",
    "LOCK_FILE",
    "MAX_INDEX_SIZE",
    "REF_NAME",
    "TEMP_DIR",
    "LayoutBlobWriter",
    "OCILayout",
    "ref_name",
    "validate_layout_tag",
]

log = logging.getLogger("imagesmith.store.layout")

LAYOUT_FILE = "oci-layout"
INDEX_FILE = "index.json"
LOCK_FILE = "index.json.lock"
TEMP_DIR = ".tmp-imagesmith"
LAYOUT_VERSION = "1.0.0"
REF_NAME = "org.opencontainers.image.ref.name"
# index.json lists every tag of a repository the registry serves, so it may outgrow a manifest.
MAX_INDEX_SIZE = 64 * 1024 * 1024
_MAX_LAYOUT_FILE = 64 * 1024
# The image-spec grammar of ref.name values (annotations.md), which other tools write.
_REF_COMPONENT = r"[A-Za-z0-9]+(?:(?:[-._:@+]|--)[A-Za-z0-9]+)*"
_REF_NAME_GRAMMAR = re.compile(rf"{_REF_COMPONENT}(?:/{_REF_COMPONENT})*")
_STALE_TEMP = 3600.0


class _Readable(Protocol):
    def read(self, n: int = -1, /) -> bytes: ...


def _os_error(action: str, path: Path, exc: OSError) -> LayoutError:
    hint = ": the disk is full" if exc.errno == errno.ENOSPC else ""
    return LayoutError(f"cannot {action} {path}: {exc.strerror or exc}{hint}")


def validate_layout_tag(tag: str) -> str:
    """Check a layout tag; return it unchanged.

    A distribution tag (``references.validate_tag``) is accepted, and so is any value of the
    image-spec's ``ref.name`` grammar (``1.0+build``, ``team/app``), which other tools write;
    anything else raises :class:`ReferenceFormatError`.
    """
    try:
        return validate_tag(tag)
    except ReferenceFormatError:
        if isinstance(tag, str) and tag.isascii() and _REF_NAME_GRAMMAR.fullmatch(tag):
            return tag
        raise


def ref_name(descriptor: Descriptor) -> str | None:
    """The ``org.opencontainers.image.ref.name`` of an index entry, or None."""
    return (descriptor.annotations or {}).get(REF_NAME)


# Kept as a name of this module for callers that import it from here.
LayoutBlobWriter = BlobWriter


def _untag(entries: list[Descriptor], tag: str, keep_untagged: bool) -> list[Descriptor]:
    """``entries`` without the name ``tag``: its entries dropped, or kept unnamed when
    ``keep_untagged`` and no other entry lists their digest."""
    kept = [d for d in entries if ref_name(d) != tag]
    if keep_untagged:
        listed = {d.digest for d in kept}
        for d in entries:
            if ref_name(d) == tag and d.digest not in listed:
                rest = {k: v for k, v in (d.annotations or {}).items() if k != REF_NAME}
                kept.append(dataclasses.replace(d, annotations=rest or None))
                listed.add(d.digest)
    return kept


class OCILayout:
    """An OCI image layout directory: read and write blobs, manifests and tags.

    ``create=True`` makes the directory with its ``oci-layout`` file and an empty
    ``index.json`` when they are missing; otherwise a directory without a valid ``oci-layout``
    raises :class:`LayoutError`. Instances are thread-safe, and several processes may write
    the same layout at once.
    """

    def __init__(self, root: Path, *, create: bool = False) -> None:
        self.root = Path(root).expanduser().absolute()
        self._swept = False
        self._info_lock = threading.Lock()
        # Manifest blobs are immutable (content-addressed), so what was parsed stays true.
        self._subjects: dict[Digest, tuple[Digest | None, Descriptor]] = {}
        if create:
            self._create()
        self._check_layout_file()

    def __repr__(self) -> str:
        return f"OCILayout({str(self.root)!r})"

    # -- set-up --------------------------------------------------------------------------
    def _create(self) -> None:
        try:
            (self.root / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise _os_error("create the OCI layout", self.root, exc) from None
        if not (self.root / LAYOUT_FILE).is_file():
            self._write_file(LAYOUT_FILE, canonical_json({"imageLayoutVersion": LAYOUT_VERSION}))
        if not (self.root / INDEX_FILE).exists():
            # Under the lock: a concurrent writer may be adding the first manifest right now,
            # and an empty index written after it would erase that update.
            with self._index_lock():
                if not (self.root / INDEX_FILE).exists():
                    self._write_index(Index(mt.OCI_INDEX, ()))

    def _check_layout_file(self) -> None:
        path = self.root / LAYOUT_FILE
        try:
            with open(path, "rb") as f:
                data = f.read(_MAX_LAYOUT_FILE + 1)
        except (FileNotFoundError, NotADirectoryError):
            raise LayoutError(f"{self.root} is not an OCI image layout (no {LAYOUT_FILE} file)") from None
        except OSError as exc:
            raise _os_error("read", path, exc) from None
        try:
            obj = json.loads(data) if len(data) <= _MAX_LAYOUT_FILE else None
        except (UnicodeDecodeError, json.JSONDecodeError):
            obj = None
        version = obj.get("imageLayoutVersion") if isinstance(obj, dict) else None
        if not isinstance(version, str):
            raise LayoutError(f'{path} is corrupt: expected {{"imageLayoutVersion": "1.0.0"}}')
        if version.split(".")[0] != "1":
            raise LayoutError(
                f"{path} declares imageLayoutVersion {version[:40]!r}; only 1.x layouts are supported"
            )

    # -- temp files ----------------------------------------------------------------------
    @property
    def temp_dir(self) -> Path:
        """Where files being written live until they are complete (hidden, inside the root)."""
        return self.root / TEMP_DIR

    def _mkstemp(self, kind: str) -> tuple[int, Path]:
        if not self._swept:
            self._swept = True
            # Leftovers of killed writers are swept on the first write of each instance.
            try:
                self.clean_temp(_STALE_TEMP)
            except LayoutError as exc:
                log.debug("could not sweep old temp files: %s", exc)
        for _ in range(100):
            try:
                self.temp_dir.mkdir(exist_ok=True)
                return create_temp(self.temp_dir, kind)
            except (FileNotFoundError, FileExistsError):
                # Another writer removed the empty temp dir in between (mkdir raises
                # FileExistsError when the dir vanishes between its create and its check).
                continue
            except OSError as exc:
                raise _os_error("create a temp file in", self.temp_dir, exc) from None
        raise LayoutError(f"cannot create a temp file in {self.temp_dir}: it keeps disappearing")

    def _tidy_temp_dir(self) -> None:
        # Leave the layout as other tools expect it; fails harmlessly while others write.
        with contextlib.suppress(OSError):
            self.temp_dir.rmdir()

    def clean_temp(self, older_than: float = _STALE_TEMP) -> int:
        """Remove the temp files of writers that are gone; return how many were removed.

        imagesmith's writers lock their temp files while they live: a killed writer's file
        goes at once, a live writer's never (see
        :func:`~imagesmith.store.blobstore.remove_stale_temp`); files of other tools go once older
        than ``older_than`` seconds. The temp directory itself is removed once empty.
        """
        removed = remove_stale_temp(self.temp_dir, older_than, _os_error)
        self._tidy_temp_dir()
        return removed

    def _write_file(self, name: str, data: bytes) -> None:
        """Replace ``root/name`` atomically with ``data`` (temp file, fsync, rename)."""
        fd, tmp = self._mkstemp(name)
        target = self.root / name
        try:
            replace_from_temp(fd, tmp, target, data, mode=0o644)
        except OSError as exc:
            raise _os_error("write", target, exc) from None
        finally:
            self._tidy_temp_dir()
        fsync_dir(self.root)

    # -- blobs ---------------------------------------------------------------------------
    def blob_path(self, digest: Digest) -> Path:
        """Where the blob ``digest`` lives: ``root/blobs/<algorithm>/<hex>`` (present or not)."""
        if not isinstance(digest, Digest):
            raise DigestFormatError(f"invalid digest {digest!r}: expected a Digest value")
        return self.root / "blobs" / digest.algorithm / digest.hex

    def has_blob(self, digest: Digest, size: int | None = None) -> bool:
        """Whether the blob is present (and exactly ``size`` bytes long when given).

        Existence and size only: the bytes are verified when read.
        """
        try:
            st = self.blob_path(digest).stat()
        except OSError:
            return False
        return size is None or st.st_size == size

    @contextlib.contextmanager
    def open_blob(self, descriptor: Descriptor) -> Iterator[VerifyingReader]:
        """Open a blob for streaming; the reader checks its size and digest as it is read.

        A missing blob raises :class:`LayoutError`; one whose size on disk differs from the
        descriptor's raises :class:`IntegrityError` at once, and one whose bytes do not hash to
        its digest raises it when its end is read.
        """
        path = self.blob_path(descriptor.digest)
        try:
            f = open_regular(path)  # a FIFO planted there would block an ordinary open forever
        except FileNotFoundError:
            raise LayoutError(
                f"blob {descriptor.digest} is missing from the OCI layout {self.root}"
            ) from None
        except OSError as exc:
            raise _os_error("open", path, exc) from None
        with f:
            actual = os.fstat(f.fileno()).st_size
            if actual != descriptor.size:
                raise IntegrityError(
                    f"blob {descriptor.digest} in {self.root} has {actual} bytes, expected {descriptor.size}"
                )
            yield VerifyingReader(
                f, descriptor.digest, descriptor.size, f"blob {descriptor.digest} in {self.root}"
            )

    def read_blob(self, descriptor: Descriptor, max_size: int) -> bytes:
        """A small blob (config, manifest) in memory, verified; refused over ``max_size``."""
        if descriptor.size > max_size:
            raise LayoutError(
                f"blob {descriptor.digest} in {self.root} is {descriptor.size} bytes, more than "
                f"the {max_size} allowed: refused"
            )
        with self.open_blob(descriptor) as reader:
            return reader.read_all_chunks()

    @contextlib.contextmanager
    def put_blob(self, expected: Digest | None = None, size: int | None = None) -> Iterator[BlobWriter]:
        """Write a blob through a :class:`~imagesmith.store.blobstore.BlobWriter`, atomically.

        Bytes go to a temp file under :attr:`temp_dir`; when the ``with`` block ends they are
        fsynced, checked against ``expected`` and ``size`` when given (:class:`IntegrityError`
        otherwise) and renamed into ``blobs/`` (see :func:`imagesmith.store.blobstore.atomic_blob`).
        A blob already present with that size is kept and the temp file dropped. On any
        exception the temp file is removed and nothing is published.
        """
        fd, tmp = self._mkstemp("blob")
        try:
            with atomic_blob(
                fd,
                tmp,
                expected=expected,
                size=size,
                destination=self.blob_path,
                present=self.has_blob,
                fail=_os_error,
                misuse=LayoutError,
            ) as writer:
                yield writer
        finally:
            self._tidy_temp_dir()

    def put_blob_from(self, reader: _Readable, expected: Digest, size: int) -> None:
        """Copy a blob from ``reader`` (streaming), verifying its digest and size."""
        with self.put_blob(expected, size) as writer:
            # Read at most one byte past the size: a longer stream fails without reading it all.
            while writer.size <= size:
                chunk = reader.read(min(CHUNK, size + 1 - writer.size))
                if not chunk:
                    break
                writer.write(chunk)

    def put_bytes(self, data: bytes) -> Digest:
        """Store ``data`` (a small blob such as a config or manifest); return its digest."""
        with self.put_blob() as writer:
            writer.write(data)
        return writer.digest

    def adopt_blob(self, path: Path, digest: Digest, size: int) -> None:
        """Move the complete file ``path``, whose content the caller has verified to hash to
        ``digest``, into ``blobs/``; the file is consumed either way.

        Its size is checked (:class:`IntegrityError`). The file is fsynced and renamed, or
        copied with verification when it lives on another filesystem; when the blob is
        already present the file is simply removed.
        """
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError as exc:
            raise _os_error("open", path, exc) from None
        try:
            actual = os.fstat(fd).st_size
            if actual != size:
                raise IntegrityError(f"{path} has {actual} bytes, expected {size} for {digest}")
            os.fsync(fd)
        except OSError as exc:
            raise _os_error("sync", path, exc) from None
        finally:
            os.close(fd)
        try:
            if self.has_blob(digest, size):
                return
            final = self.blob_path(digest)
            try:
                final.parent.mkdir(parents=True, exist_ok=True)
                path.replace(final)
            except OSError as exc:
                if exc.errno != errno.EXDEV:
                    raise _os_error("store blob", final, exc) from None
                with open(path, "rb") as f:
                    self.put_blob_from(f, digest, size)
                return
            fsync_dir(final.parent)
        finally:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def mount_blob(self, source: OCILayout, digest: Digest) -> bool:
        """Make the blob ``digest`` of layout ``source`` present here; False when ``source``
        lacks it.

        A hard link when both are on one filesystem (no copy, and atomic: the link appears
        complete or not at all), else a verified copy.
        """
        if self.has_blob(digest):
            return True
        src = source.blob_path(digest)
        try:
            st = src.lstat()
        except OSError:
            return False
        if not stat.S_ISREG(st.st_mode):
            return False  # a link or special file is never copied into another layout
        size = st.st_size
        final = self.blob_path(digest)
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            os.link(src, final, follow_symlinks=False)
        except FileExistsError:
            return True
        except OSError:
            try:
                with open_regular(src) as f:
                    self.put_blob_from(f, digest, size)
            except (FileNotFoundError, NotARegularFile):
                return False
            return True
        fsync_dir(final.parent)
        return True

    # -- index.json ----------------------------------------------------------------------
    @contextlib.contextmanager
    def _index_lock(self) -> Iterator[None]:
        path = self.root / LOCK_FILE
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise _os_error("create the lock file", path, exc) from None
        try:
            # flock locks belong to the open file description: separate opens exclude each
            # other across processes and across threads alike.
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock

    def _write_index(self, index: Index) -> None:
        self._write_file(INDEX_FILE, index.to_bytes())

    def index(self) -> Index:
        """The parsed ``index.json`` (an OCI index); a corrupt one raises :class:`LayoutError`."""
        path = self.root / INDEX_FILE
        try:
            with open(path, "rb") as f:
                data = f.read(MAX_INDEX_SIZE + 1)
        except FileNotFoundError:
            raise LayoutError(f"{path} is missing: {self.root} is not a complete OCI layout") from None
        except OSError as exc:
            raise _os_error("read", path, exc) from None
        if len(data) > MAX_INDEX_SIZE:
            raise LayoutError(f"{path} is larger than {MAX_INDEX_SIZE} bytes: refused")
        try:
            obj = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise LayoutError(f"{path} is corrupt: not valid JSON ({exc})") from None
        if not isinstance(obj, dict):
            raise LayoutError(f"{path} is corrupt: not a JSON object")
        media_type = obj.get("mediaType", mt.OCI_INDEX)
        if media_type != mt.OCI_INDEX:
            raise LayoutError(f"{path} is corrupt: its mediaType is {media_type!r}, not an OCI index")
        try:
            return Index.from_json(obj, mt.OCI_INDEX)
        except ManifestError as exc:
            raise LayoutError(f"{path} is corrupt: {exc}") from None

    def _update_index(self, change: Callable[[list[Descriptor]], list[Descriptor]]) -> None:
        with self._index_lock():
            index = self.index()
            entries = change(list(index.manifests))
            self._write_index(Index(mt.OCI_INDEX, tuple(entries), index.annotations))

    def manifests(self) -> tuple[Descriptor, ...]:
        """The entries of ``index.json``."""
        return self.index().manifests

    def tags(self) -> list[str]:
        """The ``org.opencontainers.image.ref.name`` values of ``index.json``, sorted, unique."""
        return sorted({name for d in self.manifests() if (name := ref_name(d)) is not None})

    def resolve(self, tag: str | None = None) -> Descriptor:
        """The index entry named ``tag``; with ``tag=None``, the only entry.

        An unknown tag, an empty layout, or ``None`` with several entries raise
        :class:`LayoutError` listing the tags the layout has.
        """
        entries = self.manifests()
        tags = self.tags()
        shown = ", ".join(tags) if tags else "none"
        if tag is None:
            if len(entries) == 1:
                return entries[0]
            if not entries:
                raise LayoutError(f"the OCI layout {self.root} holds no image")
            raise LayoutError(
                f"the OCI layout {self.root} holds {len(entries)} images: name one of its tags ({shown})"
            )
        matches = [d for d in entries if ref_name(d) == tag]
        if not matches:
            raise LayoutError(f"no tag {tag!r} in the OCI layout {self.root}; its tags: {shown}")
        if len({d.digest for d in matches}) > 1:
            raise LayoutError(
                f"tag {tag!r} names {len(matches)} different manifests in {self.root}/{INDEX_FILE}"
            )
        return matches[0]

    def find_manifest(self, digest: Digest) -> Descriptor | None:
        """The first ``index.json`` entry for ``digest``, or None."""
        return next((d for d in self.manifests() if d.digest == digest), None)

    def add_manifest(
        self,
        data: bytes,
        media_type: str,
        *,
        tag: str | None = None,
        platform: Platform | None = None,
        annotations: Mapping[str, str] | None = None,
        keep_untagged: bool = False,
    ) -> Descriptor:
        """Store manifest (or index) bytes as given and list them in ``index.json``.

        ``tag`` must pass :func:`validate_layout_tag`; ``data`` must parse as a manifest or
        index of ``media_type`` (:class:`ManifestError`). The blob is written first, then
        ``index.json`` is updated under the lock: a ``tag`` moves here from any entry that
        held it (that entry is dropped, since an entry carries one name, unless
        ``keep_untagged``: then it stays listed without a name, as a registry keeps every
        manifest reachable by digest until it is deleted); entries are unique by (digest,
        tag), so re-adding is a no-op. Returns the new entry. The blobs the manifest refers
        to must already be present: the caller puts them first.
        """
        extra = dict(annotations or {})
        named = extra.pop(REF_NAME, None)
        if tag is None:
            tag = named
        if tag is not None:
            validate_layout_tag(tag)
        doc = parse_manifest_document(data, media_type, what=f"manifest for {self.root}")
        digest = self.put_bytes(data)
        if tag is not None:
            extra[REF_NAME] = tag
        artifact_type = doc.artifact_type if isinstance(doc, Manifest) else None
        entry = Descriptor(
            doc.media_type,
            digest,
            len(data),
            annotations=extra or None,
            platform=platform,
            artifact_type=artifact_type,
        )

        def change(entries: list[Descriptor]) -> list[Descriptor]:
            if tag is None:
                kept = [d for d in entries if not (d.digest == digest and ref_name(d) is None)]
            else:
                kept = _untag(entries, tag, keep_untagged)
            return [*kept, entry]

        self._update_index(change)
        log.debug("%s: %s %s", self.root, f"tag {tag} ->" if tag else "added", digest)
        return entry

    def remove_tag(self, tag: str, *, keep_untagged: bool = False) -> None:
        """Remove the name ``tag`` from ``index.json`` (blobs stay): its entries are dropped,
        or with ``keep_untagged`` kept without a name (see :meth:`add_manifest`).

        An unknown tag raises :class:`LayoutError`.
        """
        removed = 0

        def change(entries: list[Descriptor]) -> list[Descriptor]:
            nonlocal removed
            removed = sum(1 for d in entries if ref_name(d) == tag)
            return _untag(entries, tag, keep_untagged)

        self._update_index(change)
        if not removed:
            raise LayoutError(f"no tag {tag!r} in the OCI layout {self.root}")

    def remove_manifest(self, digest: Digest) -> int:
        """Remove every ``index.json`` entry for ``digest``, tagged or not (blobs stay); return
        how many were removed."""
        removed = 0

        def change(entries: list[Descriptor]) -> list[Descriptor]:
            nonlocal removed
            kept = [d for d in entries if d.digest != digest]
            removed = len(entries) - len(kept)
            return kept

        self._update_index(change)
        return removed

    # -- referrers -----------------------------------------------------------------------
    def _referrer_info(self, entry: Descriptor) -> tuple[Digest | None, Descriptor]:
        with self._info_lock:
            known = self._subjects.get(entry.digest)
        if known is not None:
            return known
        data = self.read_blob(entry, MAX_MANIFEST_SIZE)
        doc = parse_manifest_document(data, entry.media_type, what=f"manifest {entry.digest}")
        obj: dict[str, Any] = json.loads(data)
        subject_obj = obj.get("subject")
        subject = (
            Descriptor.from_json(subject_obj, f"manifest {entry.digest} subject") if subject_obj else None
        )
        artifact_type = obj.get("artifactType")
        if not isinstance(artifact_type, str) or not artifact_type:
            # image-spec: a manifest without artifactType is typed by its config.
            artifact_type = doc.config.media_type if isinstance(doc, Manifest) else None
        described = Descriptor(
            doc.media_type,
            entry.digest,
            entry.size,
            annotations=doc.annotations or None,
            artifact_type=artifact_type,
        )
        info = (subject.digest if subject is not None else None, described)
        with self._info_lock:
            self._subjects[entry.digest] = info
        return info

    def referrers(self, digest: Digest) -> list[Descriptor]:
        """Descriptors of the manifests listed in ``index.json`` whose ``subject`` is ``digest``.

        Each carries the referrer's ``artifactType`` (its config media type when it has none)
        and its annotations, as the distribution-spec referrers API answers. Entries whose
        blob is missing or unreadable are skipped with a warning.
        """
        out: list[Descriptor] = []
        seen: set[Digest] = set()
        for entry in self.manifests():
            if entry.digest in seen:
                continue
            seen.add(entry.digest)
            try:
                subject, described = self._referrer_info(entry)
            except (LayoutError, ManifestError, IntegrityError, ValueError) as exc:
                log.warning("skipping manifest %s of %s: %s", entry.digest, self.root, exc)
                continue
            if subject == digest:
                out.append(described)
        return out
