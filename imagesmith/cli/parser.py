"""Every command's options, in the order ``imagesmith --help`` lists them: the whole command
line in one place.

Each command is one ``add_X`` function: its name, help, description and options, and the handler
that runs it (``handler=``, in the module of its group). The options several commands share
(registry settings, ``-j``, ``-q``, ``--digestfile``...) come from :mod:`imagesmith.cli.args`;
the global ones are added to every command at the end, so that they work after its name too.
Nothing here, nor in the handler modules, imports the library at module level (they import
it inside the handlers): ``--help``, ``--version`` and ``completion`` build this parser only.

Size: one ``add_X`` per command (24 commands, ~25 lines each); kept together so that the
interface reads as one page and a new option is reviewed against its neighbours.
"""

from __future__ import annotations

import argparse

from imagesmith._version import __version__
from imagesmith.cli import build, generate, images, local, registry, signing
from imagesmith.cli.args import (
    CHECK_MODES,
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_INSTALL,
    DEFAULT_MAX_LAYERS,
    ENGINES,
    INDEX_TAG,
    KEY_PASSWORD_ENV,
    SBOM_FORMATS,
    SPACK_INDEX_TAG,
    Commands,
    Parser,
    global_args,
    jobs,
    jobs_arg,
    json_arg,
    leaves,
    output_args,
    packages_arg,
    quiet_arg,
    registry_args,
    written_args,
)


def parser() -> argparse.ArgumentParser:
    """The ``imagesmith`` parser: global options, then every command."""
    top = Parser(
        prog="imagesmith",
        description="Assemble runnable container images from install prefixes and tarballs, "
        "without a Docker daemon or a Dockerfile.",
    )
    top.add_argument("--version", action="version", version=f"imagesmith {__version__}")
    global_args(top, "_global")
    commands = top.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True
    for add in (
        add_build,
        add_inspect,
        add_sign,
        add_keygen,
        add_import,
        add_copy,
        add_merge,
        add_pull,
        add_serve,
        add_index,
        add_makefile,
        add_pipeline,
        add_cache,
        add_login,
        add_logout,
        add_version,
        add_completion,
        add_verbs,
    ):
        add(commands)
    for leaf in leaves(top):
        if leaf is not top:
            global_args(leaf, "")
            if "--json" not in leaf._option_string_actions:
                leaf.set_defaults(json=None)  # `imagesmith --json COMMAND` is refused for it
    return top


