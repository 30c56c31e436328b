"""Running the imagesmith CLI in-process from tests, and the example stack's paths."""

from __future__ import annotations

import io
import os
from pathlib import Path

from imagesmith.cli import main

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "stack"
HELLO = str(EXAMPLES / "hello.json")


def cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """Run the CLI in-process; returns (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    saved = dict(os.environ)
    try:
        if env:
            os.environ.update(env)
        code = main(list(args), stdout=out, stderr=err)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return code, out.getvalue(), err.getvalue()


def ok(*args: str, env: dict[str, str] | None = None) -> str:
    """Run the CLI in-process and require success; returns stdout."""
    code, out, err = cli(*args, env=env)
    assert code == 0, f"imagesmith {' '.join(args)} failed ({code}): {err}"
    return out


def on(host: str, *args: str) -> tuple[str, ...]:
    """``--insecure-registry HOST ARGS...``: a command against a plain-http test registry."""
    return ("--insecure-registry", host, *args)


def build_argv(host: str, base: str, *args: str) -> tuple[str, ...]:
    """``--insecure-registry HOST build --base-image BASE ARGS...``."""
    return on(host, "build", "--base-image", base, *args)
