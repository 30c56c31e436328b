"""The command line's shared vocabulary: the options several commands take, and the readers
that turn an option's text into a value.

:mod:`imagesmith.cli.parser` declares every command with these (``registry_args``,
``written_args``, ``jobs_arg``...) and adds the global ones to each command at the end; the
handlers read their options' text with the readers (``command``, ``pairs``, ``platform``...). Nothing
here imports the library at module level: ``--help`` builds every parser, so a reader that
needs a library type imports it when it runs.
"""

from __future__ import annotations

import argparse
import json
import shlex
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, Literal, NoReturn

from imagesmith._version import __version__
from imagesmith.errors import UsageError

if TYPE_CHECKING:
    from imagesmith.oci.model import Platform

# `imagesmith --help`, `--version` and `completion` only build the parser: the CLI imports the
# library (requests, cryptography, jinja2, the pipeline: 1 s) inside the commands that use it,
# never at the top. The parser's defaults are copies of the library's constants, which
# tests/test_cli_startup.py checks against the originals.
DEFAULT_MAX_LAYERS = 125  # budget.DEFAULT_MAX_LAYERS
CHECK_MODES = ("warn", "error", "off")  # closure.CHECK_MODES
SBOM_FORMATS = ("spdx", "cyclonedx")  # sbom.SBOM_FORMATS
KEY_PASSWORD_ENV = "IMAGESMITH_KEY_PASSWORD"  # noqa: S105 - signing.KEY_PASSWORD_ENV, a variable's name
DEFAULT_IDLE_TIMEOUT = 60.0  # server.DEFAULT_IDLE_TIMEOUT
INDEX_TAG = "index.imagesmith"  # repoindex.INDEX_TAG
SPACK_INDEX_TAG = "index.spack"  # repoindex.SPACK_INDEX_TAG
ENGINES = ("gitlab", "github")  # ci.ENGINES
DEFAULT_INSTALL = f"pip install imagesmith=={__version__}"  # ci.DEFAULT_INSTALL

# What ``commands.add_parser`` is given: argparse's subparsers action.
Commands = Any


class ParseError(Exception):
    """A command line argparse refuses; :func:`imagesmith.cli.main` prints it as one line and exits 2."""


class Parser(argparse.ArgumentParser):
    """argparse, with its errors as one ``imagesmith: error:`` line (no usage block) on the
    stream :func:`imagesmith.cli.main` writes to."""

    def error(self, message: str) -> NoReturn:
        raise ParseError(f"{message} (see `{self.prog} --help`)")


def registry_args(parser: argparse.ArgumentParser, suffix: str) -> None:
    """The registry settings, on the main parser (``suffix`` "_global") or a command's ("").

    A command's copies default to unset (SUPPRESS), so that what a nested command (``cache
    info``) parses never overwrites what its parent parsed;
    :func:`imagesmith.cli.context.registry_options` and ``Context.cache`` merge the two levels.
    """
    unset: Any = argparse.SUPPRESS if not suffix else None
    group = parser.add_argument_group("registry settings (also before the command)")
    group.add_argument(
        "--insecure-registry",
        dest=f"insecure{suffix}",
        action="append",
        default=argparse.SUPPRESS if not suffix else [],
        metavar="HOST[:PORT]",
        help="speak plain http to this registry (repeatable; also IMAGESMITH_INSECURE_REGISTRY)",
    )
    group.add_argument(
        "--ca-cert",
        dest=f"ca_cert{suffix}",
        metavar="FILE",
        default=unset,
        help="trust this CA bundle for TLS (also IMAGESMITH_CA_CERT)",
    )
    group.add_argument(
        "--authfile",
        dest=f"authfile{suffix}",
        metavar="FILE",
        default=None,
        help="read credentials from this file only (docker config.json or podman auth.json; "
        "login and logout write it)",
    )
    group.add_argument(
        "--creds",
        dest=f"creds{suffix}",
        metavar="USER[:PASS]",
        default=None,
        help="use these credentials for every registry (PASS asked for on a terminal when missing)",
    )
    group.add_argument(
        "--credential-helper-timeout",
        dest=f"helper_timeout{suffix}",
        type=float,
        metavar="SECONDS",
        default=unset,
        help="stop a docker-credential-* helper (and what it started) that has not answered by then "
        "(default 60; also IMAGESMITH_CREDENTIAL_HELPER_TIMEOUT)",
    )
    group.add_argument(
        "--cache-dir",
        dest=f"cache_dir{suffix}",
        metavar="DIR",
        default=unset,
        help="blob cache directory (also IMAGESMITH_CACHE_DIR; default: the user cache dir)",
    )


