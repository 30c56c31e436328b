"""Loading images into a Docker-compatible daemon through the docker SDK.

The daemon is the one ``DOCKER_HOST`` names (or the SDK's default socket), or an explicit
``docker_host`` such as ``unix:///run/podman/podman.sock``. An image goes in as a docker
archive (see :mod:`imagesmith.transports.archive`) streamed from its file, so a large image is never
held in memory; the daemon's answer is read for the names it loaded and for errors.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from imagesmith import cancel
from imagesmith.errors import (
    CacheError,
    DaemonError,
)
from imagesmith.oci.image import (
    BlobOrigin,
    RawManifest,
)
from imagesmith.oci.model import Descriptor, Platform
from imagesmith.oci.references import Reference
from imagesmith.progress import ProgressCallback
from imagesmith.registry.client import RegistryPool
from imagesmith.store.cache import BlobCache
from imagesmith.transports.archive import ArchiveSink
from imagesmith.transports.base import LocationKind, SinkOptions

__all__ = [
    "DOCKER_HOST_ENV",
    "DaemonLocation",
    "DaemonSink",
    "load_into_daemon",
]


DOCKER_HOST_ENV = "DOCKER_HOST"


DEFAULT_TIMEOUT = 600.0


_LOADED = re.compile(r"^Loaded image(?: ID)?: (.+)$", re.MULTILINE)


def _base_url(docker_host: str | None) -> str:
    return docker_host or os.environ.get(DOCKER_HOST_ENV) or "unix:///var/run/docker.sock"


def _check_socket(base_url: str) -> None:
    """Fail early, with our message, when a unix socket has nobody listening.

    The SDK would report the same thing, but leaks the socket it failed to connect.
    """
    if not base_url.startswith(("unix://", "http+unix://")):
        return
    path = base_url.split("://", 1)[1]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            probe.settimeout(10)
            probe.connect(path)
    except OSError as exc:
        raise DaemonError(
            f"no docker daemon at {base_url}: set DOCKER_HOST or start the daemon ({exc.strerror or exc})"
        ) from None


def _client(docker_host: str | None, timeout: float) -> Any:
    import docker  # here: the SDK costs every command ~20 ms to import, and few need a daemon

    base_url = _base_url(docker_host)
    _check_socket(base_url)
    try:
        if docker_host:
            return docker.DockerClient(base_url=docker_host, timeout=int(timeout))
        # from_env also applies DOCKER_TLS_VERIFY and DOCKER_CERT_PATH.
        return docker.from_env(timeout=int(timeout))
    except docker.errors.DockerException as exc:
        raise DaemonError(
            f"no docker daemon at {base_url}: set DOCKER_HOST or start the daemon ({exc})"
        ) from None


def load_into_daemon(
    archive: Path | str, *, docker_host: str | None = None, timeout: float = DEFAULT_TIMEOUT
) -> tuple[str, ...]:
    """Load the docker archive at ``archive`` into the daemon and return what it loaded.

    The file is streamed as the request body. The result lists the names (``name:tag``) or
    image ids the daemon reports, in its order. An unreachable daemon raises
    :class:`DaemonError` saying to set ``DOCKER_HOST`` or start the daemon; a daemon that
    refuses the archive raises :class:`DaemonError` with its message.
    """
    import docker.errors

    path = Path(archive)
    where = _base_url(docker_host)
    client = _client(docker_host, timeout)
    loaded: list[str] = []
    try:
        with path.open("rb") as body:
            # The low-level call streams the file object and yields the daemon's JSON lines.
            for chunk in client.api.load_image(body):
                if not isinstance(chunk, dict):
                    continue
                if "errorDetail" in chunk or "error" in chunk:
                    detail = chunk.get("errorDetail") or {}
                    message = detail.get("message") if isinstance(detail, dict) else None
                    reason = message or chunk.get("error")
                    raise DaemonError(f"the daemon at {where} refused {path}: {reason}")
                stream = chunk.get("stream")
                if isinstance(stream, str):
                    # podman joins several names with commas on one line.
                    loaded.extend(
                        name.strip() for m in _LOADED.findall(stream) for name in m.split(",") if name.strip()
                    )
    except FileNotFoundError:
        raise DaemonError(f"cannot load {path} into the daemon: the file does not exist") from None
    except docker.errors.APIError as exc:
        raise DaemonError(f"the daemon at {where} refused {path}: {exc.explanation or exc}") from None
    except (docker.errors.DockerException, requests.RequestException) as exc:
        raise DaemonError(
            f"no docker daemon at {where}: set DOCKER_HOST or start the daemon ({exc})"
        ) from None
    finally:
        client.close()
    if not loaded:
        raise DaemonError(f"the daemon at {where} loaded nothing from {path}")
    return tuple(loaded)


@dataclass(frozen=True)
class DaemonLocation(LocationKind):
    """An image in the Docker-compatible daemon ``DOCKER_HOST`` names, under ``reference``."""

    reference: Reference

    def open_sink(self, options: SinkOptions) -> DaemonSink:
        return DaemonSink(
            self.reference, pool=options.pool, cache=options.cache, docker_host=options.docker_host
        )

    def __str__(self) -> str:
        return f"docker-daemon:{self.reference.familiar()}"


class DaemonSink:
    """Load the image into the Docker-compatible daemon at ``docker_host`` (default:
    ``DOCKER_HOST``) as ``reference``, through a temp archive in the cache's temp directory."""

    def __init__(
        self,
        reference: Reference,
        *,
        pool: RegistryPool,
        cache: BlobCache,
        docker_host: str | None = None,
    ) -> None:
        self.reference = reference
        self.docker_host = docker_host
        self.loaded: tuple[str, ...] = ()
        try:
            cache.tmp_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CacheError(f"cannot create {cache.tmp_dir}: {exc.strerror or exc}") from None
        # In the cache's temp directory: the same disk as the blobs it is made of, and swept
        # by BlobCache.clean_temp if this process is killed before it removes it.
        name = f"load-{os.getpid()}-{uuid.uuid4().hex}.tar"
        self._archive = ArchiveSink(cache.tmp_dir / name, reference, pool=pool, cache=cache)

    @property
    def name(self) -> str:
        return f"docker-daemon:{self.reference.familiar()}"

    def put_blob(self, descriptor: Descriptor, origin: BlobOrigin | None, progress: ProgressCallback) -> None:
        self._archive.put_blob(descriptor, origin, progress)

    def put_blob_bytes(self, descriptor: Descriptor, data: bytes, progress: ProgressCallback) -> None:
        self._archive.put_blob_bytes(descriptor, data, progress)

    def put_manifest(
        self, manifest: RawManifest, *, top: bool, platform: Platform | None, progress: ProgressCallback
    ) -> None:
        self._archive.put_manifest(manifest, top=top, platform=platform, progress=progress)

    def commit(self) -> None:
        """Finish the archive, stream it into the daemon, and remove it."""
        cancel.check()
        self._archive.commit()
        try:
            self.loaded = load_into_daemon(self._archive.path, docker_host=self.docker_host)
        finally:
            with contextlib.suppress(FileNotFoundError):
                self._archive.path.unlink()

    def abort(self) -> None:
        """Drop the temp archive; nothing reached the daemon."""
        self._archive.abort()
