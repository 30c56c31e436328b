"""Docker-loadable image archives: written as Docker 25+ writes them, read in both layouts.

An archive written here is one uncompressed tar holding two views of the same blobs::

    blobs/sha256/<hex>   the manifest, the config and the layers (layers stay compressed)
    oci-layout           {"imageLayoutVersion": "1.0.0"}
    index.json           an OCI index naming each image (io.containerd.image.name, ref.name)
    manifest.json        [{"Config": "blobs/sha256/<hex>", "RepoTags": ["name:tag"],
                           "Layers": ["blobs/sha256/<hex>", ...]}]

``docker load`` (the classic loader reads ``manifest.json`` and decompresses gzip layers, zstd
ones since Docker 23; the containerd image store reads ``index.json``), ``podman load`` (which
tries the OCI view first) and skopeo's ``docker-archive:`` all accept it, and because the manifest bytes are
inside, a copy back out of the archive keeps the manifest digest.

The tar is written to a temp file beside the destination and renamed into place only when
complete, so a failed write never leaves a half archive under the final name. Blobs are
streamed into it (never held in memory) and verified while written.

Reading accepts that format and the older one (``manifest.json`` only, ``<id>/layer.tar``
uncompressed layers, as ``docker save`` before 25 and ``podman save`` write): its manifest is
synthesised (Docker v2, canonical JSON, so always the same digest) from the config and layers.
The archive (plain, or compressed whole) is read in one pass by :mod:`imagesmith.tar.format`,
the reader of every tar in imagesmith, with the same limits; blobs are then read by offset.

Size: the docker-archive kind in full, as every kind's module holds it: its location, the one-
pass reader and origin, the streaming writer and the sink.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import posixpath
import tarfile
import tempfile
import threading
import weakref
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from imagesmith import cancel
from imagesmith.closing import Closing
from imagesmith.errors import (
    ImagesmithError,
    IntegrityError,
    LayerError,
    LayoutError,
    ManifestError,
)
from imagesmith.oci import mediatypes as mt
from imagesmith.oci.digests import CHUNK, Digest, Hasher, VerifyingReader
from imagesmith.oci.image import (
    BlobOrigin,
    ImageSource,
    RawManifest,
    Readable,
)
from imagesmith.oci.model import (
    MAX_CONFIG_SIZE,
    MAX_MANIFEST_SIZE,
    Descriptor,
    ImageConfig,
    Index,
    Manifest,
    Platform,
    canonical_json,
    parse_manifest_document,
)
from imagesmith.oci.references import Reference
from imagesmith.progress import ProgressCallback, null_progress
from imagesmith.registry.client import RegistryPool
from imagesmith.store.cache import BlobCache
from imagesmith.tar.compression import Decompressor, detect_compression, open_decompressor
from imagesmith.tar.format import TarMember, TarReader, read_members
from imagesmith.transports.base import LocationKind, SinkOptions, _blob_event, fetch_blob

__all__ = [
    "ArchiveLocation",
    "ArchiveOrigin",
    "ArchiveSink",
    "ArchiveSource",
    "ArchiveWriter",
]


NAME_ANNOTATION = "io.containerd.image.name"


REF_NAME_ANNOTATION = "org.opencontainers.image.ref.name"


MAX_METADATA_SIZE = MAX_MANIFEST_SIZE


MAX_LINKS = 8


# A compressed archive is decompressed once, into a temp file: at most this much of it.
MAX_ARCHIVE_BYTES = 64 << 30


def blob_member(digest: Digest) -> str:
    """The archive member that holds a blob: ``blobs/<algorithm>/<hex>``."""
    return f"blobs/{digest.algorithm}/{digest.hex}"


def _member_name(name: str) -> str:
    # Tools write "./manifest.json" as often as "manifest.json".
    while name.startswith("./"):
        name = name[2:]
    return name


class _ArchiveBytes:
    """The tar bytes of an archive, open for reads by offset from any thread.

    The archive file itself when it is a plain tar, or its decompressed copy (an unlinked temp
    file, made in the one pass that indexes it) when the whole archive was compressed
    (``docker save | gzip``). Reads use ``pread``, so parallel blob reads never share a file
    position. The file is closed when the last source or origin holding it is gone: a layer's
    origin stays readable after its source was closed.
    """

    def __init__(self, f: IO[bytes], label: str) -> None:
        self.label = label
        self._fd = f.fileno()
        weakref.finalize(self, f.close)

    def pread(self, n: int, offset: int) -> bytes:
        try:
            return os.pread(self._fd, n, offset)
        except OSError as exc:
            raise LayoutError(f"reading {self.label}: {exc.strerror or exc}") from None


class _MemberReader:
    """The ``size`` data bytes of one member, from ``offset`` in the archive's tar bytes."""

    def __init__(self, data: _ArchiveBytes, offset: int, size: int) -> None:
        self._data = data
        self._pos = offset
        self._left = size

    def read(self, n: int = -1, /) -> bytes:
        want = self._left if n is None or n < 0 else min(n, self._left)
        if not want:
            return b""
        chunk = self._data.pread(want, self._pos)
        if not chunk:
            raise LayoutError(f"{self._data.label} is truncated inside a member")
        self._pos += len(chunk)
        self._left -= len(chunk)
        return chunk


