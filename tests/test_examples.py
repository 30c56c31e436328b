"""The programs under examples/ run as users would run them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from cli_support import EXAMPLES, HELLO, ok
from conftest import need_tool
from servers import DistributionRegistry

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent


def test_generate_stack(registry: DistributionRegistry, base: str, tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "IMAGESMITH_CACHE_DIR": str(tmp_path / "cache"), "HOME": str(tmp_path)}
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "examples" / "generate_stack.py"),
            base,
            f"{registry.host}/generated",
            HELLO,
            "--insecure-registry",
            registry.host,
        ],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert [i["package"] for i in summary["images"]] == ["libgreet", "hello"]
    assert summary["events"]["manifest-pushed"] == 2
    hello = summary["images"][1]
    shown = json.loads(ok("--insecure-registry", registry.host, "inspect", hello["reference"], "--json"))
    assert "STACK_GENERATION=2026.11" in shown["config"]["Env"]
    assert shown["config"]["Labels"]["org.example.generator"] == "generate_stack.py"
    assert shown["digest"] == hello["digest"]


def test_generate_stack_reports_bad_input(registry: DistributionRegistry, base: str, tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "examples" / "generate_stack.py"),
            base,
            f"{registry.host}/generated",
            str(EXAMPLES / "nope.json"),
            "--insecure-registry",
            registry.host,
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 2
    assert "nope.json" in done.stderr


@pytest.mark.integration
def test_make_demo_runs_end_to_end(tmp_path: Path) -> None:
    """`make demo`, the README's first command: the embedded registry, the busybox base, the
    example stack built twice (same digest), unpacked, and run with the docker CLI."""
    need_tool("podman")
    need_tool("docker")
    run = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "demo.py")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "-> identical" in run.stdout, run.stdout[-3000:]
    assert "Hello, world, from hello 2.12" in run.stdout, run.stdout[-3000:]
    assert "\n== done: " in run.stdout
