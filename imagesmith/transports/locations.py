"""Where an image is read from or written to: a registry, an OCI layout, an archive, a daemon.

The syntax follows skopeo's transport names so the same strings work in both tools::

    REF | docker://REF          a registry (a bare reference always means a registry)
    oci:DIR[:TAG]               an OCI image layout directory; TAG is its ref.name annotation
    docker-archive:PATH[:REF]   a tar archive ``docker load`` reads; REF (name:tag) names the image
    docker-daemon:REF           a Docker-compatible daemon (DOCKER_HOST); write only

As in skopeo, the path ends at the first ``:``, so a directory or archive path cannot contain
one. Unknown schemes and transports imagesmith does not speak are refused with a
:class:`UsageError` naming the forms it accepts.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from pathlib import Path

from imagesmith.errors import (
    ReferenceFormatError,
    UsageError,
)
from imagesmith.oci import mediatypes as mt
from imagesmith.oci.image import (
    BaseImage,
    Image,
    ImageSource,
    Layer,
    choose_platform,
    raise_platform_mismatch,
)
from imagesmith.oci.model import (
    MAX_CONFIG_SIZE,
    ImageConfig,
    Platform,
)
from imagesmith.oci.references import Reference
from imagesmith.registry.client import RegistryPool
from imagesmith.store.cache import BlobCache
from imagesmith.transports.archive import ArchiveLocation
from imagesmith.transports.base import ImageSink, SinkOptions
from imagesmith.transports.daemon import DaemonLocation
from imagesmith.transports.layout import LayoutLocation
from imagesmith.transports.registry import (
    _UNSUPPORTED,
    RegistryLocation,
    RegistrySource,
)

__all__ = [
    "Location",
    "as_location",
    "open_sink",
    "open_source",
    "parse_location",
    "resolve_base",
    "validate_layout_tag",
]


# org.opencontainers.image.ref.name grammar (image-spec, annotations.md).
_REF_COMPONENT = r"[A-Za-z0-9]+(?:(?:[-._:@+]|--)[A-Za-z0-9]+)*"


_REF_NAME = re.compile(rf"{_REF_COMPONENT}(?:/{_REF_COMPONENT})*")


_SCHEME_URL = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")


FORMS = "REF, docker://REF, oci:DIR[:TAG], docker-archive:PATH[:NAME:TAG] or docker-daemon:NAME:TAG"


def validate_layout_tag(tag: str, original: str | None = None) -> str:
    """Check a tag for an OCI layout (the ``ref.name`` grammar of the image spec); return it."""
    if not _REF_NAME.fullmatch(tag) or not tag.isascii():
        shown = original if original is not None else tag
        raise UsageError(
            f"invalid tag {tag!r} in {shown!r}: an OCI layout tag is letters and digits joined "
            "by one of - . _ : @ + (or --), in /-separated parts"
        )
    return tag


Location = RegistryLocation | LayoutLocation | ArchiveLocation | DaemonLocation


def _path(text: str, original: str) -> Path:
    if not text:
        raise UsageError(f"invalid location {original!r}: the path is empty")
    # Absolute: a layer origin keeps pointing at the same place if the working directory changes.
    return Path(text).expanduser().absolute()


def _named(text: str, original: str, default_tag: str | None) -> Reference:
    try:
        ref = Reference.parse(text, default_tag=default_tag)
    except ReferenceFormatError as exc:
        raise UsageError(f"invalid location {original!r}: {exc}") from None
    return ref


def parse_location(text: str, *, default_tag: str | None = "latest") -> Location:
    """Parse a location string (see the module docstring) into a location value.

    ``default_tag`` completes a registry reference or an archive name given without a tag,
    as :meth:`Reference.parse` does; a layout tag is never defaulted (``oci:DIR`` names the
    layout's only image, or an untagged one when writing). Raises :class:`UsageError` for an
    unknown scheme, an empty path or an invalid tag or name.
    """
    if not isinstance(text, str) or not text.strip():
        raise UsageError("invalid location '': give a reference, oci:DIR[:TAG] or docker-archive:PATH")
    if text.startswith("docker://"):
        return RegistryLocation(_named(text.removeprefix("docker://"), text, default_tag))
    url = _SCHEME_URL.match(text)
    if url:
        raise UsageError(f"unknown location scheme {url.group(1)!r} in {text!r}: use {FORMS}")
    if text.startswith("oci:"):
        path, sep, tag = text.removeprefix("oci:").partition(":")
        if sep and not tag:
            raise UsageError(f"invalid location {text!r}: empty tag after ':'")
        return LayoutLocation(_path(path, text), validate_layout_tag(tag, text) if tag else None)
    if text.startswith("docker-archive:"):
        path, sep, name = text.removeprefix("docker-archive:").partition(":")
        if sep and not name:
            raise UsageError(f"invalid location {text!r}: empty image name after ':'")
        reference = _named(name, text, default_tag) if name else None
        if reference is not None and reference.digest is not None:
            raise UsageError(f"invalid location {text!r}: an archive names its image NAME:TAG, not by digest")
        return ArchiveLocation(_path(path, text), reference)
    if text.startswith("docker-daemon:"):
        name = text.removeprefix("docker-daemon:")
        reference = _named(name, text, default_tag)
        if reference.digest is not None or reference.tag is None:
            raise UsageError(f"invalid location {text!r}: a daemon image is named NAME:TAG")
        return DaemonLocation(reference)
    scheme, sep, rest = text.partition(":")
    if sep and scheme in _UNSUPPORTED:
        raise UsageError(f"the {scheme}: transport is not supported: use {FORMS}")
    if sep and rest.startswith("/") and "/" not in scheme and "." not in scheme:
        # `word:/path` is no reference (a registry host needs a port or a dot): an unknown scheme.
        raise UsageError(f"unknown location type {scheme + ':'!r} in {text!r}: use {FORMS}")
    # A bare reference keeps the reference grammar's own errors (ReferenceFormatError).
    return RegistryLocation(Reference.parse(text, default_tag=default_tag))


def resolve_base(
    pool: RegistryPool | None, reference: Reference | ImageSource, platform: Platform
) -> BaseImage:
    """Read the manifest (choosing ``platform`` from an index) and the config of a base image.

    ``reference`` is a registry reference (read through ``pool``) or any :class:`ImageSource`
    (an OCI layout or an archive needs no pool at all). Only the manifest and config are
    read; the layers stay where they are and are represented by their origin.
    """
    if isinstance(reference, Reference):
        if pool is None:
            raise ValueError("resolve_base needs a RegistryPool to read a registry reference")
        source: ImageSource = RegistrySource(pool, reference)
    else:
        source = reference
    name = source.name
    top = source.top()
    raw, manifest, entry = choose_platform(source, top, platform)
    index_digest = top.digest if entry is not None else None
    digest = raw.digest
    config_data = source.read_blob(manifest.config, MAX_CONFIG_SIZE)
    config = ImageConfig.parse(config_data, f"config of {name}")
    config.check_layers(len(manifest.layers), f"config of {name}")
    if index_digest is None and config.os and config.architecture:
        actual = config.platform
        if not actual.matches(platform):
            raise_platform_mismatch(name, actual, platform)
    layers = tuple(
        Layer(descriptor, diff_id, source.origin(descriptor))
        for descriptor, diff_id in zip(manifest.layers, config.diff_ids, strict=True)
    )
    family = mt.family_of(manifest.media_type)
    image = Image(family, config, layers)
    return BaseImage(source.reference, digest, index_digest, image, manifest, name)


def as_location(value: str | Reference | Location) -> Location:
    """A location from a string (:func:`parse_location`), a registry reference or a location."""
    if isinstance(value, str):
        return parse_location(value)
    if isinstance(value, Reference):
        return RegistryLocation(value)
    return value


@contextlib.contextmanager
def open_source(location: str | Reference | Location, pool: RegistryPool) -> Iterator[ImageSource]:
    """An :class:`ImageSource` reading ``location`` (a registry, an OCI layout or an archive).

    Reading from a daemon is not supported (:class:`UsageError`).
    """
    with as_location(location).open_source(pool) as source:
        yield source


@contextlib.contextmanager
def open_sink(
    location: str | Reference | Location,
    *,
    pool: RegistryPool,
    cache: BlobCache,
    docker_host: str | None = None,
    keep_in_cache: bool = True,
) -> Iterator[ImageSink]:
    """An :class:`ImageSink` writing to ``location``; committed when the block ends normally,
    aborted (nothing half-published) when it raises.

    ``docker_host`` is for a ``docker-daemon:`` location (default ``DOCKER_HOST``);
    ``keep_in_cache`` makes a layout keep remote blobs in the cache as it writes them.
    """
    sink: ImageSink = as_location(location).open_sink(SinkOptions(pool, cache, docker_host, keep_in_cache))
    try:
        yield sink
        sink.commit()
    except BaseException:
        sink.abort()  # also after a commit that failed half-way (a blob that did not verify)
        raise
