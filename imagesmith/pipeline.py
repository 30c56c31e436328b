"""The pipeline: build, import and inspect images. Orchestration only.

Data flows one way::

    inputs -> plan (base location, platform, packages in dependency order, options)
           -> base (manifest + config only) -> layers (one streaming pass each, into the cache)
           -> config + manifest -> sink (registry, OCI layout, docker archive, daemon)

Every step lives in its own module; this one wires them together, runs layer builds in
parallel and reports progress through a callback.
"""

from __future__ import annotations

import base64
import datetime as _dt
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing, contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from . import layerrecords
from . import mediatypes as mt
from .budget import DEFAULT_MAX_LAYERS, LayerPlan, package_slots, plan_layers
from .cache import BlobCache
from .closure import CheckMode, ClosureReport, check_closure, closure_gate
from .digests import Digest
from .envmods import EnvModification, apply_env, infer_env, parse_env_assignment
from .errors import PackageError, UsageError, file_error
from .grouplayer import GroupMember, group_entries, group_record_key
from .images import (
    BaseImage,
    BlobOrigin,
    FileOrigin,
    Image,
    Layer,
    RawManifest,
    RemoteOrigin,
    choose_platform,
    resolve_base,
)
from .layers import LayerBlob, adopt_tarball, build_layer, directory_entries, tarball_entries, with_file
from .locations import (
    ArchiveLocation,
    DaemonLocation,
    LayoutLocation,
    Location,
    RegistryLocation,
    validate_layout_tag,
)
from .merge import index_document
from .model import Descriptor, HistoryEntry, ImageConfig, Index, Manifest, Platform, select_platform
from .overlap import EarlyUploads
from .packages import Package, package_hash
from .progress import EventKind, ProgressCallback, ProgressEvent, null_progress
from .references import Reference, parse_repository
from .referrers import Attached, attach
from .registry.client import RegistryPool
from .registry.transport import RegistryOptions
from .sbom import SBOM_FILENAMES, SBOM_MEDIA_TYPES, SbomFormat, SbomImage, render_sbom, sbom_packages
from .signing import Signed, SigningKey, sign_image
from .spack import SPACK_CONFIG_KEYS, SpackPrefix, SpackRegistryLayer, SpackTarball, spack_config_fields
from .spackrelocation import BUILDINFO_PATH, Relocation, buildinfo
from .tarwriter import TarEntry
from .templating import render_profile_script, render_tag
from .transfer import DaemonSink, as_location, open_sink, open_source, write_image, write_images, write_index

__all__ = [
    "BuildOptions",
    "BuildResult",
    "BuiltPackage",
    "ImportResult",
    "InspectResult",
    "MultiBuildResult",
    "StackLayer",
    "build",
    "build_each",
    "build_each_platforms",
    "build_platforms",
    "import_rootfs",
    "inspect",
]

PROFILE_SCRIPT_PATH = "etc/profile.d/imagesmith.sh"
# Config labels naming the package an image was built for (the last, top layer).
LABEL_NAME = "org.opencontainers.image.title"
LABEL_VERSION = "org.opencontainers.image.version"
LABEL_HASH = "io.imagesmith.package.hash"
ANNOTATION = "org.opencontainers.image."


@dataclass(frozen=True)
class BuildOptions:
    """Everything that shapes a build besides the base and the packages."""

    platform: Platform | None = None  # None: the machine's own
    compression: mt.Compression = "gzip"
    level: int | None = None
    env: Sequence[str] = ()  # KEY=VALUE, applied after every package's modifications
    entrypoint: Sequence[str] | None = None
    cmd: Sequence[str] | None = None
    workdir: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    profile_script: bool = False
    tag_template: str | None = None
    jobs: int = 4
    # Upload each new layer to the target repository while it is compressed (see overlap.py).
    overlap_upload: bool = True
    # The runtime-closure check (closure.py): "warn" reports, "error" fails before any write.
    check: CheckMode = "warn"
    # SBOMs attached to the image as OCI referrers (sbom.py, referrers.py), and the key that
    # signs it in its registry (signing.py).
    sbom: tuple[SbomFormat, ...] = ()
    signing_key: SigningKey | None = None
    # The most layers an image may have, base layers included (see budget.py).
    max_layers: int = DEFAULT_MAX_LAYERS


@dataclass(frozen=True)
class BuiltPackage:
    """A package turned into a layer, with its effective hash and environment changes.

    ``origin`` is where the layer's bytes come from: for a layer built into the blob cache, its
    input built again should the cached copy be lost or damaged by the time a destination reads
    it (see :class:`~imagesmith.layerrecords.RebuildOrigin`); a Spack build-cache tarball used
    as is; a layer in a registry. ``spack_problem`` says why the layer of a Spack package is
    not one Spack can install from (then its image is no Spack build-cache entry).
    """

    package: Package
    layer: LayerBlob
    hash: str
    env: tuple[EnvModification, ...]
    origin: BlobOrigin | None = field(default=None, compare=False, repr=False)
    spack_problem: str | None = None


@dataclass(frozen=True)
class StackLayer:
    """One layer of an image: a package's own layer, or a group of several packages that the
    layer budget put into one layer (see :mod:`imagesmith.budget`)."""

    layer: LayerBlob
    packages: tuple[BuiltPackage, ...]
    # Builds the layer again should its cached copy be lost before a destination reads it.
    origin: BlobOrigin | None = field(default=None, compare=False, repr=False)

    @property
    def label(self) -> str:
        """``name-version`` of the package, or of every package of a group, for messages."""
        return ", ".join(p.package.label for p in self.packages)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if len(self.packages) == 1:
            only = self.packages[0]
            out = {"package": only.package.name, "version": only.package.version, "hash": only.hash}
        out["packages"] = [
            {"package": p.package.name, "version": p.package.version, "hash": p.hash} for p in self.packages
        ]
        out.update(
            {"digest": str(self.layer.digest), "diff_id": str(self.layer.diff_id), "size": self.layer.size}
        )
        return out


# A group's layer as built, and how to build it again (see layerrecords.RebuildOrigin).
GroupLayer = tuple[LayerBlob, BlobOrigin]


def _single_layers(built: Sequence[BuiltPackage]) -> tuple[StackLayer, ...]:
    return tuple(StackLayer(p.layer, (p,), p.origin) for p in built)


class _Written:
    """Where a result went: ``reference`` (the name) and ``destinations`` (every location)."""

    reference: Reference | None
    destinations: tuple[Location, ...]

    @property
    def destination(self) -> str:
        return str(self.destinations[0]) if self.destinations else ""

    @property
    def pushed(self) -> bool:
        """Whether the image went to a registry."""
        return any(isinstance(d, RegistryLocation) for d in self.destinations)

    @property
    def tag(self) -> str:
        return _tag_of(self.reference, self.destinations)


@dataclass(frozen=True)
class BuildResult(_Written):
    """What a build wrote: the name, the manifest digest, where it went, and the parts.

    ``reference`` is the image's name (the registry reference pushed to, or the name given
    to an archive or the daemon); None for an unnamed layout or archive output.
    ``destination`` is where the image was written (``REF``, ``oci:DIR:TAG``,
    ``docker-archive:PATH:NAME``, ``docker-daemon:NAME``), ``destinations`` all of them when
    the image went to several (an output and the daemon), and ``loaded`` what the daemon
    reported loading. ``packages`` are every package of the image, dependencies first;
    ``layers`` the image's package layers (one per package, unless the layer budget grouped
    some), bottom to top.
    """

    reference: Reference | None
    digest: str
    base: BaseImage
    image: Image
    packages: tuple[BuiltPackage, ...]
    destinations: tuple[Location, ...] = ()
    loaded: tuple[str, ...] = ()
    closure: ClosureReport | None = None
    sboms: tuple[tuple[SbomFormat, bytes], ...] = field(default=(), repr=False)
    attached: tuple[Attached, ...] = ()
    signed: tuple[Signed, ...] = ()
    layers: tuple[StackLayer, ...] = ()

    @property
    def spack(self) -> bool:
        """Whether the image is a Spack build-cache entry (Spack's config keys are in it)."""
        return "spec" in self.image.config.raw

    @property
    def notes(self) -> tuple[str, ...]:
        """What the user should know about the image: why a Spack package's image is not a
        Spack build-cache entry."""
        return _notes(self.packages, self.spack)

    def to_json(self) -> dict[str, Any]:
        return {
            "reference": str(self.reference) if self.reference is not None else None,
            "tag": self.tag,
            "digest": self.digest,
            "destinations": [str(d) for d in self.destinations],
            "loaded": list(self.loaded),
            "spack": self.spack,
            "notes": list(self.notes),
            **({"closure": self.closure.to_json()} if self.closure is not None else {}),
            **({"attached": [a.to_json() for a in self.attached]} if self.attached else {}),
            **({"signed": [s.to_json() for s in self.signed]} if self.signed else {}),
            "base": self.base.pinned,
            "layers": [layer.to_json() for layer in self.layers or _single_layers(self.packages)],
        }


