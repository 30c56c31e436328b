"""The build entry points: ``build``, ``build_each``, ``build_platforms``,
``build_each_platforms`` and ``import_rootfs``. Orchestration only.

Data flows one way::

    inputs -> plan (base location, platform, packages in dependency order, options)
           -> base (manifest + config only) -> layers (one streaming pass each, into the cache)
           -> config + manifest -> sink (registry, OCI layout, docker archive, daemon)

Each step lives in its own module of this package: :mod:`.results` (options and results),
:mod:`.layers` (package and group layers), :mod:`.assemble` (config, manifest, index),
:mod:`.destinations` (names and where the image goes), :mod:`.checks` (the closure check before
writing; SBOMs and signatures after). This one wires them together.

Size: the five build entry points on one skeleton; most of its lines are their documented
signatures.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from imagesmith.artifacts.signing import sign_image
from imagesmith.errors import UsageError, file_error
from imagesmith.inputs.envmods import EnvModification, apply_env, parse_env_assignment
from imagesmith.inputs.packages import Package
from imagesmith.oci import mediatypes as mt
from imagesmith.oci.digests import Digest
from imagesmith.oci.image import BaseImage, Image, Layer, RawManifest
from imagesmith.oci.model import (
    HistoryEntry,
    ImageConfig,
    Index,
    Platform,
    select_platform,
)
from imagesmith.oci.references import Reference, parse_repository
from imagesmith.oci.vocabulary import ANNOTATION
from imagesmith.pipeline.assemble import _created, _platform_index, assemble
from imagesmith.pipeline.budget import LayerPlan
from imagesmith.pipeline.checks import BuildContext, attach_and_sign, check_images
from imagesmith.pipeline.closure import ClosureReport
from imagesmith.pipeline.destinations import (
    _each_location,
    _each_targets,
    _early_uploads_allowed,
    _multi_tag,
    _name_of,
    _probe_target,
    _push_target,
    _rendered_tag,
    _tag_reference,
    check_output,
    plan_destinations,
    target_reference,
    write_destinations,
)
from imagesmith.pipeline.layers import (
    _early_uploads,
    _layer_meter,
    _platform_layers,
    _rebuild_origin,
    content_layer,
    plan_stacks,
    stack_layers,
)
from imagesmith.pipeline.results import (
    BuildOptions,
    BuildResult,
    BuiltPackage,
    GroupLayer,
    ImportResult,
    MultiBuildResult,
    StackLayer,
)
from imagesmith.progress import EventKind, ProgressCallback, ProgressEvent, null_progress
from imagesmith.registry.client import RegistryPool, borrowed_pool
from imagesmith.registry.transport import RegistryOptions
from imagesmith.store.cache import BlobCache
from imagesmith.transports.base import write_index
from imagesmith.transports.copy import write_images
from imagesmith.transports.layout import LayoutLocation
from imagesmith.transports.locations import (
    Location,
    as_location,
    open_sink,
    open_source,
    resolve_base,
)
from imagesmith.transports.registry import RegistryLocation

__all__ = [
    "build",
    "build_each",
    "build_each_platforms",
    "build_platforms",
    "import_rootfs",
]


@dataclass(frozen=True)
class _Layers:
    """What every build shares, whatever it makes (one image or one per package, on one platform
    or several): the base resolved for each platform, one layer plan, and every package and group
    layer built, shared content once."""

    bases: list[BaseImage]  # one per platform
    index_platforms: list[Platform]  # the base index entries' platform fields (or the platform asked for)
    plan: LayerPlan
    built_by: list[dict[str, BuiltPackage]]  # per platform: package key -> its layer
    groups_by: list[dict[tuple[str, ...], GroupLayer]]  # per platform: the plan's group layers
    uploaded: set[Digest]  # blobs the target registry accepted while they were built

    def stacks(
        self, top: str, packages: Sequence[Package]
    ) -> tuple[list[tuple[BuiltPackage, ...]], list[tuple[StackLayer, ...]]]:
        """The image of ``top`` on each platform: its packages (``packages``, dependencies first)
        as built, and its layers as the plan stacks them."""
        built = [tuple(by_key[p.key] for p in packages) for by_key in self.built_by]
        layers = [
            stack_layers(self.plan, top, by_key, groups)
            for by_key, groups in zip(self.built_by, self.groups_by, strict=True)
        ]
        return built, layers


@dataclass(frozen=True)
class _Run(BuildContext):
    """A build's shared state with the skeleton's steps that need it: every entry point builds
    its layers, checks its images, writes them and attaches what goes with them through these
    methods and :mod:`.checks`, so the steps are written once."""

    def layers(
        self,
        base: Location,
        per_platform: Sequence[Sequence[Package]],
        platforms: Sequence[Platform],
        stacks: Mapping[str, Sequence[Package]],
        images: Collection[str],
        *,
        index: bool,
        push_to: Reference | None,
    ) -> _Layers:
        """The skeleton's middle, the same for every build: resolve the base (each platform's
        image of its index when ``index``), plan the layers of every image of ``stacks`` (one plan
        for every platform, the deepest base deciding, so a group is the same set of packages,
        and for platform-independent content the same blob, on each), and build those of
        ``images`` (uploading new ones to ``push_to`` while they are built)."""
        pool, options, progress = self.pool, self.options, self.progress
        if index:
            bases, index_platforms = _platform_bases(pool, base, platforms, options, progress)
        else:
            [platform] = platforms
            bases, index_platforms = [_single_base(pool, base, platform, options, progress)], [platform]
        media_types = bases[0].image.media_types
        plan = plan_stacks(stacks, max(len(b.image.layers) for b in bases), options)
        uploaded: set[Digest] = set()
        with _early_uploads(pool, push_to, progress, uploaded) as uploads:
            built_by, groups_by = _platform_layers(
                per_platform, plan, self.cache, media_types, options, progress, uploads, images
            )
        by_key_by = [{b.package.key: b for b in built} for built in built_by]
        return _Layers(bases, index_platforms, plan, by_key_by, groups_by, uploaded)

    def write_index(
        self,
        images: Sequence[Image],
        index: RawManifest,
        index_platforms: Sequence[Platform],
        destinations: Sequence[Location],
    ) -> None:
        """A multi-platform build's images, then its index, to each destination."""
        entries = list(zip(images, index_platforms, strict=True))
        for destination in destinations:
            with open_sink(destination, pool=self.pool, cache=self.cache) as sink:
                write_index(entries, index, sink, jobs=self.options.jobs, progress=self.progress)

    def multi_result(
        self,
        name: Reference | None,
        index: RawManifest,
        layers: _Layers,
        images: Sequence[Image],
        stacks: Sequence[Sequence[BuiltPackage]],
        layers_by: Sequence[Sequence[StackLayer]],
        platforms: Sequence[Platform],
        destinations: tuple[Location, ...],
        closures: Sequence[ClosureReport | None],
    ) -> MultiBuildResult:
        """The result of a written index: each platform's image with its closure report and the
        SBOMs attached to it; the index and each image signed (a pull of one platform verifies
        the image's signature, a copy of the whole index the index's)."""
        results = []
        for b, image, stack, stacked, closure in zip(
            layers.bases, images, stacks, layers_by, closures, strict=True
        ):
            trust = attach_and_sign(self, None, image, image.digest, stacked, b, destinations, sign=False)
            results.append(
                BuildResult(
                    None, image.digest, b, image, tuple(stack), (), (), closure, *trust, tuple(stacked)
                )
            )
        key = self.options.signing_key
        signed = tuple(
            sign_image(
                d.reference,
                key,
                pool=self.pool,
                cache=self.cache,
                digest=signed_digest,
                progress=self.progress,
            )
            for d in destinations
            if key is not None and isinstance(d, RegistryLocation)
            for signed_digest in (index.digest, *(image.digest for image in images))
        )
        return MultiBuildResult(
            name, index.digest, index.media_type, tuple(results), tuple(platforms), destinations, signed
        )


