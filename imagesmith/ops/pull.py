"""Pull: fetch an image's layers (verified, through the cache) and unpack them into a directory.

Any location can be pulled: a registry reference, an OCI layout or a docker archive. Layers
are downloaded in parallel into the blob cache, where each is verified against its digest,
and unpacked in order, each as soon as it is there (while the later ones are still being
downloaded), by :mod:`imagesmith.tar.unpack`, which keeps every write inside the root
and checks each layer's uncompressed bytes against the config's ``rootfs.diff_ids`` (as
containerd does). The tree is unpacked into a temporary directory beside the target and
renamed into place when complete: a refused pull leaves the target as it was (and a rerun
works). ``packages_only`` unpacks just the layers imagesmith added for packages, recognised by
their history entries, which is how Spack-style consumers take a package out of an image.
"""

from __future__ import annotations

import errno
import os
import secrets
import stat
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imagesmith.errors import DiskFullError, IntegrityError, UnpackError, UsageError, file_error
from imagesmith.oci.digests import Digest
from imagesmith.oci.image import Image, Layer
from imagesmith.oci.model import Platform
from imagesmith.oci.references import Reference
from imagesmith.progress import ProgressCallback, ProgressEvent, null_progress
from imagesmith.registry.client import RegistryPool
from imagesmith.registry.transport import RegistryOptions
from imagesmith.store.cache import BlobCache
from imagesmith.tar.unpack import UnpackPolicy, UnpackStats, discard_tree, unpack_layers
from imagesmith.transports.base import fetch_blob
from imagesmith.transports.locations import Location, as_location, open_source, resolve_base

__all__ = ["PullResult", "package_layers", "pull"]

_PACKAGE_HISTORY = "imagesmith: add "


@dataclass(frozen=True)
class PullResult:
    """What was unpacked where."""

    source: str
    digest: Digest
    rootfs: Path
    layers: int
    stats: UnpackStats

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "digest": self.digest,
            "rootfs": str(self.rootfs),
            "layers": self.layers,
            "files": self.stats.files,
            "directories": self.stats.dirs,
            "symlinks": self.stats.symlinks,
            "hardlinks": self.stats.hardlinks,
            "whiteouts": self.stats.whiteouts,
            "bytes": self.stats.bytes,
            "skipped": list(self.stats.skipped),
        }


def package_layers(image: Image) -> tuple[Layer, ...]:
    """The layers imagesmith added for packages (not the base's, not the profile script).

    They are recognised by their history entries (``imagesmith: add NAME@VERSION at PREFIX``),
    which map 1:1 onto layers. An image with none raises :class:`UsageError`.
    """
    history = [h for h in image.config.history if not h.get("empty_layer")]
    if len(history) != len(image.layers):
        raise UsageError(
            "cannot tell package layers from base layers: the image's history does not map onto "
            "its layers; pull it without --packages-only"
        )
    chosen = tuple(
        layer
        for layer, entry in zip(image.layers, history, strict=True)
        if str(entry.get("created_by", "")).startswith(_PACKAGE_HISTORY)
        and not str(entry.get("created_by", "")).startswith(_PACKAGE_HISTORY + "/")
    )
    if not chosen:
        raise UsageError(
            "the image has no layers imagesmith added for packages; pull it without --packages-only"
        )
    return chosen


def _empty_target(rootfs: Path) -> None:
    if rootfs.exists():
        if not rootfs.is_dir():
            raise UsageError(f"--rootfs {rootfs} exists and is not a directory")
        if any(rootfs.iterdir()):
            raise UsageError(f"--rootfs {rootfs} is not empty: unpack into a new or empty directory")


def _staging_dir(target: Path) -> Path | None:
    """A new empty directory beside ``target`` to unpack into, or None where there can be none
    (``target`` is a mount point, or its parent cannot be written)."""
    if target.is_dir() and os.path.ismount(target):
        return None  # a rename cannot replace a mount point
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = target.parent / f".{target.name}.imagesmith-pull-{secrets.token_hex(4)}"
        staging.mkdir(0o777)  # the umask applies, as to a target made by mkdir
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            return None
        raise UnpackError(f"cannot create a directory beside {target}: {exc.strerror or exc}") from None
    return staging


