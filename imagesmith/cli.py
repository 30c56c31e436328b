"""The ``imagesmith`` command line: parse arguments, call the library, render the outcome.

Nothing here builds or pushes anything itself. Errors from the library are printed as one
line (``imagesmith: error: ...``) and mapped to exit codes:

====  =========================================================================
0     success
1     any other failure
2     bad usage or input: arguments, references, package files, templates
3     registry: authentication, not found, unreachable, rate limited
4     integrity: content that does not match its digest
5     local file system: a path that cannot be read or written (permissions, a parent that
      cannot be searched, standard output that cannot be written)
6     no space left on the device (or quota exceeded) while writing
130   interrupted
141   standard output closed early (``imagesmith ... | head``): quiet, as for SIGPIPE
====  =========================================================================

Size: argument parsing and rendering for every subcommand; issue 15 rewrites its verbs and
global options, and a module per subcommand follows that rewrite.
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import io
import json
import os
import re
import shlex
import signal
import sys
import textwrap
import threading
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NoReturn, TextIO, cast

from imagesmith._version import __version__
from imagesmith.errors import (
    DISK_FULL_ERRNOS,
    CacheError,
    DaemonError,
    DigestFormatError,
    DiskFullError,
    FileSystemError,
    ImagesmithError,
    IntegrityError,
    PackageError,
    ReferenceFormatError,
    RegistryError,
    TemplateError,
    UnpackError,
    UsageError,
    file_error,
)

if TYPE_CHECKING:
    from imagesmith.artifacts.signing import SigningKey
    from imagesmith.inputs.packages import Package
    from imagesmith.oci.model import Platform
    from imagesmith.pipeline.closure import ClosureReport
    from imagesmith.pipeline.results import BuildResult, ImportResult, MultiBuildResult
    from imagesmith.registry.credentials import Credentials
    from imagesmith.registry.transport import RegistryOptions
    from imagesmith.store.cache import BlobCache

# `imagesmith --help`, `--version` and `completion` only build the parser: this module imports
# the library (requests, cryptography, jinja2, the pipeline: 1 s) inside the commands that use
# it, never at the top. The parser's defaults are copies of the library's constants, which
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

if TYPE_CHECKING:
    from imagesmith.progressview import ProgressView as _Progress

__all__ = ["main"]


def _registry_args(parser: argparse.ArgumentParser, suffix: str) -> None:
    """The registry settings, on the main parser (``suffix`` "_global") or a command's ("").

    A command's copies default to unset (SUPPRESS), so that what a nested command (``cache
    info``) parses never overwrites what its parent parsed; :func:`_registry_options` and
    :func:`_cache` merge the two levels.
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


def _quiet_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="no progress on stderr; print only the digest of what was written",
    )


class _ParseError(Exception):
    """A command line argparse refuses; :func:`main` prints it as one line and exits 2."""


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors as one ``imagesmith: error:`` line (no usage block) on the
    stream :func:`main` writes to."""

    def error(self, message: str) -> NoReturn:
        raise _ParseError(f"{message} (see `{self.prog} --help`)")


def _jobs(text: str) -> int:
    """``-j N``: a whole number, at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value}: at least 1 job runs, give 1 or more")
    return value


def _global_args(parser: argparse.ArgumentParser, suffix: str) -> None:
    """Options every command takes, before its name or after it (see :func:`_parser`)."""
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
        _registry_args(parser, suffix)