def _temp_file(tmpdir: Path | None, label: str) -> IO[bytes]:
    # Default to the blob cache's disk: /tmp is often a RAM-backed tmpfs, and an archive's
    # tar bytes can be many GiB.
    chosen = tmpdir if tmpdir is not None else BlobCache().tmp_dir
    directory: Path | None = chosen
    try:
        chosen.mkdir(parents=True, exist_ok=True)
    except OSError:
        directory = None  # the system's temp directory, then
    try:
        # Unlinked at once: gone even if this process is killed.
        return tempfile.TemporaryFile(dir=directory)  # held by _ArchiveBytes
    except OSError as exc:
        raise LayoutError(f"cannot create a temp file for {label}: {exc.strerror or exc}") from None


class _Spool:
    """A decompressed archive, copied into ``out`` as it is read: offsets in the stream are
    offsets in ``out``."""

    def __init__(self, source: Decompressor, out: IO[bytes], label: str) -> None:
        self._source = source
        self._out = out
        self._label = label

    def read(self, n: int = -1, /) -> bytes:
        data = self._source.read(n)
        try:
            self._out.write(data)
        except OSError as exc:
            raise LayoutError(f"cannot decompress {self._label}: {exc.strerror or exc}") from None
        return data

    def finish(self) -> None:
        """Make what was written readable by offset (the rest, after the end marker, is not
        needed)."""
        try:
            self._out.flush()
        except OSError as exc:
            raise LayoutError(f"cannot decompress {self._label}: {exc.strerror or exc}") from None


@dataclass(frozen=True, slots=True)
class _Member:
    kind: str  # "file", "symlink" or "hardlink"
    offset: int
    size: int
    linkname: str


@dataclass(frozen=True)
class ArchiveOrigin:
    """A blob stored as member ``member`` of the tar archive at ``path``."""

    path: Path
    member: str
    data: _ArchiveBytes = field(compare=False, repr=False)
    offset: int = field(compare=False, repr=False)
    size: int = field(compare=False, repr=False)

    @property
    def local(self) -> bool:
        return True

    @contextmanager
    def _open(self, descriptor: Descriptor) -> Iterator[Readable]:
        what = f"blob {descriptor.digest} in archive {self.path}"
        yield VerifyingReader(
            _MemberReader(self.data, self.offset, self.size), descriptor.digest, descriptor.size, what
        )

    def open_blob(self, descriptor: Descriptor, pool: RegistryPool) -> AbstractContextManager[Readable]:
        """Stream the member, verified against ``descriptor``; ``pool`` is not used."""
        return self._open(descriptor)

    def blob_file(self, descriptor: Descriptor) -> Path | None:
        return None

    def __str__(self) -> str:
        return f"docker-archive:{self.path}"


def _names_match(candidate: str, wanted: Reference) -> bool:
    try:
        ref = Reference.parse(candidate)
    except ImagesmithError:
        return False
    return (ref.registry, ref.repository, ref.tag) == (wanted.registry, wanted.repository, wanted.tag)


