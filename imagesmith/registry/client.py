"""A client for one OCI/Docker registry: manifests, blobs, uploads, mounts and tags.

Every byte read is verified against the digest it was asked for (our own hash decides;
``Docker-Content-Digest`` is never trusted for content), documents are size-capped before
they are read, and blob downloads resume with ``Range`` when a connection drops. Requests
carry the scopes they need (``pull`` to read, ``pull,push`` to write, plus ``pull`` on the
source of a mount) so the auth layer can reuse one token for a whole push.

Size: the distribution API's client: every endpoint imagesmith uses, resumable reads and
chunked, restartable uploads, which share its session and error handling.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, BinaryIO
from urllib.parse import quote, urljoin, urlsplit

import requests
import requests.utils
import urllib3.exceptions

from imagesmith import cancel
from imagesmith.closing import Closing
from imagesmith.errors import (
    ImagesmithError,
    IntegrityError,
    ManifestError,
    NotFoundError,
    RegistryError,
    RegistryUnreachableError,
)
from imagesmith.oci.digests import CHUNK, Digest, Hasher, VerifyingReader
from imagesmith.oci.mediatypes import MANIFEST_ACCEPT
from imagesmith.oci.model import MAX_MANIFEST_SIZE, Descriptor
from imagesmith.oci.references import DOCKER_HUB, DOCKER_HUB_API, validate_repository, validate_tag
from imagesmith.registry.auth import Authenticator
from imagesmith.registry.credentials import CredentialStore, normalise_registry
from imagesmith.registry.transport import (
    REDIRECT_STATUSES,
    Fetched,
    RegistryOptions,
    Transport,
    error_from_fetched,
    origin_of,
    redact_url,
)

__all__ = [
    "MAX_TAGS_RESPONSE",
    "ManifestResponse",
    "RegistryClient",
    "RegistryPool",
    "RequestBody",
    "UploadSession",
    "borrowed_pool",
]

log = logging.getLogger("imagesmith.http")

MAX_TAGS_RESPONSE = 16 * 1024 * 1024
MAX_TAG_PAGES = 10_000
MAX_RESUMES = 5
_MAX_ANSWER = 64 * 1024  # the body of an answer that carries no document (errors, DELETE)
_ACCEPT = ", ".join(MANIFEST_ACCEPT)
_GENERIC_TYPES = frozenset({"", "application/json", "text/plain", "application/octet-stream"})


@dataclass(frozen=True)
class ManifestResponse:
    """Manifest bytes as served, their media type, and OUR digest of the bytes."""

    data: bytes
    media_type: str
    digest: Digest


def _pull(repository: str) -> frozenset[str]:
    return frozenset({f"repository:{repository}:pull"})


def _push(repository: str) -> frozenset[str]:
    return frozenset({f"repository:{repository}:pull,push"})


def _delete(repository: str) -> frozenset[str]:
    # distribution's token auth asks for the "delete" action on DELETE (pull to resolve a tag first).
    return frozenset({f"repository:{repository}:delete"})


def _content_type(value: str | None) -> str:
    return (value or "").split(";")[0].strip()


class _ResumableStream:
    """The body of a blob GET that reopens with ``Range`` when the connection drops.

    ``opener(offset)`` sends the GET (with ``Range: bytes=offset-`` when offset > 0).
    A server that ignores the range (200 instead of 206) is read from the start and the
    first ``offset`` bytes are skipped. Verification is left to the wrapping
    :class:`VerifyingReader`, so a resumed download is still checked end to end.
    """

    def __init__(self, opener: Callable[[int], requests.Response], what: str, max_resumes: int) -> None:
        self._opener = opener
        self._what = what
        self._max_resumes = max_resumes
        self._resumes = 0
        self._offset = 0
        self._resp: requests.Response | None = opener(0)

    def read(self, n: int = -1) -> bytes:
        want = CHUNK if n is None or n < 0 else n
        while True:
            cancel.check()
            if self._resp is None:
                return b""
            try:
                data: bytes = self._resp.raw.read(want, decode_content=False)
            except (urllib3.exceptions.HTTPError, requests.RequestException, OSError) as exc:
                self._reopen(exc)
                continue
            self._offset += len(data)
            return data

    def _reopen(self, exc: BaseException) -> None:
        if self._resumes >= self._max_resumes:
            self.close()
            raise RegistryUnreachableError(
                f"download of {self._what} kept failing ({type(exc).__name__} after "
                f"{self._offset} bytes, {self._resumes} resumptions); try again later"
            ) from None
        self._resumes += 1
        log.info(
            "connection lost while reading %s at byte %d (%s); resuming",
            self._what,
            self._offset,
            type(exc).__name__,
        )
        self.close()
        resp = self._opener(self._offset)
        if resp.status_code == 206:
            start = resp.headers.get("Content-Range", "").removeprefix("bytes ").split("-")[0]
            if start.strip() != str(self._offset):
                resp.close()
                raise IntegrityError(
                    f"resuming {self._what} at byte {self._offset}: the server answered range "
                    f"{resp.headers.get('Content-Range')!r}"
                )
        else:
            skip = self._offset
            while skip > 0:
                try:
                    data = resp.raw.read(min(CHUNK, skip), decode_content=False)
                except (urllib3.exceptions.HTTPError, requests.RequestException, OSError):
                    data = b""
                if not data:
                    resp.close()
                    raise RegistryUnreachableError(
                        f"resuming {self._what}: the server sent fewer bytes than before"
                    )
                skip -= len(data)
        self._resp = resp

    def close(self) -> None:
        if self._resp is not None:
            self._resp.close()
            self._resp = None


class RequestBody:
    """A streamed request body: ``read`` gives the bytes, ``__len__`` their count (so requests
    sends ``Content-Length``), and iteration hands them to the connection in CHUNK pieces.

    Subclasses call :func:`imagesmith.cancel.check` in ``read``: an interrupted upload stops
    within one piece (the connection reads the body in small blocks) once the body's grace
    (:data:`imagesmith.cancel.BODY_GRACE`) is over."""

    def __len__(self) -> int:
        raise NotImplementedError

    def read(self, n: int = -1, /) -> bytes:
        raise NotImplementedError

    def __iter__(self) -> Iterator[bytes]:
        while data := self.read(CHUNK):
            cancel.check(cancel.BODY_GRACE)
            yield data


def _credential_store(options: RegistryOptions) -> CredentialStore:
    """The credentials ``options`` point at: ``--creds``, else their auth file (else docker's
    and podman's)."""
    return CredentialStore(
        options.auth_file, helper_timeout=options.credential_helper_timeout, explicit=options.credentials
    )


_REPOSITORY_PATH = re.compile(r"/v2/(.+?)/(?:manifests|blobs|tags|referrers)/")


class _UploadBody(RequestBody):
    """A file streamed as an upload body: exactly ``size`` bytes, hashed on the way.

    ``__len__`` makes requests send ``Content-Length``. A file that is shorter than
    ``size``, or whose bytes do not hash to ``digest``, aborts the request before its last
    byte is sent, so the registry never completes an upload with wrong content.
    """

    def __init__(self, raw: BinaryIO, size: int, digest: Digest, what: str) -> None:
        self._raw = raw
        self._size = size
        self._digest = digest
        self._what = what
        self._hasher = Hasher(digest.algorithm)

    def __len__(self) -> int:
        return self._size

    def read(self, n: int = -1) -> bytes:
        cancel.check(cancel.BODY_GRACE)
        remaining = self._size - self._hasher.size
        if remaining <= 0:
            return b""
        want = remaining if n is None or n < 0 else min(n, remaining)
        data = self._raw.read(want)
        if not data:
            raise IntegrityError(
                f"{self._what}: the file ended after {self._hasher.size} of {self._size} bytes"
            )
        self._hasher.update(data)
        if self._hasher.size == self._size and self._hasher.digest != self._digest:
            raise IntegrityError(
                f"{self._what}: the content hashes to {self._hasher.digest}, not {self._digest}"
            )
        return data

    def close(self) -> None:
        self._raw.close()


class _RestartUpload(Exception):
    """Resuming an upload is impossible: restart it with a new POST (``error`` says why)."""

    def __init__(self, error: RegistryError) -> None:
        super().__init__(str(error))
        # Always temporary: the caller restarts a bounded number of times, then raises it.
        self.error = error if error.temporary else RegistryUnreachableError(str(error))


@dataclass(frozen=True)
class UploadSession:
    """An open blob upload: where to send the next bytes and how many the registry has.

    ``min_chunk`` is the registry's ``OCI-Chunk-Min-Length`` (every ``PATCH`` but the last
    must be at least that long), None when it names none.
    """

    repository: str
    url: str
    offset: int
    min_chunk: int | None


def _positive_int(value: str | None) -> int | None:
    text = (value or "").strip()
    return int(text) if text.isdigit() and int(text) > 0 else None


def _range_end(value: str | None) -> int | None:
    """Bytes received according to an upload ``Range: 0-N`` header (N+1), or None.

    Registries answer ``0-0`` both for no bytes and for one byte; 0 is assumed (a wrong
    guess makes the final digest check fail, and the upload restarts)."""
    text = (value or "").strip().removeprefix("bytes=").strip()
    first, sep, last = text.partition("-")
    if not sep or not first.strip().isdigit() or not last.strip().isdigit():
        return None
    end = int(last)
    return 0 if end == 0 else end + 1


class _ChunkSource:
    """The content of a chunked upload: slices of ``open_body()``, hashed in order.

    The hash of the bytes the registry has acknowledged is kept; a slice that does not start
    there (a resume after bytes were lost) rehashes the file up to its start. The last
    slice stops before its final byte when the whole content does not hash to ``digest``.
    """

    def __init__(self, open_body: Callable[[], BinaryIO], digest: Digest, size: int, what: str) -> None:
        self._open = open_body
        self._digest = digest
        self._size = size
        self._what = what
        self._hash = hashlib.new(digest.algorithm)
        self._hashed = 0
        self._pending: _UploadSlice | None = None

    def _rehash(self, upto: int) -> None:
        h = hashlib.new(self._digest.algorithm)
        with self._open() as raw:
            left = upto
            while left > 0:
                data = raw.read(min(CHUNK, left))
                if not data:
                    raise IntegrityError(f"{self._what}: the file ended after {upto - left} bytes")
                h.update(data)
                left -= len(data)
        self._hash, self._hashed = h, upto

    def slice(self, start: int, end: int) -> _UploadSlice:
        if start != self._hashed:
            self._rehash(start)
        raw = self._open()
        try:
            raw.seek(start)
        except (OSError, AttributeError, ValueError):
            skip = start
            while skip > 0:
                data = raw.read(min(CHUNK, skip))
                if not data:
                    raw.close()
                    raise IntegrityError(f"{self._what}: the file ended after {start - skip} bytes") from None
                skip -= len(data)
        last = end == self._size
        self._pending = _UploadSlice(
            raw, self._hash.copy(), end - start, self._digest if last else None, self._what
        )
        return self._pending

    def commit(self, end: int) -> bool:
        """Adopt the hash of the slice ending at ``end`` once the registry has it; False
        when that slice was not sent whole."""
        pending = self._pending
        self._pending = None
        if pending is None or not pending.complete:
            return False
        self._hash, self._hashed = pending.hash, end
        return True


class _UploadSlice(RequestBody):
    """``length`` bytes of an open file as a request body (``__len__`` gives Content-Length)."""

    def __init__(self, raw: BinaryIO, h: Any, length: int, digest: Digest | None, what: str) -> None:
        self._raw = raw
        self.hash = h
        self._length = length
        self._sent = 0
        self._digest = digest
        self._what = what

    @property
    def complete(self) -> bool:
        return self._sent == self._length

    def __len__(self) -> int:
        return self._length

    def read(self, n: int = -1) -> bytes:
        cancel.check(cancel.BODY_GRACE)
        remaining = self._length - self._sent
        if remaining <= 0:
            return b""
        want = remaining if n is None or n < 0 else min(n, remaining)
        data = self._raw.read(want)
        if not data:
            raise IntegrityError(f"{self._what}: the file ended early (a chunk is {self._length} bytes)")
        self.hash.update(data)
        if self._sent + len(data) == self._length and self._digest is not None:
            ours = Digest(self._digest.algorithm, self.hash.hexdigest())
            if ours != self._digest:
                raise IntegrityError(f"{self._what}: the content hashes to {ours}, not {self._digest}")
        self._sent += len(data)
        return data

    def close(self) -> None:
        self._raw.close()


class RegistryClient(Closing):
    """Talks to one registry (canonical name such as ``docker.io``, ``ghcr.io``,
    ``127.0.0.1:5000``); the API host follows :attr:`Reference.api_host`.

    Thread-safe; share one client per registry (see :class:`RegistryPool`) so tokens are
    reused. ``credentials`` defaults to a :class:`CredentialStore` reading
    ``options.auth_file`` (or the default docker/podman files when that is None).
    """

    def __init__(
        self,
        registry: str,
        options: RegistryOptions | None = None,
        credentials: CredentialStore | None = None,
        *,
        transport: Transport | None = None,
        peers: Callable[[str], RegistryClient] | None = None,
    ) -> None:
        self.registry = normalise_registry(registry)
        # No options: the environment's (IMAGESMITH_INSECURE_REGISTRY, IMAGESMITH_CA_CERT, ...),
        # read in one place, RegistryOptions.from_env, as build() and the CLI read them.
        self.options = options or (transport.options if transport else RegistryOptions.from_env())
        self.api_host = DOCKER_HUB_API if self.registry == DOCKER_HUB else self.registry
        self._check_blocked("")
        self._owns_transport = transport is None
        self._transport = transport or Transport(self.options)
        # The API host decides, as for every other URL the transport checks.
        self.base_url = f"{self._transport.scheme(self.api_host)}://{self.api_host}"
        self._origin = origin_of(self.base_url)
        if credentials is None:
            credentials = _credential_store(self.options)
        self._credentials = credentials
        self.auth = Authenticator(self.registry, self.base_url, self._transport, credentials)
        self._peers = peers
        self._own_peers: dict[str, RegistryClient] = {}

    def __repr__(self) -> str:
        return f"RegistryClient({self.registry!r}, base_url={self.base_url!r})"

    def close(self) -> None:
        """Release connections (only those of a transport this client created)."""
        if self._owns_transport:
            self._transport.close()

    # -- plumbing
    def _url(self, path: str) -> str:
        return self.base_url + path

    def _check_blocked(self, repository: str) -> None:
        entry = self.options.registries_conf().blocked(self.registry, repository)
        if entry is not None:
            shown = f"{self.registry}/{repository}" if repository else self.registry
            raise RegistryError(
                f"{shown} is blocked by registries.conf ([[registry]] prefix {entry.prefix!r} in "
                f"{entry.source}): imagesmith neither pulls from it nor pushes to it"
            )

    def _check_url(self, url: str) -> None:
        m = _REPOSITORY_PATH.search(urlsplit(url).path)
        if m:
            self._check_blocked(m.group(1))

    def _peer(self, registry: str) -> RegistryClient:
        """The client for another registry (a mirror), sharing transport and credentials."""
        if self._peers is not None:
            return self._peers(registry)
        name = normalise_registry(registry)
        if name == self.registry:
            return self
        if name not in self._own_peers:
            self._own_peers[name] = RegistryClient(
                name, self.options, self._credentials, transport=self._transport
            )
        return self._own_peers[name]

    def pull_sources(self, repository: str, by_digest: bool | None) -> list[tuple[str, str]]:
        """``(registry, repository)`` to try in order for a pull of ``repository``: the
        ``registries.conf`` mirrors that may serve it, then the location. ``by_digest`` None
        is a blob (content-addressed: every mirror may serve it)."""
        conf = self.options.registries_conf()
        return [
            (s.registry, s.repository)
            for s in conf.pull_sources(self.registry, repository, by_digest=by_digest)
        ]

    def _authorised(self, url: str, scopes: frozenset[str]) -> dict[str, Any]:
        """The keywords every transport call of this client carries (after checking ``url``)."""
        self._check_url(url)
        return {"host": self.registry, "scopes": scopes, "auth": self.auth, "auth_origin": self._origin}

    def _request(self, method: str, url: str, scopes: frozenset[str], **kwargs: Any) -> requests.Response:
        return self._transport.request(method, url, **self._authorised(url, scopes), **kwargs)

    def _fetch(self, method: str, url: str, scopes: frozenset[str], **kwargs: Any) -> Fetched:
        return self._transport.fetch(method, url, **self._authorised(url, scopes), **kwargs)

    def _get_document(
        self,
        url: str,
        repository: str,
        *,
        limit: int,
        what: str,
        prefix: str,
        accept: str | None = None,
        error: type[ImagesmithError] = ManifestError,
    ) -> Fetched:
        """A bounded ``GET`` of a document (a manifest, a referrers index, a tag list) that may
        be absent: 200 and 404 come back; a body over ``limit`` bytes raises ``error`` naming
        ``what`` (and the size the registry announced)."""

        def too_large(length: int | None) -> ImagesmithError:
            announced = f" ({length} bytes announced)" if length is not None else ""
            return error(f"{what} is larger than {limit} bytes{announced}: refused")

        return self._fetch(
            "GET",
            url,
            _pull(repository),
            limit=limit,
            too_large=too_large,
            headers={"Accept": accept} if accept is not None else {},
            expect=(200, 404),
            prefix=prefix,
        )

    def _error(self, resp: requests.Response, method: str, prefix: str) -> RegistryError:
        return error_from_fetched(self._transport.read(resp, method), self.registry, prefix=prefix)

    @staticmethod
    def _manifest_ref(reference: str) -> tuple[str, Digest | None]:
        if ":" in reference:
            digest = Digest.parse(reference)
            return str(digest), digest
        return validate_tag(reference), None

    def _shown(self, repository: str, reference: str) -> str:
        sep = "@" if ":" in reference else ":"
        return f"{self.registry}/{repository}{sep}{reference}"

    # -- API
    def ping(self, *, retry: bool = True) -> None:
        """``GET /v2/``: check the registry answers; a 401 only records its challenge.
        ``retry=False`` sends it once: a network failure is raised at once."""
        resp = self._transport.request(
            "GET",
            self._url("/v2/"),
            host=self.registry,
            expect=(200, 401),
            prefix=f"checking {self.registry} is a registry",
            retry=retry,
        )
        challenge = resp.headers.get("WWW-Authenticate") if resp.status_code == 401 else None
        resp.close()
        if challenge:
            self.auth.observe(challenge)

    def get_manifest(self, repository: str, reference: str, *, mirrors: bool = False) -> ManifestResponse:
        """Fetch a manifest or index by tag or digest.

        Sends ``Accept`` with the four manifest types, refuses bodies over
        ``MAX_MANIFEST_SIZE`` without reading them whole, checks the bytes against
        ``reference`` when it is a digest (:class:`IntegrityError`), and raises
        :class:`NotFoundError` (``manifest unknown: host/repo:ref``) on 404. With ``mirrors``
        (a pull), the ``registries.conf`` mirrors are tried first, in order.
        """
        if mirrors:
            sources = self.pull_sources(repository, by_digest=":" in reference)
            for registry, repo in sources[:-1]:
                try:
                    return self._peer(registry).get_manifest(repo, reference)
                except ImagesmithError as exc:
                    log.info("mirror %s/%s failed (%s); trying the next source", registry, repo, exc)
            registry, repo = sources[-1]
            if (normalise_registry(registry), repo) != (self.registry, repository):
                return self._peer(registry).get_manifest(repo, reference)
        validate_repository(repository)
        ref, expected = self._manifest_ref(reference)
        shown = self._shown(repository, ref)
        url = self._url(f"/v2/{repository}/manifests/{ref}")

        fetched = self._get_document(
            url,
            repository,
            limit=MAX_MANIFEST_SIZE,
            what=f"manifest {shown}",
            accept=_ACCEPT,
            prefix=f"fetching manifest {shown}",
        )
        if fetched.status == 404:
            raise error_from_fetched(fetched, self.registry, prefix=f"manifest unknown: {shown}")
        data = fetched.body
        if expected is not None:
            ours = Digest.of(data, expected.algorithm)
            if ours != expected:
                raise IntegrityError(f"manifest {shown}: the registry served bytes that hash to {ours}")
            digest = expected
        else:
            digest = Digest.of(data)
        announced = fetched.headers.get("Docker-Content-Digest")
        if announced and announced.strip() != str(digest):
            log.debug(
                "ignoring Docker-Content-Digest %s for %s (the bytes hash to %s)",
                announced[:80],
                shown,
                digest,
            )
        return ManifestResponse(data, self._media_type(fetched.headers.get("Content-Type"), data), digest)

    @staticmethod
    def _media_type(header: str | None, data: bytes) -> str:
        declared = _content_type(header)
        if declared not in _GENERIC_TYPES:
            return declared
        try:
            embedded = json.loads(data).get("mediaType")
        except (ValueError, AttributeError, UnicodeDecodeError):
            embedded = None
        return embedded if isinstance(embedded, str) and embedded else declared

    def head_manifest(self, repository: str, reference: str) -> Descriptor | None:
        """``HEAD`` a manifest: its descriptor, or None when it does not exist.

        Uses ``Content-Type``, ``Content-Length`` and ``Docker-Content-Digest`` (the only
        digest a HEAD can give; a digest reference is used as is). A registry that answers
        405 or omits those headers is asked with a GET instead, and then our hash decides.
        """
        validate_repository(repository)
        ref, expected = self._manifest_ref(reference)
        url = self._url(f"/v2/{repository}/manifests/{ref}")
        resp = self._request(
            "HEAD",
            url,
            _pull(repository),
            headers={"Accept": _ACCEPT},
            expect=(200, 404, 405),
            prefix=f"checking manifest {self._shown(repository, ref)}",
        )
        resp.close()
        if resp.status_code == 404:
            return None
        media_type = _content_type(resp.headers.get("Content-Type"))
        length = resp.headers.get("Content-Length", "")
        announced = resp.headers.get("Docker-Content-Digest", "").strip()
        digest: Digest | None = expected
        if digest is None and announced:
            try:
                digest = Digest.parse(announced)
            except ImagesmithError:
                digest = None
        if (
            resp.status_code == 405
            or digest is None
            or not length.isdigit()
            or (media_type in _GENERIC_TYPES)
        ):
            try:
                got = self.get_manifest(repository, ref)
            except NotFoundError:
                return None
            return Descriptor(got.media_type, got.digest, len(got.data))
        return Descriptor(media_type, digest, int(length))

    def put_manifest(self, repository: str, reference: str, data: bytes, media_type: str) -> Digest:
        """``PUT`` manifest bytes under a tag or digest with ``Content-Type: media_type``;
        return the sha256 of exactly those bytes (what the registry stores)."""
        validate_repository(repository)
        ref, expected = self._manifest_ref(reference)
        shown = self._shown(repository, ref)
        if not media_type:
            raise ManifestError(f"manifest {shown}: a media type is required to push it")
        if len(data) > MAX_MANIFEST_SIZE:
            raise ManifestError(
                f"manifest {shown} is larger than {MAX_MANIFEST_SIZE} bytes: registries refuse it"
            )
        digest = Digest.of(data)
        if expected is not None and Digest.of(data, expected.algorithm) != expected:
            raise IntegrityError(f"manifest {shown}: the bytes do not hash to {expected}")
        url = self._url(f"/v2/{repository}/manifests/{ref}")
        resp = self._request(
            "PUT",
            url,
            _push(repository),
            headers={"Content-Type": media_type},
            body=data,
            expect=range(200, 300),
            prefix=f"pushing manifest {shown}",
        )
        announced = resp.headers.get("Docker-Content-Digest", "").strip()
        resp.close()
        if announced and announced != str(digest):
            log.warning(
                "registry %s reports digest %s for manifest %s; the bytes sent hash to %s",
                self.registry,
                announced[:80],
                shown,
                digest,
            )
        return digest

    def delete_manifest(self, repository: str, digest: Digest) -> None:
        """``DELETE /v2/<name>/manifests/<digest>``: remove a manifest and every tag on it.

        A 404 raises :class:`NotFoundError`. A registry that does not allow deletes answers
        405 (distribution: ``UNSUPPORTED`` unless ``REGISTRY_STORAGE_DELETE_ENABLED=true``): the
        :class:`RegistryError` says so, with the registry's own words.
        """
        validate_repository(repository)
        shown = f"{self.registry}/{repository}@{digest}"
        url = self._url(f"/v2/{repository}/manifests/{digest}")

        def too_large(_length: int | None) -> ImagesmithError:
            return RegistryError(f"deleting {shown}: the answer is larger than {_MAX_ANSWER} bytes")

        fetched = self._fetch(
            "DELETE",
            url,
            _delete(repository),
            limit=_MAX_ANSWER,
            too_large=too_large,
            expect=(*range(200, 300), 404, 405),
            prefix=f"deleting {shown}",
        )
        if fetched.status == 404:
            raise error_from_fetched(fetched, self.registry, prefix=f"manifest unknown: {shown}")
        if fetched.status == 405:
            said = error_from_fetched(fetched, self.registry)
            raise RegistryError(
                f"deleting {shown}: {self.registry} does not allow deletes ({said}); a CNCF "
                "distribution registry needs REGISTRY_STORAGE_DELETE_ENABLED=true (storage: delete: "
                "enabled: true), hosted registries delete through their web UI or API",
                method="DELETE",
                url=said.url,
                status=405,
                codes=said.codes,
            )

    def referrers(self, repository: str, digest: Digest, artifact_type: str | None = None) -> bytes | None:
        """``GET /v2/<name>/referrers/<digest>``: the OCI index of the manifests whose
        ``subject`` is ``digest`` (bytes as served, at most ``MAX_MANIFEST_SIZE``), or None when
        the registry has no referrers API (a 404, as distribution 2.8 answers; a registry with
        the API answers an empty index for an unknown subject). ``artifact_type`` asks the
        registry to filter; callers filter again, since a registry may ignore the parameter.
        """
        validate_repository(repository)
        query = f"?artifactType={quote(artifact_type, safe='')}" if artifact_type else ""
        url = self._url(f"/v2/{repository}/referrers/{digest}{query}")
        shown = f"{self.registry}/{repository}@{digest}"

        fetched = self._get_document(
            url,
            repository,
            limit=MAX_MANIFEST_SIZE,
            what=f"the referrers index of {shown}",
            accept="application/vnd.oci.image.index.v1+json",
            prefix=f"listing the referrers of {shown}",
        )
        return fetched.body if fetched.status == 200 else None

    def blob_exists(self, repository: str, digest: Digest) -> bool:
        """Whether the repository has the blob (``HEAD``; a 405 falls back to a GET that is
        closed as soon as its status is known)."""
        validate_repository(repository)
        url = self._url(f"/v2/{repository}/blobs/{digest}")
        ok = (*range(200, 300), *REDIRECT_STATUSES, 404)
        prefix = f"checking blob {digest.short()} in {self.registry}/{repository}"
        resp = self._request(
            "HEAD", url, _pull(repository), expect=(*ok, 405), follow_redirects=False, prefix=prefix
        )
        resp.close()
        if resp.status_code == 405:
            resp = self._request(
                "GET", url, _pull(repository), expect=ok, follow_redirects=False, prefix=prefix
            )
            resp.close()
        return resp.status_code != 404

    def _blob_opener(
        self, repository: str, descriptor: Descriptor, url: str, authenticated: bool
    ) -> Callable[[int], requests.Response]:
        shown = f"blob {descriptor.digest} of {self.registry}/{repository}"

        def opener(offset: int) -> requests.Response:
            headers = {"Range": f"bytes={offset}-"} if offset else {}
            expect = (200, 206, 404) if authenticated else (200, 206)
            if authenticated:
                resp = self._request(
                    "GET", url, _pull(repository), headers=headers, expect=expect, prefix=f"fetching {shown}"
                )
            else:
                resp = self._transport.request(
                    "GET",
                    url,
                    host=urlsplit(url).netloc,
                    headers=headers,
                    expect=expect,
                    prefix=f"fetching {shown}",
                )
            if resp.status_code == 404:
                raise self._error(resp, "GET", f"blob unknown: {shown}")
            return resp

        return opener

    @contextmanager
    def open_blob(
        self, repository: str, descriptor: Descriptor, *, mirrors: bool = False
    ) -> Iterator[VerifyingReader]:
        """Open a blob for streaming; the reader checks size and digest as it is read.

        Redirects are followed without credentials when they leave the registry's origin;
        a descriptor's ``urls`` (foreign layers) are tried first, never with credentials,
        then the registry (with ``mirrors``, a pull: the ``registries.conf`` mirrors first).
        A dropped connection resumes with ``Range``.
        """
        validate_repository(repository)
        what = f"blob {descriptor.digest} of {self.registry}/{repository}"
        stream = self._open_stream(repository, descriptor, what, mirrors)
        try:
            yield VerifyingReader(stream, descriptor.digest, descriptor.size, what)
        finally:
            stream.close()

    def _open_stream(
        self, repository: str, descriptor: Descriptor, what: str, mirrors: bool
    ) -> _ResumableStream:
        if mirrors:
            sources = self.pull_sources(repository, by_digest=None)
            for registry, repo in sources[:-1]:
                try:
                    return self._peer(registry)._open_stream(repo, descriptor, what, False)
                except ImagesmithError as exc:
                    log.info(
                        "mirror %s/%s failed for %s (%s); trying the next source", registry, repo, what, exc
                    )
            registry, repo = sources[-1]
            if (normalise_registry(registry), repo) != (self.registry, repository):
                return self._peer(registry)._open_stream(repo, descriptor, what, False)
        stream: _ResumableStream | None = None
        for foreign in descriptor.urls:
            try:
                self._transport.check_url(foreign)
                stream = _ResumableStream(
                    self._blob_opener(repository, descriptor, foreign, authenticated=False),
                    what,
                    MAX_RESUMES,
                )
                break
            except RegistryError as exc:
                log.info(
                    "cannot fetch %s from %s (%s); trying the next source", what, redact_url(foreign), exc
                )
        if stream is None:
            url = self._url(f"/v2/{repository}/blobs/{descriptor.digest}")
            stream = _ResumableStream(
                self._blob_opener(repository, descriptor, url, authenticated=True),
                what,
                MAX_RESUMES,
            )
        return stream

    def get_blob_bytes(
        self, repository: str, descriptor: Descriptor, max_size: int, *, mirrors: bool = False
    ) -> bytes:
        """A small blob (an image config) in memory, verified; refused over ``max_size``."""
        if descriptor.size > max_size:
            raise ManifestError(
                f"blob {descriptor.digest} of {self.registry}/{repository} is "
                f"{descriptor.size} bytes, more than the {max_size} allowed: refused"
            )
        with self.open_blob(repository, descriptor, mirrors=mirrors) as reader:
            return reader.read_all_chunks()

    def mount_blob(self, repository: str, digest: Digest, from_repository: str) -> bool:
        """Ask the registry to mount a blob from another repository; True when done (201).

        A 202 means the registry opened an upload instead: that session is cancelled (best
        effort) and False is returned, so the caller uploads the blob.
        """
        validate_repository(repository)
        validate_repository(from_repository)
        url = self._url(
            f"/v2/{repository}/blobs/uploads/?mount={digest}&from={quote(from_repository, safe='/')}"
        )
        scopes = _push(repository) | _pull(from_repository)
        resp = self._request(
            "POST",
            url,
            scopes,
            expect=(201, 202),
            prefix=f"mounting blob {digest.short()} from {from_repository} into {self.registry}/{repository}",
        )
        location = resp.headers.get("Location")
        final_url = resp.url or url
        resp.close()
        if resp.status_code == 201:
            return True
        if location:
            try:
                self._request(
                    "DELETE",
                    urljoin(final_url, location),
                    _push(repository),
                    expect=range(200, 500),
                    retry=False,
                ).close()
            except ImagesmithError as exc:
                log.debug("could not cancel the upload opened by a failed mount: %s", exc)
        return False

    def upload_blob(
        self, repository: str, digest: Digest, size: int, open_body: Callable[[], BinaryIO]
    ) -> None:
        """Upload a blob: ``POST`` an upload, send the bytes, then ``PUT <location>&digest=``.

        Blobs up to ``options.chunk_size`` bytes go in one ``PUT`` (monolithic). Larger
        blobs, and every blob when the ``POST`` answer carries ``OCI-Chunk-Min-Length``, are
        sent as ``PATCH`` chunks with ``Content-Range`` (at least that minimum long); after a
        dropped connection, a temporary failure or a 416, the upload's status (``GET
        <location>`` -> ``Range: 0-N``) says where to resume, a bounded number of times.

        ``open_body`` opens the content from its start; it is called again whenever bytes
        must be re-sent. A temporary failure that cannot be resumed restarts the whole
        upload with a new POST, at most ``options.retries`` times. ``DIGEST_INVALID`` from
        the registry is an :class:`IntegrityError`.
        """
        validate_repository(repository)
        scopes = _push(repository)
        what = f"blob {digest} for {self.registry}/{repository}"
        attempt = 0
        while True:
            session = self._start(repository, what)
            upload_url, min_length = session.url, session.min_chunk
            chunked = size > self.options.chunk_size or min_length is not None
            current = [upload_url]  # the session's latest location, for cancelling it
            try:
                if chunked:
                    chunk = max(self.options.chunk_size, min_length or 1)
                    self._upload_chunks(upload_url, scopes, digest, size, open_body, chunk, what, current)
                else:
                    self._put_upload(
                        upload_url,
                        scopes,
                        digest,
                        what,
                        lambda: _UploadBody(open_body(), size, digest, what),
                    )
                return
            except KeyboardInterrupt:
                # Ctrl-C (or cancel.interrupt) mid-upload: drop the session, not just the
                # connection, at its latest location (a registry's state token moves with it).
                self.cancel_upload(UploadSession(repository, current[0], 0, min_length))
                raise
            except _RestartUpload as restart:
                error: RegistryError = restart.error
            except RegistryError as exc:
                if not exc.temporary:
                    raise
                error = exc
            if attempt >= self.options.retries:
                raise error
            delay = self._transport.backoff(attempt)
            attempt += 1
            log.info(
                "upload of %s failed (%s); restarting it in %.1f s (attempt %d of %d)",
                what,
                error,
                delay,
                attempt + 1,
                self.options.retries + 1,
            )
            self._transport.sleep(delay)

    def _start(self, repository: str, what: str) -> UploadSession:
        post = self._request(
            "POST",
            self._url(f"/v2/{repository}/blobs/uploads/"),
            _push(repository),
            expect=(202,),
            prefix=f"starting the upload of {what}",
        )
        location = post.headers.get("Location")
        min_length = _positive_int(post.headers.get("OCI-Chunk-Min-Length"))
        base = post.url or self._url("/")
        post.close()
        if not location:
            raise RegistryError(
                f"starting the upload of {what}: {self.registry} answered 202 without a Location header",
                method="POST",
                status=202,
            )
        return UploadSession(repository, urljoin(base, location), 0, min_length)

    # -- an upload fed while its content is still being produced (see imagesmith.registry.overlap)
    def start_upload(self, repository: str) -> UploadSession:
        """``POST`` a new upload session for a blob whose digest is not known yet.

        Feed it with :meth:`append_upload` as bytes become available, then
        :meth:`finish_upload` with the digest; :meth:`cancel_upload` drops it. Unlike
        :meth:`upload_blob` nothing here retries: the caller falls back to a whole upload.
        """
        validate_repository(repository)
        return self._start(repository, f"a blob for {self.registry}/{repository}")

    def append_upload(self, session: UploadSession, end: int, open_part: Callable[[], Any]) -> UploadSession:
        """``PATCH`` bytes ``session.offset`` to ``end`` (exclusive) with ``Content-Range``.

        ``open_part`` returns a body of exactly those bytes (a file-like object with
        ``__len__``; called again if the request must be re-sent, after a token refresh). Returns the session
        moved on (the registry may hand out a new location); raises :class:`RegistryError`
        when the registry does not acknowledge exactly ``end`` bytes.
        """
        what = f"a blob for {self.registry}/{session.repository}"
        start = session.offset
        resp = self._request(
            "PATCH",
            session.url,
            _push(session.repository),
            retry=False,
            expect=(202, 204),
            headers={"Content-Type": "application/octet-stream", "Content-Range": f"{start}-{end - 1}"},
            body=open_part,
            prefix=f"uploading bytes {start}-{end - 1} of {what}",
        )
        resp.close()
        location = resp.headers.get("Location")
        url = urljoin(resp.url or session.url, location) if location else session.url
        committed = _range_end(resp.headers.get("Range"))
        if committed is not None and committed != end:
            raise RegistryError(
                f"uploading {what}: {self.registry} reports {committed} bytes received, expected {end}"
            )
        return UploadSession(session.repository, url, end, session.min_chunk)

    def finish_upload(self, session: UploadSession, digest: Digest) -> None:
        """The final ``PUT <location>?digest=``: the registry checks and stores the blob."""
        what = f"blob {digest} for {self.registry}/{session.repository}"
        self._put_upload(session.url, _push(session.repository), digest, what, b"")

    def cancel_upload(self, session: UploadSession) -> None:
        """``DELETE`` the session, best effort (registries also expire abandoned ones)."""
        try:
            self._request(
                "DELETE", session.url, _push(session.repository), expect=range(200, 500), retry=False
            ).close()
        except ImagesmithError as exc:
            log.debug("could not cancel an upload session: %s", exc)

    def _put_upload(
        self,
        upload_url: str,
        scopes: frozenset[str],
        digest: Digest,
        what: str,
        body: Callable[[], Any] | bytes,
    ) -> None:
        """The final ``PUT <location>?digest=`` (with the whole body, or empty after chunks)."""
        sep = "&" if urlsplit(upload_url).query else "?"
        put_url = f"{upload_url}{sep}digest={digest}"
        headers = {"Content-Type": "application/octet-stream"}
        if not callable(body):
            headers["Content-Length"] = str(len(body))
        resp = self._request(
            "PUT",
            put_url,
            scopes,
            retry=False,
            expect=(*range(200, 300), 400),
            headers=headers,
            body=body,
            prefix=f"uploading {what}",
        )
        if resp.status_code == 400:
            error = self._error(resp, "PUT", f"uploading {what}")
            if "DIGEST_INVALID" in error.codes:
                raise IntegrityError(
                    f"{self.registry} rejected {what}: the uploaded bytes do not match the "
                    f"digest (DIGEST_INVALID); {error}"
                )
            raise error
        announced = resp.headers.get("Docker-Content-Digest", "").strip()
        resp.close()
        if announced and announced != str(digest):
            log.warning("registry %s stored %s as %s", self.registry, what, announced[:80])

    def _upload_chunks(
        self,
        upload_url: str,
        scopes: frozenset[str],
        digest: Digest,
        size: int,
        open_body: Callable[[], BinaryIO],
        chunk: int,
        what: str,
        current: list[str] | None = None,
    ) -> None:
        """Send ``PATCH`` chunks, resuming from the upload's status after a failure, then
        the final empty ``PUT``. Raises :class:`_RestartUpload` when resuming is impossible.
        ``current[0]`` follows the session's location as the registry moves it."""
        source = _ChunkSource(open_body, digest, size, what)
        url = upload_url
        offset = 0
        resumes = 0
        while offset < size:
            end = min(size, offset + chunk)
            failure: RegistryError | None = None
            resp: requests.Response | None = None
            try:
                resp = self._request(
                    "PATCH",
                    url,
                    scopes,
                    retry=False,
                    expect=(202, 204, 416),
                    headers={
                        "Content-Type": "application/octet-stream",
                        "Content-Range": f"{offset}-{end - 1}",
                    },
                    body=functools.partial(source.slice, offset, end),
                    prefix=f"uploading {what}",
                )
            except RegistryError as exc:
                if not exc.temporary:
                    raise
                failure = exc
            if resp is not None:
                resp.close()
                location = resp.headers.get("Location")
                if location:
                    url = urljoin(resp.url or url, location)
                    if current is not None:
                        current[0] = url
                if resp.status_code != 416 and source.commit(end):
                    committed = _range_end(resp.headers.get("Range"))
                    if committed is None or committed == end:
                        offset = end
                        continue
                    failure = RegistryError(
                        f"uploading {what}: {self.registry} reports {committed} bytes "
                        f"received, expected {end}"
                    )
                else:
                    failure = RegistryError(
                        f"uploading {what}: {self.registry} refused the chunk at byte "
                        f"{offset} (HTTP {resp.status_code})",
                        status=resp.status_code,
                    )
            assert failure is not None
            if resumes >= MAX_RESUMES:
                raise _RestartUpload(failure)
            delay = self._transport.backoff(resumes)
            resumes += 1
            log.info(
                "chunk %d-%d of %s failed (%s); asking where to resume in %.1f s",
                offset,
                end - 1,
                what,
                failure,
                delay,
            )
            self._transport.sleep(delay)
            url, offset = self._upload_status(url, scopes, what, failure)
            if current is not None:
                current[0] = url
            if offset > size:
                raise _RestartUpload(failure)
        try:
            self._put_upload(url, scopes, digest, what, b"")
        except IntegrityError as exc:
            if resumes:
                # The registry's idea of the resumed offset may have been wrong: start over.
                raise _RestartUpload(RegistryError(str(exc))) from None
            raise

    def _upload_status(
        self, url: str, scopes: frozenset[str], what: str, failure: RegistryError
    ) -> tuple[str, int]:
        """``GET <location>``: the upload's (new location, committed byte count)."""
        try:
            resp = self._request(
                "GET", url, scopes, expect=(200, 204), prefix=f"asking the status of the upload of {what}"
            )
        except RegistryError as exc:
            # Unknown or invalidated session (404, 400 BLOB_UPLOAD_INVALID): start over.
            raise _RestartUpload(exc if exc.temporary else failure) from None
        resp.close()
        location = resp.headers.get("Location")
        new_url = urljoin(resp.url or url, location) if location else url
        committed = _range_end(resp.headers.get("Range"))
        return new_url, committed or 0

    def list_tags(self, repository: str, page_size: int | None = None) -> Iterator[str]:
        """The repository's tags, following ``Link: <...>; rel="next"`` pagination."""
        validate_repository(repository)
        url: str | None = self._url(f"/v2/{repository}/tags/list")
        if page_size is not None:
            url = f"{url}?n={int(page_size)}"
        seen: set[str] = set()
        shown = f"{self.registry}/{repository}"

        while url is not None:
            if url in seen or len(seen) >= MAX_TAG_PAGES:
                raise RegistryError(f"listing tags of {shown}: the pagination loops at {redact_url(url)}")
            seen.add(url)
            fetched = self._get_document(
                url,
                repository,
                limit=MAX_TAGS_RESPONSE,
                what=f"the tag list of {shown}",
                prefix=f"listing tags of {shown}",
                error=RegistryError,
            )
            if fetched.status == 404:
                raise error_from_fetched(fetched, self.registry, prefix=f"repository unknown: {shown}")
            obj = fetched.json(f"listing tags of {shown}")
            tags = obj.get("tags") if isinstance(obj, dict) else None
            if tags is not None and not (isinstance(tags, list) and all(isinstance(t, str) for t in tags)):
                raise RegistryError(f"listing tags of {shown}: 'tags' is not a list of strings")
            yield from tags or ()
            url = None
            for link in requests.utils.parse_header_links(fetched.headers.get("Link", "")):
                if link.get("rel") == "next" and link.get("url"):
                    url = urljoin(fetched.url, link["url"])
                    break


class RegistryPool(Closing):
    """One :class:`RegistryClient` per registry, sharing connections and the credential
    store, so tokens are reused for the whole run. Without ``options``, they come from the
    environment (:meth:`RegistryOptions.from_env`), as for :func:`imagesmith.build`."""

    def __init__(
        self,
        options: RegistryOptions | None = None,
        credentials: CredentialStore | None = None,
        *,
        transport: Transport | None = None,
    ) -> None:
        # No options: the environment's (IMAGESMITH_INSECURE_REGISTRY, IMAGESMITH_CA_CERT, ...),
        # read in one place, RegistryOptions.from_env, as build() and the CLI read them.
        self.options = options or (transport.options if transport else RegistryOptions.from_env())
        self.credentials = credentials or _credential_store(self.options)
        # A caller-supplied transport is the seam tests use to replay recorded exchanges;
        # auth, redirect and TLS policy stay above it and are exercised for real.
        self._transport: Transport | None = transport
        self._clients: dict[str, RegistryClient] = {}
        self._lock = threading.Lock()

    def client(self, registry: str) -> RegistryClient:
        """The client for ``registry`` (created on first use)."""
        name = normalise_registry(registry)
        with self._lock:
            if self._transport is None:
                self._transport = Transport(self.options)
            client = self._clients.get(name)
            if client is None:
                client = RegistryClient(
                    name, self.options, self.credentials, transport=self._transport, peers=self._peer
                )
                self._clients[name] = client
            return client

    def _peer(self, registry: str) -> RegistryClient:
        return self.client(registry)

    def close(self) -> None:
        """Close every client and the shared connections."""
        with self._lock:
            self._clients.clear()
            if self._transport is not None:
                self._transport.close()
                self._transport = None


@contextmanager
def borrowed_pool(pool: RegistryPool | None, options: RegistryOptions | None) -> Iterator[RegistryPool]:
    """The caller's pool as it is, or a pool of ``options`` owned for the ``with`` block."""
    if pool is not None:
        yield pool
        return
    with RegistryPool(options) as owned:
        yield owned
