"""Generated CI pipelines (imagesmith/ci.py): the files, checked against the engines' own schemas
and walked as graphs, the engines' limits, bad input, and a real run.

GitLab's file is run for real by gitlab-ci-local (shell executor, each job in its own copy of
the checkout, artifacts passed as GitLab passes them) against the CNCF registry; the images it
pushed run under podman. GitHub's workflow is validated with the workflow schema GitHub
publishes (vendored by check-jsonschema) and its ``needs:`` graph walked against the stack's.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml
from cli_support import EXAMPLES, cli, ok
from conftest import BASIC_USERS, need, need_tool
from ruamel.yaml import YAML
from servers import DistributionRegistry, Podman
from test_makefile import write_package
from test_spack import SQLITE, ZLIB

from imagesmith.errors import UsageError
from imagesmith.generate.ci import (
    DEFAULT_INSTALL,
    BasePin,
    EngineLimits,
    GeneratedPipeline,
    relative_base,
    render_pipeline,
    yaml_scalar,
)
from imagesmith.inputs.load import load_packages
from imagesmith.inputs.packages import Package
from imagesmith.oci.model import Platform
from imagesmith.oci.references import Reference

REPO = "registry.example:5000/stack"
DIGEST = "sha256:" + "ab" * 32
AMD64, ARM64 = Platform.parse("linux/amd64"), Platform.parse("linux/arm64")
GITLAB_CI_LOCAL = Path(__file__).resolve().parent / ".data/npm/node_modules/.bin/gitlab-ci-local"


def pin(*platforms: Platform) -> BasePin:
    source = "registry.example:5000/base/busybox:1"
    return BasePin(source, Reference.parse(f"{source}@{DIGEST}"), platforms or (AMD64,))


def diamond(root: Path) -> list[Package]:
    """a depends on b and c, both depend on d: loaded as d, b, c, a."""
    write_package(root, "d")
    write_package(root, "b", ["d"])
    write_package(root, "c", ["d"])
    return load_packages([write_package(root, "a", ["b", "c"])])


TWO = {"linux/amd64": ["amd-runner"], "linux/arm64": ["arm-runner", "big"]}


def render(packages: Sequence[Package], engine: str, *platforms: Platform, **kw: Any) -> GeneratedPipeline:
    kw.setdefault("runners", TWO if len(platforms) > 1 else None)
    kw.setdefault("directory", packages[0].source.parent)
    return render_pipeline(packages, engine=engine, base=pin(*platforms), repo=REPO, **kw)


def schema_check(text: str, schema: str, tmp_path: Path) -> None:
    """The file against the engine's published schema (check-jsonschema's vendored copy)."""
    path = tmp_path / f"{schema}.yml"
    path.write_text(text)
    run = subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", f"vendor.{schema}", str(path)],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stdout + run.stderr


def workflow(text: str) -> dict[str, Any]:
    """GitHub reads YAML 1.2 (``on`` is a string), as ruamel does."""
    loaded: dict[str, Any] = YAML(typ="safe").load(text)
    return loaded


def stack_edges(packages: Sequence[Package]) -> dict[str, set[str]]:
    """Package name -> names of its direct dependencies."""
    by_key = {p.key: p.name for p in packages}
    return {p.name: {by_key[k] for k in p.depends} for p in packages}


# --- the files -------------------------------------------------------------------------------------


def test_gitlab_build_jobs_need_exactly_their_dependencies_jobs(tmp_path: Path) -> None:
    packages = diamond(tmp_path)
    generated = render(packages, "gitlab")
    text = generated.text
    schema_check(text, "gitlab-ci", tmp_path)
    doc = yaml.safe_load(text)  # GitLab reads YAML 1.1, as PyYAML does
    assert doc["stages"] == ["level-0", "level-1", "level-2", "index"]
    jobs = {
        name: job
        for name, job in doc.items()
        if not name.startswith(".") and isinstance(job, dict) and "script" in job
    }
    assert list(jobs) == ["d-1.0", "b-1.0", "c-1.0", "a-1.0", "index"]
    edges = stack_edges(packages)
    for name, deps in edges.items():
        job = jobs[f"{name}-1.0"]
        assert job["needs"] == [f"{dep}-1.0" for dep in sorted(deps, key=list(edges).index)]
        assert job["extends"] == ".imagesmith-linux-amd64"
        assert job["script"] == [
            'imagesmith build $IMAGESMITH_BUILD_FLAGS --base-image "$IMAGESMITH_BASE_IMAGE" '
            f'--platform "$IMAGESMITH_PLATFORM" --repo "$IMAGESMITH_REPO" {name}.json'
        ]
        assert "artifacts" not in job and "dependencies" not in job
    assert [jobs[n]["stage"] for n in jobs] == ["level-0", "level-1", "level-1", "level-2", "index"]
    assert "needs" not in jobs["index"] and jobs["index"]["stage"] == "index"  # after every stage
    assert jobs["index"]["script"] == ['imagesmith index update "$IMAGESMITH_REPO"']
    assert doc["variables"]["IMAGESMITH_BASE_IMAGE"] == f"registry.example:5000/base/busybox:1@{DIGEST}"
    assert doc["variables"]["IMAGESMITH_REPO"] == REPO
    assert doc[".imagesmith"]["before_script"][0] == DEFAULT_INSTALL
    assert "tags" not in doc[".imagesmith-linux-amd64"]  # one platform, no runner asked for
    assert generated.jobs == 5 and generated.notes == ()


def test_github_needs_graph_is_the_stack_on_every_platform(tmp_path: Path) -> None:
    packages = diamond(tmp_path)
    generated = render(packages, "github", AMD64, ARM64)
    schema_check(generated.text, "github-workflows", tmp_path)
    doc = workflow(generated.text)
    jobs = doc["jobs"]
    ids = {job["name"]: ident for ident, job in jobs.items()}
    edges = stack_edges(packages)
    for platform, labels in (("linux/amd64", ["amd-runner"]), ("linux/arm64", ["arm-runner", "big"])):
        for name, deps in edges.items():
            job = jobs[ids[f"{name}-1.0 ({platform})"]]
            assert {jobs[n]["name"] for n in job.get("needs", [])} == {f"{d}-1.0 ({platform})" for d in deps}
            assert job["runs-on"] == labels and job["env"] == {"IMAGESMITH_PLATFORM": platform}
            steps = [s.get("name") or s["uses"] for s in job["steps"]]
            assert steps == [
                "actions/checkout@v4",
                "Install imagesmith",
                "Log in to registry.example:5000",
                "Build and push",
                "actions/upload-artifact@v4",
            ]
    for name in edges:
        merge = jobs[ids[f"{name}-1.0"]]
        assert sorted(jobs[n]["name"] for n in merge["needs"]) == [
            f"{name}-1.0 (linux/amd64)",
            f"{name}-1.0 (linux/arm64)",
        ]
        downloads = [
            s["with"]["name"] for s in merge["steps"] if s.get("uses", "").startswith("actions/down")
        ]
        uploads = [
            s["with"]["name"]
            for n in merge["needs"]
            for s in jobs[n]["steps"]
            if s.get("uses", "").startswith("actions/upload")
        ]
        assert (
            downloads
            == uploads
            == [f"imagesmith-{name}-1.0.linux-amd64", f"imagesmith-{name}-1.0.linux-arm64"]
        )
    assert sorted(jobs["index"]["needs"]) == sorted(ids[f"{n}-1.0"] for n in edges)
    order = topological(jobs)  # the graph is acyclic and every job is reachable
    assert order[-1] == "index" and len(order) == len(jobs) == generated.jobs == 13
    assert doc["on"] == {
        "workflow_dispatch": None,
        "workflow_call": {"secrets": {"IMAGESMITH_REGISTRY_PASSWORD": {"required": False}}},
    }
    assert doc["permissions"] == {"contents": "read"}  # packages: write only for ghcr.io
    assert doc["name"] == "imagesmith a-1.0"


def topological(jobs: dict[str, Any]) -> list[str]:
    """Kahn's order of a workflow's jobs by ``needs``; fails on a cycle or an unknown job."""
    needs = {ident: set(job.get("needs", [])) for ident, job in jobs.items()}
    assert all(n <= set(jobs) for n in needs.values())
    order: list[str] = []
    while needs:
        ready = sorted(ident for ident, n in needs.items() if not n)
        assert ready, f"cycle among {sorted(needs)}"
        order += ready
        needs = {ident: n - set(ready) for ident, n in needs.items() if ident not in ready}
    return order


def test_multi_platform_gitlab_jobs_carry_runner_tags_tags_and_artifacts(tmp_path: Path) -> None:
    packages = diamond(tmp_path)
    text = render(packages, "gitlab", AMD64, ARM64).text
    schema_check(text, "gitlab-ci", tmp_path)
    doc = yaml.safe_load(text)
    assert doc[".imagesmith-linux-arm64"]["tags"] == ["arm-runner", "big"]
    assert doc["stages"][-2:] == ["merge", "index"]
    job = doc["a-1.0:linux-arm64"]
    assert job["needs"] == ["b-1.0:linux-arm64", "c-1.0:linux-arm64"] and job["dependencies"] == []
    assert job["artifacts"] == {"paths": [".imagesmith/digests/a-1.0.linux-arm64"]}
    assert '--tag-template "{{ name }}-{{ version }}-{{ hash }}.linux-arm64"' in job["script"][0]
    merge = doc["a-1.0"]
    assert merge["needs"] == ["a-1.0:linux-amd64", "a-1.0:linux-arm64"] and merge["stage"] == "merge"
    assert merge["script"] == [
        'imagesmith merge --repo "$IMAGESMITH_REPO" '
        '"$IMAGESMITH_REPO@$(cat .imagesmith/digests/a-1.0.linux-amd64)" '
        '"$IMAGESMITH_REPO@$(cat .imagesmith/digests/a-1.0.linux-arm64)"'
    ]
    assert merge["extends"] == doc["index"]["extends"] == ".imagesmith-linux-amd64"


def test_same_inputs_give_the_same_bytes_and_no_secret_reaches_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IMAGESMITH_REGISTRY_PASSWORD", "sentinel-password")
    monkeypatch.setenv("CI_REGISTRY_PASSWORD", "sentinel-password")
    packages = diamond(tmp_path)
    for engine in ("gitlab", "github"):
        first = render(packages, engine, AMD64, ARM64).text
        assert render(load_packages([tmp_path / "a.json"]), engine, AMD64, ARM64).text == first
        assert "sentinel-password" not in first
        assert render(packages, engine, AMD64, ARM64, install="true").text != first


def test_github_login_takes_github_token_for_ghcr_only(tmp_path: Path) -> None:
    packages = diamond(tmp_path)
    text = render_pipeline(packages, engine="github", base=pin(), repo="ghcr.io/acme/stack").text
    doc = workflow(text)
    assert doc["permissions"] == {"contents": "read", "packages": "write"}
    login = doc["jobs"]["a-1_0"]["steps"][2]
    assert login["env"]["GITHUB_TOKEN"] == "${{ secrets.GITHUB_TOKEN }}"
    assert 'password="$GITHUB_TOKEN"' in login["run"] and "--password-stdin" in login["run"]
    assert doc["jobs"]["a-1_0"]["runs-on"] == ["ubuntu-latest"]
    schema_check(text, "github-workflows", tmp_path)


def test_package_paths_are_relative_inside_the_checkout_and_absolute_outside(tmp_path: Path) -> None:
    checkout, elsewhere = tmp_path / "checkout", tmp_path / "shared"
    write_package(elsewhere, "lib")
    (checkout / "stack").mkdir(parents=True)
    app = write_package(checkout / "stack", "app")
    doc = json.loads(app.read_text())
    doc["depends"] = [str(elsewhere / "lib.json")]
    app.write_text(json.dumps(doc))
    (checkout / ".git").mkdir()
    assert relative_base(checkout / "ci" / "pipeline.yml") == checkout.resolve()
    text = render(load_packages([app]), "gitlab", directory=relative_base(checkout / "x.yml")).text
    jobs = yaml.safe_load(text)
    assert jobs["app-1.0"]["script"][0].endswith(" stack/app.json")
    assert jobs["lib-1.0"]["script"][0].endswith(f" {elsewhere.resolve() / 'lib.json'}")


@pytest.mark.parametrize(
    "value",
    [
        "plain",
        "yes",
        "No",
        "on",
        "null",
        "~",
        "1.0",
        "0x1F",
        "2024-01-01",
        "-x",
        "a: b",
        "a #b",
        "it's",
        "{{ name }}",
        "a, b",
        "x=1",
        "*ref",
        "&anchor",
        "!tag",
        "%x",
        "@x",
        "`x",
        '"quoted"',
        "[list]",
        "tail ",
        "12:30",
        'imagesmith build "$X" --flag',
        "${{ secrets.X }}",
        "é",
        "\\",
    ],
)
def test_yaml_scalars_read_back_unchanged_in_yaml_1_1_and_1_2(value: str) -> None:
    text = f"key: {yaml_scalar(value)}\nlist:\n  - {yaml_scalar(value)}\n"
    assert yaml.safe_load(text) == {"key": value, "list": [value]}
    assert YAML(typ="safe").load(text) == {"key": value, "list": [value]}


# --- the engines' limits ---------------------------------------------------------------------------


def wide(root: Path, count: int, *, prefix: str = "p") -> Path:
    """``count`` leaf packages and ``top``, which depends on all of them."""
    leaves = [write_package(root, f"{prefix}{i:04d}").stem for i in range(count)]
    return write_package(root, "top", leaves)


@pytest.mark.slow
def test_gitlab_job_needing_more_than_50_waits_for_the_stages_below(tmp_path: Path) -> None:
    fifty = load_packages([wide(tmp_path / "fifty", 50)])
    generated = render(fifty, "gitlab")
    assert len(yaml.safe_load(generated.text)["top-1.0"]["needs"]) == 50 and generated.notes == ()

    many = load_packages([wide(tmp_path / "many", 51)])
    generated = render(many, "gitlab")
    schema_check(generated.text, "gitlab-ci", tmp_path)
    top = yaml.safe_load(generated.text)["top-1.0"]
    assert "needs" not in top and top["stage"] == "level-1"  # level-0 jobs all come before
    assert generated.notes == (
        "GitLab allows 50 needs per job: 1 jobs that would need more (up to 51) wait for the stages "
        "of the dependency levels below them instead",
    )
    assert f"# Note: {generated.notes[0]}." in generated.text


@pytest.mark.slow
def test_github_groups_by_dependency_level_when_one_job_per_image_is_too_large(tmp_path: Path) -> None:
    """600 images at level 0 make a workflow over GitHub's 500 KB: matrix jobs of at most 256."""
    packages = load_packages([wide(tmp_path, 600)])
    generated = render(packages, "github")
    assert len(generated.text.encode()) < 500_000
    schema_check(generated.text, "github-workflows", tmp_path)
    jobs = workflow(generated.text)["jobs"]
    sizes = {
        ident: len(job["strategy"]["matrix"]["include"]) for ident, job in jobs.items() if "strategy" in job
    }
    assert sizes == {
        "level-0-linux-amd64-1": 256,
        "level-0-linux-amd64-2": 256,
        "level-0-linux-amd64-3": 88,
        "level-1-linux-amd64": 1,
    }
    assert jobs["level-1-linux-amd64"]["needs"] == [f"level-0-linux-amd64-{k}" for k in (1, 2, 3)]
    assert jobs["index"]["needs"] == list(sizes)
    entries = [
        e for job in jobs.values() for e in job.get("strategy", {}).get("matrix", {}).get("include", [])
    ]
    assert sorted(e["image"] for e in entries) == sorted(f"{p.name}-1.0" for p in packages)
    build = jobs["level-0-linux-amd64-1"]
    assert build["env"]["PACKAGE"] == "${{ matrix.package }}"  # never spliced into the script
    assert build["steps"][-1]["run"].endswith(' "$PACKAGE"')
    assert generated.jobs == 602
    assert len(generated.notes) == 1 and re.fullmatch(
        r"GitHub runs workflow files up to 500 KB and one job per image makes \d+ KB: the 601 builds are "
        r"grouped by dependency level into 4 matrix jobs of at most 256, each level needing the one below",
        generated.notes[0],
    )


