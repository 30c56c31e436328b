"""Assembling images: the config (environment, command, labels, Spack's keys, history) and
manifest of one image on its base, and the index of a multi-platform build."""

from __future__ import annotations

import base64
import datetime as _dt
import hashlib
import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from imagesmith.errors import UsageError
from imagesmith.inputs.envmods import EnvModification, apply_env, parse_env_assignment
from imagesmith.inputs.spack import (
    SPACK_CONFIG_KEYS,
    spack_config_fields,
)
from imagesmith.oci import mediatypes as mt
from imagesmith.oci.digests import Digest
from imagesmith.oci.image import BaseImage, Image, Layer, RawManifest
from imagesmith.oci.index import index_document
from imagesmith.oci.model import (
    Descriptor,
    HistoryEntry,
    Platform,
)
from imagesmith.oci.vocabulary import ANNOTATION, LABEL_HASH, LABEL_NAME, LABEL_VERSION, PROFILE_SCRIPT_PATH
from imagesmith.pipeline.results import BuildOptions, BuiltPackage, StackLayer, _single_layers, _spack_entry
from imagesmith.store.cache import BlobCache
from imagesmith.tar.entries import directory_entries
from imagesmith.tar.layer import LayerBlob, build_layer
from imagesmith.templating import render_profile_script


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
