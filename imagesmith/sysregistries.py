"""The host settings podman, skopeo and buildah read: ``registries.conf`` and ``certs.d``.

``registries.conf`` (containers-registries.conf(5), version 2) is found as containers/image
finds it:

1. ``$CONTAINERS_REGISTRIES_CONF`` (or the older ``$REGISTRIES_CONFIG_PATH``) when set: that
   file, which must exist;
2. otherwise ``$HOME/.config/containers/registries.conf`` when it exists, which then replaces
   the system file and the system drop-in directory;
3. otherwise ``/etc/containers/registries.conf`` (missing is fine: nothing configured).

Drop-ins (``*.conf`` in ``/etc/containers/registries.conf.d`` then
``$HOME/.config/containers/registries.conf.d``, each directory in name order) are applied on
top: a ``[[registry]]`` with the same prefix replaces the earlier one, a present
``unqualified-search-registries`` replaces the earlier list, aliases are merged.
``$IMAGESMITH_REGISTRIES_CONF_DIR`` names the only drop-in directory to read instead (tests,
or a CI job that wants none of the host's). The machine-written
``short-name-aliases.conf`` (``$XDG_CACHE_HOME/containers/`` or ``~/.cache/containers/``,
``/var/cache/containers/`` for root) wins over the aliases of every other file.

Per-host TLS files are looked up in the first existing ``DIR/HOST[:PORT]`` of
``$HOME/.config/containers/certs.d``, ``/etc/containers/certs.d`` and ``/etc/docker/certs.d``
(``$IMAGESMITH_CERTS_DIR`` replaces that list with one directory): every ``*.crt`` is a CA
added to the default trust, every ``NAME.cert`` with its ``NAME.key`` a client certificate.
"""

from __future__ import annotations

import logging
import os
import ssl
import sys
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from imagesmith.errors import UsageError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib  # type: ignore[import-not-found,unused-ignore]

__all__ = [
    "CertsDir",
    "Mirror",
    "PullSource",
    "RegistriesConf",
    "RegistryEntry",
    "certs_dir_for",
    "default_registries_conf",
]

log = logging.getLogger("imagesmith.http")

SYSTEM_REGISTRIES_CONF = Path("/etc/containers/registries.conf")
SYSTEM_REGISTRIES_CONF_DIR = Path("/etc/containers/registries.conf.d")
SYSTEM_CERTS_DIRS = (Path("/etc/containers/certs.d"), Path("/etc/docker/certs.d"))
_PULL_FROM_MIRROR = ("", "all", "digest-only", "tag-only")


@dataclass(frozen=True)
class Mirror:
    """A ``[[registry.mirror]]``: where to try pulls first."""

    location: str
    insecure: bool = False
    pull_from_mirror: str = ""


@dataclass(frozen=True)
class RegistryEntry:
    """A ``[[registry]]`` table: the images it covers (``prefix``), where they really are
    (``location``), and how to reach them."""

    prefix: str
    location: str
    insecure: bool = False
    blocked: bool = False
    mirror_by_digest_only: bool = False
    mirrors: tuple[Mirror, ...] = ()
    source: str = ""


@dataclass(frozen=True)
class PullSource:
    """Where to try a pull: a registry and a repository, and whether it is a mirror."""

    registry: str
    repository: str
    mirror: bool
    insecure: bool


def _match(name: str, prefix: str) -> bool:
    """containers/image's prefix match: ``prefix`` followed by ``/``, ``:`` or ``@`` (or
    nothing); ``*.example.com`` matches every subdomain host."""
    if prefix.startswith("*."):
        host = name.split("/", 1)[0]
        return host.endswith(prefix[1:])
    if len(name) < len(prefix) or not name.startswith(prefix):
        return False
    return len(name) == len(prefix) or name[len(prefix)] in "/:@"


def _location(value: Any, what: str, path: Path) -> str:
    if not isinstance(value, str):
        raise UsageError(f"{path}: {what} must be a string")
    text = value.strip().rstrip("/")
    if text.startswith(("http://", "https://")):
        raise UsageError(f"{path}: {what} {value!r} must not include http:// or https://")
    return text