def _created(environ: Mapping[str, str] | None = None) -> str:
    """The timestamp written into configs: SOURCE_DATE_EPOCH, else the epoch (reproducible)."""
    env = os.environ if environ is None else environ
    raw = env.get("SOURCE_DATE_EPOCH", "0").strip() or "0"
    try:
        seconds = int(raw)
    except ValueError:
        raise UsageError(f"SOURCE_DATE_EPOCH={raw!r} is not an integer number of seconds") from None
    moment = _dt.datetime.fromtimestamp(seconds, tz=_dt.timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


@contextmanager
def _registry_pool(pool: RegistryPool | None, registry: RegistryOptions | None) -> Iterator[RegistryPool]:
    """Borrow the caller's pool, or own one for the duration of a call."""
    if pool is not None:
        yield pool
        return
    owned = RegistryPool(registry)
    try:
        yield owned
    finally:
        owned.close()


def _push_target(
    out: Location | None, name: Reference | None, *, load: bool, enabled: bool = True
) -> Reference | None:
    """The registry repository a build will push to, known before any layer is built
    (the tag may still depend on the layers; the repository never does)."""
    if not enabled:
        return None
    if isinstance(out, RegistryLocation):
        return out.reference
    if out is None and not load:
        return name
    return None


def _probe_target(pool: RegistryPool, target: Reference | None) -> None:
    """Fail fast when the registry pushed to cannot be reached: one ``GET /v2/``, not retried,
    before any layer is built, so a dead registry (a wrong host or port, DNS, TLS) is reported
    in a second or two rather than after minutes of archiving, with the error the push would
    have raised. Credentials are checked where they are used (a new repository may refuse a
    pull token before its first push)."""
    if target is not None:
        pool.client(target.registry).ping(retry=False)


@contextmanager
def _early_uploads(
    pool: RegistryPool,
    target: Reference | None,
    progress: ProgressCallback,
    accepted: set[Digest] | None = None,
) -> Iterator[EarlyUploads | None]:
    """Uploads of new layers to ``target`` while they are built; all waited for (or, on
    an error, cancelled) on leaving. The digests the registry accepted go into ``accepted``:
    the push that follows need not even check them."""
    if target is None:
        yield None
        return
    with EarlyUploads(pool.client(target.registry), target.repository, progress=progress) as uploads:
        yield uploads
    for digest, size in uploads.wait():
        progress(ProgressEvent("blob-uploaded", str(digest), size, "while building"))
        if accepted is not None:
            accepted.add(digest)


def content_layer(
    content: Path,
    prefix: str,
    cache: BlobCache,
    media_types: mt.MediaTypes,
    *,
    compression: mt.Compression = "gzip",
    level: int | None = None,
    preserve: bool = False,
    progress: Callable[[int, int], None] | None = None,
    reuse: bool = True,
    uploads: EarlyUploads | None = None,
    relocation: Relocation | None = None,
    label: str = "",
) -> tuple[LayerBlob, bool]:
    """One layer from a directory or a tarball placed at ``prefix`` (relative to ``/``).

    With ``reuse``, an input whose identity (see :mod:`imagesmith.layerrecords`) matches an
    earlier build is not read again: the recorded layer is returned while its blob is in the
    cache. Returns the layer and whether it was reused. ``progress`` is called with the number
    of uncompressed bytes archived so far and the input's size (its files' bytes; 0 when not
    known: a tarball, or without ``reuse``). ``label`` names the layer to ``uploads``.
    With ``uploads``, a layer that is built is also
    uploaded while it is compressed (a reused one is left to the push: it may be there), and
    a layer whose blob left the cache but whose record names a digest the target repository
    already has is neither built nor sent. ``relocation`` (a Spack install prefix directory)
    adds Spack's relocation record, ``<prefix>/.spack/binary_distribution``, written for the
    directory's files.
    """
    extra = {"spack-relocation": relocation.to_json()} if relocation is not None else None
    key, total = (
        layerrecords.input_key_size(
            content, prefix, preserve=preserve, compression=compression, level=level,
            media_types=media_types, extra=extra,
        )
        if reuse
        else (None, 0)
    )
    if key is not None:
        found = layerrecords.lookup(cache, key)
        if found is not None and found.media_type == media_types.layer(compression):
            return found, True
        # The blob left the cache but its record says what the input gives: a push target
        # that has that blob needs nothing built or sent (a destination that wants the bytes
        # later builds them through the layer's RebuildOrigin).
        known = layerrecords.recorded(cache, key) if uploads is not None and found is None else None
        if known is not None and known.media_type == media_types.layer(compression):
            assert uploads is not None
            if uploads.present(known.digest):
                return known, True
    options: dict[str, Any] = {
        "media_types": media_types, "compression": compression, "level": level,
        "progress": (lambda done: progress(done, total)) if progress is not None else None,
        "follower": uploads.follower(label) if uploads is not None else None,
        "directory_depth": _inspected_depth(prefix),
    }  # fmt: skip
    if content.is_dir():
        entries: Iterable[TarEntry] = directory_entries(content, prefix, preserve=preserve)
        if relocation is not None:
            record = buildinfo(relocation, directory_entries(content, prefix, preserve=preserve), prefix)
            entries = with_file(entries, f"{prefix}/{BUILDINFO_PATH}", record)
        blob = build_layer(entries, cache, **options)
    else:
        with tarball_entries(content, prefix, preserve=preserve, tmpdir=cache.tmp_dir) as tar_entries:
            blob = build_layer(tar_entries, cache, **options)
    if key is not None:
        layerrecords.remember(cache, key, blob)
    return blob, False


def _layer_meter(progress: ProgressCallback, subject: str) -> Callable[[int, int], None]:
    """A :func:`content_layer` progress function sending ``layer-progress`` events."""
    return lambda done, total: progress(ProgressEvent("layer-progress", subject, done, total=total))


def _inspected_depth(prefix: str) -> int:
    """How deep a layer's directories are recorded: environment inference looks two levels
    below the prefix at most."""
    return len([p for p in prefix.split("/") if p not in ("", ".")]) + 2


def _rebuild_origin(
    blob: LayerBlob, content: Path, prefix: str, cache: BlobCache, media_types: mt.MediaTypes, *,
    compression: mt.Compression, level: int | None, preserve: bool, relocation: Relocation | None = None,
) -> layerrecords.RebuildOrigin:  # fmt: skip
    """How to make ``blob`` again from its input: :func:`content_layer`, without reuse."""

    def rebuild() -> LayerBlob:
        return content_layer(content, prefix, cache, media_types, compression=compression, level=level,
                             preserve=preserve, reuse=False, relocation=relocation)[0]  # fmt: skip

    return layerrecords.RebuildOrigin(blob, cache, f"the layer of {content}", rebuild)


def adopted_layer(
    tarball: Path,
    prefix: str,
    cache: BlobCache,
    media_types: mt.MediaTypes,
    *,
    checksum: Digest | None = None,
    progress: Callable[[int], None] | None = None,
    uploads: EarlyUploads | None = None,
    label: str = "",
) -> tuple[LayerBlob, bool]:
    """A Spack build-cache tarball as its own layer (:func:`~imagesmith.layers.adopt_tarball`):
    not copied, its bytes stay in the file (``FileOrigin``). An unchanged file is not read
    again: its record (kept like a built layer's, though its blob is the file) gives the layer.
    Returns the layer and whether it was reused.
    """
    key = layerrecords.input_key(
        tarball, prefix, preserve=False, compression="none", level=None, media_types=media_types,
        extra={"adopted": str(checksum) if checksum is not None else True},
    )  # fmt: skip
    found = layerrecords.recorded(cache, key)
    if found is not None:
        return found, True
    blob = adopt_tarball(
        tarball, prefix, media_types, expected=checksum, required=(BUILDINFO_PATH, ".spack/spec.json"),
        follower=uploads.follower(label) if uploads is not None else None, progress=progress,
        directory_depth=_inspected_depth(prefix),
    )  # fmt: skip
    layerrecords.remember(cache, key, blob)
    return blob, False


def build_package_layers(
    packages: Sequence[Package],
    cache: BlobCache,
    media_types: mt.MediaTypes,
    options: BuildOptions,
    progress: ProgressCallback = null_progress,
    uploads: EarlyUploads | None = None,
    shared: dict[tuple[Path, str], LayerBlob] | None = None,
    upload_only: Collection[str] | None = None,
) -> list[BuiltPackage]:
    """Turn each package into a layer (in parallel), then derive hashes in dependency order.

    With ``uploads`` each new layer is also uploaded while it is built (see
    :mod:`imagesmith.overlap`); the caller waits for them before writing a manifest.
    ``upload_only`` limits that to the packages with these keys (the others' own layers go
    into no image: the layer budget grouped them). ``shared`` carries the layers of one run's
    earlier calls by (content, prefix): a multi-platform build calls once per platform, and
    platform-independent content is then neither built nor even stat-walked again.
    """
    if not packages:
        raise UsageError("no packages given: name at least one package file")

    def one(package: Package) -> tuple[LayerBlob, BlobOrigin | None, str | None]:
        subject = f"{package.name}@{package.version}"
        spack_content = package.spack_content
        if isinstance(spack_content, SpackRegistryLayer):
            return _registry_layer(spack_content, media_types), _registry_origin(spack_content), None
        if package.content is None:
            raise PackageError(
                f"package {package.label} ({package.source}) has per-platform content only: "
                "choose its platform first (Package.for_platform)"
            )
        key = (package.content, package.prefix)
        found = shared.get(key) if shared is not None else None
        origin: BlobOrigin | None = None
        upload = uploads if upload_only is None or package.key in upload_only else None
        if found is not None:
            progress(ProgressEvent("layer-reused", subject, found.size, str(found.digest)))
            blob, reused = found, True
        elif isinstance(spack_content, SpackTarball):
            blob, reused = adopted_layer(
                package.content, package.prefix.lstrip("/"), cache, media_types,
                checksum=spack_content.checksum, uploads=upload, label=subject,
                progress=lambda done: progress(ProgressEvent("layer-progress", subject, done)),
            )  # fmt: skip
        else:
            relocation = spack_content.relocation if isinstance(spack_content, SpackPrefix) else None
            blob, reused = content_layer(
                package.content,
                package.prefix.lstrip("/"),
                cache,
                media_types,
                compression=options.compression,
                level=options.level,
                progress=_layer_meter(progress, subject),
                uploads=upload,
                relocation=relocation,
                label=subject,
            )
        if isinstance(spack_content, SpackTarball):
            origin = FileOrigin(package.content)
        if shared is not None and found is None:
            shared[key] = blob  # distinct packages have distinct prefixes: no two threads share a key
        if found is None:
            kind: EventKind = "layer-reused" if reused else "layer-built"
            progress(ProgressEvent(kind, subject, blob.size, str(blob.digest)))
        return blob, origin, _layer_problem(package, blob)

    jobs = max(1, min(options.jobs, len(packages)))
    if jobs == 1:
        results = [one(p) for p in packages]
    else:
        with ThreadPoolExecutor(max_workers=jobs) as executor:
            results = list(executor.map(one, packages))

    hashes: dict[str, str] = {}
    built: list[BuiltPackage] = []
    for package, (blob, origin, problem) in zip(packages, results, strict=True):
        dep_hashes = [hashes[key] for key in package.depends]
        digest_hash = package_hash(package, dep_hashes, blob.diff_id)
        hashes[package.key] = digest_hash
        env = package.env
        if env is None:
            prefix_rel = package.prefix.strip("/")
            dirs = blob.directories

            def has_dir(rel: str, _prefix: str = prefix_rel, _dirs: frozenset[str] = dirs) -> bool:
                return f"{_prefix}/{rel}".strip("/") in _dirs

            env = infer_env(package.prefix, has_dir, ld_library_path=package.ld_library_path)
        if origin is None:
            assert package.content is not None  # one() made sure
            spack_content = package.spack_content
            origin = _rebuild_origin(
                blob, package.content, package.prefix.lstrip("/"), cache, media_types,
                compression=options.compression, level=options.level, preserve=False,
                relocation=spack_content.relocation if isinstance(spack_content, SpackPrefix) else None,
            )  # fmt: skip
        built.append(BuiltPackage(package, blob, digest_hash, tuple(env), origin, problem))
    return built


def _registry_layer(content: SpackRegistryLayer, media_types: mt.MediaTypes) -> LayerBlob:
    """The layer of a Spack image in a registry, typed for the image's media-type family."""
    layer = content.layer
    return LayerBlob(
        digest=layer.digest,
        diff_id=content.diff_id,
        size=layer.size,
        media_type=media_types.layer(mt.compression_of(layer.media_type)),
        directories=content.directories,
    )


def _registry_origin(content: SpackRegistryLayer) -> BlobOrigin:
    return RemoteOrigin(content.registry, content.repository)


def _layer_problem(package: Package, blob: LayerBlob) -> str | None:
    """Why Spack could not install ``package`` from ``blob``, or None (also for a package
    that is not Spack's: there is nothing to say)."""
    if package.spack is None:
        return None
    content = package.spack_content
    if isinstance(content, SpackPrefix) and content.problem is not None:
        return content.problem
    if content is None:
        return "its content comes from a package file, without Spack's relocation record"
    if mt.compression_of(blob.media_type) == "zstd":
        return "its layer is zstd-compressed, and Spack extracts gzip or uncompressed tarballs only"
    return None


_PROFILE_PROBLEM = "--profile-script puts a layer above the package, and Spack installs the last layer"


def _spack_entry(built: Sequence[BuiltPackage], options: BuildOptions) -> tuple[bool, str | None]:
    """Whether the image of the stack ``built`` is a Spack build-cache entry (Spack's tag and
    config keys), and otherwise, for a Spack package, why not."""
    top = built[-1]
    if top.package.spack is None:
        return False, None
    if top.spack_problem is not None:
        return False, top.spack_problem
    if options.profile_script:
        return False, _PROFILE_PROBLEM
    return True, None


def _notes(built: Sequence[BuiltPackage], spack: bool) -> tuple[str, ...]:
    if spack or not built or built[-1].package.spack is None:
        return ()
    top = built[-1]
    reason = top.spack_problem or _PROFILE_PROBLEM
    return (f"{top.package.label} is not a Spack build-cache entry (no .spack tag, no Spack config keys): "
            f"{reason}",)  # fmt: skip


def plan_stacks(
    stacks: Mapping[str, Sequence[Package]], base_layers: int, options: BuildOptions
) -> LayerPlan:
    """The layers of every image of a run under ``options.max_layers`` (see
    :mod:`imagesmith.budget`): ``stacks`` maps an image to its packages, dependencies first
    and its own package last; ``base_layers`` is the base's layer count (the largest, for
    several platforms). A budget that leaves no room raises :class:`UsageError`."""
    slots = package_slots(
        options.max_layers,
        base_layers,
        extra_layers=1 if options.profile_script else 0,
        dependencies=any(len(stack) > 1 for stack in stacks.values()),
    )
    keys = {image: [p.key for p in stack] for image, stack in stacks.items()}
    canonical = {p.key: p.prefix for stack in stacks.values() for p in stack}
    # A package without local content (its layer is only in a registry) cannot be regrouped.
    fixed = {p.key for stack in stacks.values() for p in stack if p.content is None}
    return plan_layers(keys, slots, canonical, fixed)


def single_layer_keys(plan: LayerPlan, images: Collection[str] | None = None) -> frozenset[str]:
    """The packages whose own layer goes into some image of ``plan`` (of ``images`` only, when
    given); the others are only in groups."""
    chosen = plan.layers if images is None else {i: plan.layers[i] for i in images}
    return frozenset(layer[0] for layers in chosen.values() for layer in layers if len(layer) == 1)


def build_group_layers(
    plan: LayerPlan,
    built: Mapping[str, BuiltPackage],
    cache: BlobCache,
    media_types: mt.MediaTypes,
    options: BuildOptions,
    progress: ProgressCallback = null_progress,
    uploads: EarlyUploads | None = None,
    shared: dict[tuple[tuple[Path, str], ...], GroupLayer] | None = None,
    images: Collection[str] | None = None,
) -> dict[tuple[str, ...], GroupLayer]:
    """Build the layer of every group of ``plan`` (of ``images`` only, when given) in
    parallel, keyed by its package keys.

    ``built`` holds each package's own layer by key (their diff_ids identify a group's input,
    so an unchanged group is found in the cache's records without reading anything, and one
    whose blob left the cache is not even built when the push target has it). A group's bytes
    depend only on its packages' contents (:mod:`imagesmith.grouplayer`): the same group is
    the same blob in every image. ``shared`` works as for :func:`build_package_layers`, keyed
    by the members' (content, prefix).
    """

    def one(group: tuple[str, ...]) -> GroupLayer:
        members = [built[key] for key in group]
        subject = f"{len(members)} packages ({members[0].package.name}, ...)"
        parts = []
        for m in members:
            if m.package.content is None:  # the plan never groups a package without content
                raise PackageError(f"package {m.package.label} has no local content for a group layer")
            parts.append(GroupMember(m.package.label, m.package.content, m.package.prefix))
        sources = tuple((part.content, part.prefix) for part in parts)
        found = shared.get(sources) if shared is not None else None
        if found is not None:
            progress(ProgressEvent("layer-reused", subject, found[0].size, str(found[0].digest)))
            return found

        def build_group(follower: bool) -> LayerBlob:
            with closing(group_entries(parts, tmpdir=cache.tmp_dir)) as entries:
                return build_layer(
                    entries, cache, media_types=media_types, compression=options.compression,
                    level=options.level,
                    progress=lambda done: progress(ProgressEvent("layer-progress", subject, done)),
                    follower=uploads.follower(subject) if uploads is not None and follower else None,
                    directory_depth=1,  # nothing reads a group's directories: keep its record small
                )  # fmt: skip

        key = group_record_key(
            [(m.package.prefix, m.layer.diff_id) for m in members],
            compression=options.compression,
            level=options.level,
            media_types=media_types,
        )
        wanted = media_types.layer(options.compression)
        blob = layerrecords.lookup(cache, key)
        if blob is None and uploads is not None:
            # As for a package's layer: a record whose blob left the cache, and a push target
            # that already has the blob, need nothing built or sent.
            known = layerrecords.recorded(cache, key)
            if known is not None and known.media_type == wanted and uploads.present(known.digest):
                blob = known
        kind: EventKind = "layer-reused"
        if blob is None or blob.media_type != wanted:
            blob = build_group(follower=True)
            layerrecords.remember(cache, key, blob)
            kind = "layer-built"
        names = ", ".join(m.package.name for m in members[:3]) + (", ..." if len(members) > 3 else "")
        what = f"the layer of {len(members)} packages ({names})"
        origin = layerrecords.RebuildOrigin(blob, cache, what, lambda: build_group(follower=False))
        result = (blob, origin)
        if shared is not None:
            shared[sources] = result
        progress(ProgressEvent(kind, subject, blob.size, str(blob.digest)))
        return result

    groups = list(plan.groups)
    if images is not None:
        used = {layer for image in images for layer in plan.layers[image] if len(layer) > 1}
        groups = [g for g in groups if g in used]
    jobs = max(1, min(options.jobs, len(groups)))
    if jobs <= 1:
        layers = [one(g) for g in groups]
    else:
        with ThreadPoolExecutor(max_workers=jobs) as executor:
            layers = list(executor.map(one, groups))
    return dict(zip(groups, layers, strict=True))


def stack_layers(
    plan: LayerPlan,
    image: str,
    built: Mapping[str, BuiltPackage],
    groups: Mapping[tuple[str, ...], GroupLayer],
) -> tuple[StackLayer, ...]:
    """The package layers ``plan`` gives ``image``, as built."""
    out = []
    for keys in plan.layers[image]:
        members = tuple(built[key] for key in keys)
        if len(keys) == 1:
            out.append(StackLayer(members[0].layer, members, members[0].origin))
        else:
            blob, origin = groups[keys]
            out.append(StackLayer(blob, members, origin))
    return tuple(out)


def _history_of(layer: StackLayer, created: str) -> HistoryEntry:
    """The history entry of a package layer: ``imagesmith: add NAME@VERSION at PREFIX`` for a
    package, every package of a group for a group (one entry per layer, as tools expect)."""
    if len(layer.packages) == 1:
        p = layer.packages[0]
        return HistoryEntry(
            created_by=f"imagesmith: add {p.package.name}@{p.package.version} at {p.package.prefix}",
            comment=f"{p.package.name}-{p.package.version}-{p.hash}",
            created=created,
        )
    return HistoryEntry(
        created_by=f"imagesmith: add {len(layer.packages)} packages in one layer: "
        + ", ".join(f"{p.package.name}@{p.package.version} at {p.package.prefix}" for p in layer.packages),
        comment=" ".join(f"{p.package.name}-{p.package.version}-{p.hash}" for p in layer.packages),
        created=created,
    )


def assemble(
    base: BaseImage,
    built: Sequence[BuiltPackage],
    cache: BlobCache,
    options: BuildOptions,
    created: str,
    layers: Sequence[StackLayer] | None = None,
) -> Image:
    """Base image + the package layers (one per package of ``built``, or ``layers`` as the
    layer budget planned them) + the optional profile layer + the merged config."""
    media_types = base.image.media_types
    image = base.image
    stack = tuple(layers) if layers is not None else _single_layers(built)
    image = image.append(
        [Layer(s.layer.descriptor(), s.layer.diff_id, s.origin) for s in stack],
        [_history_of(s, created) for s in stack],
    )

    modifications: list[EnvModification] = [m for p in built for m in p.env]
    for assignment in options.env:
        name, value = parse_env_assignment(assignment)
        modifications.append(EnvModification("set", name, value))
    env = apply_env(image.config.env, modifications)

    if options.profile_script:
        script = render_profile_script(env, comment=f"packages: {', '.join(p.package.name for p in built)}")
        blob = _profile_layer(script, cache, media_types, options)
        image = image.append(
            [Layer(blob.descriptor(), blob.diff_id)],
            [HistoryEntry(created_by=f"imagesmith: add /{PROFILE_SCRIPT_PATH}", created=created)],
        )

    config = image.config.with_config_fields(
        Env=list(env),
        Entrypoint=list(options.entrypoint) if options.entrypoint is not None else None,
        WorkingDir=options.workdir,
    )
    if options.cmd is not None:
        config = config.with_config_fields(Cmd=list(options.cmd))
    elif options.entrypoint is not None:
        # Docker semantics: a new entrypoint resets the base image's Cmd.
        config = config.with_config_fields(Cmd=None)
    if built:
        # The package identity travels in the config (both media-type families have labels),
        # so a repository index can be rebuilt from the registry alone.
        top = built[-1]
        config = config.with_labels(
            {
                LABEL_NAME: top.package.name,
                LABEL_VERSION: top.package.version,
                LABEL_HASH: top.hash,
            }
        )
    if options.labels:
        config = config.with_labels(options.labels)
    top_level: dict[str, Any] = {}
    if built:
        # Spack reads its spec and the package layer's checksum from top-level config keys;
        # for other packages (and Spack packages Spack could not install from this image) they
        # are removed, so a Spack base image leaves no stale ones. Set last, with ``created``:
        # every config update copies the config, and a Spack spec can be megabytes (a stack of
        # hundreds of images copied it for seconds).
        spack, _problem = _spack_entry(built, options)
        fields = spack_config_fields(built[-1].package, built[-1].layer.digest) if spack else {}
        top_level = fields or dict.fromkeys(SPACK_CONFIG_KEYS)
    config = config.with_top_level(**top_level, created=created)
    image = image.with_config(config)

    annotations: dict[str, str] = {}
    if media_types.family == "oci":
        if base.reference is not None:
            # A layout or archive path is local to this machine: naming it would make the
            # digest depend on where the base was stored.
            annotations[ANNOTATION + "base.name"] = str(base.reference)
        annotations[ANNOTATION + "base.digest"] = str(base.digest)
        annotations[ANNOTATION + "created"] = created
        if built:
            annotations[ANNOTATION + "title"] = built[-1].package.name
            annotations[ANNOTATION + "version"] = built[-1].package.version
        annotations.update(options.annotations)
    elif options.annotations:
        raise UsageError("annotations need an OCI base image: Docker v2 manifests have none")
    return image.with_annotations(annotations)


def _profile_layer(
    script: str, cache: BlobCache, media_types: mt.MediaTypes, options: BuildOptions
) -> LayerBlob:
    with tempfile.TemporaryDirectory(prefix="imagesmith-profile-") as tmp:
        path = Path(tmp, PROFILE_SCRIPT_PATH)
        path.parent.mkdir(parents=True)
        path.write_text(script, encoding="utf-8")
        return build_layer(
            directory_entries(Path(tmp), ""),
            cache,
            media_types=media_types,
            compression=options.compression,
            level=options.level,
        )


def _rendered_tag(built: Sequence[BuiltPackage], options: BuildOptions, platform: Platform) -> str:
    top = built[-1]
    return render_tag(
        options.tag_template,
        name=top.package.name,
        version=top.package.version,
        hash=top.hash,
        spack=_spack_entry(built, options)[0],
        platform=_platform_slug(platform),
        os=platform.os,
        arch=platform.architecture,
    )


def _platform_slug(platform: Platform) -> str:
    """``linux/arm64/v8`` -> ``linux-arm64-v8``: the platform a one-platform image's default tag
    ends with, so that builds of one package on several machines never share a tag."""
    return str(platform).lower().replace("/", "-")


def target_reference(
    built: Sequence[BuiltPackage],
    *,
    repo: str | Reference | None,
    tag: str | Reference | None,
    options: BuildOptions,
    platform: Platform,
) -> Reference:
    """Where the image goes: ``tag`` as given, or ``repo`` + the rendered tag template."""
    if (repo is None) == (tag is None):
        raise UsageError("give exactly one of --repo REPO (tag from the template) or --tag REF")
    if tag is not None:
        return _tag_reference(tag)
    assert repo is not None
    repository = repo if isinstance(repo, Reference) else parse_repository(repo)
    return repository.with_tag(_rendered_tag(built, options, platform))


def _tag_reference(tag: str | Reference) -> Reference:
    ref = tag if isinstance(tag, Reference) else Reference.parse(tag, default_tag=None)
    if ref.digest is not None or ref.tag is None:
        raise UsageError(f"--tag {tag} must name a tag (repo:tag), not a digest")
    return ref


def _tag_of(reference: Reference | None, destinations: Sequence[Location]) -> str:
    if reference is not None and reference.tag:
        return reference.tag
    for destination in destinations:
        if isinstance(destination, LayoutLocation) and destination.tag:
            return destination.tag
    return ""


def check_output(
    *,
    repo: str | Reference | None,
    tag: str | Reference | None,
    output: str | Reference | Location | None,
    load: bool,
) -> Location | None:
    """Check how a build or import names and places its image, before any work is done.

    Without ``output`` and ``load`` the image is pushed to the registry ``repo``/``tag``
    names (exactly one of them). ``output`` is where it is written instead (``repo``/``tag``
    may still name it: the layout tag, the archive's ``RepoTags``); ``load`` also loads it
    into the daemon, which needs a name. Returns ``output`` as a location.
    """
    out = as_location(output) if output is not None else None
    named = repo is not None or tag is not None
    if repo is not None and tag is not None:
        raise UsageError("give exactly one of --repo REPO (tag from the template) or --tag REF")
    if out is None and not load and not named:
        raise UsageError(
            "give exactly one of --repo REPO (tag from the template) or --tag REF, or an --output location"
        )
    if isinstance(out, RegistryLocation | DaemonLocation) and named:
        raise UsageError(f"--output {out} names the image already: leave out --repo and --tag")
    if isinstance(out, RegistryLocation) and out.reference.tag is None:
        raise UsageError(f"--output {out} must name a tag (repo:tag), not only a digest")
    archive_named = isinstance(out, ArchiveLocation) and out.reference is not None
    if load and not named and not archive_named and not isinstance(out, DaemonLocation):
        raise UsageError(
            "--load needs a name for the image in the daemon: give --tag NAME:TAG or --repo REPO"
        )
    return out


def plan_destinations(
    name: Reference | None, output: Location | None, *, load: bool, default_tag: str | None
) -> list[Location]:
    """Where an image named ``name`` goes (see :func:`check_output`), every location complete.

    A layout without a tag takes ``name``'s tag, else ``default_tag`` (the rendered tag
    template); an archive without a name takes ``name``.
    """
    destinations: list[Location] = []
    if output is None:
        if not load:
            assert name is not None  # check_output made sure
            destinations.append(RegistryLocation(name))
    elif isinstance(output, LayoutLocation):
        layout_tag = output.tag or (name.tag if name is not None else None) or default_tag
        checked = validate_layout_tag(layout_tag) if layout_tag else None
        destinations.append(LayoutLocation(output.path, checked))
    elif isinstance(output, ArchiveLocation):
        destinations.append(ArchiveLocation(output.path, output.reference or name))
    else:
        destinations.append(output)
    if load and not isinstance(output, DaemonLocation):
        daemon_name = name or (output.reference if isinstance(output, ArchiveLocation) else None)
        assert daemon_name is not None  # check_output made sure
        destinations.append(DaemonLocation(daemon_name))
    return destinations


def _name_of(destinations: Sequence[Location], name: Reference | None) -> Reference | None:
    if name is not None:
        return name
    for destination in destinations:
        if isinstance(destination, RegistryLocation | DaemonLocation):
            return destination.reference
        if isinstance(destination, ArchiveLocation) and destination.reference is not None:
            return destination.reference
    return None


def write_destinations(
    image: Image,
    destinations: Sequence[Location],
    *,
    pool: RegistryPool,
    cache: BlobCache,
    jobs: int,
    docker_host: str | None,
    progress: ProgressCallback,
    uploaded: tuple[Reference | None, Collection[Digest]] = (None, ()),
) -> tuple[str, tuple[str, ...]]:
    """Write ``image`` to each destination in turn; return its digest and what a daemon loaded.

    Remote base layers pass through the cache, so a second destination reads them locally.
    ``uploaded`` is (a repository, the blobs this run uploaded there): not checked again.
    """
    digest = str(image.digest)
    loaded: tuple[str, ...] = ()
    into, blobs = uploaded
    for destination in destinations:
        same = (
            into is not None
            and isinstance(destination, RegistryLocation)
            and (destination.reference.registry, destination.reference.repository)
            == (into.registry, into.repository)
        )
        with open_sink(destination, pool=pool, cache=cache, docker_host=docker_host) as sink:
            present = blobs if same else ()
            digest = str(write_image(image, sink, jobs=jobs, progress=progress, present=present))
        if isinstance(sink, DaemonSink):
            loaded += sink.loaded  # known once the sink has committed (loaded the archive)
    return digest, loaded


def _early_uploads_allowed(options: BuildOptions) -> bool:
    # With --check=error nothing may reach the registry before the check has passed.
    return options.overlap_upload and options.check != "error"


def check_runtime_closure(
    images: Sequence[tuple[Image, Sequence[StackLayer]]],
    options: BuildOptions,
    *,
    pool: RegistryPool,
    cache: BlobCache,
    progress: ProgressCallback,
    destinations: Sequence[Location] = (),
) -> list[ClosureReport | None]:
    """The runtime-closure check of each image (with its package layers) as
    ``options.check`` asks (None when off); with ``error`` a finding raises
    :class:`~imagesmith.closure.ClosureError` before anything is written. Remote base layers
    it reads are kept in the cache when a destination will need their bytes (anything but a
    registry pushed to by mount or HEAD, see :func:`write_destinations`)."""
    if options.check == "off":
        return [None] * len(images)
    memo: dict[tuple[Digest, bool], Any] = {}
    reports: list[ClosureReport | None] = []
    for image, layers in images:
        packages = {layer.layer.digest: layer.label for layer in layers}
        origins = [layer.origin for layer in image.layers]
        registries = {origin.registry for origin in origins if isinstance(origin, RemoteOrigin)}
        keep = any(not (isinstance(d, RegistryLocation) and d.reference.registry in registries)
                   for d in destinations)  # fmt: skip
        report = check_closure(image, packages, pool=pool, cache=cache, jobs=options.jobs, progress=progress,
                               memo=memo, keep_in_cache=keep)  # fmt: skip
        closure_gate(report, options.check)
        reports.append(report)
    return reports


def check_trust_destinations(options: BuildOptions, destinations: Sequence[Location]) -> None:
    """Refuse, before anything is written, an SBOM or signature with nowhere to go."""
    if options.signing_key is not None and not any(isinstance(d, RegistryLocation) for d in destinations):
        raise UsageError("--sign signs an image in a registry: push it (--repo or --tag), not only --output")
    if options.sbom and not any(isinstance(d, RegistryLocation | LayoutLocation) for d in destinations):
        raise UsageError("--sbom attaches the SBOM to the image: push it, or write an oci: layout")


def attach_and_sign(
    name: Reference | None,
    image: Image,
    digest: str,
    layers: Sequence[StackLayer],
    base: BaseImage,
    destinations: Sequence[Location],
    options: BuildOptions,
    *,
    pool: RegistryPool,
    cache: BlobCache,
    progress: ProgressCallback,
) -> tuple[tuple[tuple[SbomFormat, bytes], ...], tuple[Attached, ...], tuple[Signed, ...]]:
    """After the image is written: its SBOMs attached to each registry or layout destination,
    then its signature pushed to each registry (see :mod:`imagesmith.referrers`,
    :mod:`imagesmith.signing`). Returns the SBOM documents, what was attached and signed."""
    if not options.sbom and options.signing_key is None:
        return (), (), ()
    created = image.config.raw.get("created") or _created()
    manifest = image.manifest_bytes()
    subject = Descriptor(image.media_types.manifest, Digest.parse(digest), len(manifest))
    # Each package with the digest of the layer it is in (a group's, when the budget grouped it).
    packages = sbom_packages(
        [(b.package, b.hash, str(layer.layer.digest)) for layer in layers for b in layer.packages]
    )
    shown = str(name) if name is not None else None
    described = SbomImage(shown, digest, str(image.config.platform), created, base.pinned, packages)
    sboms = tuple((fmt, render_sbom(described, fmt)) for fmt in dict.fromkeys(options.sbom))
    attached = tuple(
        attach(destination, subject, SBOM_MEDIA_TYPES[fmt], document, filename=SBOM_FILENAMES[fmt], pool=pool,
               cache=cache, created=created, progress=progress)
        for destination in destinations
        if isinstance(destination, RegistryLocation | LayoutLocation)
        for fmt, document in sboms
    )  # fmt: skip
    key = options.signing_key
    signed = tuple(
        sign_image(destination.reference, key, pool=pool, cache=cache, digest=subject.digest,
                   progress=progress)
        for destination in destinations
        if key is not None and isinstance(destination, RegistryLocation)
    )
    return sboms, attached, signed


def build(
    base: str | Reference | Location,
    packages: Sequence[Package],
    *,
    repo: str | Reference | None = None,
    tag: str | Reference | None = None,
    output: str | Reference | Location | None = None,
    load: bool = False,
    docker_host: str | None = None,
    options: BuildOptions | None = None,
    registry: RegistryOptions | None = None,
    cache: BlobCache | None = None,
    pool: RegistryPool | None = None,
    progress: ProgressCallback = null_progress,
) -> BuildResult:
    """Build one image: ``packages`` (dependencies first) on ``base``, and write it out.

    ``base`` is a registry reference or any location (``oci:DIR:TAG``,
    ``docker-archive:PATH``); a layout or archive base is read locally, with no network.
    ``repo`` names the target repository and the tag comes from the tag template (default
    ``{name}-{version}-{hash}.spack`` of the last package); ``tag`` names the full reference
    instead. By default the image is pushed there. ``output`` (a location or its string) is
    written instead: an OCI layout (tag: the location's, else the name's, else the rendered
    template), a docker archive (named by the location, else by ``repo``/``tag``) or another
    registry reference. ``load`` also loads the image into the daemon at ``docker_host``
    (default ``DOCKER_HOST``) under its name. Base layers are read only when a destination
    needs their bytes (never for a push to the registry they live on).
    """
    options = options or BuildOptions()
    cache = cache or BlobCache()
    out = check_output(repo=repo, tag=tag, output=output, load=load)
    base_location = as_location(base)
    # Names are checked before any work, so a typo never costs a build.
    if repo is not None and not isinstance(repo, Reference):
        repo = parse_repository(repo)
    if tag is not None:
        tag = _tag_reference(tag)
    platform = options.platform or Platform.host()
    if not packages:
        raise UsageError("no packages given: name at least one package file")
    packages = [p.for_platform(platform) for p in packages]  # a missing content fails here
    top = packages[-1].key
    with _registry_pool(pool, registry) as pool:
        _probe_target(pool, _push_target(out, tag or repo, load=load))
        resolved = _single_base(pool, base_location, platform, options, progress)
        media_types = resolved.image.media_types
        plan = plan_stacks({top: packages}, len(resolved.image.layers), options)
        push_to = _push_target(out, tag or repo, load=load, enabled=_early_uploads_allowed(options))
        uploaded: set[Digest] = set()
        with _early_uploads(pool, push_to, progress, uploaded) as uploads:
            built = build_package_layers(packages, cache, media_types, options, progress, uploads,
                                         upload_only=single_layer_keys(plan))  # fmt: skip
            by_key = {b.package.key: b for b in built}
            groups = build_group_layers(plan, by_key, cache, media_types, options, progress, uploads)
        layers = stack_layers(plan, top, by_key, groups)
        name = (
            target_reference(built, repo=repo, tag=tag, options=options, platform=platform)
            if repo is not None or tag is not None
            else None
        )
        default_tag = None
        if isinstance(out, LayoutLocation) and out.tag is None and name is None:
            default_tag = _rendered_tag(built, options, platform)  # as --repo would
        destinations = plan_destinations(name, out, load=load, default_tag=default_tag)
        check_trust_destinations(options, destinations)
        image = assemble(resolved, built, cache, options, _created(), layers)
        [closure] = check_runtime_closure([(image, layers)], options, pool=pool, cache=cache,
                                          progress=progress, destinations=destinations)  # fmt: skip
        digest, loaded = write_destinations(
            image, destinations, pool=pool, cache=cache, jobs=options.jobs,
            docker_host=docker_host, progress=progress, uploaded=(push_to, uploaded),
        )  # fmt: skip
        named = _name_of(destinations, name)
        trust = attach_and_sign(named, image, digest, layers, resolved, destinations, options, pool=pool,
                                cache=cache, progress=progress)  # fmt: skip
        return BuildResult(named, digest, resolved, image, tuple(built), tuple(destinations), loaded, closure,
                           *trust, layers)  # fmt: skip


@dataclass(frozen=True)
class MultiBuildResult(_Written):
    """What a multi-platform build wrote: an index naming one image per platform.

    ``digest`` and ``media_type`` are the index's (an OCI image index, or a Docker manifest
    list on a Docker-typed base); ``images`` the per-platform builds in the order the
    platforms were given, each with its own manifest ``digest`` (pushed by digest, not
    tagged) and ``platform``; ``reference`` and ``destinations`` as for :class:`BuildResult`.
    """

    reference: Reference | None
    digest: str
    media_type: str
    images: tuple[BuildResult, ...]
    platforms: tuple[Platform, ...]
    destinations: tuple[Location, ...] = ()
    signed: tuple[Signed, ...] = ()

    @property
    def notes(self) -> tuple[str, ...]:
        """What the user should know: a Spack package's index is no Spack build-cache entry."""
        top = self.images[0].packages[-1].package if self.images and self.images[0].packages else None
        if top is None or top.spack is None:
            return ()
        return (
            f"{top.label} is not a Spack build-cache entry (no .spack tag): Spack reads one image "
            "per tag, never a multi-platform index; push each platform's image to its own repository",
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "reference": str(self.reference) if self.reference is not None else None,
            "tag": self.tag,
            "digest": self.digest,
            "mediaType": self.media_type,
            "notes": list(self.notes),
            "destinations": [str(d) for d in self.destinations],
            "platforms": [
                {"platform": str(platform), **image.to_json()}
                for platform, image in zip(self.platforms, self.images, strict=True)
            ],
            **({"signed": [s.to_json() for s in self.signed]} if self.signed else {}),
        }


def _index_hash(hashes: Sequence[tuple[Platform, str]]) -> str:
    """The hash a multi-platform tag carries: the top package's hash when every platform
    has the same one, else one derived from each platform's (sorted, so the order of
    ``--platform`` does not matter)."""
    distinct = {h for _, h in hashes}
    if len(distinct) == 1:
        return distinct.pop()
    document = sorted([str(p.normalized()), h] for p, h in hashes)
    digest = hashlib.sha256(json.dumps(document, separators=(",", ":")).encode()).digest()
    return base64.b32encode(digest).decode("ascii").lower()[: len(hashes[0][1])]


def _distinct_platforms(platforms: Sequence[Platform]) -> tuple[Platform, ...]:
    if not platforms:
        raise UsageError("name at least one platform (--platform linux/amd64,linux/arm64)")
    seen: dict[Platform, Platform] = {}
    for platform in platforms:
        key = platform.normalized()
        if key in seen:
            raise UsageError(f"platforms {seen[key]} and {platform} are the same platform: name it once")
        seen[key] = platform
    return tuple(platforms)


def build_platforms(
    base: str | Reference | Location,
    packages: Sequence[Package],
    platforms: Sequence[Platform],
    *,
    repo: str | Reference | None = None,
    tag: str | Reference | None = None,
    output: str | Reference | Location | None = None,
    options: BuildOptions | None = None,
    registry: RegistryOptions | None = None,
    cache: BlobCache | None = None,
    pool: RegistryPool | None = None,
    progress: ProgressCallback = null_progress,
) -> MultiBuildResult:
    """Build one image per platform on a multi-platform base, and write them as one index.

    ``base`` must be an index (OCI image index or Docker manifest list) offering every
    platform; for each, its image is taken from the index (``unknown/unknown`` attestation
    entries never match), each package's content for that platform appended (see
    :meth:`Package.for_platform`: per-platform content, else the platform-independent one),
    and the config keeps the base's os/architecture/variant. The images are written by
    digest, then an index of the base's family naming them (entries carry the base index's
    platform fields) under one tag: the template's, rendered with a hash combining the
    platforms' (the shared hash when they agree), or ``tag``. Destinations: a registry (the
    default, as for :func:`build`) or an OCI layout; a docker archive or a daemon holds one
    platform only. Layers shared by platforms (platform-independent content) are built and
    pushed once.
    """
    options = options or BuildOptions()
    cache = cache or BlobCache()
    platforms = _distinct_platforms(platforms)
    out = check_output(repo=repo, tag=tag, output=output, load=False)
    if isinstance(out, ArchiveLocation | DaemonLocation):
        raise UsageError(
            f"{out} holds single-platform images: write a multi-platform build to a registry or "
            "an oci: layout, or build one --platform at a time"
        )
    if not packages:
        raise UsageError("no packages given: name at least one package file")
    base_location = as_location(base)
    if repo is not None and not isinstance(repo, Reference):
        repo = parse_repository(repo)
    if tag is not None:
        tag = _tag_reference(tag)
    per_platform = [[p.for_platform(platform) for p in packages] for platform in platforms]
    top = packages[-1].key
    with _registry_pool(pool, registry) as pool:
        _probe_target(pool, _push_target(out, tag or repo, load=False))
        bases, index_platforms = _platform_bases(pool, base_location, platforms, options, progress)
        media_types = bases[0].image.media_types
        # One plan for every platform (the deepest base decides), so a group is the same set
        # of packages, and for platform-independent content the same blob, on each.
        plan = plan_stacks({top: packages}, max(len(b.image.layers) for b in bases), options)
        push_to = _push_target(out, tag or repo, load=False, enabled=_early_uploads_allowed(options))
        with _early_uploads(pool, push_to, progress) as uploads:
            built_by, groups_by = _platform_layers(
                per_platform, plan, cache, media_types, options, progress, uploads
            )
        layers_by = [
            stack_layers(plan, top, {b.package.key: b for b in built}, groups)
            for built, groups in zip(built_by, groups_by, strict=True)
        ]
        images, index = _platform_index(
            bases, built_by, index_platforms, cache, options, _created(), layers_by
        )
        name: Reference | None = tag
        if name is None and repo is not None:
            name = repo.with_tag(_multi_tag(built_by, platforms, options.tag_template))
        default_tag = None
        if isinstance(out, LayoutLocation) and out.tag is None and name is None:
            default_tag = _multi_tag(built_by, platforms, options.tag_template)
        destinations = plan_destinations(name, out, load=False, default_tag=default_tag)
        check_trust_destinations(options, destinations)
        closures = check_runtime_closure(list(zip(images, layers_by, strict=True)), options, pool=pool,
                                         cache=cache, progress=progress,
                                         destinations=destinations)  # fmt: skip
        for destination in destinations:
            with open_sink(destination, pool=pool, cache=cache) as sink:
                write_index(list(zip(images, index_platforms, strict=True)), index, sink,
                            jobs=options.jobs, progress=progress)  # fmt: skip
        return _multi_result(_name_of(destinations, name), index, bases, images, built_by, layers_by,
                             platforms, tuple(destinations), closures, options, pool=pool, cache=cache,
                             progress=progress)  # fmt: skip


def _platform_bases(
    pool: RegistryPool,
    base: Location,
    platforms: Sequence[Platform],
    options: BuildOptions,
    progress: ProgressCallback,
) -> tuple[list[BaseImage], list[Platform]]:
    """Each platform's image of the base index, and the platform fields its index entry has."""
    with open_source(base, pool) as source:
        document = source.top().parse(f"manifest of {source.name}")
        if not isinstance(document, Index):
            raise UsageError(
                f"base image {source.name} is a single image, not an index: a multi-platform "
                "build needs a base index offering every platform (or build one --platform)"
            )
        entries = [select_platform(document, platform) for platform in platforms]
        bases = [resolve_base(pool, source, platform) for platform in platforms]
    families = {b.image.media_types.family for b in bases}
    if len(families) > 1:
        raise UsageError(
            f"the base index mixes media-type families ({', '.join(sorted(families))}): its "
            "images cannot go into one index"
        )
    bases[0].image.media_types.layer(options.compression)
    progress(ProgressEvent("resolve", bases[0].pinned))
    return bases, [e.platform or platform for e, platform in zip(entries, platforms, strict=True)]


def _platform_index(
    bases: Sequence[BaseImage],
    stacks: Sequence[Sequence[BuiltPackage]],
    index_platforms: Sequence[Platform],
    cache: BlobCache,
    options: BuildOptions,
    created: str,
    layers_by: Sequence[Sequence[StackLayer]],
) -> tuple[list[Image], RawManifest]:
    """One image per platform (``stacks[i]`` in ``layers_by[i]`` on ``bases[i]``) and the
    index naming them."""
    media_types = bases[0].image.media_types
    images = [
        assemble(b, stack, cache, options, created, layers)
        for b, stack, layers in zip(bases, stacks, layers_by, strict=True)
    ]
    children = []
    for image, platform in zip(images, index_platforms, strict=True):
        data = image.manifest_bytes()
        children.append(Descriptor(media_types.manifest, Digest.of(data), len(data), platform=platform))
    top = stacks[0][-1]
    annotations: dict[str, str] = {}
    if media_types.family == "oci":
        annotations = {
            ANNOTATION + "created": created,
            ANNOTATION + "title": top.package.name,
            ANNOTATION + "version": top.package.version,
            # The hash the tag carries, for the repository index (images differ in theirs).
            LABEL_HASH: _index_hash([(p, b[-1].hash) for p, b in zip(index_platforms, stacks, strict=True)]),
            **options.annotations,
        }
    data = index_document(children, media_types.family, annotations or None)
    return images, RawManifest(data, media_types.index, Digest.of(data))


def _multi_result(
    name: Reference | None,
    index: RawManifest,
    bases: Sequence[BaseImage],
    images: Sequence[Image],
    stacks: Sequence[Sequence[BuiltPackage]],
    layers_by: Sequence[Sequence[StackLayer]],
    platforms: Sequence[Platform],
    destinations: tuple[Location, ...],
    closures: Sequence[ClosureReport | None],
    options: BuildOptions,
    *,
    pool: RegistryPool,
    cache: BlobCache,
    progress: ProgressCallback,
) -> MultiBuildResult:
    """The result of a written index: each platform's image with its closure report and the
    SBOMs attached to it; the index and each image signed (a pull of one platform verifies
    the image's signature, a copy of the whole index the index's)."""
    unsigned = replace(options, signing_key=None)
    results = []
    for b, image, stack, layers, closure in zip(bases, images, stacks, layers_by, closures, strict=True):
        trust = attach_and_sign(None, image, str(image.digest), layers, b, destinations, unsigned, pool=pool,
                                cache=cache, progress=progress)  # fmt: skip
        results.append(BuildResult(None, str(image.digest), b, image, tuple(stack), (), (), closure, *trust,
                                   tuple(layers)))  # fmt: skip
    digest = str(index.digest)
    key = options.signing_key
    signed = tuple(
        sign_image(d.reference, key, pool=pool, cache=cache, digest=signed_digest, progress=progress)
        for d in destinations
        if key is not None and isinstance(d, RegistryLocation)
        for signed_digest in (index.digest, *(image.digest for image in images))
    )
    return MultiBuildResult(name, digest, index.media_type, tuple(results), tuple(platforms), destinations,
                            signed)  # fmt: skip


def _multi_tag(
    built_by: Sequence[Sequence[BuiltPackage]], platforms: Sequence[Platform], template: str | None
) -> str:
    top = built_by[0][-1]
    oses = sorted({p.os for p in platforms})
    return render_tag(
        template,
        name=top.package.name,
        version=top.package.version,
        hash=_index_hash([(p, b[-1].hash) for p, b in zip(platforms, built_by, strict=True)]),
        platform="",  # an index: every platform under one tag
        os="-".join(oses),
        arch="-".join(p.architecture for p in platforms),
    )


def _stack_of(package: Package, by_key: Mapping[str, Package]) -> tuple[Package, ...]:
    """The packages of ``package``'s own image: its dependencies depth first in the order each
    lists them, then itself -- the order :func:`load_packages` gives for it alone, so an image
    is the same whatever else a batch holds."""
    order: list[Package] = []
    seen: set[str] = set()
    # Iterative post-order walk: (key, next dependency index).
    stack: list[tuple[str, int]] = [(package.key, 0)]
    seen.add(package.key)
    while stack:
        key, index = stack.pop()
        depends = by_key[key].depends
        if index < len(depends):
            stack.append((key, index + 1))
            dep = depends[index]
            if dep not in seen:
                seen.add(dep)
                stack.append((dep, 0))
        else:
            order.append(by_key[key])
    return tuple(order)


def _each_targets(
    packages: Sequence[Package], repo: str | Reference | None, output: str | Location | None
) -> tuple[Reference | None, LayoutLocation | None]:
    """Check an ``--each`` run's inputs: (the repository, or the layout) it writes to."""
    if not packages:
        raise UsageError("no packages given: name at least one package file")
    if (repo is None) == (output is None):
        raise UsageError("--each needs exactly one of --repo REPO or --output oci:DIR")
    out = as_location(output) if output is not None else None
    if out is not None and not (isinstance(out, LayoutLocation) and out.tag is None):
        raise UsageError(f"--each writes one tag per package: give --output oci:DIR without a tag, not {out}")
    keys = {p.key for p in packages}
    for package in packages:
        missing = [d for d in package.depends if d not in keys]
        if missing:
            raise UsageError(f"package {package.name} depends on {missing[0]}, which is not in the list")
    return (parse_repository(repo) if isinstance(repo, str) else repo), out


# One image of an --each run before it is written: (image, location, name, packages, layers).
_EachPlan = tuple[Image, Location, Reference | None, tuple[BuiltPackage, ...], tuple[StackLayer, ...]]


def _each_tops(packages: Sequence[Package], roots: Sequence[Package] | None) -> list[Package]:
    """The packages ``--each`` makes an image of: every one, or only ``roots`` (each in the
    list, given once), in the order of ``packages``."""
    if roots is None:
        return list(packages)
    # A Spack package is one package whatever path named it (load_packages merges by hash).
    by_key = {p.key: p for p in packages}
    by_hash = {p.spack.hash: p for p in packages if p.spack is not None}
    wanted: set[str] = set()
    for root in roots:
        found = by_key.get(root.key) or (by_hash.get(root.spack.hash) if root.spack is not None else None)
        if found is None:
            raise UsageError(f"root {root.label} ({root.source}) is not among the packages")
        wanted.add(found.key)
    return [p for p in packages if p.key in wanted]


def _each_stacks(
    packages: Sequence[Package], tops: Sequence[Package]
) -> dict[str, tuple[Package, ...]]:
    """Each image's packages, dependencies first and its own package last (see :func:`_stack_of`)."""
    by_key = {p.key: p for p in packages}
    return {top.key: _stack_of(by_key[top.key], by_key) for top in tops}


def _platform_layers(
    per_platform: Sequence[Sequence[Package]],
    plan: LayerPlan,
    cache: BlobCache,
    media_types: mt.MediaTypes,
    options: BuildOptions,
    progress: ProgressCallback,
    uploads: EarlyUploads | None,
    images: Collection[str] | None = None,
) -> tuple[list[list[BuiltPackage]], list[dict[tuple[str, ...], GroupLayer]]]:
    """Every platform's package and group layers (those of ``images``, when given); content
    shared by platforms built once."""
    shared: dict[tuple[Path, str], LayerBlob] = {}
    shared_groups: dict[tuple[tuple[Path, str], ...], GroupLayer] = {}
    singles = single_layer_keys(plan, images)
    built_by: list[list[BuiltPackage]] = []
    groups_by: list[dict[tuple[str, ...], GroupLayer]] = []
    for pkgs in per_platform:
        built = build_package_layers(pkgs, cache, media_types, options, progress, uploads, shared, singles)
        by_key = {b.package.key: b for b in built}
        built_by.append(built)
        groups_by.append(build_group_layers(plan, by_key, cache, media_types, options, progress, uploads,
                                            shared_groups, images))  # fmt: skip
    return built_by, groups_by


def _each_location(
    repository: Reference | None, out: LayoutLocation | None, tag: str
) -> tuple[Reference | None, Location]:
    """Where ``--each`` writes the image tagged ``tag``: (its name, its location)."""
    if repository is not None:
        name = repository.with_tag(tag)
        return name, RegistryLocation(name)
    assert out is not None  # _each_targets made sure
    return None, LayoutLocation(out.path, validate_layout_tag(tag))


def _single_base(
    pool: RegistryPool, base: Location, platform: Platform, options: BuildOptions, progress: ProgressCallback
) -> BaseImage:
    """The base's image for ``platform`` (reported), checked to take the chosen codec."""
    with open_source(base, pool) as source:
        resolved = resolve_base(pool, source, platform)
    progress(ProgressEvent("resolve", resolved.pinned))
    resolved.image.media_types.layer(options.compression)  # fail early: zstd on a Docker v2 base
    return resolved


def build_each_platforms(
    base: str | Reference | Location,
    packages: Sequence[Package],
    platforms: Sequence[Platform],
    *,
    repo: str | Reference | None = None,
    output: str | Location | None = None,
    roots: Sequence[Package] | None = None,
    options: BuildOptions | None = None,
    registry: RegistryOptions | None = None,
    cache: BlobCache | None = None,
    pool: RegistryPool | None = None,
    progress: ProgressCallback = null_progress,
) -> list[MultiBuildResult]:
    """:func:`build_each` for several platforms: one index per package, as
    :func:`build_platforms` would give for that package alone.

    Every layer is built once per distinct content (platform-independent packages once for
    all platforms), the base index is resolved once, and each package's index (its images
    first) is written under the tag rendered from the template, in ``repo`` or the layout.
    ``roots`` limits the indexes to those packages'. One layer plan serves every platform.
    """
    options = options or BuildOptions()
    cache = cache or BlobCache()
    platforms = _distinct_platforms(platforms)
    repository, out = _each_targets(packages, repo, output)
    tops = _each_tops(packages, roots)
    per_platform = [[p.for_platform(platform) for p in packages] for platform in platforms]
    # The plan covers every package's image, whichever are written: a group is then the same
    # set (the same blob) whether a run writes all the images or some of them.
    stacks = _each_stacks(packages, packages)
    with _registry_pool(pool, registry) as pool:
        _probe_target(pool, repository)
        bases, index_platforms = _platform_bases(pool, as_location(base), platforms, options, progress)
        media_types = bases[0].image.media_types
        plan = plan_stacks(stacks, max(len(b.image.layers) for b in bases), options)
        push_to = repository if _early_uploads_allowed(options) else None
        with _early_uploads(pool, push_to, progress) as uploads:
            built_by, groups_by = _platform_layers(
                per_platform, plan, cache, media_types, options, progress, uploads, [t.key for t in tops]
            )
        by_key_by = [{b.package.key: b for b in built} for built in built_by]
        created = _created()
        plans = []
        for top in tops:
            image_stacks = [tuple(by_key[p.key] for p in stacks[top.key]) for by_key in by_key_by]
            layers_by = [
                stack_layers(plan, top.key, by_key, groups)
                for by_key, groups in zip(by_key_by, groups_by, strict=True)
            ]
            images, index = _platform_index(bases, image_stacks, index_platforms, cache, options, created,
                                            layers_by)  # fmt: skip
            tag = _multi_tag(image_stacks, platforms, options.tag_template)
            name, location = _each_location(repository, out, tag)
            check_trust_destinations(options, (location,))
            closures = check_runtime_closure(list(zip(images, layers_by, strict=True)), options, pool=pool,
                                             cache=cache, progress=progress,
                                             destinations=(location,))  # fmt: skip
            plans.append((image_stacks, layers_by, images, index, name, location, closures))
        results: list[MultiBuildResult] = []
        for image_stacks, layers_by, images, index, name, location, closures in plans:
            with open_sink(location, pool=pool, cache=cache) as sink:
                write_index(list(zip(images, index_platforms, strict=True)), index, sink,
                            jobs=options.jobs, progress=progress)  # fmt: skip
            results.append(_multi_result(name, index, bases, images, image_stacks, layers_by, platforms,
                                         (location,), closures, options, pool=pool, cache=cache,
                                         progress=progress))  # fmt: skip
        return results


def build_each(
    base: str | Reference | Location,
    packages: Sequence[Package],
    *,
    repo: str | Reference | None = None,
    output: str | Location | None = None,
    roots: Sequence[Package] | None = None,
    options: BuildOptions | None = None,
    registry: RegistryOptions | None = None,
    cache: BlobCache | None = None,
    pool: RegistryPool | None = None,
    progress: ProgressCallback = null_progress,
) -> list[BuildResult]:
    """Build one image per package (its dependencies as layers below it) in one run.

    ``packages`` is a dependency-ordered list such as :func:`load_packages` returns; every
    package in it gets an image (only the ``roots``, when given), tagged from the tag template
    in ``repo`` (pushed), or in the OCI layout ``output`` (``oci:DIR``). Work is shared across
    the images: the base is resolved once, each layer is built and compressed once, and each
    blob is HEAD-checked, mounted or uploaded once; what remains per image is its config and
    manifest. The layer budget (``options.max_layers``) is planned once for all the images,
    so a group of dependencies is one blob wherever it is used (:mod:`imagesmith.budget`).
    """
    options = options or BuildOptions()
    cache = cache or BlobCache()
    repository, out = _each_targets(packages, repo, output)
    tops = _each_tops(packages, roots)
    platform = options.platform or Platform.host()
    packages = [p.for_platform(platform) for p in packages]
    # The plan covers every package's image, whichever are written: a group is then the same
    # set (the same blob) whether a run writes all the images or some of them.
    stacks = _each_stacks(packages, packages)
    images = [t.key for t in tops]
    with _registry_pool(pool, registry) as pool:
        _probe_target(pool, repository)
        resolved = _single_base(pool, as_location(base), platform, options, progress)
        media_types = resolved.image.media_types
        plan = plan_stacks(stacks, len(resolved.image.layers), options)
        push_to = repository if _early_uploads_allowed(options) else None
        uploaded: set[Digest] = set()
        with _early_uploads(pool, push_to, progress, uploaded) as uploads:
            built = build_package_layers(packages, cache, media_types, options, progress, uploads,
                                         upload_only=single_layer_keys(plan, images))  # fmt: skip
            by_key = {b.package.key: b for b in built}
            groups = build_group_layers(plan, by_key, cache, media_types, options, progress, uploads,
                                        images=images)  # fmt: skip
        created = _created()
        plans: list[_EachPlan] = []
        for top in tops:
            stack = tuple(by_key[p.key] for p in stacks[top.key])
            layers = stack_layers(plan, top.key, by_key, groups)
            image = assemble(resolved, stack, cache, options, created, layers)
            tag = _rendered_tag(stack, options, platform)
            name, location = _each_location(repository, out, tag)
            plans.append((image, location, name, stack, layers))
        wheres = [location for _, location, _, _, _ in plans]
        check_trust_destinations(options, wheres)
        closures = check_runtime_closure([(image, layers) for image, _, _, _, layers in plans], options,
                                         pool=pool, cache=cache, progress=progress,
                                         destinations=wheres)  # fmt: skip
        digests = write_images(
            [(image, location) for image, location, _, _, _ in plans],
            pool=pool, cache=cache, jobs=options.jobs, progress=progress, present=uploaded,
        )  # fmt: skip
        results = []
        for plan_of, digest, closure in zip(plans, digests, closures, strict=True):
            image, where, name, stack, layers = plan_of
            trust = attach_and_sign(name, image, str(digest), layers, resolved, (where,), options, pool=pool,
                                    cache=cache, progress=progress)  # fmt: skip
            results.append(BuildResult(name, str(digest), resolved, image, stack, (where,), (), closure,
                                       *trust, layers))  # fmt: skip
        return results


@dataclass(frozen=True)
class ImportResult(_Written):
    """What ``import_rootfs`` wrote: the name (None for an unnamed layout or archive), the
    digest, where it went and the layer."""

    reference: Reference | None
    digest: str
    layer: LayerBlob
    platform: Platform
    destinations: tuple[Location, ...] = ()
    loaded: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "reference": str(self.reference) if self.reference is not None else None,
            "tag": self.tag,
            "digest": self.digest,
            "destinations": [str(d) for d in self.destinations],
            "loaded": list(self.loaded),
            "platform": str(self.platform),
            "layer": str(self.layer.digest),
            "size": self.layer.size,
        }