def test_a_spack_package_build_is_given_every_prefix_it_needs(tmp_path: Path) -> None:
    """A Spack prefix finds its dependencies by DAG hash among the packages given, so its job
    names them all, dependencies first, in both engines; in a GitHub matrix the files travel
    shell-quoted in PACKAGE and come back as words (a path with a space included)."""
    store = tmp_path / "spack store"
    zlib, sqlite = (shutil.copytree(p, store / p.name, symlinks=True) for p in (ZLIB, SQLITE))
    packages = load_packages([sqlite, zlib])
    gitlab = yaml.safe_load(render(packages, "gitlab", directory=tmp_path).text)
    scripts = {name: job["script"][0] for name, job in gitlab.items() if name.startswith(("zlib", "sqlite"))}
    assert scripts["zlib-1.3"].endswith(" 'spack store/" + zlib.name + "'")
    assert scripts["sqlite-3.43.2"].endswith(f" 'spack store/{zlib.name}' 'spack store/{sqlite.name}'")

    # Enough other images that grouping them into matrix jobs makes the smaller file.
    many = load_packages([sqlite, zlib, wide(tmp_path / "others", 30)])
    limits = EngineLimits(github_max_workflow=len(render(many, "github", directory=tmp_path).text) - 1)
    jobs = workflow(render(many, "github", directory=tmp_path, limits=limits).text)["jobs"]
    level1 = jobs["level-1-linux-amd64"]
    [entry] = [e for e in level1["strategy"]["matrix"]["include"] if e["image"] == "sqlite-3.43.2"]
    fake = tmp_path / "bin" / "imagesmith"
    fake.parent.mkdir()
    fake.write_text('#!/bin/sh\nfor a; do printf "%s\\n" "$a"; done\n')
    fake.chmod(0o755)
    env = {
        **os.environ,
        "PATH": f"{fake.parent}:{os.environ['PATH']}",
        "PACKAGE": entry["package"],
        "IMAGE": "x",
    }
    ran = subprocess.run(
        ["sh", "-c", level1["steps"][-1]["run"]], env=env, capture_output=True, text=True, check=True
    )
    assert ran.stdout.splitlines()[-2:] == [f"spack store/{zlib.name}", f"spack store/{sqlite.name}"]


