"""Project habits that keep a release honest: the version in one place, a changelog that names
it, and a pre-commit configuration that runs what CI runs before the tests."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import yaml

import imagesmith

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib  # type: ignore[import-not-found,unused-ignore]

ROOT = Path(__file__).resolve().parent.parent


def test_the_version_is_written_in_one_place() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in project["project"], "pyproject.toml must read the version, not repeat it"
    assert "version" in project["project"]["dynamic"]
    assert project["tool"]["hatch"]["version"]["path"] == "imagesmith/_version.py"
    written = re.findall(r'__version__\s*=\s*"([^"]+)"', (ROOT / "imagesmith/_version.py").read_text())
    assert written == [imagesmith.__version__]
    others = [
        path
        for path in (ROOT / "imagesmith").rglob("*.py")
        if path.name != "_version.py" and re.search(r"__version__\s*=", path.read_text())
    ]
    assert others == []


def test_the_changelog_names_the_current_version() -> None:
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert f"## {imagesmith.__version__}" in changelog


def test_pre_commit_runs_what_ci_runs_before_the_tests() -> None:
    config = yaml.safe_load((ROOT / ".pre-commit-config.yaml").read_text())
    entries = [hook["entry"] for repo in config["repos"] for hook in repo["hooks"]]
    ci = (ROOT / ".ci/run").read_text()
    ci_checks = re.findall(r"^make ((?:lint|type)(?: (?:lint|type))*)\s*$", ci, re.MULTILINE)
    assert ci_checks, ".ci/run no longer runs make lint/type: update this test and the config"
    targets = {target for line in ci_checks for target in line.split()}
    assert sorted(entries) == sorted(f"make {target}" for target in targets)