def _boolean(value: Any, what: str, path: Path) -> bool:
    if not isinstance(value, bool):
        raise UsageError(f"{path}: {what} must be true or false")
    return value


def _parse_registry(table: Any, path: Path) -> RegistryEntry:
    if not isinstance(table, dict):
        raise UsageError(f"{path}: every [[registry]] must be a table")
    location = _location(table.get("location", ""), "location", path)
    prefix = _location(table.get("prefix", ""), "prefix", path) or location
    if not prefix:
        raise UsageError(f"{path}: a [[registry]] has neither location nor prefix")
    if prefix.startswith("*.") and any(c in prefix for c in "/:@"):
        raise UsageError(f"{path}: wildcard prefix {prefix!r} must look like *.example.com")
    if not location and not prefix.startswith("*."):
        raise UsageError(f"{path}: [[registry]] {prefix!r} has no location")
    if table.get("pull-from-mirror"):
        raise UsageError(f"{path}: pull-from-mirror is for [[registry.mirror]], not [[registry]] {prefix!r}")
    digest_only = _boolean(table.get("mirror-by-digest-only", False), "mirror-by-digest-only", path)
    mirrors: list[Mirror] = []
    for raw in table.get("mirror", []) or []:
        if not isinstance(raw, dict):
            raise UsageError(f"{path}: every [[registry.mirror]] of {prefix!r} must be a table")
        where = _location(raw.get("location", ""), "mirror location", path)
        if not where:
            raise UsageError(f"{path}: a [[registry.mirror]] of {prefix!r} has no location")
        policy = raw.get("pull-from-mirror", "")
        if policy not in _PULL_FROM_MIRROR:
            raise UsageError(
                f"{path}: pull-from-mirror {policy!r} of mirror {where!r}: use all, digest-only or tag-only"
            )
        if policy and digest_only:
            raise UsageError(
                f"{path}: [[registry]] {prefix!r} sets mirror-by-digest-only and its mirror {where!r} "
                "pull-from-mirror: choose one"
            )
        mirrors.append(Mirror(where, _boolean(raw.get("insecure", False), "insecure", path), policy))
    return RegistryEntry(
        prefix=prefix,
        location=location,
        insecure=_boolean(table.get("insecure", False), "insecure", path),
        blocked=_boolean(table.get("blocked", False), "blocked", path),
        mirror_by_digest_only=digest_only,
        mirrors=tuple(mirrors),
        source=str(path),
    )


def _split_name(name: str) -> tuple[str, str]:
    host, _, repository = name.partition("/")
    return host, repository