def _leaves(parser: argparse.ArgumentParser) -> Iterable[argparse.ArgumentParser]:
    """The parsers that take a command's own options: those without subcommands of their own."""
    actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not actions:
        yield parser
    for action in actions:
        for child in dict.fromkeys(action.choices.values()):
            yield from _leaves(child)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="imagesmith",
        description="Assemble runnable container images from install prefixes and tarballs, "
        "without a Docker daemon or a Dockerfile.",
    )
    parser.add_argument("--version", action="version", version=f"imagesmith {__version__}")
    _global_args(parser, "_global")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    p = commands.add_parser(
        "build",
        help="build an image from packages on a base image and push it",
        description="Append one layer per package (dependencies first) to a base image, merge "
        "the packages' environment into its config, and push the result.",
    )
    p.add_argument(
        "packages",
        nargs="*",
        metavar="PACKAGE",
        help="package files (JSON or TOML), Spack install prefixes, build-cache tarballs or Spack "
        "build caches (DIR, DIR:NAME, DIR:/HASH, a .spec.manifest.json, oci://REGISTRY/REPO[:TAG]); "
        "dependencies are added",
    )
    p.add_argument(
        "--spack-env",
        metavar="DIR",
        help="a concretized, installed Spack environment (spack.yaml + spack.lock) instead of "
        "PACKAGEs: its roots and their run-time dependencies",
    )
    p.add_argument(
        "--spack-install-tree",
        metavar="DIR",
        help="where --spack-env is installed: the directory holding .spack-db (default "
        "$SPACK_ROOT/opt/spack)",
    )
    p.add_argument("--base-image", required=True, metavar="REF", help="base image reference")
    target = p.add_mutually_exclusive_group()
    target.add_argument("--repo", metavar="REPO", help="target repository; the tag comes from --tag-template")
    target.add_argument("--tag", metavar="REF", help="full target reference (repo:tag)")
    _output_args(p)
    p.add_argument(
        "--tag-template",
        metavar="TEMPLATE",
        help="jinja2 template for the tag (default: NAME-VERSION-HASH.PLATFORM for one platform, e.g. "
        "hello-2.12-HASH.linux-amd64; NAME-VERSION-HASH for an index; .spack for a Spack build-cache "
        "entry; variables: name, version, hash, spack, platform, os, arch)",
    )
    p.add_argument(
        "--platform",
        metavar="OS/ARCH[/VARIANT][,...]",
        help="platform to take from a multi-arch base (default: this machine's); several, comma-"
        "separated (linux/amd64,linux/arm64), build one image each and push them as one index",
    )
    p.add_argument("--compression", choices=["gzip", "zstd"], default="gzip")
    p.add_argument("--level", type=int, metavar="N", help="compression level")
    p.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="set an environment variable after the packages' changes (repeatable)",
    )
    p.add_argument("--entrypoint", metavar="CMD", help="entrypoint, as a JSON list or a shell-like string")
    p.add_argument("--cmd", metavar="CMD", help="command, as a JSON list or a shell-like string")
    p.add_argument("--workdir", metavar="DIR", help="working directory")
    p.add_argument(
        "--label", action="append", default=[], metavar="KEY=VALUE", help="config label (repeatable)"
    )
    p.add_argument(
        "--annotation",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="manifest annotation (repeatable; OCI bases only)",
    )
    each = p.add_mutually_exclusive_group()
    each.add_argument(
        "--each",
        action="store_true",
        help="one image per package (each with its dependencies below it), sharing work across them; "
        "needs --repo or --output oci:DIR",
    )
    each.add_argument(
        "--each-root",
        action="store_true",
        help="like --each, one image per root only: each PACKAGE named, or each root of --spack-env",
    )
    p.add_argument(
        "--profile-script",
        action="store_true",
        help="also write the environment to /etc/profile.d/imagesmith.sh in an extra layer",
    )
    p.add_argument(
        "--max-layers",
        type=int,
        default=DEFAULT_MAX_LAYERS,
        metavar="N",
        help=f"most layers an image may have, base layers included (default {DEFAULT_MAX_LAYERS}, what "
        "Docker accepts); over it, dependencies share layers, chosen once for the whole stack",
    )
    p.add_argument(
        "-j",
        "--jobs",
        type=_jobs,
        default=4,
        metavar="N",
        help="parallel layer builds and uploads (default 4)",
    )
    p.add_argument(
        "--check",
        nargs="?",
        const="warn",
        default="warn",
        choices=CHECK_MODES,
        help="runtime-closure check of the packages' ELF files: warn (default), error (fail before "
        "anything is written) or off",
    )
    p.add_argument(
        "--sbom",
        action="append",
        default=[],
        choices=SBOM_FORMATS,
        help="attach an SBOM of the packages to the image as an OCI referrer (repeatable: spdx, cyclonedx)",
    )
    p.add_argument("--sbom-output", metavar="DIR", help="also write each --sbom document into DIR")
    p.add_argument(
        "--sign",
        metavar="KEY",
        help=f"sign the pushed image with this ECDSA P-256 private key ({KEY_PASSWORD_ENV} or a prompt)",
    )
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    _quiet_arg(p)
    _digestfile_arg(p, "what was written (the image, or the index)")
    _registry_args(p, "")

    p = commands.add_parser(
        "inspect",
        help="show an image's manifest and config",
        description="Fetch a manifest (or index) and the image config from a registry.",
    )
    p.add_argument(
        "reference",
        metavar="LOCATION",
        help="REF, docker://REF, oci:DIR[:TAG] or docker-archive:PATH[:NAME:TAG]",
    )
    p.add_argument(
        "--platform", metavar="OS/ARCH[/VARIANT]", help="for an index: inspect the image of this platform"
    )
    shape = p.add_mutually_exclusive_group()
    shape.add_argument("--json", action="store_true", help="print JSON")
    shape.add_argument("--raw", action="store_true", help="print the manifest bytes as stored (= `manifest`)")
    p.add_argument(
        "--referrers",
        action="store_true",
        help="list what is attached to the image: referrers (SBOMs...) and sigstore signatures",
    )
    p.add_argument("--artifact-type", metavar="TYPE", help="with --referrers: only artifacts of this type")
    _registry_args(p, "")

    p = commands.add_parser(
        "sign",
        help="sign an image in its registry (sigstore signature that podman and skopeo verify)",
        description="Sign the manifest digest of REF with an ECDSA P-256 private key, as a sigstore "
        "simple-signing signature in the sha256-<hex>.sig tag (containers/image's "
        "use-sigstore-attachments). See docs/trust.md.",
    )
    p.add_argument("reference", metavar="REF", help="the image (or index) to sign: repo:tag or repo@digest")
    p.add_argument(
        "--key", required=True, metavar="KEY", help=f"the private key ({KEY_PASSWORD_ENV} or a prompt)"
    )
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    _registry_args(p, "")

    p = commands.add_parser(
        "keygen",
        help="create an ECDSA P-256 key pair for signing",
        description=f"Write a private key (PKCS#8 PEM, mode 0600; encrypted when {KEY_PASSWORD_ENV} is set "
        "or --encrypt prompts for a password) and its public key (KEY.pub unless --public), which "
        "policy.json's sigstoreSigned keyPath names. Existing files are never replaced.",
    )
    p.add_argument("key", metavar="KEY", help="where to write the private key")
    p.add_argument("--public", metavar="PATH", help="where to write the public key (default KEY.pub)")
    p.add_argument("--encrypt", action="store_true", help=f"ask for a password (or set {KEY_PASSWORD_ENV})")

    p = commands.add_parser(
        "import",
        help="turn a root filesystem into a one-layer base image and push it",
        description="Archive a root filesystem (a directory or a tarball) reproducibly, keeping "
        "owners, modes and special files, and push it as a one-layer image.",
    )
    p.add_argument("rootfs", metavar="ROOTFS", help="directory or tarball (.tar, .tar.gz, .tar.zst)")
    p.add_argument("--tag", metavar="REF", help="target reference (repo:tag)")
    _output_args(p)
    p.add_argument(
        "--platform",
        metavar="OS/ARCH[/VARIANT]",
        help="platform recorded in the config (default: this machine's)",
    )
    p.add_argument(
        "--format",
        choices=["oci", "docker"],
        default="oci",
        help="media-type family of the image (default oci)",
    )
    p.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="environment variable (repeatable; PATH gets the usual default)",
    )
    p.add_argument(
        "--cmd",
        metavar="CMD",
        default='["/bin/sh"]',
        help="default command (JSON list or shell-like string; default /bin/sh)",
    )
    p.add_argument("--compression", choices=["gzip", "zstd"], default="gzip")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    _quiet_arg(p)
    _digestfile_arg(p, "the image")
    _registry_args(p, "")
    p = commands.add_parser(
        "copy",
        help="copy an image or index between registries, OCI layouts and archives",
        description="Copy SRC to DST, blobs streamed and verified, manifests byte for byte (so the "
        "digest does not change). Locations: REF, docker://REF, oci:DIR[:TAG], "
        "docker-archive:PATH[:NAME:TAG], docker-daemon:NAME:TAG (destination only).",
    )
    p.add_argument("source", metavar="SRC")
    p.add_argument("destination", metavar="DST")
    p.add_argument(
        "--platform",
        metavar="OS/ARCH[/VARIANT]|all",
        help="copy one platform of an index (default: all, or this machine's for a destination "
        "that holds a single image)",
    )
    p.add_argument("--docker-host", metavar="URL", help="daemon for docker-daemon: (default DOCKER_HOST)")
    p.add_argument(
        "-j", "--jobs", type=_jobs, default=4, metavar="N", help="parallel blob copies (default 4)"
    )
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    _quiet_arg(p)
    _digestfile_arg(p, "what was copied (the image, or the index)")
    _registry_args(p, "")

    p = commands.add_parser(
        "merge",
        help="assemble per-platform images of one registry into one multi-platform index",
        description="Push one index (OCI image index, or Docker manifest list for Docker v2 images) "
        "under --tag naming every image of the SOURCEs: single-platform images (platform read from "
        "their config) and the entries of indexes. Blobs are mounted into the target repository, "
        "never downloaded; sources must be on the target's registry (imagesmith copy moves them).",
    )
    p.add_argument(
        "sources", nargs="+", metavar="SOURCE", help="an image or index (tag or digest), in index order"
    )
    named = p.add_mutually_exclusive_group(required=True)
    named.add_argument("--tag", metavar="REF", help="the index's reference (repo:tag)")
    named.add_argument(
        "--repo",
        metavar="REPO",
        help="push the index to REPO under the tag `build --platform` would give it, rendered from "
        "the sources' package labels (single-platform images imagesmith built, of one package)",
    )
    p.add_argument(
        "--tag-template",
        metavar="TEMPLATE",
        help="with --repo: jinja2 template for the tag (default: NAME-VERSION-HASH, as an index of "
        "`build --platform A,B` is tagged)",
    )
    p.add_argument(
        "-j", "--jobs", type=_jobs, default=4, metavar="N", help="parallel blob mounts (default 4)"
    )
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    _quiet_arg(p)
    _digestfile_arg(p, "the index")
    _registry_args(p, "")

    p = commands.add_parser(
        "pull",
        help="unpack an image's layers into a directory, safely",
        description="Fetch the layers (verified, through the cache) and unpack them in order into "
        "DIR, which must be new or empty. No member can write outside DIR.",
    )
    p.add_argument("reference", metavar="LOCATION", help="REF, oci:DIR[:TAG] or docker-archive:PATH")
    p.add_argument("--rootfs", required=True, metavar="DIR", help="directory to unpack into")
    p.add_argument(
        "--packages-only",
        action="store_true",
        help="only the layers imagesmith added for packages, not the base",
    )
    p.add_argument("--platform", metavar="OS/ARCH[/VARIANT]", help="for an index (default: this machine's)")
    p.add_argument("-j", "--jobs", type=_jobs, default=4, metavar="N", help="parallel downloads (default 4)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    _quiet_arg(p)
    _registry_args(p, "")

    p = commands.add_parser(
        "serve",
        help="run an embedded OCI registry backed by OCI layouts",
        description="Serve the distribution API over plain http from DIR: repository a/b is the "
        "OCI layout DIR/a/b. No authentication: bind to loopback or a trusted network.",
    )
    p.add_argument("--root", required=True, metavar="DIR", help="storage directory (created if missing)")
    p.add_argument(
        "--addr",
        default="127.0.0.1:5000",
        metavar="HOST:PORT",
        help="address to listen on (default 127.0.0.1:5000; port 0 picks a free one)",
    )
    p.add_argument(
        "--max-connections",
        type=int,
        metavar="N",
        help="connections open at once; past it the one idle longest is closed "
        "(default: a third of the open-file limit, at most 1024)",
    )
    p.add_argument(
        "--idle-timeout",
        type=float,
        default=DEFAULT_IDLE_TIMEOUT,
        metavar="SECONDS",
        help=f"close a connection idle this long between requests (default {DEFAULT_IDLE_TIMEOUT:g})",
    )

    p = commands.add_parser(
        "index",
        help="the repository index: what a repository holds",
        description="An index artifact (tag index.imagesmith by default) listing every image of a "
        "repository with its package name, version, hash, platforms and digest, rebuilt from the "
        "registry's tag list; where the repository holds Spack packages, Spack's own build-cache "
        "database too, under index.spack.",
    )
    index_commands = p.add_subparsers(dest="index_command", metavar="ACTION")
    index_commands.required = True
    for action, text in (
        ("update", "rebuild the index from the tag list and push it"),
        ("list", "show what the repository holds"),
    ):
        q = index_commands.add_parser(action, help=text, description=text[0].upper() + text[1:] + ".")
        q.add_argument("repo", metavar="REPO", help="repository, e.g. ghcr.io/acme/stack")
        q.add_argument(
            "--index-tag",
            default=INDEX_TAG,
            metavar="TAG",
            help=f"imagesmith's index tag (default {INDEX_TAG}; list: {SPACK_INDEX_TAG} shows Spack's)",
        )
        q.add_argument(
            "-j", "--jobs", type=_jobs, default=8, metavar="N", help="parallel requests (default 8)"
        )
        q.add_argument("--json", action="store_true", help="print JSON")
        if action == "update":
            q.add_argument(
                "--force",
                action="store_true",
                help="replace what imagesmith would not (an index tag it did not write, an "
                "index.spack that is not Spack's database)",
            )
        else:
            q.add_argument(
                "--live", action="store_true", help="scan the registry now instead of reading the index"
            )
        _registry_args(q, "")

    p = commands.add_parser(
        "makefile",
        help="write a Makefile with one target per image of a stack",
        description="Generate a Makefile with one target per package image (its dependencies' targets "
        "as prerequisites), so `make -j N` or a CI matrix builds a stack in parallel. See docs/makefile.md.",
    )
    p.add_argument(
        "packages",
        nargs="+",
        metavar="PACKAGE",
        help="package files, Spack prefixes, tarballs or build caches; dependencies are added",
    )
    p.add_argument("--base-image", required=True, metavar="REF", help="base image reference")
    p.add_argument("--repo", required=True, metavar="REPO", help="target repository")
    p.add_argument("-o", "--output", metavar="FILE", help="write to FILE instead of standard output")
    p.add_argument(
        "--relative-to",
        metavar="DIR",
        help="write package paths relative to DIR (default: FILE's directory, or the current one)",
    )
    p.add_argument(
        "--index-tag",
        default=INDEX_TAG,
        metavar="TAG",
        help=f"tag of the `make index` target (default {INDEX_TAG})",
    )
    p.add_argument(
        "-j", "--jobs", type=_jobs, default=4, metavar="N", help="default parallel make jobs (JOBS)"
    )
    _registry_args(p, "")

    p = commands.add_parser(
        "pipeline",
        help="write a GitLab CI or GitHub Actions pipeline with one job per image of a stack",
        description="Generate a CI pipeline building a stack: one job per image (per platform), each "
        "needing its dependencies' jobs, on the base image pinned by digest now; a merge job per image "
        "for several platforms; one job updating the repository index. See docs/pipelines.md.",
    )
    p.add_argument(
        "packages",
        nargs="+",
        metavar="PACKAGE",
        help="package files, Spack prefixes or tarballs; dependencies are added",
    )
    p.add_argument("--engine", required=True, metavar="|".join(ENGINES), help="the CI engine")
    p.add_argument(
        "--base-image", required=True, metavar="REF", help="base image (resolved now, pinned by digest)"
    )
    p.add_argument("--repo", required=True, metavar="REPO", help="target repository")
    p.add_argument(
        "--platform",
        metavar="OS/ARCH[/VARIANT][,...]",
        help="platforms to build, comma-separated (default: this machine's); several get a merge "
        "job per image",
    )
    p.add_argument(
        "--runner",
        action="append",
        default=[],
        metavar="PLATFORM=TAG[,TAG]",
        help="runner tags (GitLab) or runs-on labels (GitHub) of a platform's jobs (repeatable; "
        "needed for every platform when there are several)",
    )
    p.add_argument(
        "--install",
        metavar="COMMAND",
        help=f"shell command putting imagesmith on the jobs' PATH (default: {DEFAULT_INSTALL!r}; "
        "'true' when the runners have it)",
    )
    p.add_argument("--image", metavar="IMAGE", help="container image the jobs run in (container runners)")
    p.add_argument("-o", "--output", metavar="FILE", help="write to FILE instead of standard output")
    p.add_argument(
        "--relative-to",
        metavar="DIR",
        help="where jobs start, for package paths (default: the git work tree holding FILE, or the "
        "current directory)",
    )
    _registry_args(p, "")

    p = commands.add_parser(
        "cache",
        help="show or prune the local blob cache",
        description="The content-addressed blob cache: built layers and fetched base layers.",
    )
    p.add_argument(
        "--cache-dir",
        dest="cache_dir",
        metavar="DIR",
        default=argparse.SUPPRESS,
        help="blob cache directory (also IMAGESMITH_CACHE_DIR)",
    )
    cache_commands = p.add_subparsers(dest="cache_command", metavar="ACTION")
    cache_commands.required = True
    info = cache_commands.add_parser("info", help="where the cache is and what it holds")
    info.add_argument("--json", action="store_true", help="print JSON")
    prune = cache_commands.add_parser(
        "prune",
        help="remove blobs not used recently (everything by default)",
        description="Remove cached blobs and records; the next build recreates what it needs.",
    )
    prune.add_argument(
        "--older-than", type=float, metavar="DAYS", help="only what has not been used for DAYS days"
    )
    prune.add_argument("--dry-run", action="store_true", help="count, remove nothing")
    prune.add_argument("--json", action="store_true", help="print JSON")

    p = commands.add_parser(
        "login",
        help="check credentials against a registry and store them where docker does",
        description="Verify USER and the password against REGISTRY (GET /v2/ with Basic or a "
        "Bearer token), then store them in $DOCKER_CONFIG/config.json or ~/.docker/config.json, "
        "or through the credential helper that file names for the host.",
    )
    p.add_argument("registry", metavar="REGISTRY", help="HOST[:PORT]; docker.io for Docker Hub")
    p.add_argument("-u", "--username", metavar="USER", help="user name (prompted on a terminal)")
    secret = p.add_mutually_exclusive_group()
    secret.add_argument(
        "--password-stdin", action="store_true", help="read the password from stdin (for scripts)"
    )
    secret.add_argument(
        "-p", "--password", metavar="PASS", help="the password (visible in the process list: avoid)"
    )
    _registry_args(p, "")

    p = commands.add_parser(
        "logout",
        help="remove the credentials stored for a registry",
        description="Remove REGISTRY's entries from docker's config file and, when one is "
        "configured, from the credential helper.",
    )
    p.add_argument("registry", metavar="REGISTRY", help="HOST[:PORT]; docker.io for Docker Hub")
    _registry_args(p, "")

    p = commands.add_parser(
        "version",
        help="show the version and the codecs in use (they decide layer digests)",
        description="Print imagesmith's version, Python's, and the gzip and zstd codecs a build "
        "would use now: the same tar compressed by another codec (isal or zlib, another version or "
        "level) gives another layer digest. IMAGESMITH_GZIP=zlib|isal chooses the gzip codec.",
    )
    p.add_argument("--json", action="store_true", help="print JSON")

    p = commands.add_parser(
        "completion",
        help="print a shell completion script (bash, zsh)",
        description="Print the completion script of SHELL. bash: `source <(imagesmith completion "
        "bash)` in ~/.bashrc; zsh: `source <(imagesmith completion zsh)` in ~/.zshrc.",
    )
    p.add_argument("shell", choices=["bash", "zsh"], metavar="SHELL", help="bash or zsh")

    _registry_verbs(commands)
    for leaf in _leaves(parser):
        if leaf is not parser:
            _global_args(leaf, "")
            if "--json" not in leaf._option_string_actions:
                leaf.set_defaults(json=None)  # `imagesmith --json COMMAND` is refused for it
    return parser


def _registry_verbs(commands: Any) -> None:
    """``tags``, ``digest``, ``delete``, ``tag``, ``manifest``, ``config``: one request or two
    each (see :mod:`imagesmith.ops.verbs`)."""
    p = commands.add_parser(
        "tags",
        help="list the tags of a repository",
        description="Print every tag of REPO, one a line, in the registry's order (GET "
        "/v2/REPO/tags/list, following the registry's Link pages).",
    )
    p.add_argument("repo", metavar="REPO", help="repository, e.g. ghcr.io/acme/stack")
    p.add_argument("--json", action="store_true", help='print {"repository": ..., "tags": [...]}')

    p = commands.add_parser(
        "digest",
        help="print the digest of an image or index",
        description="Print the manifest digest LOCATION names (one HEAD request to a registry), "
        "as `docker pull REPO@DIGEST` takes it.",
    )
    p.add_argument("reference", metavar="LOCATION", help="REF, oci:DIR[:TAG] or docker-archive:PATH")
    p.add_argument(
        "--platform", metavar="OS/ARCH[/VARIANT]", help="for an index: the digest of this platform's image"
    )
    p.add_argument("--json", action="store_true", help="print the result as JSON")

    p = commands.add_parser(
        "delete",
        help="delete an image (its manifest) from a registry",
        description="Delete the manifest REF names. A tag is resolved to its digest and the "
        "manifest is deleted by digest, as skopeo delete does: every other tag on that manifest "
        "goes too. Blobs stay until the registry's garbage collection.",
    )
    p.add_argument("reference", metavar="REF", help="repo:tag or repo@digest")
    p.add_argument("--json", action="store_true", help="print the result as JSON")

    p = commands.add_parser(
        "tag",
        help="add tags to an image, in its repository",
        description="Put the manifest SRC names under each NEWTAG of the same repository: the "
        "same bytes, so the same digest; no blob is read or copied.",
    )
    p.add_argument("source", metavar="SRC", help="repo:tag or repo@digest")
    p.add_argument("tags", nargs="+", metavar="NEWTAG", help="a tag (not a reference): 2.0, latest")
    p.add_argument("--json", action="store_true", help="print the result as JSON")

    for name, what in (("manifest", "manifest (or index)"), ("config", "image config")):
        p = commands.add_parser(
            name,
            help=f"print the {what} exactly as stored",
            description=f"Write the {what} bytes LOCATION names to stdout, exactly as stored: no "
            "newline added, so they hash to the digest (on a terminal, control characters are "
            "shown escaped).",
        )
        p.add_argument("reference", metavar="LOCATION", help="REF, oci:DIR[:TAG] or docker-archive:PATH")
        p.add_argument(
            "--platform",
            metavar="OS/ARCH[/VARIANT]",
            help="for an index: that platform's image"
            + (" (default: this machine's)" if name == "config" else ""),
        )


def _digestfile_arg(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--digestfile", metavar="FILE", help=f"also write the digest of {what} to FILE")


def _prepare_digestfile(args: argparse.Namespace) -> Path | None:
    """``--digestfile``'s path, its directory made first, so a path that cannot be written
    fails before any work."""
    if not args.digestfile:
        return None
    path = Path(args.digestfile)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"--digestfile {args.digestfile}: {exc.strerror or exc}") from None
    return path


def _output_args(parser: argparse.ArgumentParser) -> None:
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


def _command(text: str | None, option: str) -> list[str] | None:
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


def _pairs(items: Sequence[str], option: str) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"{option} {item!r} must be KEY=VALUE")
        out[key] = value
    return out


