"""``Session``: one object that holds a run's shared state, as ``httpx.Client`` does.

A session owns the registry options (TLS, timeouts, retries, the auth file), the credential
store, the connection pool (one client per registry, tokens reused), the blob cache and the
progress callback, and closes the pool when it ends::

    with imagesmith.Session(registry=RegistryOptions(insecure={"localhost:5000"})) as session:
        packages = session.load_packages(["python.json"])
        result = session.build("ubuntu:24.04", packages, repo="localhost:5000/stack")
        session.copy(f"localhost:5000/stack:{result.tag}", "oci:/srv/layout:python")

Every operation is a method taking the same arguments as the top-level function of the same
name, without the state: ``session.build(...)`` is :func:`imagesmith.build` with the
session's ``pool``, ``cache`` and ``progress`` (an argument given explicitly still wins). The
top-level functions stay as conveniences that open what they need for one call.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Generic, ParamSpec, TypeVar, overload

from imagesmith.closing import Closing
from imagesmith.inputs.load import load_package, load_packages
from imagesmith.oci.references import Reference
from imagesmith.ops.inspect import inspect
from imagesmith.ops.merge import MergeResult, merge_images
from imagesmith.ops.pull import pull
from imagesmith.ops.repoindex import (
    INDEX_TAG,
    IndexUpdate,
    RepositoryIndex,
    list_index,
    read_index,
    update_index,
)
from imagesmith.pipeline.run import build, build_each, build_each_platforms, build_platforms, import_rootfs
from imagesmith.progress import ProgressCallback, null_progress
from imagesmith.registry.client import RegistryPool
from imagesmith.registry.credentials import CredentialStore
from imagesmith.registry.transport import RegistryOptions
from imagesmith.store.cache import BlobCache
from imagesmith.transports.copy import CopyResult, PlatformChoice, copy_image
from imagesmith.transports.locations import Location

__all__ = ["Session"]

P = ParamSpec("P")
R = TypeVar("R")


class _Operation(Generic[P, R]):
    """An operation as a session method: the keywords in ``state`` (of ``pool``, ``cache``,
    ``progress``) are filled from the session unless the caller passes them."""

    def __init__(self, operation: Callable[P, R], *state: str) -> None:
        self._operation = operation
        self._state = state
        self.__doc__ = operation.__doc__

    @overload
    def __get__(self, session: None, owner: type[Session]) -> _Operation[P, R]: ...

    @overload
    def __get__(self, session: Session, owner: type[Session]) -> Callable[P, R]: ...

    def __get__(self, session: Session | None, owner: type[Session]) -> _Operation[P, R] | Callable[P, R]:
        if session is None:
            return self
        operation, state = self._operation, self._state

        @functools.wraps(operation)
        def bound(*args: P.args, **kwargs: P.kwargs) -> R:
            for name in state:
                kwargs.setdefault(name, session.state(name))
            return operation(*args, **kwargs)

        return bound


class Session(Closing):
    """A run's registry options, credentials, connection pool, blob cache and progress callback.

    ``registry`` defaults to :meth:`RegistryOptions.from_env`, ``cache`` to the default cache
    directory (a :class:`BlobCache`, or the directory of one), ``credentials`` to the store
    docker and podman logins write. Use it as a context manager, or call :meth:`close`.
    """

    def __init__(
        self,
        *,
        registry: RegistryOptions | None = None,
        cache: BlobCache | str | Path | None = None,
        credentials: CredentialStore | None = None,
        progress: ProgressCallback = null_progress,
    ) -> None:
        self.registry = registry or RegistryOptions.from_env()
        self.cache = cache if isinstance(cache, BlobCache) else BlobCache(Path(cache) if cache else None)
        self.pool = RegistryPool(self.registry, credentials)
        self.progress = progress

    @property
    def credentials(self) -> CredentialStore:
        """Where registry credentials are read (and tokens cached) for this session."""
        return self.pool.credentials

    def state(self, name: str) -> Any:
        """The session's ``pool``, ``cache`` or ``progress``, by keyword name."""
        return {"pool": self.pool, "cache": self.cache, "progress": self.progress}[name]

    def close(self) -> None:
        """Close the registry connections (the cache stays on disk)."""
        self.pool.close()

    # Operations whose state keywords are optional: the function's own signature, state filled.
    load_package = _Operation(load_package, "pool")
    load_packages = _Operation(load_packages, "pool")
    build = _Operation(build, "pool", "cache", "progress")
    build_each = _Operation(build_each, "pool", "cache", "progress")
    build_platforms = _Operation(build_platforms, "pool", "cache", "progress")
    build_each_platforms = _Operation(build_each_platforms, "pool", "cache", "progress")
    import_rootfs = _Operation(import_rootfs, "pool", "cache", "progress")
    pull = _Operation(pull, "pool", "cache", "progress")
    inspect = _Operation(inspect, "pool")

    # Operations whose functions take the pool as a required argument.
    def copy(
        self,
        source: str | Reference | Location,
        destination: str | Reference | Location,
        *,
        platform: PlatformChoice = None,
        jobs: int = 4,
        docker_host: str | None = None,
    ) -> CopyResult:
        """:func:`imagesmith.copy_image` with this session's pool, cache and progress."""
        return copy_image(
            source,
            destination,
            pool=self.pool,
            cache=self.cache,
            platform=platform,
            jobs=jobs,
            docker_host=docker_host,
            progress=self.progress,
        )

    def merge(
        self, sources: Sequence[str | Reference], target: str | Reference, *, jobs: int = 4
    ) -> MergeResult:
        """:func:`imagesmith.merge_images` with this session's pool and progress."""
        return merge_images(sources, target, pool=self.pool, progress=self.progress, jobs=jobs)

    def update_index(
        self, repository: Reference, *, tag: str = INDEX_TAG, force: bool = False
    ) -> IndexUpdate:
        """:func:`imagesmith.update_index` with this session's pool and progress."""
        return update_index(self.pool, repository, tag=tag, progress=self.progress, force=force)

    def read_index(self, repository: Reference, *, tag: str = INDEX_TAG) -> RepositoryIndex:
        """:func:`imagesmith.read_index` with this session's pool."""
        return read_index(self.pool, repository, tag=tag)

    def list_index(
        self, repository: Reference, *, tag: str = INDEX_TAG, live: bool = False
    ) -> RepositoryIndex:
        """:func:`imagesmith.list_index` with this session's pool and progress."""
        return list_index(self.pool, repository, tag=tag, live=live, progress=self.progress)