@dataclass(frozen=True)
class RegistriesConf:
    """Parsed and merged ``registries.conf`` settings (see the module docstring).

    ``search`` is ``unqualified-search-registries`` (None when no file sets it), ``aliases``
    maps short names to ``host/repository``, ``sources`` lists the files read, in order.
    """

    registries: tuple[RegistryEntry, ...] = ()
    search: tuple[str, ...] | None = None
    aliases: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}), hash=False)
    sources: tuple[str, ...] = ()

    # -- loading
    @classmethod
    def empty(cls) -> RegistriesConf:
        """No settings at all: what imagesmith did before it read ``registries.conf``."""
        return cls()

    @classmethod
    def load(cls, environ: Mapping[str, str] | None = None) -> RegistriesConf:
        """The settings the files named by ``environ`` (default ``os.environ``) give."""
        env = os.environ if environ is None else environ
        main, dirs, explicit = _paths(env)
        return cls.from_files(main, dirs, alias_file=_alias_file(env), required=explicit)

    @classmethod
    def from_files(
        cls,
        main: Path | None,
        dropin_dirs: Iterable[Path] = (),
        *,
        alias_file: Path | None = None,
        required: bool = False,
    ) -> RegistriesConf:
        """Settings from ``main`` then the ``*.conf`` drop-ins of ``dropin_dirs``, then the
        aliases of ``alias_file``; a missing ``main`` is an error only when ``required``."""
        entries: dict[str, RegistryEntry] = {}
        search: tuple[str, ...] | None = None
        aliases: dict[str, str] = {}
        sources: list[str] = []
        files: list[Path] = []
        if main is not None:
            if main.is_file():
                files.append(main)
            elif required:
                raise UsageError(
                    f"registries configuration {main} does not exist (named by CONTAINERS_REGISTRIES_CONF)"
                )
        for directory in dropin_dirs:
            try:
                names = sorted(p for p in directory.iterdir() if p.name.endswith(".conf") and p.is_file())
            except (FileNotFoundError, NotADirectoryError):
                continue
            except PermissionError:
                log.debug("cannot list %s: permission denied", directory)
                continue
            files.extend(names)
        if alias_file is not None:
            # A cache the tools write (podman records the short names a user chose there): one
            # that this user cannot read, e.g. under another user's HOME, is as good as absent.
            try:
                if alias_file.is_file() and os.access(alias_file, os.R_OK):
                    files.append(alias_file)
            except PermissionError:
                log.debug("cannot read %s: permission denied", alias_file)
        for path in files:
            doc = _read_toml(path)
            sources.append(str(path))
            for raw in doc.get("registry", []) or []:
                entry = _parse_registry(raw, path)
                entries[entry.prefix] = entry
            if "unqualified-search-registries" in doc:
                value = doc["unqualified-search-registries"]
                if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                    raise UsageError(f"{path}: unqualified-search-registries must be a list of hosts")
                search = tuple(_location(v, "search registry", path) for v in value)
            table = doc.get("aliases", {})
            if not isinstance(table, dict):
                raise UsageError(f'{path}: [aliases] must be a table of NAME = "HOST/REPOSITORY"')
            for name, value in table.items():
                aliases[name] = _alias_value(name, value, path)
            if isinstance(doc.get("registries"), dict):
                raise UsageError(
                    f"{path}: the version 1 format ([registries.search] ...) is not supported: "
                    "use [[registry]] tables (containers-registries.conf(5))"
                )
        ordered = tuple(entries[p] for p in sorted(entries))
        return cls(ordered, search, MappingProxyType(aliases), tuple(sources))

    # -- lookups
    def find(self, name: str) -> RegistryEntry | None:
        """The ``[[registry]]`` with the longest prefix matching ``name`` (``host/repo``,
        or a ``host`` alone), or None."""
        best: RegistryEntry | None = None
        for entry in self.registries:
            if _match(name, entry.prefix) and (best is None or len(entry.prefix) > len(best.prefix)):
                best = entry
        return best

    def is_insecure(self, host: str) -> bool:
        """Whether ``insecure = true`` applies to ``host``: the ``[[registry]]`` whose prefix
        matches it best says so, or a mirror at that host does."""
        host = host.lower()
        entry = self.find(host)
        if entry is not None and entry.insecure:
            return True
        return any(
            m.insecure and _split_name(m.location)[0].lower() == host
            for other in self.registries
            for m in other.mirrors
        )

    def blocked(self, registry: str, repository: str = "") -> RegistryEntry | None:
        """The entry blocking ``registry/repository``, or None when pulls and pushes may go."""
        entry = self.find(f"{registry}/{repository}" if repository else registry)
        return entry if entry is not None and entry.blocked else None

    def pull_sources(self, registry: str, repository: str, *, by_digest: bool | None) -> list[PullSource]:
        """Where to pull ``registry/repository`` from, in order: the mirrors that may serve
        this pull (``pull-from-mirror``, ``mirror-by-digest-only``), then the location (the
        prefix rewritten to it). ``[registry/repository]`` when no entry matches.
        ``by_digest`` None is a blob, which every mirror may serve (it is content-addressed
        and verified)."""
        name = f"{registry}/{repository}"
        entry = self.find(name)
        if entry is None:
            return [PullSource(registry, repository, False, False)]
        mirrors: list[Mirror] = []
        if by_digest is None:
            mirrors = list(entry.mirrors)
        elif entry.mirror_by_digest_only:
            mirrors = list(entry.mirrors) if by_digest else []
        else:
            for mirror in entry.mirrors:
                if mirror.pull_from_mirror == "digest-only" and not by_digest:
                    continue
                if mirror.pull_from_mirror == "tag-only" and by_digest:
                    continue
                mirrors.append(mirror)
        out: list[PullSource] = []
        for where, insecure, is_mirror in [
            *((m.location, m.insecure, True) for m in mirrors),
            (entry.location, entry.insecure, False),
        ]:
            rewritten = _rewrite(name, entry.prefix, where)
            host, repo = _split_name(rewritten)
            if host and repo:
                out.append(PullSource(host.lower(), repo, is_mirror, insecure))
        return out or [PullSource(registry, repository, False, False)]

    def resolve_short_name(self, name: str) -> str | None:
        """``host/repository`` for a short name (``ubuntu``, ``org/app``): its alias, else the
        only search registry; None when neither file configures anything (the caller keeps
        Docker Hub). Several search registries and no alias: :class:`UsageError` listing them
        (imagesmith never prompts, and trying each in turn can pull a look-alike)."""
        alias = self.aliases.get(name)
        if alias is not None:
            return alias
        if not self.search:
            return None
        if len(self.search) == 1:
            return f"{self.search[0]}/{name}"
        listed = ", ".join(self.search)
        raise UsageError(
            f"short name {name!r} is ambiguous: registries.conf searches {listed}; give the full "
            f"name (e.g. {self.search[0]}/{name}) or add an alias for it to [aliases]"
        )