def global_args(parser: argparse.ArgumentParser, suffix: str) -> None:
    """Options every command takes, before its name or after it (see :func:`imagesmith.cli.parser`)."""
    group = parser.add_argument_group("global options (also before the command)")
    group.add_argument(
        "--debug",
        dest=f"debug{suffix}",
        action="store_true",
        default=argparse.SUPPRESS if not suffix else False,
        help="log every HTTP exchange (secrets redacted) to stderr",
    )
    if suffix:
        group.add_argument(
            "--json",
            dest=f"json{suffix}",
            action="store_true",
            help="print the result as JSON (commands that have --json)",
        )
    if "--insecure-registry" not in parser._option_string_actions:
        registry_args(parser, suffix)


def leaves(parser: argparse.ArgumentParser) -> Iterable[argparse.ArgumentParser]:
    """The parsers that take a command's own options: those without subcommands of their own."""
    actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not actions:
        yield parser
    for action in actions:
        for child in dict.fromkeys(action.choices.values()):
            yield from leaves(child)


def jobs(text: str) -> int:
    """``-j N``: a whole number, at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value}: at least 1 job runs, give 1 or more")
    return value


def jobs_arg(parser: argparse.ArgumentParser, what: str, default: int = 4) -> None:
    parser.add_argument(
        "-j", "--jobs", type=jobs, default=default, metavar="N", help=f"{what} (default {default})"
    )


def json_arg(parser: argparse.ArgumentParser, text: str = "print the result as JSON") -> None:
    parser.add_argument("--json", action="store_true", help=text)


def quiet_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="no progress on stderr; print only the digest of what was written",
    )


def digestfile_arg(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--digestfile", metavar="FILE", help=f"also write the digest of {what} to FILE")


def written_args(parser: argparse.ArgumentParser, what: str) -> None:
    """What every command that writes an image takes last: ``--json``, ``-q``, ``--digestfile``
    (of ``what``) and the registry settings."""
    json_arg(parser)
    quiet_arg(parser)
    digestfile_arg(parser, what)
    registry_args(parser, "")


def packages_arg(parser: argparse.ArgumentParser, text: str, nargs: str = "+") -> None:
    """The PACKAGEs of a stack (``build``, ``makefile``, ``pipeline``)."""
    parser.add_argument("packages", nargs=nargs, metavar="PACKAGE", help=text)


def output_args(parser: argparse.ArgumentParser) -> None:
    """``--output``, ``--load`` and ``--docker-host``: where a new image goes instead of a push."""
    parser.add_argument(
        "--output",
        metavar="LOCATION",
        help="write here instead of pushing: oci:DIR[:TAG], docker-archive:PATH[:NAME:TAG] "
        "or a registry reference",
    )
    parser.add_argument(
        "--load", action="store_true", help="also load the image into the docker daemon (DOCKER_HOST)"
    )
    parser.add_argument("--docker-host", metavar="URL", help="daemon for --load (default DOCKER_HOST)")


def command(text: str | None, option: str) -> list[str] | None:
    """``--cmd`` or ``--entrypoint``: a JSON list of strings, or a shell-like string."""
    if text is None:
        return None
    if text.lstrip().startswith("["):
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UsageError(f"{option} {text!r} is not a valid JSON list: {exc}") from None
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise UsageError(f"{option} must be a JSON list of strings")
        return value
    try:
        return shlex.split(text)
    except ValueError as exc:
        raise UsageError(f"{option} {text!r}: {exc}") from None


def pairs(items: Sequence[str], option: str) -> dict[str, str]:
    """Repeated ``KEY=VALUE`` options as a mapping."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"{option} {item!r} must be KEY=VALUE")
        out[key] = value
    return out


def platform(text: str | None) -> Platform | None:
    """``--platform OS/ARCH[/VARIANT]``, or None when not given."""
    from imagesmith.oci.model import Platform

    return Platform.parse(text) if text else None


def platform_choice(text: str | None) -> Platform | Literal["all"] | None:
    """``--platform`` of copy: one platform, ``all``, or None when not given."""
    if text == "all":
        return "all"
    return platform(text)


def platforms(text: str | None) -> list[Platform]:
    """``--platform`` of build and pipeline: one platform, or a comma-separated list."""
    from imagesmith.oci.model import Platform

    if text is None:
        return []
    parts = [part.strip() for part in text.split(",")]
    if not all(parts):
        raise UsageError(f"--platform {text!r}: an empty platform in the list (OS/ARCH[/VARIANT],...)")
    return [Platform.parse(part) for part in parts]