def add_build(commands: Commands) -> None:
    p = commands.add_parser(
        "build",
        help="build an image from packages on a base image and push it",
        description="Append one layer per package (dependencies first) to a base image, merge "
        "the packages' environment into its config, and push the result.",
    )
    p.set_defaults(handler=build.run_build)
    packages_arg(
        p,
        "package files (JSON or TOML), Spack install prefixes, build-cache tarballs or Spack "
        "build caches (DIR, DIR:NAME, DIR:/HASH, a .spec.manifest.json, oci://REGISTRY/REPO[:TAG]); "
        "dependencies are added",
        nargs="*",
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
    output_args(p)
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
    jobs_arg(p, "parallel layer builds and uploads")
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
    written_args(p, "what was written (the image, or the index)")


def add_inspect(commands: Commands) -> None:
    p = commands.add_parser(
        "inspect",
        help="show an image's manifest and config",
        description="Fetch a manifest (or index) and the image config from a registry.",
    )
    p.set_defaults(handler=images.run_inspect)
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
    registry_args(p, "")


def add_sign(commands: Commands) -> None:
    p = commands.add_parser(
        "sign",
        help="sign an image in its registry (sigstore signature that podman and skopeo verify)",
        description="Sign the manifest digest of REF with an ECDSA P-256 private key, as a sigstore "
        "simple-signing signature in the sha256-<hex>.sig tag (containers/image's "
        "use-sigstore-attachments). See docs/trust.md.",
    )
    p.set_defaults(handler=signing.run_sign)
    p.add_argument("reference", metavar="REF", help="the image (or index) to sign: repo:tag or repo@digest")
    p.add_argument(
        "--key", required=True, metavar="KEY", help=f"the private key ({KEY_PASSWORD_ENV} or a prompt)"
    )
    json_arg(p)
    registry_args(p, "")


def add_keygen(commands: Commands) -> None:
    p = commands.add_parser(
        "keygen",
        help="create an ECDSA P-256 key pair for signing",
        description=f"Write a private key (PKCS#8 PEM, mode 0600; encrypted when {KEY_PASSWORD_ENV} is set "
        "or --encrypt prompts for a password) and its public key (KEY.pub unless --public), which "
        "policy.json's sigstoreSigned keyPath names. Existing files are never replaced.",
    )
    p.set_defaults(handler=signing.run_keygen)
    p.add_argument("key", metavar="KEY", help="where to write the private key")
    p.add_argument("--public", metavar="PATH", help="where to write the public key (default KEY.pub)")
    p.add_argument("--encrypt", action="store_true", help=f"ask for a password (or set {KEY_PASSWORD_ENV})")


def add_import(commands: Commands) -> None:
    p = commands.add_parser(
        "import",
        help="turn a root filesystem into a one-layer base image and push it",
        description="Archive a root filesystem (a directory or a tarball) reproducibly, keeping "
        "owners, modes and special files, and push it as a one-layer image.",
    )
    p.set_defaults(handler=build.run_import)
    p.add_argument("rootfs", metavar="ROOTFS", help="directory or tarball (.tar, .tar.gz, .tar.zst)")
    p.add_argument("--tag", metavar="REF", help="target reference (repo:tag)")
    output_args(p)
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
    written_args(p, "the image")


def add_copy(commands: Commands) -> None:
    p = commands.add_parser(
        "copy",
        help="copy an image or index between registries, OCI layouts and archives",
        description="Copy SRC to DST, blobs streamed and verified, manifests byte for byte (so the "
        "digest does not change). Locations: REF, docker://REF, oci:DIR[:TAG], "
        "docker-archive:PATH[:NAME:TAG], docker-daemon:NAME:TAG (destination only).",
    )
    p.set_defaults(handler=images.run_copy)
    p.add_argument("source", metavar="SRC")
    p.add_argument("destination", metavar="DST")
    p.add_argument(
        "--platform",
        metavar="OS/ARCH[/VARIANT]|all",
        help="copy one platform of an index (default: all, or this machine's for a destination "
        "that holds a single image)",
    )
    p.add_argument("--docker-host", metavar="URL", help="daemon for docker-daemon: (default DOCKER_HOST)")
    jobs_arg(p, "parallel blob copies")
    written_args(p, "what was copied (the image, or the index)")


def add_merge(commands: Commands) -> None:
    p = commands.add_parser(
        "merge",
        help="assemble per-platform images of one registry into one multi-platform index",
        description="Push one index (OCI image index, or Docker manifest list for Docker v2 images) "
        "under --tag naming every image of the SOURCEs: single-platform images (platform read from "
        "their config) and the entries of indexes. Blobs are mounted into the target repository, "
        "never downloaded; sources must be on the target's registry (imagesmith copy moves them).",
    )
    p.set_defaults(handler=images.run_merge)
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
    jobs_arg(p, "parallel blob mounts")
    written_args(p, "the index")


def add_pull(commands: Commands) -> None:
    p = commands.add_parser(
        "pull",
        help="unpack an image's layers into a directory, safely",
        description="Fetch the layers (verified, through the cache) and unpack them in order into "
        "DIR, which must be new or empty. No member can write outside DIR.",
    )
    p.set_defaults(handler=images.run_pull)
    p.add_argument("reference", metavar="LOCATION", help="REF, oci:DIR[:TAG] or docker-archive:PATH")
    p.add_argument("--rootfs", required=True, metavar="DIR", help="directory to unpack into")
    p.add_argument(
        "--packages-only",
        action="store_true",
        help="only the layers imagesmith added for packages, not the base",
    )
    p.add_argument("--platform", metavar="OS/ARCH[/VARIANT]", help="for an index (default: this machine's)")
    jobs_arg(p, "parallel downloads")
    json_arg(p)
    quiet_arg(p)
    registry_args(p, "")


def add_serve(commands: Commands) -> None:
    p = commands.add_parser(
        "serve",
        help="run an embedded OCI registry backed by OCI layouts",
        description="Serve the distribution API over plain http from DIR: repository a/b is the "
        "OCI layout DIR/a/b. No authentication: bind to loopback or a trusted network.",
    )
    p.set_defaults(handler=registry.run_serve)
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


def add_index(commands: Commands) -> None:
    p = commands.add_parser(
        "index",
        help="the repository index: what a repository holds",
        description="An index artifact (tag index.imagesmith by default) listing every image of a "
        "repository with its package name, version, hash, platforms and digest, rebuilt from the "
        "registry's tag list; where the repository holds Spack packages, Spack's own build-cache "
        "database too, under index.spack.",
    )
    p.set_defaults(handler=registry.run_index)
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
        jobs_arg(q, "parallel requests", default=8)
        json_arg(q, "print JSON")
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
        registry_args(q, "")


def add_makefile(commands: Commands) -> None:
    p = commands.add_parser(
        "makefile",
        help="write a Makefile with one target per image of a stack",
        description="Generate a Makefile with one target per package image (its dependencies' targets "
        "as prerequisites), so `make -j N` or a CI matrix builds a stack in parallel. See docs/makefile.md.",
    )
    p.set_defaults(handler=generate.run_makefile)
    packages_arg(p, "package files, Spack prefixes, tarballs or build caches; dependencies are added")
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
        "-j", "--jobs", type=jobs, default=4, metavar="N", help="default parallel make jobs (JOBS)"
    )
    registry_args(p, "")


