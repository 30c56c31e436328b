"""``imagesmith build`` and ``imagesmith import``: the commands that make a new image.

Each command is two functions: ``add_X`` (its options, and ``handler=run_X``) and ``run_X``
(its library call and human lines); :class:`imagesmith.cli.context.Context` does the rest.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from imagesmith.cli.args import (
    CHECK_MODES,
    DEFAULT_MAX_LAYERS,
    KEY_PASSWORD_ENV,
    SBOM_FORMATS,
    Commands,
    command,
    jobs_arg,
    output_args,
    packages_arg,
    pairs,
    platform,
    platforms,
    written_args,
)
from imagesmith.cli.context import Context
from imagesmith.cli.output import emit_list, say
from imagesmith.cli.signing import signing_key
from imagesmith.errors import UsageError

if TYPE_CHECKING:
    from imagesmith.inputs.packages import Package
    from imagesmith.pipeline.closure import ClosureReport
    from imagesmith.pipeline.results import BuildResult, ImportResult, MultiBuildResult


def add_build(commands: Commands) -> None:
    p = commands.add_parser(
        "build",
        help="build an image from packages on a base image and push it",
        description="Append one layer per package (dependencies first) to a base image, merge "
        "the packages' environment into its config, and push the result.",
    )
    p.set_defaults(handler=run_build)
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


def add_import(commands: Commands) -> None:
    p = commands.add_parser(
        "import",
        help="turn a root filesystem into a one-layer base image and push it",
        description="Archive a root filesystem (a directory or a tarball) reproducibly, keeping "
        "owners, modes and special files, and push it as a one-layer image.",
    )
    p.set_defaults(handler=run_import)
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


def _build_inputs(ctx: Context) -> tuple[list[Package], list[Package]]:
    """The packages of a build, dependencies first, and its roots (the packages named, or the
    environment's roots; only looked up for --each-root)."""
    from imagesmith.inputs.load import load_package, load_packages
    from imagesmith.inputs.spackenv import load_environment

    args = ctx.args
    if args.spack_env is not None:
        if args.packages:
            raise UsageError("give PACKAGEs or --spack-env DIR, not both")
        return load_environment(args.spack_env, install_tree=args.spack_install_tree)
    if args.spack_install_tree is not None:
        raise UsageError("--spack-install-tree goes with --spack-env DIR")
    if not args.packages:
        raise UsageError("name at least one PACKAGE, or a Spack environment with --spack-env DIR")
    packages = load_packages(args.packages, registry=ctx.registry)
    roots = [load_package(path, registry=ctx.registry) for path in args.packages] if args.each_root else []
    return packages, roots


def run_build(ctx: Context) -> int:
    from imagesmith.pipeline.results import BuildOptions, BuildResult
    from imagesmith.pipeline.run import build, build_each, build_each_platforms, build_platforms

    args = ctx.args
    targets = platforms(args.platform)
    each = "--each" if args.each else "--each-root" if args.each_root else None
    if args.digestfile and each:
        raise UsageError(f"--digestfile holds one digest: {each} writes one image per package")
    digestfile = ctx.digestfile()
    packages, roots = _build_inputs(ctx)
    options = BuildOptions(
        platform=targets[0] if len(targets) == 1 else None,
        compression=args.compression,
        level=args.level,
        env=tuple(args.env),
        entrypoint=command(args.entrypoint, "--entrypoint"),
        cmd=command(args.cmd, "--cmd"),
        workdir=args.workdir,
        labels=pairs(args.label, "--label"),
        annotations=pairs(args.annotation, "--annotation"),
        profile_script=args.profile_script,
        tag_template=args.tag_template,
        jobs=max(1, args.jobs),
        max_layers=args.max_layers,
        check=args.check,
        sbom=tuple(args.sbom),
        signing_key=signing_key(args.sign) if args.sign else None,
    )
    common: dict[str, Any] = {
        "options": options,
        "registry": ctx.registry,
        "cache": ctx.cache,
        "progress": ctx.progress,
    }
    multi = len(targets) > 1
    if each:
        if args.tag or args.load:
            raise UsageError(
                f"{each} tags every {'index' if multi else 'image'} from the template: use --repo REPO "
                "(or --output oci:DIR), without --load"
            )
        where = {"repo": args.repo, "output": args.output, "roots": roots if args.each_root else None}
        results: Sequence[BuildResult | MultiBuildResult] = (
            build_each_platforms(args.base_image, packages, targets, **where, **common)
            if multi
            else build_each(args.base_image, packages, **where, **common)
        )
        _closure_warnings(results, ctx.progress.stream)
        if args.json:
            emit_list((r.to_json() for r in results), ctx.stdout)
        elif args.quiet:
            print("\n".join(r.digest for r in results), file=ctx.stdout)
        else:
            for written in results:
                _report_written(written, ctx.stdout)
        _print_notes(results, ctx.progress.stream)
        return 0
    result: BuildResult | MultiBuildResult
    if multi:
        if args.load:
            raise UsageError(f"--platform {args.platform} builds an index: --load works on one platform")
        result = build_platforms(
            args.base_image, packages, targets, repo=args.repo, tag=args.tag, output=args.output, **common
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
    _closure_warnings([result], ctx.progress.stream)
    if isinstance(result, BuildResult):
        _write_sboms(result, args.sbom_output)

    def human() -> None:
        _report_written(result, ctx.stdout)
        if isinstance(result, BuildResult):
            for attached in result.attached:
                say(f"Attached {attached.artifact_type} {attached.digest} ({attached.via})", ctx.stdout)
            for signed in result.signed:
                say(f"Signed {signed.identity} ({signed.digest}) in {signed.tag}", ctx.stdout)

    ctx.written(result, human, digestfile)
    _print_notes([result], ctx.progress.stream)
    return 0


def run_import(ctx: Context) -> int:
    from imagesmith.pipeline.run import import_rootfs

    args = ctx.args
    digestfile = ctx.digestfile()
    result = import_rootfs(
        args.rootfs,
        args.tag,
        output=args.output,
        load=args.load,
        docker_host=args.docker_host,
        platform=platform(args.platform),
        family=args.format,
        env=tuple(args.env),
        cmd=command(args.cmd, "--cmd"),
        compression=args.compression,
        registry=ctx.registry,
        cache=ctx.cache,
        progress=ctx.progress,
    )
    return ctx.written(
        result, lambda: _report_written(result, ctx.stdout, f" for {result.platform}"), digestfile
    )


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
                    say(f"imagesmith: warning: {line}", stderr)


def _report_written(
    result: BuildResult | ImportResult | MultiBuildResult, stdout: TextIO, suffix: str = ""
) -> None:
    from imagesmith.pipeline.results import MultiBuildResult

    verb = "Pushed" if result.pushed else "Wrote"
    if isinstance(result, MultiBuildResult):
        print(f"{verb} {result.destination} ({result.digest}), an index of:", file=stdout)
        for target, image in zip(result.platforms, result.images, strict=True):
            print(f"  {target}: {image.digest}", file=stdout)
        return
    if result.destinations:
        print(f"{verb} {result.destination} ({result.digest}){suffix}", file=stdout)
    for name in result.loaded:
        print(f"Loaded {name} into the docker daemon", file=stdout)


def _print_notes(results: Sequence[BuildResult | MultiBuildResult], stream: TextIO) -> None:
    """One line per note (why a Spack package's image is no Spack build-cache entry), on
    standard error whatever the output format, so that a script sees it and JSON stays clean."""
    for result in results:
        for note in result.notes:
            print(f"imagesmith: note: {note}", file=stream)


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
