"""The commands that talk to a registry about what it holds, and to its credentials:
``tags``, ``digest``, ``delete``, ``tag``, ``manifest``, ``config`` (one request or two each, see
:mod:`imagesmith.ops.verbs`), ``index`` (the repository index), ``login`` / ``logout``, and
``serve`` (the embedded registry)."""

from __future__ import annotations

import getpass
import signal
import sys
from pathlib import Path

from imagesmith.cli.args import (
    SPACK_INDEX_TAG,
    platform,
)
from imagesmith.cli.context import Context
from imagesmith.cli.output import say, write_raw
from imagesmith.errors import UsageError


def run_tags(ctx: Context) -> int:
    from imagesmith.oci.references import parse_repository
    from imagesmith.ops.verbs import list_tags

    repository = parse_repository(ctx.args.repo)
    tags = list_tags(repository, pool=ctx.pool)

    def lines() -> None:
        for tag in tags:
            say(tag, ctx.stdout)

    return ctx.render(lambda: {"repository": repository.name, "tags": tags}, lines)


def run_digest(ctx: Context) -> int:
    from imagesmith.ops.verbs import image_digest
    from imagesmith.transports.locations import parse_location

    reference = ctx.args.reference
    digest = image_digest(reference, pool=ctx.pool, platform=platform(ctx.args.platform))
    return ctx.render(
        lambda: {"reference": str(parse_location(reference)), "digest": str(digest)},
        lambda: print(digest, file=ctx.stdout),
    )


def run_delete(ctx: Context) -> int:
    from imagesmith.ops.verbs import delete_image

    deleted = delete_image(ctx.args.reference, pool=ctx.pool)
    was = f" (was {deleted.reference}; every tag on it is gone)" if deleted.reference.digest is None else ""
    return ctx.render(deleted.to_json, lambda: print(f"Deleted {deleted.deleted}{was}", file=ctx.stdout))


def run_tag(ctx: Context) -> int:
    from imagesmith.ops.verbs import tag_image

    tagged = tag_image(ctx.args.source, ctx.args.tags, pool=ctx.pool)

    def lines() -> None:
        for reference in tagged.references:
            print(f"Tagged {reference} ({tagged.digest})", file=ctx.stdout)

    return ctx.render(tagged.to_json, lines)


def run_manifest(ctx: Context) -> int:
    from imagesmith.ops.verbs import read_manifest

    raw = read_manifest(ctx.args.reference, pool=ctx.pool, platform=platform(ctx.args.platform))
    write_raw(raw.data, ctx.stdout)
    return 0


def run_config(ctx: Context) -> int:
    from imagesmith.ops.verbs import read_config

    write_raw(
        read_config(ctx.args.reference, pool=ctx.pool, platform=platform(ctx.args.platform)), ctx.stdout
    )
    return 0


def run_index(ctx: Context) -> int:
    from imagesmith.oci.references import parse_repository
    from imagesmith.ops.repoindex import list_index, update_index

    args = ctx.args
    repository = parse_repository(args.repo)
    jobs = max(1, args.jobs)
    if args.index_command == "update":
        done = update_index(
            ctx.pool, repository, tag=args.index_tag, jobs=jobs, progress=ctx.progress, force=args.force
        )
        where = f"{repository.name}:{args.index_tag}"
        spack_where = f"{repository.name}:{SPACK_INDEX_TAG}"
        packages = len(done.spack_database.packages) if done.spack_database is not None else 0
        spack = {"reference": spack_where, "digest": done.spack_digest, "packages": packages}
        document = {
            "reference": where,
            "digest": done.digest,
            "images": len(done.index.entries),
            "skipped": len(done.index.skipped),
            "spack": spack if done.spack_digest is not None else None,
        }

        def updated() -> None:
            counts = f"{len(done.index.entries)} images ({len(done.index.skipped)} other tags)"
            print(f"Indexed {counts} in {where} ({done.digest})", file=ctx.stdout)
            if done.spack_digest is not None:
                print(
                    f"Indexed {packages} Spack packages in {spack_where} ({done.spack_digest})",
                    file=ctx.stdout,
                )

        return ctx.render(lambda: document, updated)
    index = list_index(
        ctx.pool, repository, tag=args.index_tag, live=args.live, jobs=jobs, progress=ctx.progress
    )

    def table() -> None:
        rows = [("TAG", "NAME", "VERSION", "HASH", "PLATFORMS", "DIGEST")]
        for entry in index.entries:
            platforms = ",".join(entry.platforms) or "-"
            rows.append(
                (
                    entry.tag,
                    entry.name or "-",
                    entry.version or "-",
                    entry.hash or "-",
                    platforms,
                    entry.digest,
                )
            )
        widths = [max(len(row[i]) for row in rows) for i in range(5)]
        for row in rows:
            cells = "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False))
            print(cells + "  " + row[5], file=ctx.stdout)

    return ctx.render(index.to_json, table)


def _login_secrets(ctx: Context) -> tuple[str, str]:
    """The username and password for ``login``: from the options, stdin or a prompt."""
    args, stderr = ctx.args, ctx.stderr
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


def run_login(ctx: Context) -> int:
    from imagesmith.registry.credentials import registry_host
    from imagesmith.registry.login import login

    host = registry_host(ctx.args.registry)
    username, password = _login_secrets(ctx)
    where = login(host, username, password, options=ctx.registry, config_path=ctx.registry.auth_file)
    print(f"Login succeeded for {host} (credentials in {where})", file=ctx.stdout)
    return 0


def run_logout(ctx: Context) -> int:
    from imagesmith.registry.credentials import registry_host
    from imagesmith.registry.login import logout

    host = registry_host(ctx.args.registry)
    if logout(host, options=ctx.registry, config_path=ctx.registry.auth_file):
        print(f"Removed credentials for {host}", file=ctx.stdout)
    else:
        print(f"No credentials stored for {host}", file=ctx.stdout)
    return 0


def run_serve(ctx: Context) -> int:
    from imagesmith.registry.server import RegistryServer

    args = ctx.args
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
    print(f"Serving {server.root} at http://{server.address} (Ctrl-C stops)", file=ctx.stdout, flush=True)
    print(
        f"  clients: --insecure-registry {server.address} (imagesmith), --tls-verify=false (podman, skopeo)",
        file=ctx.stderr,
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
