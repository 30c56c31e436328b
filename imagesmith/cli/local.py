"""``imagesmith cache``, ``version`` and ``completion``: this machine's cache, codecs and shell."""

from __future__ import annotations

import argparse

from imagesmith._version import __version__
from imagesmith.cli.args import Commands, json_arg
from imagesmith.cli.context import Context
from imagesmith.cli.output import human
from imagesmith.errors import UsageError


def add_cache(commands: Commands) -> None:
    p = commands.add_parser(
        "cache",
        help="show or prune the local blob cache",
        description="The content-addressed blob cache: built layers and fetched base layers.",
    )
    p.set_defaults(handler=run_cache)
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


def add_version(commands: Commands) -> None:
    p = commands.add_parser(
        "version",
        help="show the version and the codecs in use (they decide layer digests)",
        description="Print imagesmith's version, Python's, and the gzip and zstd codecs a build "
        "would use now: the same tar compressed by another codec (isal or zlib, another version or "
        "level) gives another layer digest. IMAGESMITH_GZIP=zlib|isal chooses the gzip codec.",
    )
    p.set_defaults(handler=run_version)
    json_arg(p, "print JSON")


def add_completion(commands: Commands) -> None:
    p = commands.add_parser(
        "completion",
        help="print a shell completion script (bash, zsh)",
        description="Print the completion script of SHELL. bash: `source <(imagesmith completion "
        "bash)` in ~/.bashrc; zsh: `source <(imagesmith completion zsh)` in ~/.zshrc.",
    )
    p.set_defaults(handler=run_completion)
    p.add_argument("shell", choices=["bash", "zsh"], metavar="SHELL", help="bash or zsh")


def run_cache(ctx: Context) -> int:
    args, cache, out = ctx.args, ctx.cache, ctx.stdout
    if args.cache_command == "info":
        stats = cache.stats()

        def lines() -> None:
            print(f"Cache:   {stats.root}", file=out)
            print(f"Blobs:   {stats.blobs} ({human(stats.blob_bytes)})", file=out)
            print(f"Records: {stats.records}", file=out)
            if stats.temp_files:
                print(
                    f"Temp:    {stats.temp_files} ({human(stats.temp_bytes)}) left by interrupted runs",
                    file=out,
                )

        return ctx.render(stats.to_json, lines)
    if args.older_than is not None and args.older_than < 0:
        raise UsageError("--older-than DAYS must not be negative")
    seconds = None if args.older_than is None else args.older_than * 86400
    result = cache.prune(seconds, dry_run=args.dry_run)
    verb = "Would remove" if result.dry_run else "Removed"
    line = (
        f"{verb} {result.blobs} blobs ({human(result.bytes)}), {result.records} records, "
        f"{result.temp_files} temp files from {cache.root}"
    )
    return ctx.render(result.to_json, lambda: print(line, file=out))


def run_version(ctx: Context) -> int:
    import platform

    from imagesmith.tar.compression import codec_id, gzip_backend

    gzip, zstd = codec_id("gzip"), codec_id("zstd")
    backend = gzip_backend()
    python = platform.python_version()
    document = {
        "version": __version__,
        "python": python,
        "gzip": {"backend": backend, "codec": gzip},
        "zstd": {"codec": zstd},
    }

    def lines() -> None:
        print(f"imagesmith {__version__} (Python {python})", file=ctx.stdout)
        other = "zlib" if backend == "isal" else "isal"
        print(f"gzip codec: {gzip} ({backend}; IMAGESMITH_GZIP={other} chooses {other})", file=ctx.stdout)
        print(f"zstd codec: {zstd}", file=ctx.stdout)

    return ctx.render(lambda: document, lines)


def run_completion(ctx: Context) -> int:
    from imagesmith.completion import completion_script

    ctx.stdout.write(completion_script(ctx.parser, ctx.args.shell))
    return 0