class ArchiveSource(Closing):
    """Read an image from a docker archive (see the module docstring for the two formats).

    ``reference`` picks the image by name when the archive holds several; without it the
    archive must hold exactly one. The archive is read once, by the reader every tar in
    imagesmith goes through (:mod:`imagesmith.tar.format`, with its limits): its members are
    indexed by offset, a compressed archive decompressed in that same pass into a temp file
    (in the blob cache's ``tmp``, or ``tmpdir``), and every blob is then read by offset.
    """

    def __init__(self, path: Path, reference: Reference | None = None, *, tmpdir: Path | None = None) -> None:
        self._path = Path(path)
        self._wanted = reference
        if not self._path.is_file():
            raise LayoutError(
                f"archive {self._path} not found"
                if not self._path.exists()
                else f"archive {self._path} is not a regular file"
            )
        self._members: dict[str, _Member] = {}
        try:
            self._data = self._index(tmpdir)
        except LayoutError as exc:
            raise LayoutError(f"{self._path} is not a readable tar archive: {exc}") from None
        self._blobs: dict[Digest, str] = {}
        self._synthesised: RawManifest | None = None
        self._top = self._find()

    def _index(self, tmpdir: Path | None) -> _ArchiveBytes:
        """Index the members in one pass; a compressed archive is decompressed in that pass."""
        label = f"archive {self._path}"
        try:
            with open_decompressor(self._path, label) as source:
                if source.compression == "none":
                    f: IO[bytes] = open(self._path, "rb")  # noqa: SIM115 - held by _ArchiveBytes
                    data = _ArchiveBytes(f, label)
                    members: Iterator[TarMember] = read_members(f, label, error=LayoutError)
                else:
                    # The tar bytes go to a temp file as they are read: blobs are then read by
                    # offset, and a hostile header is refused before the rest is inflated.
                    f = _temp_file(tmpdir, label)
                    data = _ArchiveBytes(f, label)
                    spool = _Spool(source, f, label)
                    reader = TarReader(spool, label, max_bytes=MAX_ARCHIVE_BYTES, error=LayoutError)
                    members = reader.members()
                for m in members:
                    if m.kind in ("file", "symlink", "hardlink"):
                        self._members[_member_name(m.name)] = _Member(m.kind, m.offset, m.size, m.linkname)
                if source.compression != "none":
                    spool.finish()
        except LayerError as exc:  # the decompressor's verdict
            raise LayoutError(str(exc)) from None
        except OSError as exc:
            raise LayoutError(f"cannot read {label}: {exc.strerror or exc}") from None
        return data

    def close(self) -> None:
        """Let go of the archive (origins handed out keep it open while they live)."""
        self._members = {}

    @property
    def name(self) -> str:
        suffix = f":{self._wanted.familiar()}" if self._wanted else ""
        return f"docker-archive:{self._path}{suffix}"

    @property
    def reference(self) -> Reference | None:
        return None

    # -- reading members
    def _resolve(self, member: str) -> tuple[str, _Member]:
        """The regular file ``member`` is or links to (podman save links layer.tar files)."""
        name = member
        for _ in range(MAX_LINKS):
            info = self._members.get(name)
            if info is None:
                raise LayoutError(f"archive {self._path} has no member {name!r}")
            if info.kind == "file":
                return name, info
            if info.kind == "symlink":
                name = posixpath.normpath(posixpath.join(posixpath.dirname(name), info.linkname))
            else:
                name = _member_name(info.linkname)
        raise LayoutError(f"archive {self._path}: member {member!r} is a chain of too many links")

    def _file(self, member: str) -> _MemberReader:
        _, info = self._resolve(member)
        return _MemberReader(self._data, info.offset, info.size)

    def _read_member(self, member: str, limit: int) -> bytes:
        _, info = self._resolve(member)
        if info.size > limit:
            raise LayoutError(f"{member} of archive {self._path} is larger than {limit} bytes: refused")
        return self._file(member).read()

    def _json(self, member: str) -> Any:
        data = self._read_member(member, MAX_METADATA_SIZE)
        try:
            return json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise LayoutError(f"{member} of archive {self._path} is not valid JSON: {exc}") from None

    def _member_of(self, digest: Digest) -> str:
        return self._blobs.get(digest) or blob_member(digest)

    def read_blob(self, descriptor: Descriptor, max_size: int) -> bytes:
        """A small blob in memory, verified against ``descriptor``."""
        if descriptor.size > max_size:
            raise ManifestError(
                f"blob {descriptor.digest} in {self._path} is {descriptor.size} bytes, "
                f"more than the {max_size} allowed: refused"
            )
        what = f"blob {descriptor.digest} in archive {self._path}"
        reader = VerifyingReader(
            self._file(self._member_of(descriptor.digest)), descriptor.digest, descriptor.size, what
        )
        return reader.read_all_chunks()

    # -- the image source protocol
    def top(self) -> RawManifest:
        """The chosen image's manifest (or index), bytes as stored or as synthesised."""
        return self._top

    def manifest(self, descriptor: Descriptor) -> RawManifest:
        if self._synthesised is not None and descriptor.digest == self._synthesised.digest:
            return self._synthesised
        data = self.read_blob(descriptor, MAX_MANIFEST_SIZE)
        return RawManifest(data, descriptor.media_type, descriptor.digest)

    def origin(self, descriptor: Descriptor) -> BlobOrigin:
        name, info = self._resolve(self._member_of(descriptor.digest))
        return ArchiveOrigin(self._path, name, self._data, info.offset, info.size)

    # -- finding the image
    def _find(self) -> RawManifest:
        if "index.json" in self._members and "oci-layout" in self._members:
            found = self._from_index()
            if found is not None:
                return found
        if "manifest.json" in self._members:
            return self._from_manifest_json()
        raise LayoutError(
            f"{self._path} is not a docker archive: it has neither manifest.json nor an OCI "
            "index.json (write one with docker save or imagesmith)"
        )

    def _from_index(self) -> RawManifest | None:
        data = self._read_member("index.json", MAX_METADATA_SIZE)
        index = parse_manifest_document(data, mt.OCI_INDEX, f"index.json of {self._path}")
        if not isinstance(index, Index):  # pragma: no cover - parsed as an index
            raise LayoutError(f"index.json of {self._path} is not an index")
        entries = list(index.manifests)
        wanted = self._wanted
        if wanted is not None:
            entries = [
                d
                for d in entries
                if any(
                    _names_match(v, wanted)
                    for k, v in (d.annotations or {}).items()
                    if k in (NAME_ANNOTATION, REF_NAME_ANNOTATION)
                )
            ]
            if not entries:
                return None  # perhaps only manifest.json names it
        elif len(entries) != 1:
            names = [(d.annotations or {}).get(NAME_ANNOTATION) or str(d.digest) for d in index.manifests]
            raise LayoutError(
                f"{self._path} holds {len(names)} images ({', '.join(names) or 'none'}): "
                "name one as docker-archive:PATH:NAME:TAG"
            )
        entry = entries[0]
        return self.manifest(entry)

    def _from_manifest_json(self) -> RawManifest:
        doc = self._json("manifest.json")
        if not isinstance(doc, list) or not all(isinstance(e, dict) for e in doc):
            raise LayoutError(f"manifest.json of {self._path} is not a list of images")
        wanted = self._wanted

        def tags(entry: dict[str, Any]) -> list[str]:
            value = entry.get("RepoTags") or []
            return [t for t in value if isinstance(t, str)] if isinstance(value, list) else []

        entries = doc
        if wanted is not None:
            entries = [e for e in doc if any(_names_match(t, wanted) for t in tags(e))]
            if not entries:
                held = [t for e in doc for t in tags(e)]
                raise LayoutError(
                    f"{self._path} holds no image named {wanted.familiar()}; it holds: "
                    + (", ".join(held) or "only unnamed images")
                )
        elif len(entries) != 1:
            held = [", ".join(tags(e)) or "(unnamed)" for e in doc]
            raise LayoutError(
                f"{self._path} holds {len(doc)} images ({'; '.join(held)}): "
                "name one as docker-archive:PATH:NAME:TAG"
            )
        return self._synthesise(entries[0])

    def _synthesise(self, entry: dict[str, Any]) -> RawManifest:
        config_member = entry.get("Config")
        layer_members = entry.get("Layers")
        if (
            not isinstance(config_member, str)
            or not isinstance(layer_members, list)
            or not all(isinstance(m, str) for m in layer_members)
        ):
            raise LayoutError(f"manifest.json of {self._path}: an entry lacks Config or Layers")
        config_member, _ = self._resolve(_member_name(config_member))
        config_data = self._read_member(config_member, MAX_CONFIG_SIZE)
        config = ImageConfig.parse(config_data, f"config of {self._path}")
        config.check_layers(len(layer_members), f"config of {self._path}")
        config_digest = Digest.of(config_data)
        self._blobs[config_digest] = config_member
        found: list[tuple[Digest, int, mt.Compression]] = []
        for member, diff_id in zip(layer_members, config.diff_ids, strict=True):
            member, _ = self._resolve(_member_name(member))
            digest, size, compression = self._layer_digest(member, diff_id)
            self._blobs[digest] = member
            found.append((digest, size, compression))
        # Docker v2, as docker save means it, unless a zstd layer needs OCI's media types.
        family = mt.OCI if any(c == "zstd" for _, _, c in found) else mt.DOCKER
        manifest = Manifest(
            media_type=family.manifest,
            config=Descriptor(family.config, config_digest, len(config_data)),
            layers=tuple(Descriptor(family.layer(c), d, size) for d, size, c in found),
        )
        data = manifest.to_bytes()
        self._synthesised = RawManifest(data, manifest.media_type, Digest.of(data))
        return self._synthesised

    def _layer_digest(self, member: str, diff_id: Digest) -> tuple[Digest, int, mt.Compression]:
        _, info = self._resolve(member)
        f = self._file(member)
        head = f.read(8)
        compression = detect_compression(head)
        if compression == "none":
            # An uncompressed layer's digest is its diff_id; verified when it is read.
            return diff_id, info.size, compression
        hasher = Hasher()
        hasher.update(head)
        while chunk := f.read(CHUNK):
            hasher.update(chunk)
        return hasher.digest, hasher.size, compression


