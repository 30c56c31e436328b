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
    DEFAULT_IDLE_TIMEOUT,
    INDEX_TAG,
    SPACK_INDEX_TAG,
    Commands,
    jobs_arg,
    json_arg,
    platform,
    registry_args,
)
from imagesmith.cli.context import Context
from imagesmith.cli.output import say, write_raw
from imagesmith.errors import UsageError


def add_serve(commands: Commands) -> None:
    p = commands.add_parser(
        "serve",
        help="run an embedded OCI registry backed by OCI layouts",
        description="Serve the distribution API over plain http from DIR: repository a/b is the "
        "OCI layout DIR/a/b. No authentication: bind to loopback or a trusted network.",
    )
    p.set_defaults(handler=run_serve)
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
    p.set_defaults(handler=run_index)
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


def add_login(commands: Commands) -> None:
    p = commands.add_parser(
        "login",
        help="check credentials against a registry and store them where docker does",
        description="Verify USER and the password against REGISTRY (GET /v2/ with Basic or a "
        "Bearer token), then store them in $DOCKER_CONFIG/config.json or ~/.docker/config.json, "
        "or through the credential helper that file names for the host.",
    )
    p.set_defaults(handler=run_login)
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
    p.set_defaults(handler=run_logout)
    p.add_argument("registry", metavar="REGISTRY", help="HOST[:PORT]; docker.io for Docker Hub")
    registry_args(p, "")


def add_verbs(commands: Commands) -> None:
    """``tags``, ``digest``, ``delete``, ``tag``, ``manifest``, ``config``."""
    p = commands.add_parser(
        "tags",
        help="list the tags of a repository",
        description="Print every tag of REPO, one a line, in the registry's order (GET "
        "/v2/REPO/tags/list, following the registry's Link pages).",
    )
    p.set_defaults(handler=run_tags)
    p.add_argument("repo", metavar="REPO", help="repository, e.g. ghcr.io/acme/stack")
    json_arg(p, 'print {"repository": ..., "tags": [...]}')

    p = commands.add_parser(
        "digest",
        help="print the digest of an image or index",
        description="Print the manifest digest LOCATION names (one HEAD request to a registry), "
        "as `docker pull REPO@DIGEST` takes it.",
    )
    p.set_defaults(handler=run_digest)
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
    p.set_defaults(handler=run_delete)
    p.add_argument("reference", metavar="REF", help="repo:tag or repo@digest")
    json_arg(p)

    p = commands.add_parser(
        "tag",
        help="add tags to an image, in its repository",
        description="Put the manifest SRC names under each NEWTAG of the same repository: the "
        "same bytes, so the same digest; no blob is read or copied.",
    )
    p.set_defaults(handler=run_tag)
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
        p.set_defaults(handler=run_manifest if name == "manifest" else run_config)
        p.add_argument("reference", metavar="LOCATION", help="REF, oci:DIR[:TAG] or docker-archive:PATH")
        p.add_argument(
            "--platform",
            metavar="OS/ARCH[/VARIANT]",
            help="for an index: that platform's image"
            + (" (default: this machine's)" if name == "config" else ""),
        )


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
