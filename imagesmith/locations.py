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

import re
from dataclasses import dataclass
from pathlib import Path

from .errors import ReferenceFormatError, UsageError
from .references import Reference

__all__ = [
    "ArchiveLocation",
    "DaemonLocation",
    "LayoutLocation",
    "Location",
    "RegistryLocation",
    "parse_location",
    "validate_layout_tag",
]

# org.opencontainers.image.ref.name grammar (image-spec, annotations.md).
_REF_COMPONENT = r"[A-Za-z0-9]+(?:(?:[-._:@+]|--)[A-Za-z0-9]+)*"
_REF_NAME = re.compile(rf"{_REF_COMPONENT}(?:/{_REF_COMPONENT})*")
_SCHEME_URL = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")
# Transports skopeo knows that imagesmith does not: named so the error can say so.
_UNSUPPORTED = ("oci-archive", "dir", "containers-storage", "docker-daemon-archive", "sif", "tarball")
_TRANSPORT_PREFIXES = ("oci:", "docker-archive:", "docker-daemon:", *(f"{t}:" for t in _UNSUPPORTED))
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


@dataclass(frozen=True)
class RegistryLocation:
    """An image in a registry, named by a reference (tag or digest).

    ``str()`` is the reference itself, what ``docker pull`` and ``podman pull`` accept; only a
    name that would read as another transport (a registry host called ``oci``...) keeps the
    ``docker://`` prefix, so the string always parses back to the same location.
    """

    reference: Reference

    def __str__(self) -> str:
        text = str(self.reference)
        return f"docker://{text}" if text.startswith(_TRANSPORT_PREFIXES) else text


@dataclass(frozen=True)
class LayoutLocation:
    """An image in an OCI image layout directory; ``tag`` is its ``ref.name`` (None: untagged,
    or for reading: the layout's only image)."""

    path: Path
    tag: str | None = None

    def __str__(self) -> str:
        return f"oci:{self.path}" + (f":{self.tag}" if self.tag else "")


@dataclass(frozen=True)
class ArchiveLocation:
    """An image in a docker-loadable tar archive; ``reference`` is the name it carries
    (``RepoTags``); None: unnamed, or for reading: the archive's only image."""

    path: Path
    reference: Reference | None = None

    def __str__(self) -> str:
        return f"docker-archive:{self.path}" + (f":{self.reference.familiar()}" if self.reference else "")


@dataclass(frozen=True)
class DaemonLocation:
    """An image in the Docker-compatible daemon ``DOCKER_HOST`` names, under ``reference``."""

    reference: Reference

    def __str__(self) -> str:
        return f"docker-daemon:{self.reference.familiar()}"


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
