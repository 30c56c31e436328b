"""``imagesmith inspect``, ``copy``, ``merge`` and ``pull``: the commands over images that exist."""

from __future__ import annotations

from typing import Any, TextIO

from imagesmith.cli.args import platform, platform_choice
from imagesmith.cli.context import Context
from imagesmith.cli.output import human, say
from imagesmith.cli.registry import run_manifest
from imagesmith.errors import UsageError


def run_inspect(ctx: Context) -> int:
    from imagesmith.ops.inspect import inspect

    args = ctx.args
    if args.referrers:
        if args.raw or args.platform:
            option = "--raw" if args.raw else "--platform"
            raise UsageError(
                f"{option} does not go with --referrers, which lists what is attached to "
                "the reference itself: leave one out"
            )
        return _run_referrers(ctx)
    if args.artifact_type:
        raise UsageError("--artifact-type filters --referrers: add --referrers")
    if args.raw:
        return run_manifest(ctx)
    info = inspect(args.reference, pool=ctx.pool, platform=platform(args.platform))
    return ctx.render(info.to_json, lambda: _print_inspect(info.to_json(), ctx.stdout))


def _run_referrers(ctx: Context) -> int:
    from imagesmith.artifacts.referrers import list_attachments

    args = ctx.args
    subject, attachments = list_attachments(args.reference, pool=ctx.pool, artifact_type=args.artifact_type)

    def lines() -> None:
        say(f"Subject:    {args.reference} ({subject})", ctx.stdout)
        if not attachments:
            print("Nothing is attached.", file=ctx.stdout)
        for item in attachments:
            if item.kind == "signature":
                count = f"{item.count} signature{'s' if item.count != 1 else ''}"
                say(f"  signature  {item.artifact_type}  {item.digest}  {count}, {item.via}", ctx.stdout)
            else:
                title = item.annotations.get("org.opencontainers.image.title", "")
                # An artifact type and a title are whatever the registry says: shown escaped.
                say(
                    f"  referrer   {item.artifact_type}  {item.digest}  {human(item.size)}, {item.via}"
                    + (f"  {title}" if title else ""),
                    ctx.stdout,
                )

    return ctx.render(
        lambda: {"subject": str(subject), "attached": [a.to_json() for a in attachments]}, lines
    )


def run_copy(ctx: Context) -> int:
    from imagesmith.transports.copy import copy_image

    args = ctx.args
    choice = platform_choice(args.platform)
    digestfile = ctx.digestfile()
    result = copy_image(
        args.source,
        args.destination,
        pool=ctx.pool,
        cache=ctx.cache,
        platform=choice,
        jobs=max(1, args.jobs),
        docker_host=args.docker_host,
        progress=ctx.progress,
    )
    line = f"Copied {result.source} -> {result.destination} ({result.digest})"
    return ctx.written(result, lambda: print(line, file=ctx.stdout), digestfile)


def run_merge(ctx: Context) -> int:
    from imagesmith.ops.merge import merge_images
    from imagesmith.ops.platformmerge import merge_builds
    from imagesmith.transports.registry import RegistryLocation

    args = ctx.args
    if args.tag_template is not None and args.repo is None:
        raise UsageError("--tag-template names the index with --repo: leave it out with --tag")
    jobs = max(1, args.jobs)
    digestfile = ctx.digestfile()
    if args.repo is not None:
        result = merge_builds(
            args.sources,
            args.repo,
            pool=ctx.pool,
            tag_template=args.tag_template,
            progress=ctx.progress,
            jobs=jobs,
        )
    else:
        result = merge_images(args.sources, args.tag, pool=ctx.pool, progress=ctx.progress, jobs=jobs)

    def lines() -> None:
        print(f"Pushed {RegistryLocation(result.reference)} ({result.digest})", file=ctx.stdout)
        print(f"Platforms: {', '.join(result.platforms)}", file=ctx.stdout)

    return ctx.written(result, lines, digestfile)


def run_pull(ctx: Context) -> int:
    from imagesmith.ops.pull import pull

    args = ctx.args
    result = pull(
        args.reference,
        args.rootfs,
        packages_only=args.packages_only,
        platform=platform(args.platform),
        jobs=max(1, args.jobs),
        registry=ctx.registry,
        cache=ctx.cache,
        progress=ctx.progress,
    )

    def lines() -> None:
        stats = result.stats
        say(
            f"Unpacked {result.layers} layers of {result.source} ({result.digest}) into {result.rootfs}: "
            f"{stats.files} files, {stats.dirs} directories, {stats.symlinks} symlinks",
            ctx.stdout,
        )
        for skipped in stats.skipped:
            say(f"  skipped {skipped}", ctx.stdout)

    return ctx.written(result, lines)


def _print_inspect(data: dict[str, Any], out: TextIO) -> None:
    say(f"Reference:  {data['reference']}", out)
    say(f"Digest:     {data['digest']}", out)
    say(f"Media type: {data['mediaType']}", out)
    if "manifests" in data:
        say("Platforms:", out)
        for entry in data["manifests"]:
            entry_platform = entry.get("platform") or {}
            name = (
                "/".join(
                    x
                    for x in (
                        entry_platform.get("os"),
                        entry_platform.get("architecture"),
                        entry_platform.get("variant"),
                    )
                    if x
                )
                or "-"
            )
            say(f"  {name:<20} {entry['digest']} ({human(entry['size'])})", out)
        return
    if "platform" in data:
        say(f"Platform:   {data['platform']}", out)
        say(f"Created:    {data.get('created')}", out)
        config = data["config"]
        for key in ("Entrypoint", "Cmd", "WorkingDir"):
            if config.get(key):
                say(f"{key + ':':<11} {config[key]}", out)
        say("Env:", out)
        for entry in config["Env"]:
            say(f"  {entry}", out)
        for key, value in sorted(config.get("Labels", {}).items()):
            say(f"Label:      {key}={value}", out)
    for key, value in sorted(data.get("annotations", {}).items()):
        say(f"Annotation: {key}={value}", out)
    say(f"Layers ({len(data['layers'])}):", out)
    history = [h for h in data.get("history", []) if not h.get("empty_layer")]
    for i, layer in enumerate(data["layers"]):
        note = history[i].get("created_by", "") if i < len(history) else ""
        say(f"  {layer['digest']} {human(layer['size']):>9}  {note[:60]}", out)
