"""The pipeline: build, import and inspect images. Orchestration only.

Data flows one way::

    inputs -> plan (base reference, platform, packages in dependency order, options)
           -> base (manifest + config only) -> layers (one streaming pass each, into the cache)
           -> config + manifest -> sink (registry push)

Every step lives in its own module; this one wires them together, runs layer builds in
parallel and reports progress through a callback.
"""

from __future__ import annotations

import datetime as _dt
import os
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import mediatypes as mt
from .cache import BlobCache
from .digests import Digest
from .envmods import EnvModification, apply_env, infer_env, parse_env_assignment
from .errors import UsageError
from .images import BaseImage, Image, Layer, resolve_base
from .layers import LayerBlob, build_layer, directory_entries, tarball_entries
from .model import HistoryEntry, ImageConfig, Index, Manifest, Platform, parse_manifest_document
from .packages import Package, package_hash
from .progress import ProgressCallback, ProgressEvent, null_progress
from .push import push_image
from .references import Reference, parse_repository
from .registry.client import RegistryPool
from .registry.transport import RegistryOptions
from .templating import render_profile_script, render_tag

__all__ = [
    "BuildOptions",
    "BuildResult",
    "BuiltPackage",
    "ImportResult",
    "InspectResult",
    "build",
    "import_rootfs",
    "inspect",
]

PROFILE_SCRIPT_PATH = "etc/profile.d/imagesmith.sh"
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


@dataclass(frozen=True)
class BuiltPackage:
    """A package turned into a layer, with its effective hash and environment changes."""

    package: Package
    layer: LayerBlob
    hash: str
    env: tuple[EnvModification, ...]


