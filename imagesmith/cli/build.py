"""``imagesmith build`` and ``imagesmith import``: the commands that make a new image.

Their options are in :mod:`imagesmith.cli.parser`; a handler states its library call and its
human lines, :class:`imagesmith.cli.context.Context` does the rest.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from imagesmith.cli.args import (
    command,
    pairs,
    platform,
    platforms,
)
from imagesmith.cli.context import Context
from imagesmith.cli.output import emit_list, say
from imagesmith.cli.signing import signing_key
from imagesmith.errors import UsageError

if TYPE_CHECKING:
    from imagesmith.inputs.packages import Package
    from imagesmith.pipeline.closure import ClosureReport
    from imagesmith.pipeline.results import BuildResult, ImportResult, MultiBuildResult


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
        platform=platform(args.platform),
        family=args.format,
        env=tuple(args.env),
        cmd=command(args.cmd, "--cmd"),
        compression=args.compression,
        output=args.output,
        load=args.load,
        docker_host=args.docker_host,
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