def _platform(text: str | None) -> Platform | None:
    from imagesmith.oci.model import Platform

    return Platform.parse(text) if text else None


def _registry_options(args: argparse.Namespace) -> RegistryOptions:
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


def _cache(args: argparse.Namespace) -> BlobCache:
    from imagesmith.store.cache import BlobCache

    path = getattr(args, "cache_dir", None) or args.cache_dir_global
    return BlobCache(Path(path) if path else None)


# C0 controls, DEL, C1 controls, and lone surrogates: those from U+DC80 stand for bytes that
# were not UTF-8 (names from an old image, decoded with surrogateescape); any other comes from
# a JSON "\\udXXX" escape in a config. None of them can be printed as they are.
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    if 0xDC80 <= code <= 0xDCFF:
        return f"\\x{code - 0xDC00:02x}"
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def _shown(text: str) -> str:
    """``text`` safe to print: every control character and undecodable byte as a ``\\xNN``
    escape, so what an image says (names, Env, labels, history) can neither drive the terminal
    (escape sequences) nor break the encoder. Human output only: ``--json`` stays exact JSON."""
    return _UNPRINTABLE.sub(_escape, text)


def _say(text: str, out: TextIO) -> None:
    print(_shown(text), file=out)


def _human(size: int) -> str:
    value = float(size)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{size} B"