def add_pipeline(commands: Commands) -> None:
    p = commands.add_parser(
        "pipeline",
        help="write a GitLab CI or GitHub Actions pipeline with one job per image of a stack",
        description="Generate a CI pipeline building a stack: one job per image (per platform), each "
        "needing its dependencies' jobs, on the base image pinned by digest now; a merge job per image "
        "for several platforms; one job updating the repository index. See docs/pipelines.md.",
    )
    p.set_defaults(handler=generate.run_pipeline)
    packages_arg(p, "package files, Spack prefixes or tarballs; dependencies are added")
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
    registry_args(p, "")


def add_cache(commands: Commands) -> None:
    p = commands.add_parser(
        "cache",
        help="show or prune the local blob cache",
        description="The content-addressed blob cache: built layers and fetched base layers.",
    )
    p.set_defaults(handler=local.run_cache)
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
    json_arg(info, "print JSON")
    prune = cache_commands.add_parser(
        "prune",
        help="remove blobs not used recently (everything by default)",
        description="Remove cached blobs and records; the next build recreates what it needs.",
    )
    prune.add_argument(
        "--older-than", type=float, metavar="DAYS", help="only what has not been used for DAYS days"
    )
    prune.add_argument("--dry-run", action="store_true", help="count, remove nothing")
    json_arg(prune, "print JSON")


def add_login(commands: Commands) -> None:
    p = commands.add_parser(
        "login",
        help="check credentials against a registry and store them where docker does",
        description="Verify USER and the password against REGISTRY (GET /v2/ with Basic or a "
        "Bearer token), then store them in $DOCKER_CONFIG/config.json or ~/.docker/config.json, "
        "or through the credential helper that file names for the host.",
    )
    p.set_defaults(handler=registry.run_login)
    p.add_argument("registry", metavar="REGISTRY", help="HOST[:PORT]; docker.io for Docker Hub")
    p.add_argument("-u", "--username", metavar="USER", help="user name (prompted on a terminal)")
    secret = p.add_mutually_exclusive_group()
    secret.add_argument(
        "--password-stdin", action="store_true", help="read the password from stdin (for scripts)"
    )
    secret.add_argument(
        "-p", "--password", metavar="PASS", help="the password (visible in the process list: avoid)"
    )
    registry_args(p, "")


def add_logout(commands: Commands) -> None:
    p = commands.add_parser(
        "logout",
        help="remove the credentials stored for a registry",
        description="Remove REGISTRY's entries from docker's config file and, when one is "
        "configured, from the credential helper.",
    )
    p.set_defaults(handler=registry.run_logout)
    p.add_argument("registry", metavar="REGISTRY", help="HOST[:PORT]; docker.io for Docker Hub")
    registry_args(p, "")