def size_of(packages: Sequence[Package], engine: str, *platforms: Platform, **limits: int) -> int:
    return len(render(packages, engine, *platforms, limits=EngineLimits(**limits)).text.encode())


def test_grouped_multi_platform_workflow_merges_from_artifacts(tmp_path: Path) -> None:
    packages = diamond(tmp_path)
    explicit = size_of(packages, "github", AMD64, ARM64)
    limits = EngineLimits(github_max_workflow=explicit - 1, github_max_matrix=2)
    generated = render(packages, "github", AMD64, ARM64, limits=limits)
    schema_check(generated.text, "github-workflows", tmp_path)
    jobs = workflow(generated.text)["jobs"]
    assert list(jobs) == [
        "level-0-linux-amd64",
        "level-0-linux-arm64",
        "level-1-linux-amd64",
        "level-1-linux-arm64",
        "level-2-linux-amd64",
        "level-2-linux-arm64",
        "merge-1",
        "merge-2",
        "index",
    ]
    assert jobs["level-2-linux-arm64"]["needs"] == ["level-1-linux-arm64"]
    assert len(jobs["level-1-linux-amd64"]["strategy"]["matrix"]["include"]) == 2  # b and c
    merge = jobs["merge-2"]
    assert merge["needs"] == list(jobs)[:6] and merge["env"] == {"IMAGE": "${{ matrix.image }}"}
    assert [s["with"]["name"] for s in merge["steps"] if "with" in s] == [
        "imagesmith-${{ matrix.image }}.linux-amd64",
        "imagesmith-${{ matrix.image }}.linux-arm64",
    ]
    assert merge["steps"][-1]["run"] == (
        'imagesmith merge --repo "$IMAGESMITH_REPO" '
        '"$IMAGESMITH_REPO@$(cat .imagesmith/digests/$IMAGE.linux-amd64)" '
        '"$IMAGESMITH_REPO@$(cat .imagesmith/digests/$IMAGE.linux-arm64)"'
    )
    assert jobs["index"]["needs"] == ["merge-1", "merge-2"] and generated.jobs == 8 + 4 + 1