def _emit(obj: dict[str, Any], stdout: TextIO) -> None:
    print(json.dumps(obj, indent=2), file=stdout)


def _emit_list(objects: Iterable[dict[str, Any]], stdout: TextIO) -> None:
    """Print a JSON list, one element at a time: the same text as ``json.dumps(list,
    indent=2)``, without every element's document in memory at once (a 1,000-image run's
    list took 120 MB)."""
    first = True
    for obj in objects:
        stdout.write("[\n" if first else ",\n")
        stdout.write(textwrap.indent(json.dumps(obj, indent=2), "  "))
        first = False
    print("[]" if first else "\n]", file=stdout)


def _closure_warnings(results: Sequence[BuildResult | MultiBuildResult], stderr: TextIO) -> None:
    """One warning line per finding of the runtime-closure check (each once per run)."""
    from imagesmith.pipeline.results import MultiBuildResult

    seen: set[str] = set()
    for result in results:
        images = result.images if isinstance(result, MultiBuildResult) else (result,)
        for image in images:
            report: ClosureReport | None = image.closure
            for finding in report.findings if report is not None else ():
                line = finding.line()
                if line not in seen:
                    seen.add(line)
                    _say(f"imagesmith: warning: {line}", stderr)


def _report_written(
    result: BuildResult | ImportResult | MultiBuildResult, stdout: TextIO, suffix: str = ""
) -> None:
    from imagesmith.pipeline.results import MultiBuildResult

    verb = "Pushed" if result.pushed else "Wrote"
    if isinstance(result, MultiBuildResult):
        print(f"{verb} {result.destination} ({result.digest}), an index of:", file=stdout)
        for platform, image in zip(result.platforms, result.images, strict=True):
            print(f"  {platform}: {image.digest}", file=stdout)
        return
    if result.destinations:
        print(f"{verb} {result.destination} ({result.digest}){suffix}", file=stdout)
    for name in result.loaded:
        print(f"Loaded {name} into the docker daemon", file=stdout)


def _platforms(text: str | None) -> list[Platform]:
    """``--platform`` of build: one platform, or a comma-separated list."""
    from imagesmith.oci.model import Platform

    if text is None:
        return []
    parts = [part.strip() for part in text.split(",")]
    if not all(parts):
        raise UsageError(f"--platform {text!r}: an empty platform in the list (OS/ARCH[/VARIANT],...)")
    return [Platform.parse(part) for part in parts]


def _build_inputs(args: argparse.Namespace) -> tuple[list[Package], list[Package]]:
    """The packages of a build, dependencies first, and its roots (the packages named, or the
    environment's roots; only looked up for --each-root)."""
    from imagesmith.inputs.load import load_package, load_packages
    from imagesmith.inputs.spackenv import load_environment

    if args.spack_env is not None:
        if args.packages:
            raise UsageError("give PACKAGEs or --spack-env DIR, not both")
        return load_environment(args.spack_env, install_tree=args.spack_install_tree)
    if args.spack_install_tree is not None:
        raise UsageError("--spack-install-tree goes with --spack-env DIR")
    if not args.packages:
        raise UsageError("name at least one PACKAGE, or a Spack environment with --spack-env DIR")
    registry = _registry_options(args)
    packages = load_packages(args.packages, registry=registry)
    roots = [load_package(path, registry=registry) for path in args.packages] if args.each_root else []
    return packages, roots


def _print_notes(results: Sequence[BuildResult | MultiBuildResult], stream: TextIO) -> None:
    """One line per note (why a Spack package's image is no Spack build-cache entry), on
    standard error whatever the output format, so that a script sees it and JSON stays clean."""
    for result in results:
        for note in result.notes:
            print(f"imagesmith: note: {note}", file=stream)


def _run_build(args: argparse.Namespace, stdout: TextIO, progress: _Progress) -> int:
    from imagesmith.pipeline.results import BuildOptions, BuildResult
    from imagesmith.pipeline.run import build, build_each, build_each_platforms, build_platforms

    platforms = _platforms(args.platform)
    if args.digestfile and (args.each or args.each_root):
        flag = "--each" if args.each else "--each-root"
        raise UsageError(f"--digestfile holds one digest: {flag} writes one image per package")
    digestfile = _prepare_digestfile(args)
    packages, roots = _build_inputs(args)
    options = BuildOptions(
        platform=platforms[0] if len(platforms) == 1 else None,
        compression=args.compression,
        level=args.level,
        env=tuple(args.env),
        entrypoint=_command(args.entrypoint, "--entrypoint"),
        cmd=_command(args.cmd, "--cmd"),
        workdir=args.workdir,
        labels=_pairs(args.label, "--label"),
        annotations=_pairs(args.annotation, "--annotation"),
        profile_script=args.profile_script,
        tag_template=args.tag_template,
        jobs=max(1, args.jobs),
        max_layers=args.max_layers,
        check=args.check,
        sbom=tuple(args.sbom),
        signing_key=_signing_key(args.sign) if args.sign else None,
    )
    common: dict[str, Any] = {
        "options": options,
        "registry": _registry_options(args),
        "cache": _cache(args),
        "progress": progress,
    }
    multi = len(platforms) > 1
    if args.each or args.each_root:
        flag = "--each" if args.each else "--each-root"
        if args.tag or args.load:
            raise UsageError(
                f"{flag} tags every {'index' if multi else 'image'} from the template: use --repo REPO "
                "(or --output oci:DIR), without --load"
            )
        where = {"repo": args.repo, "output": args.output, "roots": roots if args.each_root else None}
        results: Sequence[BuildResult | MultiBuildResult] = (
            build_each_platforms(args.base_image, packages, platforms, **where, **common)
            if multi
            else build_each(args.base_image, packages, **where, **common)
        )
        _closure_warnings(results, progress.stream)
        if args.json:
            _emit_list((r.to_json() for r in results), stdout)
        elif args.quiet:
            print("\n".join(r.digest for r in results), file=stdout)
        else:
            for written in results:
                _report_written(written, stdout)
        _print_notes(results, progress.stream)
        return 0
    result: BuildResult | MultiBuildResult
    if multi:
        if args.load:
            raise UsageError(f"--platform {args.platform} builds an index: --load works on one platform")
        result = build_platforms(
            args.base_image, packages, platforms, repo=args.repo, tag=args.tag, output=args.output, **common
        )
    else:
        result = build(
            args.base_image,
            packages,
            repo=args.repo,
            tag=args.tag,
            output=args.output,
            load=args.load,
            docker_host=args.docker_host,
            **common,
        )
    _closure_warnings([result], progress.stream)
    if isinstance(result, BuildResult):
        _write_sboms(result, args.sbom_output)
    if digestfile is not None:
        _write_output(f"{result.digest}\n", digestfile, stdout)
    if args.json:
        _emit(result.to_json(), stdout)
    elif args.quiet:
        print(result.digest, file=stdout)
    else:
        _report_written(result, stdout)
        if isinstance(result, BuildResult):
            for attached in result.attached:
                _say(f"Attached {attached.artifact_type} {attached.digest} ({attached.via})", stdout)
            for signed in result.signed:
                _say(f"Signed {signed.identity} ({signed.digest}) in {signed.tag}", stdout)
    _print_notes([result], progress.stream)
    return 0


