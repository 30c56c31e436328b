"""The one exception hierarchy of imagesmith.

Every error the library raises on purpose derives from :class:`ImagesmithError`; foreign
exceptions (``requests``, ``OSError``, ``json``) are translated at the module boundary with a
message a user can act on. The CLI maps the tree to exit codes and prints ``str(error)``.

::

    ImagesmithError
    ├── UsageError                 an option or argument the user gave is wrong
    ├── ReferenceFormatError       an image reference that does not parse
    ├── DigestFormatError          a digest string that is not algorithm:hex of the right form
    ├── IntegrityError             bytes that do not match their digest or size
    ├── ManifestError              a manifest, index or config that is malformed or unsupported
    ├── PlatformError              no platform of an index matches the one asked for
    ├── PackageError               a package file, its content or its dependencies are wrong
    ├── LayerError                 content that cannot be turned into a layer
    ├── TemplateError              a tag or profile template that does not render
    ├── CacheError                 the local blob cache cannot be used
    ├── LayoutError                an OCI layout or image archive is missing, malformed or unwritable
    ├── UnpackError                a layer would write outside the root or breaks the unpack policy
    ├── DaemonError                a docker-compatible daemon refused or could not be reached
    ├── FileSystemError            a local path cannot be read or written (permissions, a parent
    │   │                          that cannot be searched, standard output closed)
    │   └── DiskFullError          no space left on the device (or quota exceeded) while writing
    └── RegistryError              a registry request failed (status, codes, method, URL)
        ├── AuthenticationError    401/403, bad or missing credentials, token endpoint refused
        ├── NotFoundError          the repository, manifest or blob does not exist
        ├── RateLimitError         429 and retries exhausted
        └── RegistryUnreachableError  connection refused, DNS, TLS, timeout
"""

from __future__ import annotations

import errno
import os
from collections.abc import Sequence

__all__ = [
    "AuthenticationError",
    "CacheError",
    "DaemonError",
    "DigestFormatError",
    "DiskFullError",
    "FileSystemError",
    "ImagesmithError",
    "IntegrityError",
    "LayerError",
    "LayoutError",
    "ManifestError",
    "NotFoundError",
    "PackageError",
    "PlatformError",
    "RateLimitError",
    "ReferenceFormatError",
    "RegistryError",
    "RegistryUnreachableError",
    "TemplateError",
    "UnpackError",
    "UsageError",
    "file_error",
]


class ImagesmithError(Exception):
    """Base class of every error imagesmith raises on purpose."""


class UsageError(ImagesmithError):
    """An option, argument or setting given by the user is invalid."""


class ReferenceFormatError(ImagesmithError):
    """An image reference (``host/repo:tag@digest``) does not follow the grammar."""


class DigestFormatError(ImagesmithError):
    """A digest string is not ``sha256:`` + 64 lowercase hex digits (or sha512 + 128)."""


class IntegrityError(ImagesmithError):
    """Content does not match the digest or size it was announced with."""


class ManifestError(ImagesmithError):
    """A manifest, index or image config is malformed, oversized or of an unknown type."""


class PlatformError(ImagesmithError):
    """No entry of an image index matches the requested platform."""

    def __init__(self, message: str, available: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.available = tuple(available)


class PackageError(ImagesmithError):
    """A package file, its content or its dependency graph is invalid."""


class LayerError(ImagesmithError):
    """Content cannot be turned into a layer (unreadable file, unsupported member...)."""


class TemplateError(ImagesmithError):
    """A jinja2 template (tag, profile script) fails to render or renders something invalid."""


class CacheError(ImagesmithError):
    """The local blob cache cannot be read or written."""


class LayoutError(ImagesmithError):
    """An OCI image layout or image archive is missing, malformed or cannot be written."""


class UnpackError(ImagesmithError):
    """A layer cannot be unpacked safely: an escape from the root, or a member the policy refuses."""


class DaemonError(ImagesmithError):
    """A Docker-compatible daemon (``DOCKER_HOST``) refused a request or could not be reached."""


_Path = str | os.PathLike[str]


class FileSystemError(ImagesmithError):
    """A local file or directory cannot be read or written: permissions, a parent directory that
    cannot be searched, a path that is not what it should be. ``path`` names it (None for
    standard output), ``errno`` is the operating system's error number."""

    def __init__(self, message: str, *, path: _Path | None = None, errno: int | None = None) -> None:
        super().__init__(message)
        self.path = None if path is None else os.fspath(path)
        self.errno = errno


class DiskFullError(FileSystemError):
    """No space left on the device (``ENOSPC``), or the disk quota is exceeded (``EDQUOT``)."""


#: The errors of a full disk: no space left, or the quota exceeded.
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


def file_error(action: str, path: _Path | None, exc: OSError, hint: str = "") -> FileSystemError:
    """The :class:`FileSystemError` for ``exc``, raised while trying to ``action`` (``"read"``,
    ``"write"``, ``"create"``...) ``path``: one line naming the path and the cause, and
    :class:`DiskFullError` for a full disk. ``hint`` says what to do, after a ``;``."""
    where = "standard output" if path is None else os.fspath(path)
    if exc.errno in DISK_FULL_ERRNOS:
        cause = "no space left on device" if exc.errno == errno.ENOSPC else "disk quota exceeded"
        return DiskFullError(
            f"{cause} while writing {where}; {hint or 'free space and run again'}", path=path, errno=exc.errno
        )
    message = f"cannot {action} {where}: {exc.strerror or exc}"
    return FileSystemError(f"{message}; {hint}" if hint else message, path=path, errno=exc.errno)


class RegistryError(ImagesmithError):
    """A request to a registry failed.

    Carries what a user needs to understand the failure: the HTTP method, the URL (with
    credentials and query secrets already redacted), the status code and the registry's error
    codes. ``temporary`` says whether retrying later may help (408, 429, 5xx, network).
    """

    def __init__(
        self,
        message: str,
        *,
        method: str | None = None,
        url: str | None = None,
        status: int | None = None,
        codes: Sequence[str] = (),
    ) -> None:
        super().__init__(message)
        self.method = method
        self.url = url
        self.status = status
        self.codes = tuple(codes)

    @property
    def temporary(self) -> bool:
        return self.status is not None and (self.status in (408, 429) or 500 <= self.status < 600)


class AuthenticationError(RegistryError):
    """The registry refused the credentials, or needs some and none were found."""


class NotFoundError(RegistryError):
    """The repository, manifest, tag or blob does not exist in the registry."""


class RateLimitError(RegistryError):
    """The registry kept answering 429 Too Many Requests."""

    @property
    def temporary(self) -> bool:
        return True


class RegistryUnreachableError(RegistryError):
    """The registry could not be reached (connection refused, DNS, TLS, timeout)."""

    @property
    def temporary(self) -> bool:
        return True
