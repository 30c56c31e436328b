"""``imagesmith makefile`` and ``imagesmith pipeline``: files that build a stack elsewhere."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from imagesmith.cli.args import ENGINES, platforms
from imagesmith.cli.context import Context
from imagesmith.cli.output import write_output
from imagesmith.errors import UsageError


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
    if options.auth_file is not None:
        # The file's path, never what it holds (nor --creds): each build reads it as this did.
        flags += ["--authfile", str(options.auth_file.resolve())]
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
