"""Per-platform builds joined into the index ``imagesmith build --platform A,B`` would push.

A stack built on many machines (a generated CI pipeline, ``docs/pipelines.md``) builds each
platform's image of a package in a job of its own, each pushed under a tag of its own.
:func:`merge_builds` joins them afterwards: it reads each image's package labels (name, version
and hash, which every imagesmith build writes into the config), names the index from the tag
template exactly as a multi-platform build on one machine would (the shared hash when the
platforms agree, else one combining theirs), annotates it the same way, and pushes it with
:func:`~imagesmith.ops.merge.merge_images`, which mounts the blobs and never downloads a layer.
"""

from __future__ import annotations

from collections.abc import Sequence

from imagesmith.errors import UsageError
from imagesmith.oci.model import MAX_CONFIG_SIZE, ImageConfig, Manifest, Platform, parse_manifest_document
from imagesmith.oci.references import Reference, parse_repository
from imagesmith.oci.vocabulary import ANNOTATION, LABEL_HASH, LABEL_NAME, LABEL_VERSION
from imagesmith.ops.merge import MergeResult, merge_images
from imagesmith.pipeline.assemble import _created as created_now
from imagesmith.pipeline.assemble import _index_hash as index_hash
from imagesmith.progress import ProgressCallback, null_progress
from imagesmith.registry.client import RegistryPool
from imagesmith.templating import render_tag
from imagesmith.transports.locations import as_location
from imagesmith.transports.registry import RegistryLocation

__all__ = ["merge_builds"]


def _identity(pool: RegistryPool, source: str | Reference, registry: str) -> tuple[Platform, str, str, str]:
    """The platform, package name, version and hash one source image declares."""
    location = as_location(source)
    if not isinstance(location, RegistryLocation):
        raise UsageError(f"{source} is not in a registry: merge assembles an index inside one registry")
    ref = location.reference
    if ref.registry != registry:
        raise UsageError(
            f"{source} is on {ref.registry}, but the index goes to {registry}: copy it there first "
            f"(imagesmith copy {source} {registry}/{ref.repository}:TAG) and merge that"
        )
    client = pool.client(registry)
    got = client.get_manifest(ref.repository, ref.identifier)
    document = parse_manifest_document(got.data, got.media_type, f"manifest {source}")
    if not isinstance(document, Manifest):
        raise UsageError(
            f"{source} is an index: --repo names the index from the package labels of single-platform "
            "images; give those, or name the index with --tag"
        )
    data = client.get_blob_bytes(ref.repository, document.config, MAX_CONFIG_SIZE)
    config = ImageConfig.parse(data, f"config of {source}")
    name, version, digest_hash = (config.labels.get(k, "") for k in (LABEL_NAME, LABEL_VERSION, LABEL_HASH))
    if not (name and version and digest_hash):
        raise UsageError(
            f"{source} carries no imagesmith package labels ({LABEL_NAME}, {LABEL_VERSION}, "
            f"{LABEL_HASH}): --repo names the index from them, so merge images imagesmith built, "
            "or name the index with --tag"
        )
    return config.platform, name, version, digest_hash


def merge_builds(
    sources: Sequence[str | Reference],
    repo: str | Reference,
    *,
    pool: RegistryPool,
    tag_template: str | None = None,
    progress: ProgressCallback = null_progress,
    jobs: int = 4,
) -> MergeResult:
    """Join single-platform images of one package, each built by imagesmith, into the index a
    multi-platform build of that package would push to ``repo``.

    Each source (a registry reference on ``repo``'s registry, by tag or digest) must be an
    image whose config carries imagesmith's package labels; all must name one package and
    version. The index's tag is ``tag_template`` (default ``{name}-{version}-{hash}``: an index
    is never a Spack build-cache entry, so never Spack's ``.spack``) rendered with the hash
    combining the platforms' hashes (their shared hash when they agree), ``os`` and ``arch``
    joined as :func:`~imagesmith.pipeline.run.build_platforms` joins them, and an OCI index carries
    the same annotations (created from ``SOURCE_DATE_EPOCH``, title, version, hash). Entries
    keep the sources' order. Anything else is as for
    :func:`~imagesmith.ops.merge.merge_images`; a source that is not such an image, or images of
    different packages, raise :class:`~imagesmith.errors.UsageError`.
    """
    if not sources:
        raise UsageError("merge needs at least one source image")
    repository = repo if isinstance(repo, Reference) else parse_repository(repo)
    found = [_identity(pool, source, repository.registry) for source in sources]
    packages = sorted({f"{name} {version}" for _, name, version, _ in found})
    if len(packages) > 1:
        raise UsageError(
            f"the sources are images of different packages ({', '.join(packages)}): an index holds "
            "the platforms of one package"
        )
    _, name, version, _ = found[0]
    platforms = [platform for platform, *_ in found]
    combined = index_hash([(platform, digest_hash) for platform, _, _, digest_hash in found])
    tag = render_tag(
        tag_template,
        name=name,
        version=version,
        hash=combined,
        platform="",  # an index: every platform under one tag
        os="-".join(sorted({p.os for p in platforms})),
        arch="-".join(p.architecture for p in platforms),
    )
    annotations = {
        ANNOTATION + "created": created_now(),
        ANNOTATION + "title": name,
        ANNOTATION + "version": version,
        LABEL_HASH: combined,
    }
    return merge_images(
        sources, repository.with_tag(tag), pool=pool, progress=progress, jobs=jobs, annotations=annotations
    )
