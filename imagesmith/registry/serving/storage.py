"""The embedded registry's state: repositories (one OCI layout each under the root) and upload
sessions (``ROOT/_uploads/<id>``, moved into a layout's ``blobs/`` once their digest is checked).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from imagesmith.errors import IntegrityError, LayoutError, ReferenceFormatError
from imagesmith.oci.digests import CHUNK, Digest, Hasher
from imagesmith.oci.references import validate_repository
from imagesmith.registry.serving.framing import Body, Fail
from imagesmith.store.layout import LAYOUT_FILE, OCILayout

__all__ = ["UPLOADS_DIR", "Storage", "Upload", "check_file"]

log = logging.getLogger("imagesmith.serve")

UPLOADS_DIR = "_uploads"
UPLOAD_EXPIRY = 3600.0
# Blob files remembered as hashed whole and right, so ranges of them are served without
# hashing the file again (a resumed download asks for one range after another).
MAX_VERIFIED = 4096
_UPLOAD_ID = re.compile(r"[0-9a-f]{32}")


@dataclass
class Upload:
    """An upload session: its data file, running sha256 and size, and a lock."""

    id: str
    repository: str
    path: Path
    hasher: Any = field(default_factory=hashlib.sha256)  # of exactly the first ``size`` bytes
    size: int = 0
    touched: float = field(default_factory=time.monotonic)
    lock: threading.Lock = field(default_factory=threading.Lock)


class Storage:
    """The registry's state: repositories (OCI layouts under the root) and upload sessions."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.uploads_dir = root / UPLOADS_DIR
        self._lock = threading.Lock()
        self._layouts: dict[str, OCILayout] = {}
        self._uploads: dict[str, Upload] = {}
        self._last_sweep = 0.0
        self._verified: OrderedDict[tuple[int, ...], Digest] = OrderedDict()
        try:
            self.uploads_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise LayoutError(f"cannot create {self.uploads_dir}: {exc.strerror or exc}") from None
        self._sweep(force=True)

    # -- repositories
    def layout(self, name: str, *, create: bool = False) -> OCILayout | None:
        """The layout of repository ``name`` (validated by the caller), or None when absent."""
        path = self.root / name
        if not create and not (path / LAYOUT_FILE).is_file():
            return None
        with self._lock:
            layout = self._layouts.get(name)
        if layout is None:
            layout = OCILayout(path, create=create)
            with self._lock:
                layout = self._layouts.setdefault(name, layout)
        elif create and not (path / LAYOUT_FILE).is_file():
            layout = OCILayout(path, create=True)  # removed behind our back: make it again
            with self._lock:
                self._layouts[name] = layout
        return layout

    def repositories(self) -> list[str]:
        """Every repository: directories under the root holding an ``oci-layout`` file."""
        out: list[str] = []
        for dirpath, dirnames, filenames in os.walk(self.root):
            # Never descend into blob stores, upload sessions or hidden temp directories.
            dirnames[:] = sorted(d for d in dirnames if d[:1] not in "._" and d != "blobs")
            if LAYOUT_FILE not in filenames or dirpath == str(self.root):
                continue
            name = Path(dirpath).relative_to(self.root).as_posix()
            try:
                validate_repository(name)
            except ReferenceFormatError:
                continue
            out.append(name)
        return sorted(out)

    def verified(self, st: os.stat_result, digest: Digest, *, remember: bool = False) -> bool:
        """Whether the file ``st`` describes was hashed whole and found to be ``digest``
        (``remember``: record that it was). Keyed by device, inode, size, mtime and ctime,
        so a file rewritten since is hashed again; bounded, oldest forgotten first."""
        key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        with self._lock:
            if remember:
                self._verified[key] = digest
                self._verified.move_to_end(key)
                while len(self._verified) > MAX_VERIFIED:
                    self._verified.popitem(last=False)
                return True
            return self._verified.get(key) == digest

    # -- uploads
    def new_upload(self, repository: str) -> Upload:
        self._sweep()
        upload_id = uuid.uuid4().hex
        path = self.uploads_dir / upload_id
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
        except OSError as exc:
            raise Fail(
                500, "BLOB_UPLOAD_INVALID", "cannot start an upload", exc.strerror or str(exc)
            ) from None
        upload = Upload(upload_id, repository, path)
        with self._lock:
            self._uploads[upload_id] = upload
        return upload

    def upload(self, repository: str, upload_id: str) -> Upload:
        upload = None
        if _UPLOAD_ID.fullmatch(upload_id):
            with self._lock:
                upload = self._uploads.get(upload_id)
        if upload is None or upload.repository != repository:
            raise Fail(404, "BLOB_UPLOAD_UNKNOWN", "blob upload unknown to registry", upload_id[:64])
        return upload

    def discard(self, upload: Upload) -> None:
        with self._lock:
            self._uploads.pop(upload.id, None)
        with contextlib.suppress(FileNotFoundError):
            upload.path.unlink()

    def _sweep(self, force: bool = False) -> None:
        """Forget sessions idle for an hour and remove upload files no session owns."""
        now = time.monotonic()
        with self._lock:
            if not force and now - self._last_sweep < 60:
                return
            self._last_sweep = now
            expired = [u for u in self._uploads.values() if now - u.touched > UPLOAD_EXPIRY]
            for u in expired:
                del self._uploads[u.id]
            live = set(self._uploads)
        for u in expired:
            log.info("upload %s to %s expired after an hour without activity", u.id, u.repository)
        cutoff = time.time() - UPLOAD_EXPIRY
        with contextlib.suppress(OSError):
            for entry in os.scandir(self.uploads_dir):
                with contextlib.suppress(OSError):
                    if entry.name not in live and entry.stat().st_mtime < cutoff:
                        Path(entry.path).unlink()

    def append(self, upload: Upload, body: Body) -> None:
        """Stream ``body`` onto the end of the upload (the caller holds ``upload.lock``)."""
        try:
            f = open(upload.path, "r+b", buffering=0)  # noqa: SIM115 - closed below
        except FileNotFoundError:
            self.discard(upload)
            raise Fail(404, "BLOB_UPLOAD_UNKNOWN", "blob upload unknown to registry", upload.id) from None
        with f:
            f.seek(upload.size)
            while chunk := body.read(CHUNK):
                try:
                    view = memoryview(chunk)
                    while view:
                        written = f.write(view)
                        view = view[written or 0 :]
                except OSError as exc:
                    # Keep file, size and running hash consistent: drop the partial chunk.
                    with contextlib.suppress(OSError):
                        f.truncate(upload.size)
                    raise Fail(
                        500, "BLOB_UPLOAD_INVALID", "cannot store the upload", exc.strerror or str(exc)
                    ) from None
                upload.hasher.update(chunk)
                upload.size += len(chunk)
                upload.touched = time.monotonic()

    def finish(self, upload: Upload, name: str, digest: Digest) -> None:
        """Check the upload against ``digest`` and move it into the repository's layout; a
        mismatch discards the upload."""
        # A failed write may have left bytes past ``size`` that a later chunk did not cover.
        with contextlib.suppress(OSError):
            os.truncate(upload.path, upload.size)
        if digest.algorithm == "sha256":
            got = Digest("sha256", upload.hasher.hexdigest())
        else:
            hasher = Hasher(digest.algorithm)
            with open(upload.path, "rb") as f:
                while chunk := f.read(CHUNK):
                    hasher.update(chunk)
            got = hasher.digest
        if got != digest:
            self.discard(upload)
            raise Fail(
                400,
                "DIGEST_INVALID",
                "provided digest did not match uploaded content",
                {"expected": str(digest), "got": str(got), "size": upload.size},
            )
        layout = self.layout(name, create=True)
        assert layout is not None
        with self._lock:
            self._uploads.pop(upload.id, None)
        layout.adopt_blob(upload.path, digest, upload.size)


def check_file(f: IO[bytes], digest: Digest, size: int) -> None:
    """Hash the whole open file; :class:`IntegrityError` (answered 500) unless it is the blob."""
    hasher = Hasher(digest.algorithm)
    f.seek(0)
    while chunk := f.read(CHUNK):
        hasher.update(chunk)
    if hasher.size != size or hasher.digest != digest:
        raise IntegrityError(f"blob {digest} on disk hashes to {hasher.digest}: not serving a range of it")