def _run_import(args: argparse.Namespace, stdout: TextIO, progress: _Progress) -> int:
    from imagesmith.pipeline.run import import_rootfs

    digestfile = _prepare_digestfile(args)
    result = import_rootfs(
        args.rootfs,
        args.tag,
        output=args.output,
        load=args.load,
        docker_host=args.docker_host,
        platform=_platform(args.platform),
        family=args.format,
        env=tuple(args.env),
        cmd=_command(args.cmd, "--cmd"),
        compression=args.compression,
        registry=_registry_options(args),
        cache=_cache(args),
        progress=progress,
    )
    if digestfile is not None:
        _write_output(f"{result.digest}\n", digestfile, stdout)
    if args.json:
        _emit(result.to_json(), stdout)
    elif args.quiet:
        print(result.digest, file=stdout)
    else:
        _report_written(result, stdout, f" for {result.platform}")
    return 0


def _run_inspect(args: argparse.Namespace, stdout: TextIO) -> int:
    from imagesmith.ops.inspect import inspect
    from imagesmith.registry.client import RegistryPool

    if args.referrers:
        if args.raw or args.platform:
            option = "--raw" if args.raw else "--platform"
            raise UsageError(
                f"{option} does not go with --referrers, which lists what is attached to "
                "the reference itself: leave one out"
            )
        return _run_referrers(args, stdout)
    if args.artifact_type:
        raise UsageError("--artifact-type filters --referrers: add --referrers")
    if args.raw:
        return _run_manifest(args, stdout)
    with RegistryPool(_registry_options(args)) as pool:
        info = inspect(args.reference, platform=_platform(args.platform), pool=pool)
    if args.json:
        _emit(info.to_json(), stdout)
    else:
        _print_inspect(info.to_json(), stdout)
    return 0


def _run_copy(args: argparse.Namespace, stdout: TextIO, progress: _Progress) -> int:
    from imagesmith.oci.model import Platform
    from imagesmith.registry.client import RegistryPool
    from imagesmith.transports.copy import copy_image

    platform: Platform | Literal["all"] | None = None
    if args.platform == "all":
        platform = "all"
    elif args.platform:
        platform = Platform.parse(args.platform)
    digestfile = _prepare_digestfile(args)
    with RegistryPool(_registry_options(args)) as pool:
        result = copy_image(
            args.source,
            args.destination,
            pool=pool,
            cache=_cache(args),
            platform=platform,
            jobs=max(1, args.jobs),
            docker_host=args.docker_host,
            progress=progress,
        )
    if digestfile is not None:
        _write_output(f"{result.digest}\n", digestfile, stdout)
    if args.json:
        _emit(result.to_json(), stdout)
    elif args.quiet:
        print(result.digest, file=stdout)
    else:
        print(f"Copied {result.source} -> {result.destination} ({result.digest})", file=stdout)
    return 0


def _run_merge(args: argparse.Namespace, stdout: TextIO, progress: _Progress) -> int:
    from imagesmith.ops.merge import merge_images
    from imagesmith.ops.platformmerge import merge_builds
    from imagesmith.registry.client import RegistryPool
    from imagesmith.transports.registry import RegistryLocation

    if args.tag_template is not None and args.repo is None:
        raise UsageError("--tag-template names the index with --repo: leave it out with --tag")
    jobs = max(1, args.jobs)
    digestfile = _prepare_digestfile(args)
    with RegistryPool(_registry_options(args)) as pool:
        if args.repo is not None:
            result = merge_builds(
                args.sources,
                args.repo,
                pool=pool,
                tag_template=args.tag_template,
                progress=progress,
                jobs=jobs,
            )
        else:
            result = merge_images(args.sources, args.tag, pool=pool, progress=progress, jobs=jobs)
    if digestfile is not None:
        _write_output(f"{result.digest}\n", digestfile, stdout)
    if args.json:
        _emit(result.to_json(), stdout)
    elif args.quiet:
        print(result.digest, file=stdout)
    else:
        print(f"Pushed {RegistryLocation(result.reference)} ({result.digest})", file=stdout)
        print(f"Platforms: {', '.join(result.platforms)}", file=stdout)
    return 0


def _run_pull(args: argparse.Namespace, stdout: TextIO, progress: _Progress) -> int:
    from imagesmith.ops.pull import pull

    result = pull(
        args.reference,
        args.rootfs,
        packages_only=args.packages_only,
        platform=_platform(args.platform),
        jobs=max(1, args.jobs),
        registry=_registry_options(args),
        cache=_cache(args),
        progress=progress,
    )
    if args.json:
        _emit(result.to_json(), stdout)
    elif args.quiet:
        print(result.digest, file=stdout)
    else:
        stats = result.stats
        _say(
            f"Unpacked {result.layers} layers of {result.source} ({result.digest}) into {result.rootfs}: "
            f"{stats.files} files, {stats.dirs} directories, {stats.symlinks} symlinks",
            stdout,
        )
        for skipped in stats.skipped:
            _say(f"  skipped {skipped}", stdout)
    return 0


