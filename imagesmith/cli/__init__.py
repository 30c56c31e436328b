"""The ``imagesmith`` command line: parse arguments, call the library, render the outcome.

Nothing here builds or pushes anything itself. Errors from the library are printed as one
line (``imagesmith: error: ...``) and mapped to exit codes:

====  =========================================================================
0     success
1     any other failure
2     bad usage or input: arguments, references, package files, templates
3     registry: authentication, not found, unreachable, rate limited
4     integrity: content that does not match its digest
5     local file system: a path that cannot be read or written (permissions, a parent that
      cannot be searched, standard output that cannot be written)
6     no space left on the device (or quota exceeded) while writing
130   interrupted
141   standard output closed early (``imagesmith ... | head``): quiet, as for SIGPIPE
====  =========================================================================

The package, top down: this module runs a command (:func:`main`: parse, global options, the
progress view, Ctrl-C, errors to exit codes). :mod:`~imagesmith.cli.parser` declares every
command's options, in ``--help`` order, each with its handler. The handlers live by group:
:mod:`~imagesmith.cli.build` (build, import), :mod:`~imagesmith.cli.images` (inspect, copy,
merge, pull), :mod:`~imagesmith.cli.registry` (the registry verbs, index, login, logout,
serve), :mod:`~imagesmith.cli.signing` (sign, keygen), :mod:`~imagesmith.cli.generate`
(makefile, pipeline), :mod:`~imagesmith.cli.local` (cache, version, completion); each states
only its library call and its human lines. Below them :mod:`~imagesmith.cli.context` (what a
handler is given: registry settings, cache, pool, progress, the ``--json`` / ``-q`` / human
rule), :mod:`~imagesmith.cli.args` (shared options, option readers, the parser's defaults) and
:mod:`~imagesmith.cli.output` (escaping, JSON, files, exit codes).

`imagesmith --help`, `--version` and `completion` only build the parser: every module of this
package imports the library inside the handlers that use it, never at the top.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from typing import TextIO, cast

from imagesmith.cli.args import ParseError
from imagesmith.cli.args import command as _command
from imagesmith.cli.context import Context, Handler
from imagesmith.cli.context import registry_options as _registry_options
from imagesmith.cli.output import Output, OutputError, exit_code, output_failed, say
from imagesmith.cli.output import emit_list as _emit_list
from imagesmith.cli.parser import parser as _parser
from imagesmith.errors import ImagesmithError, file_error

__all__ = [
    # Helpers the tests call under their old names.
    "_command",
    "_emit_list",
    "_merge_globals",
    "_parser",
    "_registry_options",
    "entry_point",
    "main",
]


def _merge_globals(args: argparse.Namespace) -> None:
    """Fold the global options given before the command into those given after it."""
    args.debug = args.debug_global or getattr(args, "debug", False)
    if args.json_global:
        if args.json is None:
            raise ParseError(f"--json: `imagesmith {args.command}` has no JSON output")
        args.json = True
    if getattr(args, "raw", False) and args.json:
        raise ParseError("argument --raw: not allowed with argument --json (see `imagesmith inspect --help`)")


@contextlib.contextmanager
def _interrupts() -> Iterator[None]:
    """Ctrl-C (SIGINT) stops the work at once: the handler tells every worker thread to stop
    (:func:`imagesmith.cancel.interrupt`) and raises :class:`KeyboardInterrupt` in the main
    thread, which only waits for them to clean up. Only the main thread can set a handler."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    from imagesmith import cancel

    def handler(signum: int, frame: object) -> None:
        if cancel.interrupted():
            # A second Ctrl-C while the first one's clean-up runs (a DELETE to a registry that
            # does not answer, say): stop now, as docker and pip do. Upload sessions left behind
            # expire in the registry; temp files are removed by the next run's cache.
            os.write(2, b"imagesmith: interrupted again: exiting without cleaning up\n")
            os._exit(130)
        cancel.interrupt()
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def main(
    argv: Sequence[str] | None = None, stdout: TextIO | None = None, stderr: TextIO | None = None
) -> int:
    """Run the CLI with ``argv`` and return the exit code (callable from tests)."""
    stream = stdout or sys.stdout
    stderr = stderr or sys.stderr
    out = Output(stream)
    try:
        code = _main(argv, cast(TextIO, out), stderr)
        out.flush()
        return code
    except OutputError as failure:
        return output_failed(failure.error, stream, stderr)


def _main(argv: Sequence[str] | None, stdout: TextIO, stderr: TextIO) -> int:
    parser = _parser()
    try:
        # --help and --version go to ``stdout`` too: argparse would swallow a failed write there.
        with contextlib.redirect_stdout(stdout):
            args = parser.parse_args(argv)
        _merge_globals(args)
    except SystemExit as exc:
        return int(exc.code or 0)
    except ParseError as exc:
        say(f"imagesmith: error: {exc}", stderr)
        return 2
    if args.debug:
        import logging

        handler = logging.StreamHandler(stderr)
        handler.setFormatter(logging.Formatter("imagesmith: %(name)s: %(message)s"))
        logger = logging.getLogger("imagesmith")
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG)
    from imagesmith import cancel
    from imagesmith.progressview import ProgressView  # here: `imagesmith --version` does not import it

    progress = ProgressView.for_cli(stderr, quiet=bool(getattr(args, "quiet", False)))
    cancel.reset()
    run: Handler = args.handler
    # The handler stays installed through the clean-up below, so a second Ctrl-C there exits.
    with _interrupts():
        try:
            with Context(args, stdout, stderr, progress, parser) as ctx:
                return run(ctx)
        except ImagesmithError as error:
            progress.close()
            from imagesmith.pipeline.closure import ClosureError

            if isinstance(error, ClosureError):
                # The message names the first finding; the others get a line each.
                for finding in error.report.findings[1:]:
                    say(f"imagesmith: {finding.line()}", stderr)
            say(f"imagesmith: error: {error}", stderr)
            return exit_code(error)
        except KeyboardInterrupt:
            # Every worker has stopped by now (cancel.interrupt), each cleaning up after itself.
            progress.close()
            print("imagesmith: interrupted", file=stderr)
            return 130
        except OSError as exc:
            # The last resort for an OSError the library let through: one line, never a traceback.
            failure = file_error("access", exc.filename, exc)
            say(f"imagesmith: error: {failure}", stderr)
            return exit_code(failure)
        finally:
            progress.close()
            if args.debug:
                logging.getLogger("imagesmith").handlers.clear()  # imported above, with --debug


def entry_point() -> None:
    """Console-script entry: exit with :func:`main`'s code (130 for a Ctrl-C that arrives
    outside the command's own handling, e.g. while an error is printed)."""
    try:
        code = main()
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)
