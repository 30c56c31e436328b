"""A real-size Spack stack as images: the large DAG of the Spack kit, end to end.

A Spack 1.2 environment with roots r-tidyverse (242 nodes, 197 of them at run time), zstd and
kit-hello, concretized by the real Spack and fake-installed (``spack install --fake``), is
built with ``--spack-env --each``: one image per package, none above the default budget of 125
layers, every one run by podman (with the overlay driver: the kernel's overlayfs stacks the
layers as in production, where vfs would copy a deep image whole, layer by layer, minutes per
image). The environment as one image runs each root's program. A
Spack 0.23 environment checks the other lockfile version.

Fake installs write stub prefixes: ``bin/NAME`` is an empty executable, plus ``include``,
``lib`` and ``man``. So that running a program proves something, the tests write a small
script into ``bin/NAME`` of each root and of r-tidyverse's deepest run-time dependency (the
end of its longest dependency path), printing ``NAME runs``. The prefixes live in the kit's
instance (tests/.data locally), which is reused: the scripts are rewritten identically.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cli_support import build_argv, ok
from servers import DistributionRegistry, Podman
from spackkit import SpackKit

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# None is the name of a busybox applet: the base's shell would run the applet before PATH's.
ROOTS = ("r-tidyverse", "zstd", "kit-hello")


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMAGESMITH_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)


def environment(kit: SpackKit, name: str, roots: tuple[str, ...]) -> Path:
    """A concretized, fake-installed environment of ``roots`` in the kit's instance.

    Its specs go to an install tree of its own (``install_tree(env)``): fake installs must never
    stand in for the real builds other tests make in the kit's tree (a fake gcc-runtime has no
    libraries)."""
    env = kit.directory / "envs" / name
    if not (env / "spack.yaml").is_file():
        env.mkdir(parents=True, exist_ok=True)
        (env / "spack.yaml").write_text(
            "spack:\n"
            f"  specs: [{', '.join(roots)}]\n"
            "  view: false\n"
            f"  config:\n    install_tree:\n      root: {install_tree(env)}\n"
        )
    if not (env / "spack.lock").is_file():
        kit.run("-e", str(env), "concretize", timeout=1800)
    kit.run("-e", str(env), "install", "--fake", timeout=1800)  # quick when all are installed
    return env


def install_tree(env: Path) -> Path:
    """The install tree of the environment ``env`` (beside it)."""
    return env.parent / f"{env.name}-tree"


def spack_env(env: Path, tree: Path) -> tuple[str, ...]:
    """The build options that read the environment ``env`` installed in ``tree``."""
    return ("--spack-env", str(env), "--spack-install-tree", str(tree))


def prefixes(env: Path) -> dict[str, Path]:
    """Install prefix by DAG hash, from the environment's install tree's database."""
    doc = json.loads((install_tree(env) / ".spack-db" / "index.json").read_text())
    return {h: Path(r["path"]) for h, r in doc["database"]["installs"].items() if r.get("path")}


def program(prefix: Path, name: str) -> None:
    """Make ``bin/NAME`` of a fake install a program that says it ran."""
    script = prefix / "bin" / name
    script.write_text(f"#!/bin/sh\necho {name} runs\n")
    script.chmod(0o755)


def deepest_dependency(spec_json: Path) -> tuple[str, str]:
    """(name, hash) at the end of the longest run-time dependency path from the spec's root."""
    nodes = {n["hash"]: n for n in json.loads(spec_json.read_text())["spec"]["nodes"]}
    memo: dict[str, tuple[int, str]] = {}

    def runtime(h: str) -> list[str]:
        return [
            d["hash"]
            for d in nodes[h].get("dependencies", [])
            if {"link", "run"} & set(d["parameters"]["deptypes"]) and not nodes[d["hash"]].get("external")
        ]

    def depth(h: str) -> tuple[int, str]:
        if h not in memo:
            below = [depth(d) for d in runtime(h)]
            memo[h] = max(((d + 1, leaf) for d, leaf in below), default=(0, h))
        return memo[h]

    root = next(iter(nodes))
    leaf = depth(root)[1]
    return nodes[leaf]["name"], leaf


@dataclass(frozen=True)
class Tidy:
    """The 1.2 environment, its install tree and the name of r-tidyverse's deepest dependency."""

    env: Path
    tree: Path
    deepest: str


@pytest.fixture(scope="module")
def tidy(spack12: SpackKit) -> Tidy:
    """The 1.2 environment, with programs in its roots and r-tidyverse's deepest dependency."""
    env = environment(spack12, "tidyverse", ROOTS)
    where = prefixes(env)
    lock = json.loads((env / "spack.lock").read_text())
    for root in lock["roots"]:
        program(where[root["hash"]], lock["concrete_specs"][root["hash"]]["name"])
    tidyverse = where[lock["roots"][0]["hash"]]
    name, leaf = deepest_dependency(tidyverse / ".spack" / "spec.json")
    program(where[leaf], name)
    return Tidy(env, install_tree(env), name)