@dataclass(frozen=True)
class BuildResult:
    """What a build pushed: the tagged reference, its manifest digest and the parts."""

    reference: Reference
    digest: str
    base: BaseImage
    image: Image
    packages: tuple[BuiltPackage, ...]

    @property
    def tag(self) -> str:
        return self.reference.tag or ""

    def to_json(self) -> dict[str, Any]:
        return {
            "reference": str(self.reference),
            "tag": self.tag,
            "digest": self.digest,
            "base": str(self.base.pinned),
            "layers": [
                {
                    "package": p.package.name,
                    "version": p.package.version,
                    "hash": p.hash,
                    "digest": str(p.layer.digest),
                    "diff_id": str(p.layer.diff_id),
                    "size": p.layer.size,
                }
                for p in self.packages
            ],
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
    owned = RegistryPool(registry or RegistryOptions.from_env())
    try:
        yield owned
    finally:
        owned.close()


def content_layer(
    content: Path,
    prefix: str,
    cache: BlobCache,
    media_types: mt.MediaTypes,
    *,
    compression: mt.Compression = "gzip",
    level: int | None = None,
    preserve: bool = False,
    progress: Callable[[int], None] | None = None,
) -> LayerBlob:
    """One layer from a directory or a tarball placed at ``prefix`` (relative to ``/``).

    ``progress`` is called with the number of uncompressed bytes archived so far.
    """
    if content.is_dir():
        entries = directory_entries(content, prefix, preserve=preserve)
        return build_layer(
            entries, cache, media_types=media_types, compression=compression, level=level, progress=progress
        )
    with tarball_entries(content, prefix, preserve=preserve, tmpdir=cache.tmp_dir) as tar_entries:
        return build_layer(
            tar_entries,
            cache,
            media_types=media_types,
            compression=compression,
            level=level,
            progress=progress,
        )


def build_package_layers(
    packages: Sequence[Package],
    cache: BlobCache,
    media_types: mt.MediaTypes,
    options: BuildOptions,
    progress: ProgressCallback = null_progress,
) -> list[BuiltPackage]:
    """Turn each package into a layer (in parallel), then derive hashes in dependency order."""
    if not packages:
        raise UsageError("no packages given: name at least one package file")

    def one(package: Package) -> LayerBlob:
        subject = f"{package.name}@{package.version}"
        blob = content_layer(
            package.content,
            package.prefix.lstrip("/"),
            cache,
            media_types,
            compression=options.compression,
            level=options.level,
            progress=lambda done: progress(ProgressEvent("layer-progress", subject, done)),
        )
        progress(
            ProgressEvent("layer-built", f"{package.name}@{package.version}", blob.size, str(blob.digest))
        )
        return blob

    jobs = max(1, min(options.jobs, len(packages)))
    if jobs == 1:
        blobs = [one(p) for p in packages]
    else:
        with ThreadPoolExecutor(max_workers=jobs) as executor:
            blobs = list(executor.map(one, packages))

    hashes: dict[str, str] = {}
    built: list[BuiltPackage] = []
    for package, blob in zip(packages, blobs, strict=True):
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
        built.append(BuiltPackage(package, blob, digest_hash, tuple(env)))
    return built


def assemble(
    base: BaseImage,
    built: Sequence[BuiltPackage],
    cache: BlobCache,
    options: BuildOptions,
    created: str,
) -> Image:
    """Base image + one layer per package (+ the optional profile layer) + merged config."""
    media_types = base.image.media_types
    image = base.image
    layers = [Layer(p.layer.descriptor(), p.layer.diff_id) for p in built]
    history = [
        HistoryEntry(
            created_by=f"imagesmith: add {p.package.name}@{p.package.version} at {p.package.prefix}",
            comment=f"{p.package.name}-{p.package.version}-{p.hash}",
            created=created,
        )
        for p in built
    ]
    image = image.append(layers, history)

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
    if options.labels:
        config = config.with_labels(options.labels)
    config = config.with_top_level(created=created)
    image = image.with_config(config)

    annotations: dict[str, str] = {}
    if media_types.family == "oci":
        annotations[ANNOTATION + "base.name"] = str(base.reference)
        annotations[ANNOTATION + "base.digest"] = str(base.digest)
        annotations[ANNOTATION + "created"] = created
        if built:
            last = built[-1].package
            annotations[ANNOTATION + "title"] = last.name
            annotations[ANNOTATION + "version"] = last.version
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


def target_reference(
    built: Sequence[BuiltPackage],
    *,
    repo: str | Reference | None,
    tag: str | Reference | None,
    template: str | None,
    platform: Platform,
) -> Reference:
    """Where the image goes: ``tag`` as given, or ``repo`` + the rendered tag template."""
    if (repo is None) == (tag is None):
        raise UsageError("give exactly one of --repo REPO (tag from the template) or --tag REF")
    if tag is not None:
        ref = tag if isinstance(tag, Reference) else Reference.parse(tag, default_tag=None)
        if ref.digest is not None or ref.tag is None:
            raise UsageError(f"--tag {tag} must name a tag (repo:tag), not a digest")
        return ref
    assert repo is not None
    repository = repo if isinstance(repo, Reference) else parse_repository(repo)
    last = built[-1]
    rendered = render_tag(
        template,
        name=last.package.name,
        version=last.package.version,
        hash=last.hash,
        os=platform.os,
        arch=platform.architecture,
    )
    return repository.with_tag(rendered)


def build(
    base: str | Reference,
    packages: Sequence[Package],
    *,
    repo: str | Reference | None = None,
    tag: str | Reference | None = None,
    options: BuildOptions | None = None,
    registry: RegistryOptions | None = None,
    cache: BlobCache | None = None,
    pool: RegistryPool | None = None,
    progress: ProgressCallback = null_progress,
) -> BuildResult:
    """Build one image: ``packages`` (dependencies first) on ``base``, pushed to a registry.

    ``repo`` names the target repository and the tag comes from the tag template (default
    ``{name}-{version}-{hash}.spack`` of the last package); ``tag`` names the full target
    reference instead. Returns the pushed reference and manifest digest.
    """
    options = options or BuildOptions()
    cache = cache or BlobCache()
    with _registry_pool(pool, registry) as pool:
        base_ref = base if isinstance(base, Reference) else Reference.parse(base)
        platform = options.platform or Platform.host()
        if repo is None and tag is None:
            raise UsageError("give exactly one of --repo REPO (tag from the template) or --tag REF")
        resolved = resolve_base(pool, base_ref, platform)
        progress(ProgressEvent("resolve", str(resolved.pinned)))
        media_types = resolved.image.media_types
        media_types.layer(options.compression)  # fail early: zstd on a Docker v2 base
        built = build_package_layers(packages, cache, media_types, options, progress)
        target = target_reference(built, repo=repo, tag=tag, template=options.tag_template, platform=platform)
        image = assemble(resolved, built, cache, options, _created())
        digest = push_image(image, target, pool=pool, cache=cache, jobs=options.jobs, progress=progress)
        return BuildResult(target, digest, resolved, image, tuple(built))


@dataclass(frozen=True)
class ImportResult:
    """What ``import_rootfs`` pushed."""

    reference: Reference
    digest: str
    layer: LayerBlob
    platform: Platform

    def to_json(self) -> dict[str, Any]:
        return {
            "reference": str(self.reference),
            "tag": self.reference.tag or "",
            "digest": self.digest,
            "platform": str(self.platform),
            "layer": str(self.layer.digest),
            "size": self.layer.size,
        }


def import_rootfs(
    rootfs: str | Path,
    tag: str | Reference,
    *,
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
    """Turn a root filesystem (directory or tarball) into a one-layer image and push it.

    Owners, permission bits and special files of the root filesystem are preserved (it is a
    base image, not a package); timestamps are fixed so the result is reproducible.
    """
    path = Path(rootfs)
    if not path.exists():
        raise UsageError(f"root filesystem {path} not found: give a directory or a tarball")
    ref = tag if isinstance(tag, Reference) else Reference.parse(tag, default_tag=None)
    if ref.tag is None or ref.digest is not None:
        raise UsageError(f"--tag {tag} must name a tag (repo:tag), not a digest")
    platform = platform or Platform.host()
    media_types = mt.DOCKER if family == "docker" else mt.OCI
    cache = cache or BlobCache()
    with _registry_pool(pool, registry) as pool:
        blob = content_layer(
            path,
            "",
            cache,
            media_types,
            compression=compression,
            preserve=True,
            progress=lambda done: progress(ProgressEvent("layer-progress", str(path), done)),
        )
        progress(ProgressEvent("layer-built", str(path), blob.size, str(blob.digest)))
        created = _created()
        config = ImageConfig.empty(platform)
        modifications = [EnvModification("set", *parse_env_assignment(e)) for e in env]
        config = config.with_config_fields(Env=apply_env([], modifications))
        if cmd is not None:
            config = config.with_config_fields(Cmd=list(cmd))
        config = config.with_top_level(created=created)
        image = Image(media_types, config, ()).append(
            [Layer(blob.descriptor(), blob.diff_id)],
            [HistoryEntry(created_by=f"imagesmith: import {path.name}", created=created)],
        )
        if family == "oci":
            image = image.with_annotations({ANNOTATION + "created": created})
        digest = push_image(image, ref, pool=pool, cache=cache, progress=progress)
        return ImportResult(ref, digest, blob, platform)


@dataclass(frozen=True)
class InspectResult:
    """A manifest or index as found in the registry, with the config when it is an image."""

    reference: Reference
    digest: str
    media_type: str
    manifest: Manifest | Index
    config: ImageConfig | None = None
    platform_manifests: tuple[tuple[str, str], ...] = ()  # (platform, digest) of an index

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "reference": str(self.reference),
            "digest": self.digest,
            "mediaType": self.media_type,
        }
        if isinstance(self.manifest, Index):
            out["manifests"] = [d.to_json() for d in self.manifest.manifests]
            return out
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
    reference: str | Reference,
    *,
    platform: Platform | None = None,
    registry: RegistryOptions | None = None,
    pool: RegistryPool | None = None,
) -> InspectResult:
    """Fetch a manifest (or index) and, for an image, its config.

    An index is shown as it is unless ``platform`` is given, in which case the matching
    image is inspected.
    """
    from .model import MAX_CONFIG_SIZE, select_platform

    ref = reference if isinstance(reference, Reference) else Reference.parse(reference)
    with _registry_pool(pool, registry) as pool:
        client = pool.client(ref.registry)
        response = client.get_manifest(ref.repository, ref.identifier)
        document = parse_manifest_document(response.data, response.media_type, f"manifest of {ref}")
        digest: Digest = response.digest
        if isinstance(document, Index) and platform is not None:
            entry = select_platform(document, platform)
            response = client.get_manifest(ref.repository, str(entry.digest))
            document = parse_manifest_document(
                response.data, response.media_type, f"manifest {entry.digest} of {ref}"
            )
            digest = response.digest
        if isinstance(document, Index):
            entries = tuple(
                (str(d.platform) if d.platform else "-", str(d.digest)) for d in document.manifests
            )
            return InspectResult(ref, str(digest), document.media_type, document, platform_manifests=entries)
        if document.config.media_type not in (mt.OCI_CONFIG, mt.DOCKER_CONFIG):
            # An artifact (such as an index tag payload): show the manifest without a config.
            return InspectResult(ref, str(digest), document.media_type, document)
        data = client.get_blob_bytes(ref.repository, document.config, MAX_CONFIG_SIZE)
        config = ImageConfig.parse(data, f"config of {ref}")
        config.check_layers(len(document.layers), f"config of {ref}")
        return InspectResult(ref, str(digest), document.media_type, document, config)
