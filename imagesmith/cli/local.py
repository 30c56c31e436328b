"""``imagesmith cache``, ``version`` and ``completion``: this machine's cache, codecs and shell."""

from __future__ import annotations

from imagesmith._version import __version__
from imagesmith.cli.context import Context
from imagesmith.cli.output import human
from imagesmith.errors import UsageError


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