def _rewrite(name: str, prefix: str, location: str) -> str:
    if prefix.startswith("*."):
        # A wildcard prefix keeps the host it matched; an empty location means "as named".
        return name if not location else location + name[len(name.split("/", 1)[0]) :]
    return location + name[len(prefix) :]


def _alias_value(name: str, value: Any, path: Path) -> str:
    if not isinstance(value, str) or not value.strip():
        raise UsageError(f"{path}: alias {name!r} must be a string HOST/REPOSITORY")
    text = value.strip()
    host, sep, repository = text.partition("/")
    if not sep or not repository or not ("." in host or ":" in host or host == "localhost"):
        raise UsageError(
            f"{path}: alias {name!r} = {text!r} must name a registry host, e.g. docker.io/library/{name}"
        )
    if "@" in repository or ":" in repository:
        raise UsageError(f"{path}: alias {name!r} = {text!r} must not carry a tag or digest")
    return text


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            doc: dict[str, Any] = tomllib.load(fh)
            return doc
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise UsageError(f"cannot read registries configuration {path}: {reason}") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"registries configuration {path} is not valid TOML: {exc}") from None


def _home(env: Mapping[str, str]) -> Path:
    home = env.get("HOME", "").strip()
    return Path(home) if home else Path.home()


def _paths(env: Mapping[str, str]) -> tuple[Path, list[Path], bool]:
    """The main file, the drop-in directories, and whether the main file was named explicitly."""
    override_dir = env.get("IMAGESMITH_REGISTRIES_CONF_DIR", "").strip()
    user_file = _home(env) / ".config" / "containers" / "registries.conf"
    user_dir = _home(env) / ".config" / "containers" / "registries.conf.d"
    explicit = (
        env.get("CONTAINERS_REGISTRIES_CONF", "").strip() or env.get("REGISTRIES_CONFIG_PATH", "").strip()
    )
    if explicit:
        dirs = [Path(override_dir)] if override_dir else [SYSTEM_REGISTRIES_CONF_DIR, user_dir]
        return Path(explicit), dirs, True
    if user_file.is_file():
        return user_file, [Path(override_dir)] if override_dir else [user_dir], False
    dirs = [Path(override_dir)] if override_dir else [SYSTEM_REGISTRIES_CONF_DIR, user_dir]
    return SYSTEM_REGISTRIES_CONF, dirs, False