def import_rootfs(
    rootfs: str | Path,
    tag: str | Reference | None = None,
    *,
    output: str | Reference | Location | None = None,
    load: bool = False,
    docker_host: str | None = None,
    platform: Platform | None = None,
    family: mt.Family = "oci",
    env: Sequence[str] = (),
    cmd: Sequence[str] | None = ("/bin/sh",),
    compression: mt.Compression = "gzip",
    registry: RegistryOptions | None = None,
    cache: BlobCache | None = None,
    pool: RegistryPool | None = None,
    progress: ProgressCallback = null_progress,
) -> ImportResult:
    """Turn a root filesystem (directory or tarball) into a one-layer image and write it.

    Owners, permission bits and special files of the root filesystem are preserved (it is a
    base image, not a package); timestamps are fixed so the result is reproducible. ``tag``
    names the image and, without ``output``, the registry it is pushed to; ``output`` and
    ``load`` work as for :func:`build` (an OCI layout output needs no network at all).
    """
    path = Path(rootfs)
    try:
        found = path.exists()
    except OSError as exc:  # a parent that cannot be searched
        raise file_error("access", path, exc, "check the permissions of the directories above it") from None
    if not found:
        raise UsageError(f"root filesystem {path} not found: give a directory or a tarball")
    out = check_output(repo=None, tag=tag, output=output, load=load)
    ref = _tag_reference(tag) if tag is not None else None
    platform = platform or Platform.host()
    media_types = mt.DOCKER if family == "docker" else mt.OCI
    cache = cache or BlobCache()
    destinations = plan_destinations(ref, out, load=load, default_tag=None)
    with _registry_pool(pool, registry) as pool:
        _probe_target(pool, _push_target(out, ref, load=load))
        with _early_uploads(pool, _push_target(out, ref, load=load), progress) as uploads:
            blob, reused = content_layer(
                path,
                "",
                cache,
                media_types,
                compression=compression,
                preserve=True,
                progress=_layer_meter(progress, str(path)),
                uploads=uploads,
                label=str(path),
            )
        kind: EventKind = "layer-reused" if reused else "layer-built"
        progress(ProgressEvent(kind, str(path), blob.size, str(blob.digest)))
        created = _created()
        config = ImageConfig.empty(platform)
        modifications = [EnvModification("set", *parse_env_assignment(e)) for e in env]
        config = config.with_config_fields(Env=apply_env([], modifications))
        if cmd is not None:
            config = config.with_config_fields(Cmd=list(cmd))
        config = config.with_top_level(created=created)
        origin = _rebuild_origin(blob, path, "", cache, media_types, compression=compression, level=None,
                                 preserve=True)  # fmt: skip
        image = Image(media_types, config, ()).append(
            [Layer(blob.descriptor(), blob.diff_id, origin)],
            [HistoryEntry(created_by=f"imagesmith: import {path.name}", created=created)],
        )
        if family == "oci":
            image = image.with_annotations({ANNOTATION + "created": created})
        digest, loaded = write_destinations(
            image, destinations, pool=pool, cache=cache, jobs=4, docker_host=docker_host, progress=progress
        )
        return ImportResult(_name_of(destinations, ref), digest, blob, platform, tuple(destinations), loaded)


