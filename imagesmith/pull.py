"""Pull: fetch an image's layers (verified, through the cache) and unpack them into a directory.

Any location can be pulled: a registry reference, an OCI layout or a docker archive. Layers
are downloaded in parallel into the blob cache, where each is verified against its digest,
then unpacked in order by :mod:`imagesmith.unpack`, which keeps every write inside the root.
``packages_only`` unpacks just the layers imagesmith added for packages, recognised by their
history entries, which is how Spack-style consumers take a package out of an image.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .cache import BlobCache
from .errors import UsageError
from .images import Image, Layer, resolve_base
from .locations import Location
from .model import Platform
from .progress import ProgressCallback, ProgressEvent, null_progress
from .references import Reference
from .registry.client import RegistryPool
from .registry.transport import RegistryOptions
from .transfer import as_location, fetch_blob, open_source
from .unpack import UnpackPolicy, UnpackStats, unpack_layers

__all__ = ["PullResult", "package_layers", "pull"]

_PACKAGE_HISTORY = "imagesmith: add "


@dataclass(frozen=True)
class PullResult:
    """What was unpacked where."""

    source: str
    digest: str
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
    verified, then unpacked base first; with ``packages_only`` only the package layers.
    """
    target = Path(rootfs)
    _empty_target(target)
    cache = cache or BlobCache()
    owned = pool is None
    pool = pool or RegistryPool(registry or RegistryOptions.from_env())
    try:
        location = as_location(source)
        with open_source(location, pool) as src:
            resolved = resolve_base(pool, src, platform or Platform.host())
            progress(ProgressEvent("resolve", resolved.pinned))
            layers: Sequence[Layer] = (
                package_layers(resolved.image) if packages_only else resolved.image.layers
            )

            def fetch(layer: Layer) -> Path:
                path = fetch_blob(pool, cache, layer.descriptor, layer.origin)
                progress(ProgressEvent("blob-fetched", str(layer.digest), layer.descriptor.size))
                return path

            workers = max(1, min(jobs, len(layers)))
            with ThreadPoolExecutor(max_workers=workers) as executor:
                paths = list(executor.map(fetch, layers))
        target.mkdir(parents=True, exist_ok=True)
        stats = unpack_layers(paths, target, policy=policy)
        return PullResult(str(location), str(resolved.digest), target, len(paths), stats)
    finally:
        if owned:
            pool.close()