@dataclass
class _Entry:
    manifest: Descriptor
    config: Descriptor
    layers: tuple[Descriptor, ...]
    name: Reference | None


@dataclass
class _State:
    blobs: set[Digest] = field(default_factory=set)
    entries: list[_Entry] = field(default_factory=list)
    broken: bool = False


class _ExactReader:
    """Feed tarfile exactly ``size`` verified bytes, then confirm the stream ends there."""

    def __init__(self, reader: VerifyingReader) -> None:
        self._reader = reader

    def read(self, n: int = -1, /) -> bytes:
        return self._reader.read(n)

    def finish(self) -> None:
        # tarfile reads exactly the announced size and never sees the end, where the
        # VerifyingReader checks the digest: ask for it explicitly.
        if self._reader.read(1):
            raise IntegrityError("blob is longer than its announced size")  # pragma: no cover


class ArchiveWriter:
    """Write a docker-loadable archive at ``path`` (see the module docstring).

    Add blobs (:meth:`add_blob`, :meth:`add_bytes`) and images (:meth:`add_image`) in any
    order from any thread, then :meth:`commit`; :meth:`abort` (or leaving a ``with`` block
    by an exception) removes the temp file and leaves ``path`` as it was.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        parent = self.path.parent
        if not parent.is_dir():
            raise LayoutError(f"cannot write archive {self.path}: directory {parent} does not exist")
        try:
            fd, tmp = tempfile.mkstemp(dir=parent, prefix=f".{self.path.name}.", suffix=".tmp")
        except OSError as exc:
            raise LayoutError(f"cannot write archive {self.path}: {exc.strerror or exc}") from None
        self._tmp = Path(tmp)
        self._file = os.fdopen(fd, "wb")
        os.fchmod(fd, 0o644)
        # Large copy buffers: tarfile's default of 16 KiB makes a slow loop for big layers.
        self._tar = tarfile.TarFile(
            fileobj=self._file, mode="w", format=tarfile.PAX_FORMAT, copybufsize=CHUNK
        )
        self._lock = threading.Lock()
        self._state = _State()
        self._closed = False
        for directory in ("blobs", "blobs/sha256"):
            self._add_member(directory, 0, None, directory=True)

    def __enter__(self) -> ArchiveWriter:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if e is None:
            self.commit()
        else:
            self.abort()

    def _fail(self, exc: OSError) -> LayoutError:
        self._state.broken = True
        return LayoutError(f"cannot write archive {self.path}: {exc.strerror or exc}")

    def _add_member(self, name: str, size: int, fileobj: Any, *, directory: bool = False) -> None:
        info = tarfile.TarInfo(name)
        info.size = size
        # Fixed owners, modes and times: the same image always gives the same archive bytes.
        info.mtime = 0
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        if directory:
            info.type = tarfile.DIRTYPE
            info.mode = 0o755
        else:
            info.mode = 0o644
        try:
            self._tar.addfile(info, fileobj)
        except OSError as exc:
            raise self._fail(exc) from None

    def has_blob(self, digest: Digest) -> bool:
        """Whether the blob was already added."""
        with self._lock:
            return digest in self._state.blobs

    def add_blob(self, descriptor: Descriptor, reader: Readable) -> bool:
        """Stream a blob into the archive, verifying size and digest; False if already there.

        A failure part-way leaves the archive unusable (only :meth:`abort` remains).
        """
        digest = descriptor.digest
        with self._lock:
            if self._closed or self._state.broken:
                raise LayoutError(f"archive {self.path} can no longer be written")
            if digest in self._state.blobs:
                return False
            if digest.algorithm != "sha256":
                self._add_member(f"blobs/{digest.algorithm}", 0, None, directory=True)
            what = f"blob {digest} for archive {self.path}"
            exact = _ExactReader(VerifyingReader(reader, digest, descriptor.size, what))
            try:
                self._add_member(blob_member(digest), descriptor.size, exact)
                exact.finish()
            except BaseException:
                self._state.broken = True
                raise
            self._state.blobs.add(digest)
            return True

    def add_bytes(self, data: bytes) -> Digest:
        """Add a small blob (a manifest or config) from memory; return its digest."""
        digest = Digest.of(data)
        self.add_blob(Descriptor("application/octet-stream", digest, len(data)), io.BytesIO(data))
        return digest

    def add_image(self, manifest: RawManifest, name: Reference | None) -> Descriptor:
        """Add an image manifest under ``name`` (a tag reference, or None for unnamed).

        The config and layers must be added too (in any order) before :meth:`commit`. An
        index is refused: a docker archive holds single-platform images.
        """
        document = manifest.parse(f"manifest {manifest.digest}")
        if isinstance(document, Index):
            raise LayoutError(
                f"a docker archive holds single-platform images, not an index ({manifest.digest}): "
                "choose a platform"
            )
        if name is not None and (name.tag is None or name.digest is not None):
            raise LayoutError(f"an image in a docker archive is named NAME:TAG, not {name}")
        self.add_bytes(manifest.data)
        annotations = (
            {NAME_ANNOTATION: str(name), REF_NAME_ANNOTATION: name.tag or ""} if name is not None else None
        )
        descriptor = Descriptor(
            manifest.media_type, manifest.digest, len(manifest.data), annotations=annotations
        )
        with self._lock:
            self._state.entries.append(_Entry(descriptor, document.config, document.layers, name))
        return descriptor

    def commit(self) -> None:
        """Write ``oci-layout``, ``index.json`` and ``manifest.json``, then publish the archive."""
        with self._lock:
            if self._closed:
                return
            state = self._state
            if state.broken:
                raise LayoutError(f"archive {self.path} is incomplete after an earlier error")
            for entry in state.entries:
                for blob in (entry.config, *entry.layers):
                    if blob.digest not in state.blobs:
                        self._abort_locked()
                        raise LayoutError(
                            f"archive {self.path}: blob {blob.digest} of image {entry.manifest.digest} "
                            "was never written (a foreign layer?)"
                        )
            index = Index(mt.OCI_INDEX, tuple(e.manifest for e in state.entries))
            docker_manifest = [
                {
                    "Config": blob_member(e.config.digest),
                    "RepoTags": [e.name.familiar()] if e.name is not None else [],
                    "Layers": [blob_member(d.digest) for d in e.layers],
                }
                for e in state.entries
            ]
            try:
                for member, data in (
                    ("oci-layout", canonical_json({"imageLayoutVersion": "1.0.0"})),
                    ("index.json", index.to_bytes()),
                    ("manifest.json", canonical_json(docker_manifest)),
                ):
                    self._add_member(member, len(data), io.BytesIO(data))
                self._tar.close()
                self._file.flush()
                os.fsync(self._file.fileno())
                self._file.close()
                self._tmp.replace(self.path)
            except (OSError, LayoutError) as exc:
                self._abort_locked()
                if isinstance(exc, LayoutError):
                    raise
                raise LayoutError(f"cannot write archive {self.path}: {exc.strerror or exc}") from None
            self._closed = True

    def abort(self) -> None:
        """Drop the temp file; ``path`` is left as it was."""
        with self._lock:
            self._abort_locked()

    def _abort_locked(self) -> None:
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(Exception):
            self._tar.close()
        with contextlib.suppress(Exception):
            self._file.close()
        with contextlib.suppress(FileNotFoundError):
            self._tmp.unlink()


@dataclass(frozen=True)
class ArchiveLocation(LocationKind):
    """An image in a docker-loadable tar archive; ``reference`` is the name it carries
    (``RepoTags``); None: unnamed, or for reading: the archive's only image."""

    path: Path
    reference: Reference | None = None

    def open_source(self, pool: RegistryPool) -> AbstractContextManager[ImageSource]:
        return ArchiveSource(self.path, self.reference)

    def open_sink(self, options: SinkOptions) -> ArchiveSink:
        return ArchiveSink(self.path, self.reference, pool=options.pool, cache=options.cache)

    def __str__(self) -> str:
        return f"docker-archive:{self.path}" + (f":{self.reference.familiar()}" if self.reference else "")