def _run_serve(args: argparse.Namespace, stdout: TextIO, stderr: TextIO) -> int:
    from imagesmith.registry.server import RegistryServer

    host, sep, port_text = args.addr.rpartition(":")
    if not sep or not host or not port_text.isdigit() or int(port_text) > 65535:
        raise UsageError(f"--addr {args.addr!r} must be HOST:PORT, e.g. 127.0.0.1:5000")
    server = RegistryServer(
        Path(args.root),
        host=host.strip("[]"),
        port=int(port_text),
        max_connections=args.max_connections,
        idle_timeout=args.idle_timeout,
    )
    print(f"Serving {server.root} at http://{server.address} (Ctrl-C stops)", file=stdout, flush=True)
    print(
        f"  clients: --insecure-registry {server.address} (imagesmith), --tls-verify=false (podman, skopeo)",
        file=stderr,
        flush=True,
    )

    def terminate(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    # `kill` (SIGTERM) stops the server as cleanly as Ctrl-C does.
    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        server.serve_forever()
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0


def _run(args: argparse.Namespace, stdout: TextIO, stderr: TextIO, progress: _Progress) -> int:
    if args.command == "build":
        return _run_build(args, stdout, progress)
    if args.command == "import":
        return _run_import(args, stdout, progress)
    if args.command == "inspect":
        return _run_inspect(args, stdout)
    if args.command == "copy":
        return _run_copy(args, stdout, progress)
    if args.command == "merge":
        return _run_merge(args, stdout, progress)
    if args.command == "pull":
        return _run_pull(args, stdout, progress)
    if args.command == "serve":
        return _run_serve(args, stdout, stderr)
    if args.command == "index":
        return _run_index(args, stdout, progress)
    if args.command == "makefile":
        return _run_makefile(args, stdout)
    if args.command == "pipeline":
        return _run_pipeline(args, stdout, stderr)
    if args.command == "cache":
        return _run_cache(args, stdout)
    if args.command == "login":
        return _run_login(args, stdout, stderr)
    if args.command == "sign":
        return _run_sign(args, stdout, progress)
    if args.command == "keygen":
        return _run_keygen(args, stdout)
    if args.command == "logout":
        return _run_logout(args, stdout)
    if args.command == "version":
        return _run_version(args, stdout)
    if args.command == "completion":
        return _run_completion(args, stdout)
    if args.command == "tags":
        return _run_tags(args, stdout)
    if args.command == "digest":
        return _run_digest(args, stdout)
    if args.command == "delete":
        return _run_delete(args, stdout)
    if args.command == "tag":
        return _run_tag(args, stdout)
    if args.command == "manifest":
        return _run_manifest(args, stdout)
    if args.command == "config":
        return _run_config(args, stdout)
    raise UsageError(f"unknown command {args.command!r}")  # pragma: no cover


def _run_tags(args: argparse.Namespace, stdout: TextIO) -> int:
    from imagesmith.oci.references import parse_repository
    from imagesmith.ops.verbs import list_tags
    from imagesmith.registry.client import RegistryPool

    repository = parse_repository(args.repo)
    with RegistryPool(_registry_options(args)) as pool:
        tags = list_tags(repository, pool=pool)
    if args.json:
        _emit({"repository": repository.name, "tags": tags}, stdout)
    else:
        for tag in tags:
            _say(tag, stdout)
    return 0


def _run_digest(args: argparse.Namespace, stdout: TextIO) -> int:
    from imagesmith.ops.verbs import image_digest
    from imagesmith.registry.client import RegistryPool
    from imagesmith.transports.locations import parse_location

    with RegistryPool(_registry_options(args)) as pool:
        digest = image_digest(args.reference, platform=_platform(args.platform), pool=pool)
    if args.json:
        _emit({"reference": str(parse_location(args.reference)), "digest": str(digest)}, stdout)
    else:
        print(digest, file=stdout)
    return 0


def _run_delete(args: argparse.Namespace, stdout: TextIO) -> int:
    from imagesmith.ops.verbs import delete_image
    from imagesmith.registry.client import RegistryPool

    with RegistryPool(_registry_options(args)) as pool:
        deleted = delete_image(args.reference, pool=pool)
    if args.json:
        _emit(deleted.to_json(), stdout)
    elif deleted.reference.digest is None:
        print(f"Deleted {deleted.deleted} (was {deleted.reference}; every tag on it is gone)", file=stdout)
    else:
        print(f"Deleted {deleted.deleted}", file=stdout)
    return 0


def _run_tag(args: argparse.Namespace, stdout: TextIO) -> int:
    from imagesmith.ops.verbs import tag_image
    from imagesmith.registry.client import RegistryPool

    with RegistryPool(_registry_options(args)) as pool:
        tagged = tag_image(args.source, args.tags, pool=pool)
    if args.json:
        _emit(tagged.to_json(), stdout)
    else:
        for reference in tagged.references:
            print(f"Tagged {reference} ({tagged.digest})", file=stdout)
    return 0


def _write_raw(data: bytes, stdout: TextIO) -> None:
    """Document bytes exactly as stored; on a terminal, with control characters escaped (and a
    final newline) so that a hostile document cannot drive the terminal."""
    if stdout.isatty():
        text = data.decode("utf-8", "surrogateescape")
        print("\n".join(_shown(line).replace("\\x09", "\t") for line in text.split("\n")), file=stdout)
        return
    buffer = getattr(stdout, "buffer", None)
    if buffer is None:  # a text-only stream (tests): the bytes decoded
        stdout.write(data.decode("utf-8", "replace"))
        return
    stdout.flush()
    buffer.write(data)
    buffer.flush()


def _run_manifest(args: argparse.Namespace, stdout: TextIO) -> int:
    from imagesmith.ops.verbs import read_manifest
    from imagesmith.registry.client import RegistryPool

    with RegistryPool(_registry_options(args)) as pool:
        raw = read_manifest(args.reference, platform=_platform(args.platform), pool=pool)
    _write_raw(raw.data, stdout)
    return 0


def _run_config(args: argparse.Namespace, stdout: TextIO) -> int:
    from imagesmith.ops.verbs import read_config
    from imagesmith.registry.client import RegistryPool

    with RegistryPool(_registry_options(args)) as pool:
        data = read_config(args.reference, platform=_platform(args.platform), pool=pool)
    _write_raw(data, stdout)
    return 0


def _run_version(args: argparse.Namespace, stdout: TextIO) -> int:
    import platform

    from imagesmith.tar.compression import codec_id, gzip_backend

    gzip, zstd = codec_id("gzip"), codec_id("zstd")
    backend = gzip_backend()
    if args.json:
        _emit(
            {
                "version": __version__,
                "python": platform.python_version(),
                "gzip": {"backend": backend, "codec": gzip},
                "zstd": {"codec": zstd},
            },
            stdout,
        )
        return 0
    print(f"imagesmith {__version__} (Python {platform.python_version()})", file=stdout)
    other = "zlib" if backend == "isal" else "isal"
    print(f"gzip codec: {gzip} ({backend}; IMAGESMITH_GZIP={other} chooses {other})", file=stdout)
    print(f"zstd codec: {zstd}", file=stdout)
    return 0


def _run_completion(args: argparse.Namespace, stdout: TextIO) -> int:
    from imagesmith.completion import completion_script

    stdout.write(completion_script(_parser(), args.shell))
    return 0


def _run_referrers(args: argparse.Namespace, stdout: TextIO) -> int:
    from imagesmith.artifacts.referrers import list_attachments
    from imagesmith.registry.client import RegistryPool

    with RegistryPool(_registry_options(args)) as pool:
        subject, attachments = list_attachments(args.reference, pool=pool, artifact_type=args.artifact_type)
    if args.json:
        _emit({"subject": str(subject), "attached": [a.to_json() for a in attachments]}, stdout)
        return 0
    _say(f"Subject:    {args.reference} ({subject})", stdout)
    if not attachments:
        print("Nothing is attached.", file=stdout)
    for item in attachments:
        if item.kind == "signature":
            count = f"{item.count} signature{'s' if item.count != 1 else ''}"
            _say(f"  signature  {item.artifact_type}  {item.digest}  {count}, {item.via}", stdout)
        else:
            title = item.annotations.get("org.opencontainers.image.title", "")
            # An artifact type and a title are whatever the registry says: shown escaped.
            _say(
                f"  referrer   {item.artifact_type}  {item.digest}  {_human(item.size)}, {item.via}"
                + (f"  {title}" if title else ""),
                stdout,
            )
    return 0


def _key_password(path: str) -> str | None:
    """The password of an encrypted key: the environment, else a prompt on a terminal."""
    import getpass

    from imagesmith.artifacts.signing import key_is_encrypted

    if not key_is_encrypted(path):
        return None
    password = os.environ.get(KEY_PASSWORD_ENV)
    if password:
        return password
    if sys.stdin is not None and sys.stdin.isatty():
        return getpass.getpass(f"Password for {path}: ")
    return None  # load_signing_key then says where the password goes


def _signing_key(path: str) -> SigningKey:
    from imagesmith.artifacts.signing import load_signing_key

    return load_signing_key(path, _key_password(path))


def _write_sboms(result: BuildResult, directory: str | None) -> None:
    from imagesmith.artifacts.sbom import SBOM_FILENAMES

    if directory is None:
        return
    if not result.sboms:
        raise UsageError("--sbom-output writes the --sbom documents: add --sbom spdx or --sbom cyclonedx")
    target = Path(directory)
    try:
        target.mkdir(parents=True, exist_ok=True)
        for fmt, document in result.sboms:
            tmp = target / (SBOM_FILENAMES[fmt] + ".tmp")
            tmp.write_bytes(document)
            tmp.replace(target / SBOM_FILENAMES[fmt])
    except OSError as exc:
        raise UsageError(f"cannot write the SBOM into {target}: {exc.strerror or exc}") from None


def _run_sign(args: argparse.Namespace, stdout: TextIO, progress: _Progress) -> int:
    from imagesmith.artifacts.signing import sign_reference
    from imagesmith.registry.client import RegistryPool

    key = _signing_key(args.key)
    with RegistryPool(_registry_options(args)) as pool:
        signed = sign_reference(args.reference, key, pool=pool, cache=_cache(args), progress=progress)
    if args.json:
        _emit(signed[0].to_json() | {"instances": [s.to_json() for s in signed[1:]]}, stdout)
        return 0
    for item in signed:
        note = "" if item.added else " (already signed with this key: unchanged)"
        _say(f"Signed {item.identity} ({item.digest}) in {item.tag}{note}", stdout)
    return 0


def _run_keygen(args: argparse.Namespace, stdout: TextIO) -> int:
    import getpass

    from imagesmith.artifacts.signing import generate_key

    public = args.public or f"{args.key}.pub"
    password = os.environ.get(KEY_PASSWORD_ENV) or None
    if args.encrypt and password is None:
        if sys.stdin is None or not sys.stdin.isatty():
            raise UsageError(f"--encrypt asks for a password on a terminal: set {KEY_PASSWORD_ENV} instead")
        password = getpass.getpass("Password for the new key: ")
        if password != getpass.getpass("Repeat it: "):
            raise UsageError("the passwords differ: nothing was written")
        if not password:
            raise UsageError("an empty password encrypts nothing: leave out --encrypt for an unencrypted key")
    generate_key(args.key, public, password)
    state = "encrypted" if password else "not encrypted"
    print(f"Wrote private key {args.key} ({state}) and public key {public}", file=stdout)
    return 0


def _login_secrets(args: argparse.Namespace, stderr: TextIO) -> tuple[str, str]:
    """The username and password for ``login``: from the options, stdin or a prompt."""
    import getpass

    interactive = sys.stdin is not None and sys.stdin.isatty()
    username: str = args.username or ""
    if not username:
        if args.password_stdin or not interactive:
            raise UsageError("login needs a username: pass -u USER")
        stderr.write("Username: ")
        stderr.flush()
        username = sys.stdin.readline().strip()
    if args.password is not None:
        print(
            "imagesmith: warning: -p/--password exposes the password in the process list; "
            "use --password-stdin",
            file=stderr,
        )
        return username, args.password
    if args.password_stdin:
        if sys.stdin is None:
            raise UsageError("--password-stdin: there is no stdin")
        return username, sys.stdin.read().rstrip("\r\n")
    if not interactive:
        raise UsageError(
            "no password given and stdin is not a terminal: use --password-stdin "
            '(e.g. `echo "$PASSWORD" | imagesmith login -u USER --password-stdin REGISTRY`)'
        )
    return username, getpass.getpass("Password: ")


def _run_login(args: argparse.Namespace, stdout: TextIO, stderr: TextIO) -> int:
    from imagesmith.registry.credentials import registry_host
    from imagesmith.registry.login import login

    host = registry_host(args.registry)
    username, password = _login_secrets(args, stderr)
    options = _registry_options(args)
    where = login(host, username, password, options=options, config_path=options.auth_file)
    print(f"Login succeeded for {host} (credentials in {where})", file=stdout)
    return 0


def _run_logout(args: argparse.Namespace, stdout: TextIO) -> int:
    from imagesmith.registry.credentials import registry_host
    from imagesmith.registry.login import logout

    host = registry_host(args.registry)
    options = _registry_options(args)
    if logout(host, options=options, config_path=options.auth_file):
        print(f"Removed credentials for {host}", file=stdout)
    else:
        print(f"No credentials stored for {host}", file=stdout)
    return 0


def _run_index(args: argparse.Namespace, stdout: TextIO, progress: _Progress) -> int:
    from imagesmith.oci.references import parse_repository
    from imagesmith.ops.repoindex import list_index, update_index
    from imagesmith.registry.client import RegistryPool

    repository = parse_repository(args.repo)
    jobs = max(1, args.jobs)
    with RegistryPool(_registry_options(args)) as pool:
        if args.index_command == "update":
            done = update_index(
                pool, repository, tag=args.index_tag, jobs=jobs, progress=progress, force=args.force
            )
            index = done.index
            where = f"{repository.name}:{args.index_tag}"
            spack_where = f"{repository.name}:{SPACK_INDEX_TAG}"
            packages = len(done.spack_database.packages) if done.spack_database is not None else 0
            if args.json:
                spack = {"reference": spack_where, "digest": done.spack_digest, "packages": packages}
                _emit(
                    {
                        "reference": where,
                        "digest": done.digest,
                        "images": len(index.entries),
                        "skipped": len(index.skipped),
                        "spack": spack if done.spack_digest is not None else None,
                    },
                    stdout,
                )
            else:
                counts = f"{len(index.entries)} images ({len(index.skipped)} other tags)"
                print(f"Indexed {counts} in {where} ({done.digest})", file=stdout)
                if done.spack_digest is not None:
                    print(
                        f"Indexed {packages} Spack packages in {spack_where} ({done.spack_digest})",
                        file=stdout,
                    )
            return 0
        index = list_index(pool, repository, tag=args.index_tag, live=args.live, jobs=jobs, progress=progress)
    if args.json:
        _emit(index.to_json(), stdout)
        return 0
    rows = [("TAG", "NAME", "VERSION", "HASH", "PLATFORMS", "DIGEST")]
    for entry in index.entries:
        rows.append(
            (
                entry.tag,
                entry.name or "-",
                entry.version or "-",
                entry.hash or "-",
                ",".join(entry.platforms) or "-",
                entry.digest,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    for row in rows:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)) + "  " + row[5],
            file=stdout,
        )
    return 0