def add_version(commands: Commands) -> None:
    p = commands.add_parser(
        "version",
        help="show the version and the codecs in use (they decide layer digests)",
        description="Print imagesmith's version, Python's, and the gzip and zstd codecs a build "
        "would use now: the same tar compressed by another codec (isal or zlib, another version or "
        "level) gives another layer digest. IMAGESMITH_GZIP=zlib|isal chooses the gzip codec.",
    )
    p.set_defaults(handler=local.run_version)
    json_arg(p, "print JSON")


def add_completion(commands: Commands) -> None:
    p = commands.add_parser(
        "completion",
        help="print a shell completion script (bash, zsh)",
        description="Print the completion script of SHELL. bash: `source <(imagesmith completion "
        "bash)` in ~/.bashrc; zsh: `source <(imagesmith completion zsh)` in ~/.zshrc.",
    )
    p.set_defaults(handler=local.run_completion)
    p.add_argument("shell", choices=["bash", "zsh"], metavar="SHELL", help="bash or zsh")


def add_verbs(commands: Commands) -> None:
    """``tags``, ``digest``, ``delete``, ``tag``, ``manifest``, ``config``."""
    p = commands.add_parser(
        "tags",
        help="list the tags of a repository",
        description="Print every tag of REPO, one a line, in the registry's order (GET "
        "/v2/REPO/tags/list, following the registry's Link pages).",
    )
    p.set_defaults(handler=registry.run_tags)
    p.add_argument("repo", metavar="REPO", help="repository, e.g. ghcr.io/acme/stack")
    json_arg(p, 'print {"repository": ..., "tags": [...]}')

    p = commands.add_parser(
        "digest",
        help="print the digest of an image or index",
        description="Print the manifest digest LOCATION names (one HEAD request to a registry), "
        "as `docker pull REPO@DIGEST` takes it.",
    )
    p.set_defaults(handler=registry.run_digest)
    p.add_argument("reference", metavar="LOCATION", help="REF, oci:DIR[:TAG] or docker-archive:PATH")
    p.add_argument(
        "--platform", metavar="OS/ARCH[/VARIANT]", help="for an index: the digest of this platform's image"
    )
    json_arg(p)

    p = commands.add_parser(
        "delete",
        help="delete an image (its manifest) from a registry",
        description="Delete the manifest REF names. A tag is resolved to its digest and the "
        "manifest is deleted by digest, as skopeo delete does: every other tag on that manifest "
        "goes too. Blobs stay until the registry's garbage collection.",
    )
    p.set_defaults(handler=registry.run_delete)
    p.add_argument("reference", metavar="REF", help="repo:tag or repo@digest")
    json_arg(p)

    p = commands.add_parser(
        "tag",
        help="add tags to an image, in its repository",
        description="Put the manifest SRC names under each NEWTAG of the same repository: the "
        "same bytes, so the same digest; no blob is read or copied.",
    )
    p.set_defaults(handler=registry.run_tag)
    p.add_argument("source", metavar="SRC", help="repo:tag or repo@digest")
    p.add_argument("tags", nargs="+", metavar="NEWTAG", help="a tag (not a reference): 2.0, latest")
    json_arg(p)

    for name, what in (("manifest", "manifest (or index)"), ("config", "image config")):
        p = commands.add_parser(
            name,
            help=f"print the {what} exactly as stored",
            description=f"Write the {what} bytes LOCATION names to stdout, exactly as stored: no "
            "newline added, so they hash to the digest (on a terminal, control characters are "
            "shown escaped).",
        )
        p.set_defaults(handler=registry.run_manifest if name == "manifest" else registry.run_config)
        p.add_argument("reference", metavar="LOCATION", help="REF, oci:DIR[:TAG] or docker-archive:PATH")
        p.add_argument(
            "--platform",
            metavar="OS/ARCH[/VARIANT]",
            help="for an index: that platform's image"
            + (" (default: this machine's)" if name == "config" else ""),
        )
