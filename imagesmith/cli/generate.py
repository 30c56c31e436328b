"""``imagesmith makefile`` and ``imagesmith pipeline``: files that build a stack elsewhere."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from imagesmith.cli.args import (
    DEFAULT_INSTALL,
    ENGINES,
    INDEX_TAG,
    Commands,
    jobs,
    packages_arg,
    platforms,
    registry_args,
)
from imagesmith.cli.context import Context
from imagesmith.cli.output import write_output
from imagesmith.errors import UsageError


def add_makefile(commands: Commands) -> None:
    p = commands.add_parser(
        "makefile",
        help="write a Makefile with one target per image of a stack",
        description="Generate a Makefile with one target per package image (its dependencies' targets "
        "as prerequisites), so `make -j N` or a CI matrix builds a stack in parallel. See docs/makefile.md.",
    )
    p.set_defaults(handler=run_makefile)
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
    p.set_defaults(handler=run_pipeline)
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


def run_makefile(ctx: Context) -> int:
    from imagesmith.generate.makefile import render_makefile
    from imagesmith.inputs.load import load_packages

    args, options = ctx.args, ctx.registry
    packages = load_packages(args.packages, registry=options)
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
    write_output(text, target, ctx.stdout)
    return 0


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


def run_pipeline(ctx: Context) -> int:
    from imagesmith.generate.ci import check_runners, pin_base, relative_base, render_pipeline
    from imagesmith.inputs.load import load_packages

    args = ctx.args
    if args.engine not in ENGINES:
        raise UsageError(f"unknown CI engine {args.engine!r}: use {' or '.join(ENGINES)}")
    runners = _runners(args.runner)
    targets = platforms(args.platform)
    if targets:
        check_runners(targets, runners)  # before anything is read or looked up
    packages = load_packages(args.packages, registry=ctx.registry)
    target = Path(args.output) if args.output else None
    directory = Path(args.relative_to).resolve() if args.relative_to else relative_base(target)
    generated = render_pipeline(
        packages,
        engine=args.engine,
        base=pin_base(args.base_image, targets, pool=ctx.pool),
        repo=args.repo,
        runners=runners,
        install=args.install,
        image=args.image,
        insecure=sorted(ctx.registry.insecure),
        directory=directory,
        package_args=args.packages,
    )
    for note in generated.notes:
        print(f"imagesmith: note: {note}", file=ctx.stderr)
    write_output(generated.text, target, ctx.stdout)
    return 0
