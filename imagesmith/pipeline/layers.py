"""The layers of a build: each package's layer (built, reused from its record, or adopted from a
Spack tarball or registry), the layer plan's groups, and each image's stack of layers. Layers
are built in parallel and, when the target is a registry, uploaded while they are compressed."""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

from imagesmith.errors import PackageError, UsageError
from imagesmith.inputs.envmods import infer_env
from imagesmith.inputs.packages import Package, package_hash
from imagesmith.inputs.spack import (
    SpackPrefix,
    SpackRegistryLayer,
    SpackTarball,
)
from imagesmith.inputs.spackrelocation import BUILDINFO_PATH, Relocation, buildinfo
from imagesmith.oci import mediatypes as mt
from imagesmith.oci.digests import Digest
from imagesmith.oci.image import BlobOrigin, FileOrigin
from imagesmith.oci.references import Reference
from imagesmith.pipeline import records as layerrecords
from imagesmith.pipeline.budget import LayerPlan, package_slots, plan_layers
from imagesmith.pipeline.closure import LayerSummariser
from imagesmith.pipeline.group import GroupMember, group_entries, group_record_key
from imagesmith.pipeline.results import BuildOptions, BuiltPackage, GroupLayer, StackLayer
from imagesmith.progress import EventKind, ProgressCallback, ProgressEvent, null_progress
from imagesmith.registry.client import RegistryPool
from imagesmith.registry.overlap import EarlyUploads
from imagesmith.store.cache import BlobCache
from imagesmith.tar.entries import directory_entries, tarball_entries
from imagesmith.tar.layer import LayerBlob, adopt_tarball, build_layer, with_file
from imagesmith.tar.writer import TarEntry
from imagesmith.transports.registry import RemoteOrigin


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
    summarise: bool = False,
) -> tuple[LayerBlob, bool]:
    """One layer from a directory or a tarball placed at ``prefix`` (relative to ``/``).

    With ``reuse``, an input whose identity (see :mod:`imagesmith.pipeline.records`) matches an
    earlier build is not read again: the recorded layer is returned while its blob is in the
    cache. Returns the layer and whether it was reused. ``progress`` is called with the number
    of uncompressed bytes archived so far and the input's size (its files' bytes; 0 when not
    known: a tarball, or without ``reuse``). ``label`` names the layer to ``uploads``.
    With ``uploads``, a layer that is built is also
    uploaded while it is compressed (a reused one is left to the push: it may be there), and
    a layer whose blob left the cache but whose record names a digest the target repository
    already has is neither built nor sent. ``relocation`` (a Spack install prefix directory)
    adds Spack's relocation record, ``<prefix>/.spack/binary_distribution``, written for the
    directory's files. With ``summarise`` a layer that is built is also summarised for the
    runtime-closure check in the same pass (see :class:`~imagesmith.pipeline.closure.LayerSummariser`).
    """
    extra = {"spack-relocation": relocation.to_json()} if relocation is not None else None
    key, total = (
        layerrecords.input_key_size(
            content,
            prefix,
            preserve=preserve,
            compression=compression,
            level=level,
            media_types=media_types,
            extra=extra,
            cache=cache,
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
    summariser = LayerSummariser() if summarise else None
    options: dict[str, Any] = {
        "media_types": media_types,
        "compression": compression,
        "level": level,
        "progress": (lambda done: progress(done, total)) if progress is not None else None,
        "follower": uploads.follower(label) if uploads is not None else None,
        "directory_depth": _inspected_depth(prefix),
        "observer": summariser,
    }
    if content.is_dir():
        entries: Iterable[TarEntry] = directory_entries(content, prefix, preserve=preserve)
        if relocation is not None:
            record = buildinfo(relocation, directory_entries(content, prefix, preserve=preserve), prefix)
            entries = with_file(entries, f"{prefix}/{BUILDINFO_PATH}", record)
        blob = build_layer(entries, cache, **options)
    else:
        with tarball_entries(content, prefix, preserve=preserve, tmpdir=cache.tmp_dir) as tar_entries:
            blob = build_layer(tar_entries, cache, **options)
    if summariser is not None:
        summariser.remember(cache, blob.digest)
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
    blob: LayerBlob,
    content: Path,
    prefix: str,
    cache: BlobCache,
    media_types: mt.MediaTypes,
    *,
    compression: mt.Compression,
    level: int | None,
    preserve: bool,
    relocation: Relocation | None = None,
) -> layerrecords.RebuildOrigin:
    """How to make ``blob`` again from its input: :func:`content_layer`, without reuse."""

    def rebuild() -> LayerBlob:
        return content_layer(
            content,
            prefix,
            cache,
            media_types,
            compression=compression,
            level=level,
            preserve=preserve,
            reuse=False,
            relocation=relocation,
        )[0]

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
    summarise: bool = False,
) -> tuple[LayerBlob, bool]:
    """A Spack build-cache tarball as its own layer (:func:`~imagesmith.tar.layer.adopt_tarball`):
    not copied, its bytes stay in the file (``FileOrigin``). An unchanged file is not read
    again: its record (kept like a built layer's, though its blob is the file) gives the layer.
    Returns the layer and whether it was reused. ``summarise`` as for :func:`content_layer`.
    """
    key = layerrecords.input_key(
        tarball,
        prefix,
        preserve=False,
        compression="none",
        level=None,
        media_types=media_types,
        extra={"adopted": str(checksum) if checksum is not None else True},
    )
    found = layerrecords.recorded(cache, key)
    if found is not None:
        return found, True
    summariser = LayerSummariser() if summarise else None
    blob = adopt_tarball(
        tarball,
        prefix,
        media_types,
        expected=checksum,
        required=(BUILDINFO_PATH, ".spack/spec.json"),
        follower=uploads.follower(label) if uploads is not None else None,
        progress=progress,
        directory_depth=_inspected_depth(prefix),
        observer=summariser,
    )
    if summariser is not None:
        summariser.remember(cache, blob.digest)
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
    :mod:`imagesmith.registry.overlap`); the caller waits for them before writing a manifest.
    ``upload_only`` limits that to the packages with these keys (the others' own layers go
    into no image: the layer budget grouped them). ``shared`` carries the layers of one run's
    earlier calls by (content, prefix): a multi-platform build calls once per platform, and
    platform-independent content is then neither built nor even stat-walked again.
    """
    if not packages:
        raise UsageError("no packages given: name at least one package file")
    # Layers built here are summarised for the runtime-closure check as they are written.
    summarise = options.check != "off"

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
                package.content,
                package.prefix.lstrip("/"),
                cache,
                media_types,
                checksum=spack_content.checksum,
                uploads=upload,
                label=subject,
                progress=lambda done: progress(ProgressEvent("layer-progress", subject, done)),
                summarise=summarise,
            )
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
                summarise=summarise,
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
                blob,
                package.content,
                package.prefix.lstrip("/"),
                cache,
                media_types,
                compression=options.compression,
                level=options.level,
                preserve=False,
                relocation=spack_content.relocation if isinstance(spack_content, SpackPrefix) else None,
            )
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


def plan_stacks(
    stacks: Mapping[str, Sequence[Package]], base_layers: int, options: BuildOptions
) -> LayerPlan:
    """The layers of every image of a run under ``options.max_layers`` (see
    :mod:`imagesmith.pipeline.budget`): ``stacks`` maps an image to its packages, dependencies first
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
    depend only on its packages' contents (:mod:`imagesmith.pipeline.group`): the same group is
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
            # The first build is summarised for the check; a rebuild of a lost blob (no
            # follower) gives the same bytes, whose summary is already recorded.
            summariser = LayerSummariser() if follower and options.check != "off" else None
            with closing(group_entries(parts, tmpdir=cache.tmp_dir)) as entries:
                blob = build_layer(
                    entries,
                    cache,
                    media_types=media_types,
                    compression=options.compression,
                    level=options.level,
                    progress=lambda done: progress(ProgressEvent("layer-progress", subject, done)),
                    follower=uploads.follower(subject) if uploads is not None and follower else None,
                    directory_depth=1,  # nothing reads a group's directories: keep its record small
                    observer=summariser,
                )
            if summariser is not None:
                summariser.remember(cache, blob.digest)
            return blob

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
        groups_by.append(
            build_group_layers(
                plan, by_key, cache, media_types, options, progress, uploads, shared_groups, images
            )
        )
    return built_by, groups_by