def test_too_large_even_after_grouping_says_which_limit_and_by_how_much(tmp_path: Path) -> None:
    packages = diamond(tmp_path)
    grouped = size_of(packages, "github", github_max_workflow=size_of(packages, "github") - 1)
    with pytest.raises(UsageError) as info:
        render(packages, "github", limits=EngineLimits(github_max_workflow=3000))
    assert str(info.value) == (
        "the stack is too large for one GitHub workflow: even grouped by dependency level into matrix "
        f"jobs its file is {grouped / 1000:.0f} KB, {(grouped - 3000) / 1000:.0f} KB over the 3 KB GitHub "
        "runs; split the stack into several workflows (one per top-level package)"
    )
    gitlab = r"too large for one GitLab pipeline: its file is \d KB, \d KB over the 2 KB GitLab reads by"
    with pytest.raises(UsageError, match=gitlab + r" default \(max_yaml_size_bytes\)"):
        render(packages, "gitlab", limits=EngineLimits(gitlab_max_config=2000))


# --- bad input, through the command line -----------------------------------------------------------


def test_bad_input_is_one_line_with_the_usage_exit_code(
    registry: DistributionRegistry, base: str, tmp_path: Path
) -> None:
    hello = str(EXAMPLES / "hello.json")
    common = pipeline_argv(registry, base, "-o", str(tmp_path / "ci.yml"))
    two = ("--engine", "gitlab", "--platform", "linux/amd64,linux/arm64", "--runner", "linux/amd64=x")
    cases = {
        ("--engine", "jenkins", hello): "error: unknown CI engine 'jenkins': use gitlab or github",
        (*two, hello): "has no runner: add --runner",
        (
            "--engine",
            "github",
            "--runner",
            "linux/s390x=big",
            hello,
        ): "--runner linux/s390x: linux/s390x is not a platform of this pipeline (linux/amd64)",
        ("--engine", "github", "--runner", "linux/amd64", hello): "must be PLATFORM=TAG[,TAG]",
    }
    for args, message in cases.items():
        code, out, err = cli(*common, *args)
        assert code == 2, err
        assert err.count("\n") == 1 and message in err and out == ""
        assert not (tmp_path / "ci.yml").exists() and not (tmp_path / "ci.yml.tmp").exists()
    code, _, err = cli(*common, *two, "--runner", "linux/arm64=y", hello)
    assert code == 2 and "single image for linux/amd64" in err and "needs a base index" in err
    code, _, err = cli(
        *common[:3], "--base-image", f"oci:{tmp_path}", *common[5:], "--engine", "gitlab", hello
    )
    assert code == 2 and "must be in a registry" in err


