"""``Context``: what a command's handler is given, and the one way a result is shown.

Every handler is ``handler(ctx) -> int`` and states only what is its own: which library call,
with which options, and its human lines. The rest is here, the same for every command:

- the run's state, opened on first use: ``ctx.registry`` (the registry settings of both levels,
  ``--creds`` asked for once), ``ctx.cache``, ``ctx.pool`` (one connection pool for the command,
  closed when it ends, on success, error or Ctrl-C alike) and ``ctx.progress``;
- ``ctx.digestfile()``: ``--digestfile`` checked before any work;
- ``ctx.render(...)`` / ``ctx.written(...)``: ``--json`` prints the JSON document, ``-q`` the
  digest, otherwise the human lines; ``written`` also fills ``--digestfile``.

Not an :class:`imagesmith.Session`: a session imports every operation (the pipeline, 1 s),
where ``imagesmith tags`` needs the registry client only; this opens what a command uses.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import getpass
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TextIO

from imagesmith.cli.output import emit, write_output
from imagesmith.errors import UsageError

if TYPE_CHECKING:
    from imagesmith.oci.digests import Digest
    from imagesmith.progressview import ProgressView
    from imagesmith.registry.client import RegistryPool
    from imagesmith.registry.credentials import Credentials
    from imagesmith.registry.transport import RegistryOptions
    from imagesmith.store.cache import BlobCache


class Written(Protocol):
    """A result that names what was written: every result of a command with ``-q``."""

    @property
    def digest(self) -> Digest: ...

    def to_json(self) -> dict[str, Any]: ...


class Context:
    """One command's arguments, streams and state (see the module docstring)."""

    def __init__(
        self,
        args: argparse.Namespace,
        stdout: TextIO,
        stderr: TextIO,
        progress: ProgressView,
        parser: argparse.ArgumentParser,
    ) -> None:
        # A plain class, not a dataclass: `dataclasses` imports `inspect` (and `ast`, `dis`...),
        # 20 modules `imagesmith --help` would load for nothing.
        self.args, self.parser = args, parser
        self.stdout, self.stderr, self.progress = stdout, stderr, progress
        self._closing = contextlib.ExitStack()

    @functools.cached_property
    def registry(self) -> RegistryOptions:
        return registry_options(self.args)

    @functools.cached_property
    def cache(self) -> BlobCache:
        from imagesmith.store.cache import BlobCache

        path = getattr(self.args, "cache_dir", None) or self.args.cache_dir_global
        return BlobCache(Path(path) if path else None)

    @functools.cached_property
    def pool(self) -> RegistryPool:
        from imagesmith.registry.client import RegistryPool

        return self._closing.enter_context(RegistryPool(self.registry))

    def digestfile(self) -> Path | None:
        """``--digestfile``'s path, its directory made first, so a path that cannot be written
        fails before any work."""
        if not self.args.digestfile:
            return None
        path = Path(self.args.digestfile)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UsageError(f"--digestfile {self.args.digestfile}: {exc.strerror or exc}") from None
        return path

    def render(
        self, document: Callable[[], dict[str, Any]], human: Callable[[], object], digest: object = None
    ) -> int:
        """``--json``: ``document()``; ``-q`` (commands that have it): ``digest``; else ``human()``."""
        if self.args.json:
            emit(document(), self.stdout)
        elif digest is not None and getattr(self.args, "quiet", False):
            print(digest, file=self.stdout)
        else:
            human()
        return 0

    def written(self, result: Written, human: Callable[[], object], digestfile: Path | None = None) -> int:
        """:meth:`render` for a command that wrote ``result``, its digest also into ``digestfile``."""
        if digestfile is not None:
            write_output(f"{result.digest}\n", digestfile, self.stdout)
        return self.render(result.to_json, human, result.digest)

    def __enter__(self) -> Context:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._closing.close()


# What the parser records for each command (``set_defaults(handler=...)``) and main runs.
Handler = Callable[[Context], int]


def registry_options(args: argparse.Namespace) -> RegistryOptions:
    """The registry settings given before the command and after it, over the environment's."""
    from imagesmith.registry.transport import RegistryOptions

    insecure = [*args.insecure_global, *getattr(args, "insecure", [])]
    hosts = [h.strip() for item in insecure for h in item.split(",") if h.strip()]
    ca = getattr(args, "ca_cert", None) or args.ca_cert_global
    if ca is not None and not Path(ca).is_file():
        raise UsageError(f"--ca-cert {ca}: file not found")
    overrides: dict[str, Any] = {}
    if hosts:
        overrides["insecure"] = frozenset(hosts)
    if ca is not None:
        overrides["ca_cert"] = Path(ca)
    helper_timeout = getattr(args, "helper_timeout", None)
    if helper_timeout is None:
        helper_timeout = args.helper_timeout_global
    overrides["credential_helper_timeout"] = helper_timeout
    authfile = getattr(args, "authfile", None) or args.authfile_global
    if authfile is not None:
        overrides["auth_file"] = Path(authfile)
    overrides["credentials"] = _creds(args)
    return RegistryOptions.from_env(**overrides)


def _creds(args: argparse.Namespace) -> Credentials | None:
    """``--creds USER[:PASS]``; the password is asked for (once) on a terminal when missing."""
    text = getattr(args, "creds", None) or args.creds_global
    if text is None:
        return None
    cached: Credentials | None = getattr(args, "_creds_value", None)
    if cached is not None:
        return cached
    username, sep, password = text.partition(":")
    if not username:
        raise UsageError("--creds needs USER[:PASSWORD]: the user name is empty")
    if not sep:
        if sys.stdin is None or not sys.stdin.isatty():
            raise UsageError(
                f"--creds {username}: no password given and stdin is not a terminal: pass "
                "--creds USER:PASSWORD, or --authfile FILE"
            )
        password = getpass.getpass(f"Password for {username}: ")
    if not password:
        raise UsageError(f"--creds {username}: the password is empty")
    from imagesmith.registry.credentials import Credentials

    creds = Credentials(username, password)
    args._creds_value = creds
    return creds
