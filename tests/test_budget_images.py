"""Images under a layer budget, end to end: a generated stack whose deeper images need more
layers than the budget allows, built with ``--each`` into the real registry, every image
within the budget, its layers holding exactly its own packages, groups shared between images
and platforms, and the images run by podman."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from cli_support import build_argv, cli, ok
from servers import DistributionRegistry, Podman
from stackgen import Stack, write_stack

pytestmark = pytest.mark.integration

BUDGET = 10  # the busybox base has one layer: 9 package layers per image


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMAGESMITH_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "cache"))
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Stack:
    # 60 packages, 10 per level: the top levels' closures reach 20-40 packages.
    return write_stack(tmp_path_factory.mktemp("stack"), 60, width=10, seed=3)


def build_each(
    registry: DistributionRegistry, base: str, repo: str, files: list[Path], *args: str
) -> list[dict[str, Any]]:
    """``build --each --max-layers BUDGET --json FILES`` into ``HOST/REPO``: the results."""
    budget = ("--repo", f"{registry.host}/{repo}", "--max-layers", str(BUDGET), "--json")
    out = ok(*build_argv(registry.host, base, "--each", *args, *budget, *map(str, files)))
    results: list[dict[str, Any]] = json.loads(out)
    return results


@pytest.fixture(scope="module")
def built(registry: DistributionRegistry, base: str, stack: Stack) -> list[dict[str, object]]:
    return build_each(registry, base, "budget", stack.files)


def layers_of(result: dict[str, object]) -> list[dict[str, object]]:
    layers = result["layers"]
    assert isinstance(layers, list)
    return layers


def names(layer: dict[str, object]) -> list[str]:
    packages = layer["packages"]
    assert isinstance(packages, list)
    return [str(p["package"]) for p in packages]


def deepest(stack: Stack, top: str) -> str:
    """The dependency of ``top`` at the end of its longest dependency path."""
    best: dict[str, tuple[int, str]] = {}

    def walk(name: str) -> tuple[int, str]:
        if name not in best:
            below = [walk(d) for d in stack.depends[name]]
            best[name] = max(((d + 1, n) for d, n in below), default=(0, name))
        return best[name]

    return walk(top)[1]


def test_every_image_within_the_budget_holds_exactly_its_packages(
    built: list[dict[str, object]], stack: Stack
) -> None:
    assert len(built) == len(stack.files)
    over = 0
    for result in built:
        layers = layers_of(result)
        top = names(layers[-1])
        assert len(top) == 1, "the image's own package is its last layer, alone"
        assert 1 + len(layers) <= BUDGET
        packages = [n for layer in layers for n in names(layer)]
        assert sorted(packages) == sorted(stack.closure(top[0]) | {top[0]}), "no foreign package"
        if len(packages) > BUDGET - 1:
            over += 1
            assert any(len(names(layer)) > 1 for layer in layers)
        else:
            assert all(len(names(layer)) == 1 for layer in layers), "under the budget: one per package"
    assert over >= 10, "the stack must exercise the budget"


def test_groups_are_shared_between_images(built: list[dict[str, object]]) -> None:
    uses: Counter[str] = Counter()
    members: dict[str, list[str]] = {}
    for result in built:
        for layer in layers_of(result):
            if len(names(layer)) > 1:
                uses[str(layer["digest"])] += 1
                assert members.setdefault(str(layer["digest"]), names(layer)) == names(layer)
    assert uses and max(uses.values()) >= 3, uses


def test_history_and_manifest_agree(built: list[dict[str, object]], registry: DistributionRegistry) -> None:
    grouped = next(r for r in built if any(len(names(layer)) > 1 for layer in layers_of(r)))
    reference = str(grouped["reference"])
    info = json.loads(ok("--insecure-registry", registry.host, "inspect", "--json", reference))
    history = [h for h in info["history"] if not h.get("empty_layer")]
    assert len(history) == len(info["layers"]) == len(info["diff_ids"]) == 1 + len(layers_of(grouped))
    for entry, layer in zip(history[1:], layers_of(grouped), strict=True):
        assert entry["created_by"].startswith("imagesmith: add ")
        for name in names(layer):
            assert f"{name}@1.0 at /opt/stack/{name}-1.0" in entry["created_by"]
            assert f"{name}-1.0-" in entry["comment"]


@pytest.mark.slow
def test_grouped_images_run(built: list[dict[str, object]], stack: Stack, podman: Podman) -> None:
    for result in built:
        layers = layers_of(result)
        if all(len(names(layer)) == 1 for layer in layers):
            continue
        top = names(layers[-1])[0]
        low = deepest(stack, top)
        script = f'{top} && {low} && echo "$PATH"'
        ran = podman.podman("run", "--rm", str(result["reference"]), "sh", "-c", script)
        assert ran.returncode == 0, ran.stderr
        first, second, path = ran.stdout.splitlines()
        assert (first, second) == (top, low)
        entries = path.split(":")
        assert len(entries) == len(set(entries)) and f"/opt/stack/{low}-1.0/bin" in entries


def test_the_same_stack_gives_the_same_images(
    built: list[dict[str, object]],
    registry: DistributionRegistry,
    base: str,
    stack: Stack,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("IMAGESMITH_CACHE_DIR", str(tmp_path / "fresh"))
    files = list(reversed(stack.files))  # another order, nothing cached: the same plan and bytes
    again = build_each(registry, base, "budget", files)
    assert {(r["tag"], r["digest"]) for r in again} == {(r["tag"], r["digest"]) for r in built}


@pytest.mark.slow
def test_every_platform_gets_the_same_groups(
    registry: DistributionRegistry, multiarch_base: str, stack: Stack
) -> None:
    platforms = ("--platform", "linux/amd64,linux/arm64")
    results = build_each(registry, multiarch_base, "budget-multi", stack.files, *platforms)
    grouped = 0
    for result in results:
        amd64, arm64 = result["platforms"]
        digests = [layer["digest"] for layer in amd64["layers"]]
        assert digests == [layer["digest"] for layer in arm64["layers"]]
        grouped += any(len(layer["packages"]) > 1 for layer in amd64["layers"])
    assert grouped >= 10


def test_a_budget_below_the_base_is_refused(registry: DistributionRegistry, base: str, stack: Stack) -> None:
    repo = ("--repo", f"{registry.host}/budget")
    code, out, err = cli(*build_argv(registry.host, base, *repo, "--max-layers", "2", str(stack.files[-1])))
    assert code == 2 and not out
    assert err.strip() == (
        "imagesmith: error: --max-layers 2 is too small: the base image has 1 layer, and an image needs "
        "one for the dependencies and one for the package on top: give at least --max-layers 3"
    )


def test_two_packages_holding_one_path_differently_cannot_share_a_layer(
    registry: DistributionRegistry, base: str, tmp_path: Path
) -> None:
    def package(name: str, prefix: str, files: dict[str, str], depends: list[str]) -> Path:
        for rel, text in files.items():
            (tmp_path / name / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / name / rel).write_text(text)
        path = tmp_path / f"{name}.json"
        path.write_text(
            json.dumps(
                {
                    "name": name,
                    "version": "1",
                    "prefix": prefix,
                    "content": name,
                    "depends": [f"{d}.json" for d in depends],
                }
            )
        )
        return path

    package("suite", "/opt/suite", {"share/x": "from suite"}, [])
    package("plugin", "/opt/suite/share", {"x": "from plugin"}, [])
    app = package("app", "/opt/app", {"bin/app": "app"}, ["suite", "plugin"])
    repo = ("--repo", f"{registry.host}/budget-clash")
    code, _, err = cli(*build_argv(registry.host, base, *repo, "--max-layers", "3", str(app)))
    assert code == 2, err
    assert "packages suite-1 and plugin-1 both install /opt/suite/share/x, with different contents" in err
    # With a layer each, the upper one shadows the lower as always.
    ok(*build_argv(registry.host, base, *repo, str(app)))


def test_each_root_builds_the_roots_only(registry: DistributionRegistry, base: str, stack: Stack) -> None:
    roots = [stack.files[-1], stack.files[-2]]
    repo = ("--repo", f"{registry.host}/budget-roots")
    budget = ("--max-layers", str(BUDGET), "--json")
    results = json.loads(
        ok(*build_argv(registry.host, base, "--each-root", *repo, *budget, *map(str, roots)))
    )
    assert [names(layers_of(r)[-1]) for r in results] == [[p.stem] for p in roots]
    code, _, _ = cli(*build_argv(registry.host, base, "--each", "--each-root", *repo, str(roots[0])))
    assert code == 2  # argparse: one or the other


def test_a_group_the_registry_has_is_not_built_again_and_a_layout_rebuilds_it(
    registry: DistributionRegistry, base: str, stack: Stack, tmp_path: Path
) -> None:
    """A group whose blob left the cache (its record stays) is not built again for a push to
    a repository that has it; a layout, which needs the bytes, gets them built again, the same."""
    from imagesmith import BlobCache, BuildOptions, RegistryOptions, RegistryPool, build_each, load_packages
    from imagesmith.oci.digests import Digest

    cache = BlobCache(tmp_path / "cache")
    options = BuildOptions(max_layers=BUDGET)
    packages = load_packages(stack.files)
    repo = f"{registry.host}/budget-pruned"
    with RegistryPool(RegistryOptions(insecure=frozenset({registry.host}))) as pool:
        first = build_each(base, packages, repo=repo, options=options, cache=cache, pool=pool)
        groups = {layer.layer.digest for r in first for layer in r.layers if len(layer.packages) > 1}
        assert groups
        for digest in groups:
            cache.evict(digest)
        events: list[str] = []
        again = build_each(
            base,
            packages,
            repo=repo,
            options=options,
            cache=cache,
            pool=pool,
            progress=lambda e: events.append(f"{e.kind} {e.detail}"),
        )
        assert [r.digest for r in again] == [r.digest for r in first]
        assert not any(e.startswith("layer-built") for e in events)
        assert not any(cache.has(digest) for digest in groups)  # nothing needed their bytes
        top = next(r for r in first if any(len(layer.packages) > 1 for layer in r.layers))
        name = top.packages[-1].package.name
        out = build_each(
            base,
            packages,
            output=f"oci:{tmp_path / 'layout'}",
            options=options,
            cache=cache,
            pool=pool,
            roots=[p for p in packages if p.name == name],
        )
    assert out[0].digest == top.digest
    for layer in out[0].layers:
        if len(layer.packages) > 1:
            assert cache.verify(Digest.parse(str(layer.layer.digest)))
            assert (tmp_path / "layout" / "blobs" / "sha256" / layer.layer.digest.hex).is_file()