@contextmanager
def _started(
    options: BuildOptions | None,
    cache: BlobCache | None,
    pool: RegistryPool | None,
    registry: RegistryOptions | None,
    progress: ProgressCallback,
) -> Iterator[_Run]:
    """A build's shared state: the caller's pool or one owned for the call, defaults filled in."""
    with borrowed_pool(pool, registry) as borrowed:
        yield _Run(borrowed, cache or BlobCache(), options or BuildOptions(), progress)


def _names(
    repo: str | Reference | None, tag: str | Reference | None
) -> tuple[Reference | None, Reference | None]:
    """``repo`` and ``tag`` checked before any work, so a typo never costs a build."""
    if repo is not None and not isinstance(repo, Reference):
        repo = parse_repository(repo)
    return repo, (_tag_reference(tag) if tag is not None else None)


def _default_tag(out: Location | None, name: Reference | None, render: Callable[[], str]) -> str | None:
    """The tag of an ``oci:`` layout output named by neither the location nor ``--repo``/``--tag``:
    the rendered template, as ``--repo`` would give."""
    if isinstance(out, LayoutLocation) and out.tag is None and name is None:
        return render()
    return None


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
    out = check_output(repo=repo, tag=tag, output=output, load=load)
    base_location = as_location(base)
    repo, tag = _names(repo, tag)
    if not packages:
        raise UsageError("no packages given: name at least one package file")
    with _started(options, cache, pool, registry, progress) as run:
        options = run.options
        platform = options.platform or Platform.host()
        packages = [p.for_platform(platform) for p in packages]  # a missing content fails here
        top = packages[-1].key
        _probe_target(run.pool, _push_target(out, tag or repo, load=load))
        push_to = _push_target(out, tag or repo, load=load, enabled=_early_uploads_allowed(options))
        layers = run.layers(
            base_location, [packages], [platform], {top: packages}, [top], index=False, push_to=push_to
        )
        resolved = layers.bases[0]
        [built], [stacked] = layers.stacks(top, packages)
        name = (
            target_reference(built, repo=repo, tag=tag, options=options, platform=platform)
            if repo is not None or tag is not None
            else None
        )
        default_tag = _default_tag(out, name, lambda: _rendered_tag(built, options, platform))
        destinations = plan_destinations(name, out, load=load, default_tag=default_tag)
        image = assemble(resolved, built, run.cache, options, _created(), stacked)
        [closure] = check_images(run, [(image, stacked)], destinations)
        digest, loaded = write_destinations(
            image,
            destinations,
            pool=run.pool,
            cache=run.cache,
            jobs=options.jobs,
            docker_host=docker_host,
            progress=progress,
            uploaded=(push_to, layers.uploaded),
        )
        named = _name_of(destinations, name)
        trust = attach_and_sign(run, named, image, digest, stacked, resolved, destinations)
        return BuildResult(
            named, digest, resolved, image, built, tuple(destinations), loaded, closure, *trust, stacked
        )


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
    platforms = _distinct_platforms(platforms)
    out = check_output(repo=repo, tag=tag, output=output, load=False)
    if out is not None and not out.holds_index:
        raise UsageError(
            f"{out} holds single-platform images: write a multi-platform build to a registry or "
            "an oci: layout, or build one --platform at a time"
        )
    if not packages:
        raise UsageError("no packages given: name at least one package file")
    base_location = as_location(base)
    repo, tag = _names(repo, tag)
    per_platform = [[p.for_platform(platform) for p in packages] for platform in platforms]
    top = packages[-1].key
    with _started(options, cache, pool, registry, progress) as run:
        options = run.options
        _probe_target(run.pool, _push_target(out, tag or repo, load=False))
        push_to = _push_target(out, tag or repo, load=False, enabled=_early_uploads_allowed(options))
        layers = run.layers(
            base_location, per_platform, platforms, {top: packages}, [top], index=True, push_to=push_to
        )
        built_by, layers_by = layers.stacks(top, packages)
        images, index = _platform_index(
            layers.bases, built_by, layers.index_platforms, run.cache, options, _created(), layers_by
        )
        name: Reference | None = tag
        if name is None and repo is not None:
            name = repo.with_tag(_multi_tag(built_by, platforms, options.tag_template))
        default_tag = _default_tag(out, name, lambda: _multi_tag(built_by, platforms, options.tag_template))
        destinations = plan_destinations(name, out, load=False, default_tag=default_tag)
        closures = check_images(run, list(zip(images, layers_by, strict=True)), destinations)
        run.write_index(images, index, layers.index_platforms, destinations)
        return run.multi_result(
            _name_of(destinations, name),
            index,
            layers,
            images,
            built_by,
            layers_by,
            platforms,
            tuple(destinations),
            closures,
        )


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