@dataclass(frozen=True)
class InspectResult:
    """A manifest or index as stored (in a registry, layout or archive), with the config when
    it is an image. ``reference`` is None for a layout or archive; ``source`` names where it
    was read, ``raw`` holds the document's bytes exactly as stored."""

    reference: Reference | None
    digest: str
    media_type: str
    manifest: Manifest | Index
    config: ImageConfig | None = None
    platform_manifests: tuple[tuple[str, str], ...] = ()  # (platform, digest) of an index
    source: str = ""
    raw: bytes = field(default=b"", repr=False)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "reference": str(self.reference) if self.reference is not None else self.source,
            "digest": self.digest,
            "mediaType": self.media_type,
        }
        if isinstance(self.manifest, Index):
            out["manifests"] = [d.to_json() for d in self.manifest.manifests]
            return out
        if self.manifest.artifact_type:
            out["artifactType"] = self.manifest.artifact_type
        out["layers"] = [d.to_json() for d in self.manifest.layers]
        out["annotations"] = dict(self.manifest.annotations or {})
        if self.config is not None:
            config = self.config
            out["platform"] = str(config.platform)
            out["created"] = config.raw.get("created")
            out["config"] = {
                "Env": list(config.env),
                "Entrypoint": config.inner("Entrypoint"),
                "Cmd": config.inner("Cmd"),
                "WorkingDir": config.inner("WorkingDir") or "",
                "Labels": config.labels,
            }
            out["diff_ids"] = [str(d) for d in config.diff_ids]
            out["history"] = [dict(h) for h in config.history]
        return out