@pytest.mark.timeout(3600)
def test_each_package_of_the_large_dag_is_an_image_that_runs(
    tidy: Tidy, registry: DistributionRegistry, base: str, podman_overlay: Podman
) -> None:
    deep_name = tidy.deepest
    common = build_argv(registry.host, base, *spack_env(tidy.env, tidy.tree), "--each", "--json")
    started = time.monotonic()
    results = json.loads(ok(*common, "--repo", f"{registry.host}/tidy"))
    build_seconds = time.monotonic() - started
    packages = {p["hash"] for r in results for layer in r["layers"] for p in layer["packages"]}
    assert len(results) == len({r["layers"][-1]["hash"] for r in results}) >= 197
    counts = [1 + len(r["layers"]) for r in results]
    assert max(counts) <= 125, "every image within Docker's 125 layers"
    uses: Counter[str] = Counter()
    sizes: dict[str, int] = {}
    for r in results:
        for layer in r["layers"]:
            uses[layer["digest"]] += 1
            sizes[layer["digest"]] = layer["size"]
    grouped = {layer["digest"] for r in results for layer in r["layers"] if len(layer["packages"]) > 1}
    assert grouped, "r-tidyverse's 196 dependencies cannot have a layer each"
    # Without a budget every package is a layer (what imagesmith pushed before): too many.
    unbounded = max(1 + sum(len(layer["packages"]) for layer in r["layers"]) for r in results)
    assert unbounded > 125, "the stack must go over the budget"
    figures = {
        "images": len(results),
        "packages": len(packages),
        "largest_image_layers": max(counts),
        "largest_image_layers_without_budget": unbounded,
        "group_layers": len(grouped),
        "layers_shared_by_several_images": sum(1 for n in uses.values() if n > 1),
        "distinct_layers": len(uses),
        "bytes_pushed": sum(sizes.values()),
        "build_seconds": round(build_seconds, 1),
    }
    print("\nlarge DAG:", json.dumps(figures))

    started = time.monotonic()
    # One podman pulls them all (it keeps its storage open while it stores the layers), then
    # three containers run at a time: container start-up is mostly waiting.
    pulled = podman_overlay.podman("pull", "-q", *(r["reference"] for r in results), timeout=3000)
    assert pulled.returncode == 0, pulled.stderr
    pulled_seconds = time.monotonic() - started

    def first_on_path(r: dict[str, Any]) -> subprocess.CompletedProcess[str]:
        name = r["layers"][-1]["package"]
        # The first NAME on PATH (busybox's `command -v` prefers its own applets: bzip2, xz...),
        # then any PATH entry given twice.
        check = (
            f'for d in $(echo "$PATH" | tr : " "); do [ -x "$d/{name}" ] && echo "$d/{name}" && break; done; '
            'echo "$PATH" | tr : "\\n" | sort | uniq -d'
        )
        return podman_overlay.podman("run", "--rm", "--pull", "never", r["reference"], "sh", "-c", check)

    with ThreadPoolExecutor(3) as runners:
        runs = list(runners.map(first_on_path, results))
    for r, ran in zip(results, runs, strict=True):
        assert ran.returncode == 0, (r["reference"], ran.stderr)
        found, *duplicates = ran.stdout.splitlines()
        name = r["layers"][-1]["package"]
        assert found.endswith(f"-{r['layers'][-1]['hash']}/bin/{name}") and not duplicates, ran.stdout
    print(f"ran {len(results)} images in {time.monotonic() - started:.0f} s ({pulled_seconds:.0f} s pulling)")
    # The root image reaches the program of its deepest dependency through PATH.
    tidyverse = next(r for r in results if r["layers"][-1]["package"] == "r-tidyverse")
    script = f"r-tidyverse && {deep_name}"
    ran = podman_overlay.podman("run", "--rm", tidyverse["reference"], "sh", "-c", script)
    assert ran.returncode == 0 and ran.stdout.split("\n")[:2] == ["r-tidyverse runs", f"{deep_name} runs"]


@pytest.mark.timeout(1800)
def test_the_environment_as_one_image_runs_every_root(
    tidy: Tidy, registry: DistributionRegistry, base: str, podman_overlay: Podman
) -> None:
    ref = f"{registry.host}/tidy-env:1"
    result = json.loads(
        ok(*build_argv(registry.host, base, *spack_env(tidy.env, tidy.tree), "--tag", ref, "--json"))
    )
    assert 1 + len(result["layers"]) <= 125
    in_image = {p["package"] for layer in result["layers"] for p in layer["packages"]}
    assert set(ROOTS) <= in_image
    script = " && ".join(ROOTS) + ' && echo "$PATH"'
    ran = podman_overlay.podman("run", "--rm", ref, "sh", "-c", script)
    assert ran.returncode == 0, ran.stderr
    *said, path = ran.stdout.splitlines()
    assert said == [f"{root} runs" for root in ROOTS]
    entries = path.split(":")
    assert len(entries) == len(set(entries)), "no duplicates in PATH"
    for root in ROOTS:
        assert sum(1 for e in entries if f"/{root}-" in e and e.endswith("/bin")) == 1


@pytest.mark.timeout(1800)
def test_a_spack_023_environment(
    spack023: SpackKit, registry: DistributionRegistry, base: str, podman_overlay: Podman
) -> None:
    roots = ("zlib", "lz4")  # not names of busybox applets, which its shell runs before PATH's
    env = environment(spack023, "-".join(roots), roots)
    lock = json.loads((env / "spack.lock").read_text())
    assert lock["_meta"]["lockfile-version"] == 5
    where = prefixes(env)
    for root in lock["roots"]:
        program(where[root["hash"]], lock["concrete_specs"][root["hash"]]["name"])
    ref = f"{registry.host}/spack023-env:1"
    ok(*build_argv(registry.host, base, *spack_env(env, install_tree(env)), "--tag", ref))
    ran = podman_overlay.podman("run", "--rm", ref, "sh", "-c", " && ".join(roots))
    assert ran.returncode == 0 and ran.stdout.splitlines() == [f"{root} runs" for root in roots], ran.stderr