def _alias_file(env: Mapping[str, str]) -> Path:
    if os.geteuid() == 0:
        return Path("/var/cache/containers/short-name-aliases.conf")
    cache = env.get("XDG_CACHE_HOME", "").strip()
    base = Path(cache) if cache else _home(env) / ".cache"
    return base / "containers" / "short-name-aliases.conf"


_cache: dict[tuple[Any, ...], RegistriesConf] = {}
_cache_lock = threading.Lock()


def _signature(paths: Iterable[Path]) -> tuple[Any, ...]:
    out: list[Any] = []
    for path in paths:
        try:
            st = path.stat()
            out.append((str(path), st.st_mtime_ns, st.st_size, st.st_ino))
        except OSError:
            out.append((str(path), None))
    return tuple(out)


def default_registries_conf(environ: Mapping[str, str] | None = None) -> RegistriesConf:
    """:meth:`RegistriesConf.load` for ``environ``, cached while the files are unchanged."""
    env = os.environ if environ is None else environ
    main, dirs, _ = _paths(env)
    alias = _alias_file(env)
    files: list[Path] = [main, alias, *dirs]
    for directory in dirs:
        try:
            files.extend(sorted(directory.iterdir()))
        except OSError:
            pass
    key = _signature(files)
    with _cache_lock:
        found = _cache.get(key)
    if found is not None:
        return found
    conf = RegistriesConf.load(env)
    with _cache_lock:
        if len(_cache) > 32:
            _cache.clear()
        _cache[key] = conf
    return conf


# --------------------------------------------------------------------------- certs.d


@dataclass(frozen=True)
class CertsDir:
    """The TLS files of one ``certs.d/HOST[:PORT]`` directory."""

    path: Path
    ca_files: tuple[Path, ...]
    client_pairs: tuple[tuple[Path, Path], ...]

    def apply(self, context: ssl.SSLContext) -> None:
        """Add the CAs and client certificates to ``context``; unreadable files are a
        :class:`UsageError` naming them."""
        for ca in self.ca_files:
            try:
                context.load_verify_locations(cafile=str(ca))
            except (OSError, ssl.SSLError) as exc:
                raise UsageError(f"cannot load CA certificate {ca} (certs.d): {type(exc).__name__}") from None
        for cert, key in self.client_pairs:
            try:
                context.load_cert_chain(str(cert), str(key))
            except (OSError, ssl.SSLError) as exc:
                raise UsageError(
                    f"cannot load client certificate {cert} with key {key} (certs.d): {type(exc).__name__}"
                ) from None


def certs_roots(environ: Mapping[str, str] | None = None) -> list[Path]:
    """The ``certs.d`` directories searched, in order (see the module docstring)."""
    env = os.environ if environ is None else environ
    override = env.get("IMAGESMITH_CERTS_DIR", "").strip()
    if override:
        return [Path(override)]
    return [_home(env) / ".config" / "containers" / "certs.d", *SYSTEM_CERTS_DIRS]


def certs_dir_for(host: str, roots: Iterable[Path]) -> CertsDir | None:
    """The TLS files for ``host`` (``name`` or ``name:port`` as in the image reference) from
    the first of ``roots`` that has a directory for it, or None."""
    for root in roots:
        directory = root / host
        try:
            names = sorted(p.name for p in directory.iterdir())
        except (FileNotFoundError, NotADirectoryError):
            continue
        except PermissionError:
            log.debug("cannot list %s: permission denied", directory)
            continue
        cas = tuple(directory / n for n in names if n.endswith(".crt"))
        pairs: list[tuple[Path, Path]] = []
        for n in names:
            if n.endswith(".cert"):
                key = n.removesuffix(".cert") + ".key"
                if key not in names:
                    raise UsageError(
                        f"{directory / n}: client certificate without its key {key} "
                        "(CA certificates end in .crt)"
                    )
                pairs.append((directory / n, directory / key))
            elif n.endswith(".key") and n.removesuffix(".key") + ".cert" not in names:
                cert = n.removesuffix(".key") + ".cert"
                raise UsageError(f"{directory / n}: key without its client certificate {cert}")
        return CertsDir(directory, cas, tuple(pairs))
    return None