def _run_makefile(args: argparse.Namespace, stdout: TextIO) -> int:
    from imagesmith.generate.makefile import render_makefile
    from imagesmith.inputs.load import load_packages

    packages = load_packages(args.packages, registry=_registry_options(args))
    options = _registry_options(args)
    flags: list[str] = []
    for host in sorted(options.insecure):
        flags += ["--insecure-registry", host]
    if options.ca_cert is not None:
        flags += ["--ca-cert", str(options.ca_cert)]
    target = Path(args.output) if args.output else None
    directory = Path(args.relative_to) if args.relative_to else (target.parent if target else Path.cwd())
    text = render_makefile(
        packages,
        base_image=args.base_image,
        repo=args.repo,
        package_args=args.packages,
        jobs=max(1, args.jobs),
        flags=flags,
        index_tag=args.index_tag,
        directory=directory.resolve(),
    )
    _write_output(text, target, stdout)
    return 0


def _write_output(text: str, target: Path | None, stdout: TextIO) -> None:
    """``text`` to standard output, or to ``target`` whole (through a temporary file) or not at all."""
    if target is None:
        stdout.write(text)
        return
    tmp = target.with_name(target.name + ".tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(target)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise UsageError(f"cannot write {target}: {exc.strerror or exc}") from None


def _runners(items: Sequence[str]) -> dict[str, list[str]]:
    """``--runner PLATFORM=TAG[,TAG]`` options as a mapping."""
    runners: dict[str, list[str]] = {}
    for item in items:
        key, sep, labels = item.partition("=")
        if not sep or not key.strip() or not labels.strip():
            raise UsageError(f"--runner {item!r} must be PLATFORM=TAG[,TAG], e.g. linux/arm64=arm-runner")
        if key.strip() in runners:
            raise UsageError(f"--runner {key.strip()} is given twice: name its tags once, comma-separated")
        runners[key.strip()] = [label for label in labels.split(",") if label.strip()]
    return runners


def _run_pipeline(args: argparse.Namespace, stdout: TextIO, stderr: TextIO) -> int:
    from imagesmith.generate.ci import check_runners, pin_base, relative_base, render_pipeline
    from imagesmith.inputs.load import load_packages
    from imagesmith.registry.client import RegistryPool

    if args.engine not in ENGINES:
        raise UsageError(f"unknown CI engine {args.engine!r}: use {' or '.join(ENGINES)}")
    runners = _runners(args.runner)
    platforms = _platforms(args.platform)
    if platforms:
        check_runners(platforms, runners)  # before anything is read or looked up
    options = _registry_options(args)
    packages = load_packages(args.packages, registry=options)
    target = Path(args.output) if args.output else None
    directory = Path(args.relative_to).resolve() if args.relative_to else relative_base(target)
    with RegistryPool(options) as pool:
        pin = pin_base(args.base_image, platforms, pool=pool)
    generated = render_pipeline(
        packages,
        engine=args.engine,
        base=pin,
        repo=args.repo,
        runners=runners,
        install=args.install,
        image=args.image,
        insecure=sorted(options.insecure),
        directory=directory,
        package_args=args.packages,
    )
    for note in generated.notes:
        print(f"imagesmith: note: {note}", file=stderr)
    _write_output(generated.text, target, stdout)
    return 0


def _run_cache(args: argparse.Namespace, stdout: TextIO) -> int:
    cache = _cache(args)
    if args.cache_command == "info":
        stats = cache.stats()
        if args.json:
            _emit(stats.to_json(), stdout)
        else:
            print(f"Cache:   {stats.root}", file=stdout)
            print(f"Blobs:   {stats.blobs} ({_human(stats.blob_bytes)})", file=stdout)
            print(f"Records: {stats.records}", file=stdout)
            if stats.temp_files:
                print(
                    f"Temp:    {stats.temp_files} ({_human(stats.temp_bytes)}) left by interrupted runs",
                    file=stdout,
                )
        return 0
    if args.older_than is not None and args.older_than < 0:
        raise UsageError("--older-than DAYS must not be negative")
    seconds = None if args.older_than is None else args.older_than * 86400
    result = cache.prune(seconds, dry_run=args.dry_run)
    if args.json:
        _emit(result.to_json(), stdout)
    else:
        verb = "Would remove" if result.dry_run else "Removed"
        print(
            f"{verb} {result.blobs} blobs ({_human(result.bytes)}), {result.records} records, "
            f"{result.temp_files} temp files from {cache.root}",
            file=stdout,
        )
    return 0


def _print_inspect(data: dict[str, Any], out: TextIO) -> None:
    _say(f"Reference:  {data['reference']}", out)
    _say(f"Digest:     {data['digest']}", out)
    _say(f"Media type: {data['mediaType']}", out)
    if "manifests" in data:
        _say("Platforms:", out)
        for entry in data["manifests"]:
            platform = entry.get("platform") or {}
            name = (
                "/".join(
                    x
                    for x in (platform.get("os"), platform.get("architecture"), platform.get("variant"))
                    if x
                )
                or "-"
            )
            _say(f"  {name:<20} {entry['digest']} ({_human(entry['size'])})", out)
        return
    if "platform" in data:
        _say(f"Platform:   {data['platform']}", out)
        _say(f"Created:    {data.get('created')}", out)
        config = data["config"]
        for key in ("Entrypoint", "Cmd", "WorkingDir"):
            if config.get(key):
                _say(f"{key + ':':<11} {config[key]}", out)
        _say("Env:", out)
        for entry in config["Env"]:
            _say(f"  {entry}", out)
        for key, value in sorted(config.get("Labels", {}).items()):
            _say(f"Label:      {key}={value}", out)
    for key, value in sorted(data.get("annotations", {}).items()):
        _say(f"Annotation: {key}={value}", out)
    _say(f"Layers ({len(data['layers'])}):", out)
    history = [h for h in data.get("history", []) if not h.get("empty_layer")]
    for i, layer in enumerate(data["layers"]):
        note = history[i].get("created_by", "") if i < len(history) else ""
        _say(f"  {layer['digest']} {_human(layer['size']):>9}  {note[:60]}", out)


# Exit code 2: what the user gave is wrong (docs/cli.md, "Exit codes").
_USAGE = (UsageError, ReferenceFormatError, DigestFormatError, PackageError, TemplateError)


def _exit_code(error: ImagesmithError) -> int:
    """The exit code of ``error``'s category (the table at the top of this module)."""
    if isinstance(error, DiskFullError) or _os_cause(error) in DISK_FULL_ERRNOS:
        return 6  # before integrity: a layer cut short by a full disk is no corrupt layer
    if isinstance(error, FileSystemError | CacheError):
        return 5
    if isinstance(error, _USAGE):
        return 2
    if isinstance(error, RegistryError | DaemonError):
        return 3
    if isinstance(error, IntegrityError | UnpackError):
        return 4
    if _os_cause(error) is not None:
        return 5  # a layer or layout path that could not be read or written
    return 1


@contextlib.contextmanager
def _interrupts() -> Iterator[None]:
    """Ctrl-C (SIGINT) stops the work at once: the handler tells every worker thread to stop
    (:func:`imagesmith.cancel.interrupt`) and raises :class:`KeyboardInterrupt` in the main
    thread, which only waits for them to clean up. Only the main thread can set a handler."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    from imagesmith import cancel

    def handler(signum: int, frame: object) -> None:
        cancel.interrupt()
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _os_cause(error: BaseException) -> int | None:
    """The errno of the OSError ``error`` was raised while handling (``raise ... from None``
    keeps it as the context), if any: the library's per-module errors name the path and the
    cause in their message; this gives them the exit code of a local file-system failure."""
    context = error.__context__
    # Something that is not there (no such file, a file where a directory should be) is a wrong
    # input the message names, not a file system that failed: it keeps its module's category.
    absent = FileNotFoundError | NotADirectoryError | ConnectionError
    if isinstance(context, OSError) and not isinstance(context, absent):
        return context.errno
    return None


class _OutputError(Exception):
    """Writing standard output failed: a closed pipe (``| head``), a full disk (``> /dev/full``)."""

    def __init__(self, error: OSError) -> None:
        super().__init__(str(error))
        self.error = error


class _Output(io.TextIOBase):
    """Standard output for the commands: a write or flush that fails raises :class:`_OutputError`,
    told apart from the library's own OSErrors (which name their paths)."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def write(self, s: str) -> int:
        try:
            return self.stream.write(s)
        except OSError as exc:
            raise _OutputError(exc) from None

    def flush(self) -> None:
        try:
            self.stream.flush()
        except OSError as exc:
            raise _OutputError(exc) from None

    def isatty(self) -> bool:
        return self.stream.isatty()

    def fileno(self) -> int:
        return self.stream.fileno()

    def close(self) -> None:
        """Leave the stream open (and unflushed: main flushes it) when this wrapper goes away."""


def _output_failed(error: OSError, stream: TextIO, stderr: TextIO) -> int:
    """A closed pipe ends the command quietly with 141 (128 + SIGPIPE, what a shell reports for
    `cmd | head` when cmd dies of SIGPIPE); any other failure is one line (5, or 6 for a full disk)."""
    if stream is sys.stdout or stream is sys.__stdout__:
        # What is left in the buffer would fail again when Python flushes it at exit.
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, stream.fileno())
            os.close(devnull)
        except (OSError, ValueError):
            pass
    if isinstance(error, BrokenPipeError):
        return 141
    failure = file_error(
        "write", None, error, "free space on the device it goes to" if error.errno in DISK_FULL_ERRNOS else ""
    )
    _say(f"imagesmith: error: {failure}", stderr)
    return _exit_code(failure)