@pytest.mark.slow
def test_a_stack_too_large_for_github_even_grouped_is_refused_at_the_real_limit(
    registry: DistributionRegistry, base: str, tmp_path: Path
) -> None:
    """560 images whose package files sit 1 KB deep make even the grouped workflow larger than
    the 500 KB GitHub runs: one line, exit 2, nothing written."""
    deep = tmp_path.joinpath(*["d" * 200] * 5)
    top = wide(deep, 560)
    output = tmp_path / "stack.yml"
    args = ("--engine", "github", "-o", str(output), "--relative-to", str(tmp_path), str(top))
    code, out, err = cli(*pipeline_argv(registry, base, *args))
    assert code == 2 and out == "" and err.count("\n") == 1, err
    assert re.fullmatch(
        r"imagesmith: error: the stack is too large for one GitHub workflow: even grouped by dependency "
        r"level into matrix jobs its file is (\d+) KB, (\d+) KB over the 500 KB GitHub runs; split the stack "
        r"into several workflows \(one per top-level package\)\n",
        err,
    )
    assert not output.exists() and not output.with_name("stack.yml.tmp").exists()


# --- through the command line, against a real registry ---------------------------------------------


def pipeline_argv(registry: DistributionRegistry, base: str, *args: str) -> tuple[str, ...]:
    """``--insecure-registry HOST pipeline --base-image BASE --repo HOST/stack ARGS...``."""
    return (
        "--insecure-registry",
        registry.host,
        "pipeline",
        "--base-image",
        base,
        "--repo",
        f"{registry.host}/stack",
        *args,
    )