def inspect(
    reference: str | Reference | Location,
    *,
    platform: Platform | None = None,
    registry: RegistryOptions | None = None,
    pool: RegistryPool | None = None,
) -> InspectResult:
    """Read a manifest (or index) and, for an image, its config.

    ``reference`` is a registry reference or any readable location (``oci:DIR:TAG``,
    ``docker-archive:PATH``). An index is shown as it is unless ``platform`` is given, in
    which case the matching image is inspected.
    """
    from .model import MAX_CONFIG_SIZE

    location = as_location(reference)
    with _registry_pool(pool, registry) as pool, open_source(location, pool) as source:
        name = source.name
        raw = source.top()
        document = raw.parse(f"manifest of {name}")
        if isinstance(document, Index) and platform is not None:
            raw, document, _ = choose_platform(source, raw, platform)  # nested indexes followed
        ref, shown, digest = source.reference, str(location), str(raw.digest)
        if isinstance(document, Index):
            entries = tuple(
                (str(d.platform) if d.platform else "-", str(d.digest)) for d in document.manifests
            )
            return InspectResult(ref, digest, document.media_type, document, platform_manifests=entries,
                                 source=shown, raw=raw.data)  # fmt: skip
        if document.config.media_type not in (mt.OCI_CONFIG, mt.DOCKER_CONFIG):
            # An artifact (such as an index tag payload): show the manifest without a config.
            return InspectResult(ref, digest, document.media_type, document, source=shown, raw=raw.data)
        data = source.read_blob(document.config, MAX_CONFIG_SIZE)
        config = ImageConfig.parse(data, f"config of {name}")
        config.check_layers(len(document.layers), f"config of {name}")
        return InspectResult(ref, digest, document.media_type, document, config, source=shown, raw=raw.data)
