"""``imagesmith inspect``, ``copy``, ``merge`` and ``pull``: the commands over images that exist."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal, TextIO

from imagesmith.cli.args import Commands, jobs_arg, json_arg, platform, quiet_arg, registry_args, written_args
from imagesmith.cli.context import Context
from imagesmith.cli.output import human, say
from imagesmith.cli.registry import run_manifest
from imagesmith.errors import UsageError

if TYPE_CHECKING:
    from imagesmith.oci.model import Platform


def add_inspect(commands: Commands) -> None:
    p = commands.add_parser(
        "inspect",
        help="show an image's manifest and config",
        description="Fetch a manifest (or index) and the image config from a registry.",
    )
    p.set_defaults(handler=run_inspect)
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


def add_copy(commands: Commands) -> None:
    p = commands.add_parser(
        "copy",
        help="copy an image or index between registries, OCI layouts and archives",
        description="Copy SRC to DST, blobs streamed and verified, manifests byte for byte (so the "
        "digest does not change). Locations: REF, docker://REF, oci:DIR[:TAG], "
        "docker-archive:PATH[:NAME:TAG], docker-daemon:NAME:TAG (destination only).",
    )
    p.set_defaults(handler=run_copy)
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
    p.set_defaults(handler=run_merge)
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
    p.set_defaults(handler=run_pull)
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
    from imagesmith.oci.model import Platform
    from imagesmith.transports.copy import copy_image

    args = ctx.args
    choice: Platform | Literal["all"] | None = None
    if args.platform == "all":
        choice = "all"
    elif args.platform:
        choice = Platform.parse(args.platform)
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
