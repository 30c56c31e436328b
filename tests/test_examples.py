"""The programs under examples/ run as users would run them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from cli_support import EXAMPLES, HELLO, ok
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
