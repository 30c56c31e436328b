"""The layer budget's plan (imagesmith.pipeline.budget): every image within its slots, never a package
that is not its own, groups shared, the same plan whatever the input order."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imagesmith.errors import UsageError
from imagesmith.pipeline.budget import DEFAULT_MAX_LAYERS, LayerPlan, package_slots, plan_layers


def closures(deps: Mapping[str, Sequence[str]]) -> dict[str, list[str]]:
    """Each package's stack: its dependencies depth first, then itself (as --each orders it)."""
    out: dict[str, list[str]] = {}
    for top in deps:
        order: list[str] = []
        seen = {top}
        walk = [(top, 0)]  # iterative post-order: long chains must not recurse
        while walk:
            key, index = walk.pop()
            if index < len(deps[key]):
                walk.append((key, index + 1))
                dep = deps[key][index]
                if dep not in seen:
                    seen.add(dep)
                    walk.append((dep, 0))
            else:
                order.append(key)
        out[top] = order
    return out


def chain(n: int) -> dict[str, list[str]]:
    return {f"p{i:04}": ([f"p{i - 1:04}"] if i else []) for i in range(n)}


def check(plan: LayerPlan, stacks: Mapping[str, Sequence[str]], slots: int) -> None:
    """What every plan must satisfy."""
    blobs: dict[frozenset[str], tuple[str, ...]] = {}
    for image, stack in stacks.items():
        layers = plan.layers[image]
        assert len(layers) <= slots, (image, len(layers))
        assert layers[-1] == (stack[-1],), "the image's own package is the last layer, alone"
        flat = [key for layer in layers for key in layer]
        assert sorted(flat) == sorted(stack), "exactly the image's packages, each once"
        if len(stack) <= slots:
            assert all(len(layer) == 1 for layer in layers), "under budget: one layer per package"
            assert flat == list(stack), "and in the image's own order"
        for layer in layers:
            # A set of packages is one layer everywhere: same members, same order.
            assert blobs.setdefault(frozenset(layer), layer) == layer
    used = {frozenset(layer) for layers in plan.layers.values() for layer in layers if len(layer) > 1}
    assert {frozenset(g) for g in plan.groups} == used


def test_under_budget_nothing_changes() -> None:
    stacks = closures({"a": [], "b": ["a"], "c": ["a", "b"]})
    plan = plan_layers(stacks, 3, {k: k for k in stacks})
    assert not plan.grouped
    assert plan.layers == {"a": (("a",),), "b": (("a",), ("b",)), "c": (("a",), ("b",), ("c",))}


def test_one_image_over_budget_groups_only_what_it_must() -> None:
    stacks = {"top": [f"d{i}" for i in range(10)] + ["top"]}
    plan = plan_layers(stacks, 5, {k: k for k in stacks["top"]})
    check(plan, stacks, 5)
    layers = plan.layers["top"]
    assert len(layers) == 5
    assert [len(layer) for layer in layers].count(1) == 4  # 3 dependencies alone + the package


def test_a_chain_shares_its_groups_between_images() -> None:
    stacks = closures(chain(300))
    plan = plan_layers(stacks, 125, {k: k for k in stacks})
    check(plan, stacks, 125)
    over = [image for image, stack in stacks.items() if len(stack) > 125]
    assert len(over) == 175
    # A handful of groups serve all 175 images over the budget, each reused by many.
    assert len(plan.groups) <= 20
    uses = {g: sum(1 for i in over if g in plan.layers[i]) for g in plan.groups}
    assert min(uses.values()) >= 2
    grouped = {key for g in plan.groups for key in g}
    assert len(grouped) <= 299  # each package at most in one group: a partition along the chain


def test_a_long_chain_stays_within_the_budget() -> None:
    stacks = closures(chain(1000))
    plan = plan_layers(stacks, 125, {k: k for k in stacks})
    check(plan, stacks, 125)
    assert sum(len(g) for g in plan.groups) < 1000  # about one extra copy of the chain, no more


def test_tiny_budgets_still_hold() -> None:
    stacks = closures(chain(40))
    for slots in (2, 3, 5):
        check(plan_layers(stacks, slots, {k: k for k in stacks}), stacks, slots)


def random_dag(seed: int, n: int) -> dict[str, list[str]]:
    rng = random.Random(seed)
    names = [f"n{i:03}" for i in range(n)]
    return {name: sorted(rng.sample(names[:i], min(i, rng.randint(0, 4)))) for i, name in enumerate(names)}


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(2, 60), slots=st.integers(2, 12))
def test_any_stack_any_budget(seed: int, n: int, slots: int) -> None:
    deps = random_dag(seed, n)
    stacks = closures(deps)
    canonical = {k: f"/opt/{k}" for k in deps}
    plan = plan_layers(stacks, slots, canonical)
    check(plan, stacks, slots)
    # The plan depends on the stack, not on the order images or packages were given in.
    shuffled = dict(random.Random(seed).sample(sorted(stacks.items()), len(stacks)))
    assert plan_layers(shuffled, slots, canonical).layers == plan.layers


def test_a_stack_of_one_image_and_its_subset_image_share_the_group() -> None:
    # "app" and "tool" share a big core; both are over the budget: one group serves both.
    core = [f"core{i}" for i in range(8)]
    deps: dict[str, list[str]] = {c: [] for c in core}
    deps["tool"] = core[:]
    deps["app"] = ["tool", "extra"]
    deps["extra"] = []
    stacks = closures(deps)
    plan = plan_layers(stacks, 5, {k: k for k in deps})
    check(plan, stacks, 5)
    tool_groups = {layer for layer in plan.layers["tool"] if len(layer) > 1}
    app_groups = {layer for layer in plan.layers["app"] if len(layer) > 1}
    assert tool_groups & app_groups


def test_fixed_packages_keep_their_own_layer() -> None:
    stacks = {"top": [f"d{i}" for i in range(10)] + ["top"]}
    canonical = {k: k for k in stacks["top"]}
    plan = plan_layers(stacks, 6, canonical, fixed={"d0", "d1", "d2"})
    check(plan, stacks, 6)
    assert {("d0",), ("d1",), ("d2",)} <= set(plan.layers["top"])
    expected = r"the image of top needs .* each of 5 dependencies .* 7 layers, over the 5 .* by 2"
    with pytest.raises(UsageError, match=expected):
        plan_layers(stacks, 5, canonical, fixed={"d0", "d1", "d2", "d3", "d4"})


def test_package_slots() -> None:
    assert DEFAULT_MAX_LAYERS == 125
    assert package_slots(125, 3, dependencies=True) == 122
    assert package_slots(125, 3, extra_layers=1, dependencies=True) == 121
    assert package_slots(4, 3, dependencies=False) == 1
    with pytest.raises(UsageError, match=r"--max-layers 4 is too small: the base image has 3 layers.* 5"):
        package_slots(4, 3, dependencies=True)
    with pytest.raises(UsageError, match=r"--max-layers 3 .* 3 layers,.*at least --max-layers 4"):
        package_slots(3, 3, dependencies=False)
    with pytest.raises(UsageError, match="profile script"):
        package_slots(5, 3, extra_layers=1, dependencies=True)
    with pytest.raises(UsageError, match="positive"):
        package_slots(0, 0, dependencies=False)