def _merge_globals(args: argparse.Namespace) -> None:
    """Fold the global options given before the command into those given after it."""
    args.debug = args.debug_global or getattr(args, "debug", False)
    if args.json_global:
        if args.json is None:
            raise _ParseError(f"--json: `imagesmith {args.command}` has no JSON output")
        args.json = True
    if getattr(args, "raw", False) and args.json:
        raise _ParseError(
            "argument --raw: not allowed with argument --json (see `imagesmith inspect --help`)"
        )


def main(
    argv: Sequence[str] | None = None, stdout: TextIO | None = None, stderr: TextIO | None = None
) -> int:
    """Run the CLI with ``argv`` and return the exit code (callable from tests)."""
    stream = stdout or sys.stdout
    stderr = stderr or sys.stderr
    out = _Output(stream)
    try:
        code = _main(argv, cast(TextIO, out), stderr)
        out.flush()
        return code
    except _OutputError as failure:
        return _output_failed(failure.error, stream, stderr)


def _main(argv: Sequence[str] | None, stdout: TextIO, stderr: TextIO) -> int:
    parser = _parser()
    try:
        # --help and --version go to ``stdout`` too: argparse would swallow a failed write there.
        with contextlib.redirect_stdout(stdout):
            args = parser.parse_args(argv)
        _merge_globals(args)
    except SystemExit as exc:
        return int(exc.code or 0)
    except _ParseError as exc:
        _say(f"imagesmith: error: {exc}", stderr)
        return 2
    if args.debug:
        import logging

        handler = logging.StreamHandler(stderr)
        handler.setFormatter(logging.Formatter("imagesmith: %(name)s: %(message)s"))
        logger = logging.getLogger("imagesmith")
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG)
    from imagesmith import cancel
    from imagesmith.progressview import ProgressView  # here: `imagesmith --version` does not import it

    progress = ProgressView.for_cli(stderr, quiet=bool(getattr(args, "quiet", False)))
    cancel.reset()
    try:
        with _interrupts():
            return _run(args, stdout, stderr, progress)
    except ImagesmithError as error:
        progress.close()
        from imagesmith.pipeline.closure import ClosureError

        if isinstance(error, ClosureError):
            # The message names the first finding; the others get a line each.
            for finding in error.report.findings[1:]:
                _say(f"imagesmith: {finding.line()}", stderr)
        _say(f"imagesmith: error: {error}", stderr)
        return _exit_code(error)
    except KeyboardInterrupt:
        # Every worker has stopped by now (cancel.interrupt), each cleaning up after itself.
        progress.close()
        print("imagesmith: interrupted", file=stderr)
        return 130
    except OSError as exc:
        # The last resort for an OSError the library let through: one line, never a traceback.
        failure = file_error("access", exc.filename, exc)
        _say(f"imagesmith: error: {failure}", stderr)
        return _exit_code(failure)
    finally:
        progress.close()
        if args.debug:
            logging.getLogger("imagesmith").handlers.clear()  # imported above, with --debug


def entry_point() -> None:
    """Console-script entry: exit with :func:`main`'s code."""
    sys.exit(main())
