"""Where a build's image goes: the checks of its name and output before any work, the target
reference (tag template), the complete list of destinations, and writing to each of them."""

from __future__ import annotations

from collections.abc import Collection, Sequence

from imagesmith.errors import UsageError
from imagesmith.inputs.packages import Package
from imagesmith.oci.digests import Digest
from imagesmith.oci.image import Image
from imagesmith.oci.model import (
    Platform,
)
from imagesmith.oci.references import Reference, parse_repository
from imagesmith.pipeline.assemble import _index_hash
from imagesmith.pipeline.results import BuildOptions, BuiltPackage, _spack_entry
from imagesmith.progress import ProgressCallback
from imagesmith.registry.client import RegistryPool
from imagesmith.store.cache import BlobCache
from imagesmith.templating import render_tag
from imagesmith.transports.archive import ArchiveLocation
from imagesmith.transports.base import write_image
from imagesmith.transports.daemon import DaemonLocation, DaemonSink
from imagesmith.transports.layout import LayoutLocation
from imagesmith.transports.locations import (
    Location,
    as_location,
    open_sink,
    validate_layout_tag,
)
from imagesmith.transports.registry import RegistryLocation


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
        if destination.name is not None:
            return destination.name
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
) -> tuple[Digest, tuple[str, ...]]:
    """Write ``image`` to each destination in turn; return its digest and what a daemon loaded.

    Remote base layers pass through the cache, so a second destination reads them locally.
    ``uploaded`` is (a repository, the blobs this run uploaded there): not checked again.
    """
    digest = image.digest
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
            digest = write_image(image, sink, jobs=jobs, progress=progress, present=present)
        if isinstance(sink, DaemonSink):
            loaded += sink.loaded  # known once the sink has committed (loaded the archive)
    return digest, loaded


def _early_uploads_allowed(options: BuildOptions) -> bool:
    # With --check=error nothing may reach the registry before the check has passed.
    return options.overlap_upload and options.check != "error"


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


def _each_location(
    repository: Reference | None, out: LayoutLocation | None, tag: str
) -> tuple[Reference | None, Location]:
    """Where ``--each`` writes the image tagged ``tag``: (its name, its location)."""
    if repository is not None:
        name = repository.with_tag(tag)
        return name, RegistryLocation(name)
    assert out is not None  # _each_targets made sure
    return None, LayoutLocation(out.path, validate_layout_tag(tag))
