"""The embedded registry's blob routes: reads (whole, or ranges of a file that hashed right),
and uploads (monolithic, chunked and resumable, cross-repository mounts).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from typing import IO

from imagesmith.oci.digests import CHUNK, Digest, Hasher
from imagesmith.registry.serving.framing import Fail
from imagesmith.registry.serving.handler import Handler
from imagesmith.registry.serving.storage import Upload, check_file
from imagesmith.store.blobstore import NotARegularFile, open_regular

__all__ = ["BlobRoutes", "parse_range"]

log = logging.getLogger("imagesmith.serve")

_CONTENT_RANGE = re.compile(r"(?:bytes[ =])?(\d+)-(\d+)(?:/(?:\d+|\*))?")
_BYTE_RANGE = re.compile(r"bytes=(\d*)-(\d*)")


class BlobRoutes(Handler):
    """``/v2/<name>/blobs/...`` and ``/v2/<name>/blobs/uploads/...``."""

    def _blob_get(self, name: str, digest: str) -> None:
        name = self._name(name)
        d = self._digest(digest)
        layout = self.storage.layout(name)
        f = None
        if layout is not None:
            try:
                # Regular files only, and no symbolic link below the layout's root: a link
                # planted in a served layout must not serve some other file of the host.
                f = open_regular(layout.blob_path(d), below=layout.root)
            except NotARegularFile as exc:
                log.warning("not serving blob %s of %s: %s is %s", d, name, exc.filename, exc.strerror)
            except OSError:
                pass
        if f is None:
            raise Fail(404, "BLOB_UNKNOWN", "blob unknown to registry", str(d))
        with f:
            st = os.fstat(f.fileno())
            size = st.st_size
            headers = {"Docker-Content-Digest": str(d), "Accept-Ranges": "bytes", "ETag": f'"{d}"'}
            byte_range = parse_range(self.headers.get("Range"), size)
            if byte_range is None:
                self._start(200, size, headers, "application/octet-stream")
                if self.command != "HEAD" and self._stream_verified(f, d, size):
                    self.storage.verified(st, d, remember=True)
                return
            start, end = byte_range
            if start > end:
                raise Fail(
                    416,
                    "BLOB_UNKNOWN",
                    "requested range not satisfiable",
                    self.headers.get("Range"),
                    {"Content-Range": f"bytes */{size}"},
                )
            if self.command != "HEAD" and not self.storage.verified(st, d):
                # A range is served only from a file whose whole content hashed right.
                check_file(f, d, size)
                self.storage.verified(st, d, remember=True)
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
            self._start(206, end - start + 1, headers, "application/octet-stream")
            if self.command != "HEAD":
                f.seek(start)
                left = end - start + 1
                while left > 0 and (chunk := f.read(min(CHUNK, left))):
                    self.wfile.write(chunk)
                    left -= len(chunk)
                if left:
                    self.close_connection = True

    def _stream_verified(self, f: IO[bytes], digest: Digest, size: int) -> bool:
        # The last chunk is held back until the whole blob hashed right, so a client never
        # receives a complete-looking body of a corrupt blob: it gets a cut connection.
        hasher = Hasher(digest.algorithm)
        held = b""
        while chunk := f.read(CHUNK):
            hasher.update(chunk)
            if held:
                self.wfile.write(held)
            held = chunk
        if hasher.size != size or hasher.digest != digest:
            log.error(
                "blob %s on disk is corrupt (%d bytes hashing to %s): connection cut",
                digest,
                hasher.size,
                hasher.digest,
            )
            self.close_connection = True
            return False
        if held:
            self.wfile.write(held)
        return True

    def _blob_delete(self, name: str, digest: str) -> None:
        self._name(name)
        self._digest(digest)
        raise Fail(
            405,
            "UNSUPPORTED",
            "blob deletion is not supported",
            "delete manifests instead; blobs are kept",
            {"Allow": "GET, HEAD"},
        )

    def _upload_headers(self, name: str, upload: Upload) -> dict[str, str]:
        return {
            "Location": f"/v2/{name}/blobs/uploads/{upload.id}",
            "Range": f"0-{max(upload.size - 1, 0)}",
            "Docker-Upload-UUID": upload.id,
        }

    def _blob_created(self, name: str, digest: Digest) -> None:
        self._send(
            201, headers={"Location": f"/v2/{name}/blobs/{digest}", "Docker-Content-Digest": str(digest)}
        )

    def _upload_start(self, name: str, upload_id: str | None) -> None:
        name = self._name(name)
        if upload_id:
            raise Fail(
                405,
                "UNSUPPORTED",
                "POST to an upload session is not supported",
                headers={"Allow": "GET, PATCH, PUT, DELETE"},
            )
        mount = self._q("mount")
        if mount is not None:
            digest = self._digest(mount)
            source_name = self._q("from")
            target = self.storage.layout(name)
            if target is not None and target.has_blob(digest):
                self._blob_created(name, digest)
                return
            if source_name:
                source = self.storage.layout(self._name(source_name))
                if source is not None and source.has_blob(digest):
                    target = self.storage.layout(name, create=True)
                    assert target is not None
                    if target.mount_blob(source, digest):
                        self._blob_created(name, digest)
                        return
        raw_digest = self._q("digest")
        # Checked before a session or a byte of the body exists: a malformed digest stores nothing.
        expected = self._digest(raw_digest) if raw_digest is not None else None
        upload = self.storage.new_upload(name)
        if expected is None:
            self._send(202, headers={**self._upload_headers(name, upload), "OCI-Chunk-Min-Length": "0"})
            return
        with upload.lock:  # a monolithic upload: the body is the whole blob
            try:
                self.storage.append(upload, self._require_body())
            except BaseException:
                self.storage.discard(upload)
                raise
            self.storage.finish(upload, name, expected)
        self._blob_created(name, expected)

    def _check_content_range(self, name: str, upload: Upload) -> None:
        header = self.headers.get("Content-Range")
        if header is None:
            return
        match = _CONTENT_RANGE.fullmatch(header.strip())
        if match is None:
            raise Fail(400, "BLOB_UPLOAD_INVALID", "malformed Content-Range", header[:80])
        start, end = int(match[1]), int(match[2])
        if start != upload.size:
            raise Fail(
                416,
                "BLOB_UPLOAD_INVALID",
                "chunk out of order",
                f"the upload has {upload.size} bytes; a chunk must start there",
                self._upload_headers(name, upload),
            )
        length = self._require_body().length
        if end < start or (length is not None and end - start + 1 != length):
            raise Fail(
                400,
                "BLOB_UPLOAD_INVALID",
                "Content-Range does not match the body",
                f"{header[:80]} with Content-Length {length}",
            )

    def _upload_session(self, name: str, upload_id: str | None) -> tuple[str, Upload]:
        name = self._name(name)
        return name, self.storage.upload(name, upload_id or "")

    def _upload_patch(self, name: str, upload_id: str | None) -> None:
        name, upload = self._upload_session(name, upload_id)
        with upload.lock:
            self._check_content_range(name, upload)
            self.storage.append(upload, self._require_body())
            headers = self._upload_headers(name, upload)
        self._send(202, headers=headers)

    def _upload_status(self, name: str, upload_id: str | None) -> None:
        name, upload = self._upload_session(name, upload_id)
        with upload.lock:
            headers = self._upload_headers(name, upload)
        self._send(204, headers=headers)

    def _upload_put(self, name: str, upload_id: str | None) -> None:
        name = self._name(name)
        try:
            digest = self._digest(self._q("digest"))
        except Fail:
            # Before the body is read: the session ends here and its bytes go with it, rather
            # than waiting an hour for the sweep.
            with contextlib.suppress(Fail):
                upload = self.storage.upload(name, upload_id or "")
                with upload.lock:
                    self.storage.discard(upload)
            raise
        upload = self.storage.upload(name, upload_id or "")
        with upload.lock:
            self._check_content_range(name, upload)
            self.storage.append(upload, self._require_body())
            self.storage.finish(upload, name, digest)
        self._blob_created(name, digest)

    def _upload_cancel(self, name: str, upload_id: str | None) -> None:
        name, upload = self._upload_session(name, upload_id)
        with upload.lock:
            self.storage.discard(upload)
        self._send(204)


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """``Range: bytes=a-b`` as an inclusive (start, end); None to answer the whole blob.

    Several ranges or other units are ignored (answered with 200, which HTTP allows); an
    unsatisfiable range gives start > end.
    """
    if not header:
        return None
    match = _BYTE_RANGE.fullmatch(header.strip())
    if match is None or not (match[1] or match[2]):
        return None
    if not match[1]:  # a suffix: the last N bytes
        length = int(match[2])
        return (max(size - length, 0), size - 1) if length else (1, 0)
    start = int(match[1])
    end = min(int(match[2]), size - 1) if match[2] else size - 1
    if start >= size:
        return (1, 0)
    return start, end