def generate(registry: DistributionRegistry, base: str, output: Path, *args: str) -> str:
    code, out, err = cli(*pipeline_argv(registry, base, "--install", "true", "-o", str(output), *args))
    assert code == 0 and out == "", err
    return err


def test_the_base_is_resolved_once_and_pinned(
    registry: DistributionRegistry, multiarch_base: str, tmp_path: Path
) -> None:
    digest = json.loads(ok("--insecure-registry", registry.host, "inspect", "--json", multiarch_base))[
        "digest"
    ]
    target = tmp_path / "ci.yml"
    arm64 = ("--engine", "gitlab", "--platform", "linux/arm64", str(EXAMPLES / "hello.json"))
    generate(registry, multiarch_base, target, *arm64)
    first = target.read_bytes()
    doc = yaml.safe_load(first)
    assert doc["variables"]["IMAGESMITH_BASE_IMAGE"] == f"{multiarch_base}@{digest}"
    assert doc["variables"]["IMAGESMITH_INSECURE_REGISTRY"] == registry.host
    assert doc[".imagesmith-linux-arm64"]["variables"] == {"IMAGESMITH_PLATFORM": "linux/arm64"}
    generate(registry, multiarch_base, target, *arm64)
    assert target.read_bytes() == first
    s390x = ("--engine", "github", "--platform", "linux/s390x", str(EXAMPLES / "hello.json"))
    code, _, err = cli(*pipeline_argv(registry, multiarch_base, *s390x))
    assert code == 1 and "no image for platform linux/s390x" in err and "linux/arm64/v8" in err