def _each_stacks(packages: Sequence[Package], tops: Sequence[Package]) -> dict[str, tuple[Package, ...]]:
    """Each image's packages, dependencies first and its own package last (see :func:`_stack_of`)."""
    by_key = {p.key: p for p in packages}
    return {top.key: _stack_of(by_key[top.key], by_key) for top in tops}


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
    platforms = _distinct_platforms(platforms)
    repository, out = _each_targets(packages, repo, output)
    tops = _each_tops(packages, roots)
    per_platform = [[p.for_platform(platform) for p in packages] for platform in platforms]
    # The plan covers every package's image, whichever are written: a group is then the same
    # set (the same blob) whether a run writes all the images or some of them.
    stacks = _each_stacks(packages, packages)
    with _started(options, cache, pool, registry, progress) as run:
        options = run.options
        _probe_target(run.pool, repository)
        push_to = repository if _early_uploads_allowed(options) else None
        layers = run.layers(
            as_location(base),
            per_platform,
            platforms,
            stacks,
            [t.key for t in tops],
            index=True,
            push_to=push_to,
        )
        created = _created()
        plans = []
        for top in tops:
            image_stacks, layers_by = layers.stacks(top.key, stacks[top.key])
            images, index = _platform_index(
                layers.bases, image_stacks, layers.index_platforms, run.cache, options, created, layers_by
            )
            tag = _multi_tag(image_stacks, platforms, options.tag_template)
            name, location = _each_location(repository, out, tag)
            closures = check_images(run, list(zip(images, layers_by, strict=True)), (location,))
            plans.append((image_stacks, layers_by, images, index, name, location, closures))
        results: list[MultiBuildResult] = []
        for image_stacks, layers_by, images, index, name, location, closures in plans:
            run.write_index(images, index, layers.index_platforms, (location,))
            results.append(
                run.multi_result(
                    name, index, layers, images, image_stacks, layers_by, platforms, (location,), closures
                )
            )
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
    so a group of dependencies is one blob wherever it is used (:mod:`imagesmith.pipeline.budget`).
    """
    repository, out = _each_targets(packages, repo, output)
    tops = _each_tops(packages, roots)
    with _started(options, cache, pool, registry, progress) as run:
        options = run.options
        platform = options.platform or Platform.host()
        packages = [p.for_platform(platform) for p in packages]
        # The plan covers every package's image, whichever are written: a group is then the same
        # set (the same blob) whether a run writes all the images or some of them.
        stacks = _each_stacks(packages, packages)
        _probe_target(run.pool, repository)
        push_to = repository if _early_uploads_allowed(options) else None
        layers = run.layers(
            as_location(base),
            [packages],
            [platform],
            stacks,
            [t.key for t in tops],
            index=False,
            push_to=push_to,
        )
        resolved = layers.bases[0]
        created = _created()
        plans: list[_EachPlan] = []
        for top in tops:
            [stack], [stacked] = layers.stacks(top.key, stacks[top.key])
            image = assemble(resolved, stack, run.cache, options, created, stacked)
            tag = _rendered_tag(stack, options, platform)
            name, location = _each_location(repository, out, tag)
            plans.append((image, location, name, stack, stacked))
        wheres = [location for _, location, _, _, _ in plans]
        closures = check_images(run, [(image, stacked) for image, _, _, _, stacked in plans], wheres)
        digests = write_images(
            [(image, location) for image, location, _, _, _ in plans],
            pool=run.pool,
            cache=run.cache,
            jobs=options.jobs,
            progress=progress,
            present=layers.uploaded,
        )
        results = []
        for (image, where, name, stack, stacked), digest, closure in zip(
            plans, digests, closures, strict=True
        ):
            trust = attach_and_sign(run, name, image, digest, stacked, resolved, (where,))
            results.append(
                BuildResult(name, digest, resolved, image, stack, (where,), (), closure, *trust, stacked)
            )
        return results


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
    with borrowed_pool(pool, registry) as pool:
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
        origin = _rebuild_origin(
            blob, path, "", cache, media_types, compression=compression, level=None, preserve=True
        )
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