class ArchiveSink:
    """Write a docker-loadable archive at ``path`` naming the image ``reference``.

    Blobs are made local first (the cache, or the origin's own file), in parallel; the tar is
    written at :meth:`commit`, by one thread, in the manifest's order (config, layers, the
    manifest), so it never waits on the network and the same image gives the same bytes.
    """

    def __init__(
        self, path: Path, reference: Reference | None, *, pool: RegistryPool, cache: BlobCache
    ) -> None:
        self.path = Path(path)
        self.reference = reference
        self._pool = pool
        self._cache = cache
        self._writer = ArchiveWriter(self.path)
        self._lock = threading.Lock()
        self._pending: dict[Digest, tuple[Descriptor, BlobOrigin | None, bytes | None]] = {}
        self._images: list[RawManifest] = []
        self._progress: ProgressCallback = null_progress

    @property
    def name(self) -> str:
        return f"docker-archive:{self.path}" + (f":{self.reference.familiar()}" if self.reference else "")

    def put_blob(self, descriptor: Descriptor, origin: BlobOrigin | None, progress: ProgressCallback) -> None:
        digest, size = descriptor.digest, descriptor.size
        if not self._cache.has(digest, size) and (origin is None or not origin.local):
            fetch_blob(self._pool, self._cache, descriptor, origin, progress)
            progress(_blob_event("blob-fetched", descriptor))
        with self._lock:
            self._pending.setdefault(digest, (descriptor, origin, None))

    def put_blob_bytes(self, descriptor: Descriptor, data: bytes, progress: ProgressCallback) -> None:
        with self._lock:
            self._pending.setdefault(descriptor.digest, (descriptor, None, data))

    def put_manifest(
        self, manifest: RawManifest, *, top: bool, platform: Platform | None, progress: ProgressCallback
    ) -> None:
        if not top or mt.is_index(manifest.media_type):
            raise LayoutError(f"{self.name}: a docker archive holds single-platform images, not an index")
        with self._lock:
            self._images.append(manifest)
            self._progress = progress  # the blob writes of commit() report here too

    def _write_blob(self, digest: Digest, progress: ProgressCallback) -> None:
        pending = self._pending.get(digest)
        if pending is None or self._writer.has_blob(digest):
            return  # a blob the image does not have here (a foreign layer): commit names it
        descriptor, origin, data = pending
        if data is not None:
            self._writer.add_blob(descriptor, io.BytesIO(data))
            return
        if self._cache.has(descriptor.digest, descriptor.size):
            with self._cache.open(descriptor.digest, descriptor.size) as reader:
                self._writer.add_blob(descriptor, reader)
        elif origin is not None:
            with origin.open_blob(descriptor, self._pool) as reader:
                self._writer.add_blob(descriptor, reader)
        else:
            fetch_blob(self._pool, self._cache, descriptor, None)  # raises the CacheError
        progress(_blob_event("blob-uploaded", descriptor, self.name))

    def commit(self) -> None:
        """Write the blobs, the manifests, index.json and manifest.json; publish the archive."""
        cancel.check()
        progress = self._progress
        for manifest in self._images:
            document = manifest.parse(f"manifest {manifest.digest}")
            assert isinstance(document, Manifest)  # put_manifest refused indexes
            for blob in (document.config, *document.layers):
                self._write_blob(blob.digest, progress)
        for digest in sorted(self._pending):
            self._write_blob(digest, progress)
        for manifest in self._images:
            self._writer.add_image(manifest, self.reference)
        self._writer.commit()

    def abort(self) -> None:
        """Drop the temp file: the destination is left as it was."""
        self._writer.abort()
