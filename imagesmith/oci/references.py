"""Image references: ``[registry/]repository[:tag][@digest]``, normalised as Docker does.

``ubuntu:23.04`` means ``docker.io/library/ubuntu:23.04``, served by the API host
``registry-1.docker.io``. A first path component is a registry when it contains ``.`` or ``:``
or is ``localhost``; otherwise the name is short, and ``registries.conf`` decides where it
lives (:meth:`imagesmith.sysregistries.RegistriesConf.resolve_short_name`: an alias, else the
only search registry, else Docker Hub when none is configured).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from imagesmith.errors import DigestFormatError, ReferenceFormatError
from imagesmith.oci.digests import Digest

if TYPE_CHECKING:
    from imagesmith.sysregistries import RegistriesConf

__all__ = ["DOCKER_HUB", "Reference", "sanitize_tag", "validate_repository", "validate_tag"]

DOCKER_HUB = "docker.io"
DOCKER_HUB_API = "registry-1.docker.io"
_HUB_ALIASES = {"docker.io", "index.docker.io", "registry-1.docker.io"}

_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
_REPOSITORY = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")
_HOST = re.compile(
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*"
    r"|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?"
)
_MAX_NAME = 255


def validate_repository(repository: str, original: str | None = None) -> str:
    """Check a repository path against the distribution grammar; return it unchanged."""
    shown = original if original is not None else repository
    if not repository:
        raise ReferenceFormatError(f"invalid reference {shown!r}: empty repository name")
    if repository != repository.lower() and _REPOSITORY.fullmatch(repository.lower()):
        raise ReferenceFormatError(
            f"invalid reference {shown!r}: repository name {repository!r} must be lowercase"
        )
    if not _REPOSITORY.fullmatch(repository):
        raise ReferenceFormatError(
            f"invalid reference {shown!r}: repository {repository!r} must be lowercase "
            "letters, digits and separators (. _ __ -) in /-separated components"
        )
    return repository


def validate_tag(tag: str, original: str | None = None) -> str:
    """Check a tag (``[A-Za-z0-9_][A-Za-z0-9._-]{0,127}``, ASCII only); return it unchanged."""
    if not _TAG.fullmatch(tag) or not tag.isascii():
        shown = original if original is not None else tag
        raise ReferenceFormatError(
            f"invalid tag {tag!r} in {shown!r}: up to 128 of A-Z a-z 0-9 _ . -, not starting with . or -"
        )
    return tag


def sanitize_tag(text: str) -> str:
    """Make any text a valid tag as Spack does.

    Characters outside ``[A-Za-z0-9_.-]`` become ``_``; a leading ``.`` or ``-`` becomes ``_``;
    over 128 characters keep the first 64 and the last 64.
    """
    out = re.sub(r"[^A-Za-z0-9_.-]", "_", text)
    if not out:
        out = "_"
    if out[0] in ".-":
        out = "_" + out[1:]
    if len(out) > 128:
        out = out[:64] + out[-64:]
    return out


@dataclass(frozen=True)
class Reference:
    """A parsed, normalised image reference.

    ``registry`` is the canonical registry name (``docker.io`` for Docker Hub), ``repository``
    the path inside it, and at least one of ``tag`` and ``digest`` may be set. ``str()`` gives
    the fully qualified form.
    """

    registry: str
    repository: str
    tag: str | None = None
    digest: Digest | None = None

    @classmethod
    def parse(
        cls, text: str, default_tag: str | None = "latest", *, registries: RegistriesConf | None = None
    ) -> Reference:
        """Parse ``text``; a reference with neither tag nor digest gets ``default_tag``.

        A short name (no registry) is resolved by ``registries`` (default: the
        ``registries.conf`` files podman reads): its alias, else the only search registry,
        else Docker Hub; several search registries and no alias is a :class:`UsageError`."""
        if not isinstance(text, str) or not text.strip():
            raise ReferenceFormatError("invalid reference '': an image name is required")
        original = text
        if text != text.strip() or any(c.isspace() for c in text):
            raise ReferenceFormatError(f"invalid reference {original!r}: contains whitespace")
        if "://" in text:
            raise ReferenceFormatError(
                f"invalid reference {original!r}: leave out the scheme "
                "(use --insecure-registry HOST for plain http)"
            )
        digest: Digest | None = None
        if "@" in text:
            text, _, digest_text = text.partition("@")
            try:
                digest = Digest.parse(digest_text)
            except DigestFormatError as exc:
                raise ReferenceFormatError(f"invalid reference {original!r}: {exc}") from None
        registry, rest = _split_registry(text, original)
        tag: str | None = None
        last_slash = rest.rfind("/")
        colon = rest.rfind(":")
        if colon > last_slash:
            rest, tag = rest[:colon], rest[colon + 1 :]
            validate_tag(tag, original)
        validate_repository(rest, original)
        if registry is None:
            registry, rest = _resolve_short(rest, registries)
            validate_repository(rest, original)
        if registry == DOCKER_HUB and "/" not in rest:
            rest = "library/" + rest
        if len(registry) + 1 + len(rest) > _MAX_NAME:
            raise ReferenceFormatError(
                f"invalid reference {original[:80]!r}...: name longer than {_MAX_NAME} characters"
            )
        if tag is None and digest is None:
            tag = default_tag
        return cls(registry, rest, tag, digest)

    @property
    def api_host(self) -> str:
        """The host (and port) serving the registry API."""
        return DOCKER_HUB_API if self.registry == DOCKER_HUB else self.registry

    @property
    def name(self) -> str:
        """``registry/repository`` without tag or digest."""
        return f"{self.registry}/{self.repository}"

    @property
    def identifier(self) -> str:
        """What goes after ``/manifests/``: the digest when present, else the tag."""
        if self.digest is not None:
            return str(self.digest)
        if self.tag is None:
            raise ReferenceFormatError(f"reference {self} names neither a tag nor a digest")
        return self.tag

    def with_tag(self, tag: str) -> Reference:
        return replace(self, tag=validate_tag(tag), digest=None)

    def with_digest(self, digest: Digest) -> Reference:
        return replace(self, digest=digest)

    def in_repository(self, repository: str) -> Reference:
        return Reference(self.registry, validate_repository(repository))

    def __str__(self) -> str:
        out = self.name
        if self.tag is not None:
            out += f":{self.tag}"
        if self.digest is not None:
            out += f"@{self.digest}"
        return out

    def familiar(self) -> str:
        """The short form Docker prints (``ubuntu:23.04`` rather than the qualified name)."""
        name = self.name
        if self.registry == DOCKER_HUB:
            name = self.repository.removeprefix("library/")
        out = name
        if self.tag is not None:
            out += f":{self.tag}"
        if self.digest is not None:
            out += f"@{self.digest}"
        return out


def parse_repository(text: str) -> Reference:
    """Parse a repository name (``ghcr.io/acme/stack``) with no tag or digest."""
    ref = Reference.parse(text, default_tag=None)
    if ref.tag is not None or ref.digest is not None:
        raise ReferenceFormatError(
            f"invalid repository {text!r}: give a repository without :tag or @digest "
            "(or use --tag for a full reference)"
        )
    return ref


def _resolve_short(name: str, registries: RegistriesConf | None) -> tuple[str, str]:
    """Where a short name lives: ``(registry, repository)``."""
    from imagesmith.sysregistries import default_registries_conf

    conf = registries if registries is not None else default_registries_conf()
    resolved = conf.resolve_short_name(name)
    if resolved is None:
        return DOCKER_HUB, name
    host, _, repository = resolved.partition("/")
    host = host.lower()
    return (DOCKER_HUB if host in _HUB_ALIASES else host), repository


def _split_registry(text: str, original: str) -> tuple[str | None, str]:
    first, sep, rest = text.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        if not _HOST.fullmatch(first):
            raise ReferenceFormatError(f"invalid reference {original!r}: bad registry host {first!r}")
        host = first.lower()
        if host in _HUB_ALIASES:
            host = DOCKER_HUB
        if not rest:
            raise ReferenceFormatError(f"invalid reference {original!r}: missing repository name")
        return host, rest
    return None, text