def _unpack_into(target: Path, unpack: Callable[[Path], UnpackStats]) -> UnpackStats:
    """Run ``unpack`` so that ``target`` ends up complete or as it was (empty or missing).

    The tree is unpacked into a staging directory beside ``target`` and renamed over it (an
    empty directory is replaced atomically; its mode is kept). Where that cannot be done, it is
    unpacked in place and, on failure, removed again. Either way a failure says what was left.
    """
    staging = _staging_dir(target)
    root = staging if staging is not None else target
    created = staging is None and not target.exists()
    try:
        stats = unpack(root)
        if staging is not None:
            if target.exists():
                st = target.stat()
                staging.chmod(stat.S_IMODE(st.st_mode))
                if os.geteuid() == 0:
                    os.chown(staging, st.st_uid, st.st_gid)
            try:
                staging.rename(target)
            except OSError as exc:
                raise UnpackError(
                    f"cannot move the unpacked tree into {target}: {exc.strerror or exc} (did "
                    "something write into it meanwhile?)"
                ) from None
        return stats
    except (UnpackError, IntegrityError) as exc:
        left = _discard(root, target, keep=not created and staging is None)
        raise type(exc)(f"{exc}; {left}") from None
    except DiskFullError as exc:
        left = _discard(root, target, keep=not created and staging is None)
        raise DiskFullError(f"{exc}; {left}", path=exc.path, errno=exc.errno) from None
    except BaseException:
        _discard(root, target, keep=not created and staging is None)
        raise


def _discard(root: Path, target: Path, *, keep: bool) -> str:
    """Remove what a refused unpack left in ``root`` (keeping the directory itself when it was
    the caller's ``target``); returns what a message should say about ``target``."""
    try:
        if keep:
            for child in root.iterdir():
                discard_tree(child)
            return f"what was unpacked into {target} was removed"
        discard_tree(root)
    except OSError as exc:
        return f"{root} could not be cleaned up ({exc.strerror or exc}): remove it"
    return f"{target} was left as it was"


def pull(
    source: str | Reference | Location,
    rootfs: str | Path,
    *,
    packages_only: bool = False,
    platform: Platform | None = None,
    policy: UnpackPolicy | None = None,
    jobs: int = 4,
    registry: RegistryOptions | None = None,
    cache: BlobCache | None = None,
    pool: RegistryPool | None = None,
    progress: ProgressCallback = null_progress,
) -> PullResult:
    """Unpack the image at ``source`` (for an index: the ``platform`` entry) into ``rootfs``.

    ``rootfs`` must be missing or empty. Layers are fetched into the cache in parallel and
    verified, and unpacked base first, each as soon as it is fetched (with ``packages_only``
    only the package layers), each checked against its diff_id, into a directory beside
    ``rootfs`` renamed into place at the end: if anything is refused (:class:`UnpackError`,
    :class:`IntegrityError`), ``rootfs`` is left as it was, and the error says so. Errors name
    layers by their digests.
    """
    target = Path(rootfs)
    try:
        if target.is_symlink():
            target = Path(os.path.realpath(target))  # the directory it names is the one to fill
        _empty_target(target)
    except OSError as exc:  # a parent that cannot be searched, an unreadable directory
        raise file_error("access", target, exc, "check the permissions of the directories above it") from None
    cache = cache or BlobCache()
    owned = pool is None
    pool = pool or RegistryPool(registry)
    try:
        location = as_location(source)
        with open_source(location, pool) as src:
            resolved = resolve_base(pool, src, platform or Platform.host())
            progress(ProgressEvent("resolve", resolved.pinned))
            layers: Sequence[Layer] = (
                package_layers(resolved.image) if packages_only else resolved.image.layers
            )

            def fetch(layer: Layer) -> Path:
                path = fetch_blob(pool, cache, layer.descriptor, layer.origin, progress)
                progress(ProgressEvent("blob-fetched", str(layer.digest), layer.descriptor.size))
                return path

            # Each layer is unpacked as soon as it is in the cache, base first, while the later
            # ones are still being downloaded (executor.map yields in order).
            workers = max(1, min(jobs, len(layers)))
            executor = ThreadPoolExecutor(max_workers=workers)
            try:
                stats = _unpack_into(
                    target,
                    lambda root: unpack_layers(
                        executor.map(fetch, layers),
                        root,
                        policy=policy,
                        diff_ids=[layer.diff_id for layer in layers],
                        names=[str(layer.digest) for layer in layers],
                        progress=progress,
                    ),
                )
            finally:
                # A refused layer stops the downloads not yet started; running ones finish.
                executor.shutdown(wait=True, cancel_futures=True)
        return PullResult(str(location), resolved.digest, target, len(layers), stats)
    finally:
        if owned:
            pool.close()