# --- a real run: gitlab-ci-local ----------------------------------------------------------------


def need_gitlab_ci_local() -> None:
    need(GITLAB_CI_LOCAL.is_file(), f"{GITLAB_CI_LOCAL} missing: run `make node-deps` (npm ci of tests/npm)")
    need_tool("rsync")
    need_tool("git")


def checkout(root: Path) -> Path:
    """A git repository holding the example stack, as a site's would."""
    shutil.copytree(EXAMPLES, root / "stack")
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    return root


def commit(root: Path) -> None:
    subprocess.run(["git", "add", "."], cwd=root, check=True)
    subprocess.run(
        ["git", "-c", "user.email=ci@example.invalid", "-c", "user.name=ci", "commit", "-qm", "stack"],
        cwd=root,
        check=True,
    )


def run_gitlab_ci_local(root: Path, *variables: str) -> tuple[subprocess.CompletedProcess[str], float]:
    """Every job of ``root``'s .gitlab-ci.yml in a copy of the checkout of its own (artifacts
    travel between them as on GitLab), two at a time, with this virtualenv's imagesmith."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    args = [
        str(GITLAB_CI_LOCAL),
        "--shell-executor-no-image",
        "--shell-isolation",
        "--concurrency",
        "2",
        "--variable",
        f"IMAGESMITH_CACHE_DIR={os.environ['IMAGESMITH_CACHE_DIR']}",
    ]
    for variable in variables:
        args += ["--variable", variable]
    start = time.monotonic()
    run = subprocess.run(args, cwd=root, env=env, capture_output=True, text=True, timeout=600)
    return run, time.monotonic() - start


def events(output: str) -> list[tuple[str, str]]:
    """(job, "start" | "end") in the order gitlab-ci-local reported them."""
    found = []
    for line in output.splitlines():
        match = re.match(r"(\S+)\s+(starting shell|finished in)", line)
        if match:
            found.append((match[1], "start" if match[2] == "starting shell" else "end"))
    return found


def check_order(doc: dict[str, Any], output: str) -> None:
    """Every job ran once, and none started before the jobs it needs (or, without needs, the
    jobs of the stages before its own) had finished."""
    jobs = {n: j for n, j in doc.items() if isinstance(j, dict) and "script" in j and not n.startswith(".")}
    seen = events(output)
    assert sorted(job for job, kind in seen if kind == "start") == sorted(jobs), output
    finished: set[str] = set()
    for job, kind in seen:
        if kind == "end":
            finished.add(job)
            continue
        spec = jobs[job]
        stage = doc["stages"].index(spec["stage"])
        before = (
            spec["needs"]
            if "needs" in spec
            else [n for n, j in jobs.items() if doc["stages"].index(j["stage"]) < stage]
        )
        assert set(before) <= finished, f"{job} started before {sorted(set(before) - finished)} finished"
    assert re.findall(r"^ PASS\s+(\S+)", output, re.M) and " FAIL " not in output, output


@pytest.mark.integration
@pytest.mark.slow
def test_gitlab_ci_local_builds_the_example_stack_on_two_platforms(
    registry: DistributionRegistry, multiarch_base: str, podman: Podman, tmp_path: Path
) -> None:
    """The pipeline runs for real: every job, in dependency order; the merged index of each
    image lists both platforms and is the one `build --platform` gives on one machine; podman
    runs the amd64 image; the repository index lists what was pushed."""
    need_gitlab_ci_local()
    root = checkout(tmp_path / "site")
    note = generate(
        registry,
        multiarch_base,
        root / ".gitlab-ci.yml",
        "--engine",
        "gitlab",
        "--platform",
        "linux/amd64,linux/arm64",
        "--runner",
        "linux/amd64=amd64",
        "--runner",
        "linux/arm64=arm64",
        str(root / "stack" / "hello.json"),
    )
    assert note == ""
    commit(root)
    run, seconds = run_gitlab_ci_local(root)
    output = run.stdout + run.stderr
    assert run.returncode == 0, output
    doc = yaml.safe_load((root / ".gitlab-ci.yml").read_text())
    check_order(doc, output)
    print(f"gitlab-ci-local ran {len(events(output)) // 2} jobs in {seconds:.1f} s")

    # The index a one-machine build gives, on the same pinned base, in another repository.
    pinned = doc["variables"]["IMAGESMITH_BASE_IMAGE"]
    flags = ("--insecure-registry", registry.host)
    local = json.loads(
        ok(
            *flags,
            "build",
            "--json",
            "--base-image",
            pinned,
            "--platform",
            "linux/amd64,linux/arm64",
            "--repo",
            f"{registry.host}/one-machine",
            str(EXAMPLES / "hello.json"),
        )
    )
    merged = f"{registry.host}/stack:{local['tag']}"
    info = json.loads(ok(*flags, "inspect", "--json", merged))
    assert [e["platform"] for e in info["manifests"]] == [
        {"architecture": "amd64", "os": "linux"},
        {"architecture": "arm64", "os": "linux", "variant": "v8"},
    ]
    assert info["digest"] == local["digest"]
    ran = podman.docker("run", "--rm", merged, "hello")
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.startswith("Hello, world, from hello 2.12")
    listed = json.loads(ok(*flags, "index", "list", "--json", f"{registry.host}/stack"))
    platforms = {e["tag"]: e["platforms"] for e in listed["entries"]}
    assert platforms[local["tag"]] == ["linux/amd64", "linux/arm64/v8"]
    assert len(platforms) == 6  # two images, each per platform and merged


@pytest.mark.integration
@pytest.mark.slow
def test_gitlab_ci_local_logs_in_with_gitlabs_registry_variables(
    basic_registry: DistributionRegistry, registry: DistributionRegistry, base: str, tmp_path: Path
) -> None:
    """Jobs pushing to the project's registry log in with CI_REGISTRY_USER/PASSWORD (GitLab's
    own, set by the engine), into a docker config of their own; the file holds no secret."""
    need_gitlab_ci_local()
    ((user, password),) = BASIC_USERS.items()
    root = checkout(tmp_path / "site")
    code, _, err = cli(
        "--insecure-registry",
        f"{registry.host},{basic_registry.host}",
        "pipeline",
        "--engine",
        "gitlab",
        "--base-image",
        base,
        "--repo",
        f"{basic_registry.host}/stack",
        "--install",
        "true",
        "-o",
        str(root / ".gitlab-ci.yml"),
        str(root / "stack" / "hello.json"),
    )
    assert code == 0, err
    text = (root / ".gitlab-ci.yml").read_text()
    assert password not in text and user not in text
    commit(root)
    home = tmp_path / "home"
    home.mkdir()  # no docker config of the test runner's
    run, _ = run_gitlab_ci_local(
        root,
        f"HOME={home}",
        f"CI_REGISTRY={basic_registry.host}",
        f"CI_REGISTRY_USER={user}",
        f"CI_REGISTRY_PASSWORD={password}",
    )
    output = run.stdout + run.stderr
    assert run.returncode == 0, output
    check_order(yaml.safe_load(text), output)
    assert output.count(f"Login succeeded for {basic_registry.host}") == 3
    assert password not in output
    assert "hello-2.12-" in " ".join(basic_registry.tags("stack", auth=(user, password)))


def test_docs_show_what_the_command_writes_for_the_example_stack() -> None:
    """docs/pipelines.md shows both files for the example stack; they must stay the real output."""
    doc = (Path(__file__).resolve().parent.parent / "docs" / "pipelines.md").read_text()
    shown = re.findall(r"```yaml\n(.*?)```", doc, re.S)[:2]
    platforms = (AMD64, ARM64)
    digest = "sha256:4ab4b4c9a0b6b5c6a7f3a2a1e0d9c8b7a6f5e4d3c2b1a0f9e8d7c6b5a4f3e2d1"
    base = BasePin("ubuntu:23.04", Reference.parse(f"ubuntu:23.04@{digest}"), platforms)
    packages = load_packages([EXAMPLES / "hello.json"])
    written = [
        render_pipeline(
            packages,
            engine=engine,
            base=base,
            repo=repo,
            runners=runners,
            directory=EXAMPLES.parent.parent,
            package_args=["examples/stack/hello.json"],
        ).text
        for engine, repo, runners in (
            (
                "gitlab",
                "registry.gitlab.com/acme/stack",
                {"linux/amd64": ["saas-linux-small-amd64"], "linux/arm64": ["saas-linux-small-arm64"]},
            ),
            (
                "github",
                "ghcr.io/acme/stack",
                {"linux/amd64": ["ubuntu-24.04"], "linux/arm64": ["ubuntu-24.04-arm"]},
            ),
        )
    ]
    assert shown == written
