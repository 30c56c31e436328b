"""The layer budget: which packages of a stack share a layer, so no image has too many.

Runtimes refuse deep images: Docker stops at 125 layers ("max depth exceeded"), overlayfs near
128 lower directories, some registries at a few hundred. Each image of a stack gets a number of
*slots* for its packages (the budget minus the base's layers and the profile-script layer).
An image whose packages fit gets one layer per package, as always. An image with more gets
some of its dependencies grouped: one layer holding several whole packages.

The grouping is chosen once for the whole stack (every image of a ``--each`` run, every
platform) by :func:`plan_layers`, from the dependency graph alone, so it is the same in every
run with the same packages. A group is a set of packages, and a group's layer is a function of
that set only (its entries sorted by path, see :mod:`imagesmith.pipeline.group`), so a group used
by several images is one blob, built and pushed once. The argument for the algorithm, and its
measured cost, are in ``docs/budget.md``. In short:

- An image uses a group only if it holds *every* package of the group: no image ever gets a
  package that is not in its own dependency closure.
- Single-package layers are the packages' own layers, which a stack pushes anyway (each
  package is the top layer of its own image); only groups cost extra bytes. So an image keeps
  as many single-package layers as its slots allow and groups only what it must.
- Images over the budget are planned smallest first. Each takes the groups already made that
  it holds whole (largest first), and when they do not save enough layers it makes one new
  group of exactly the packages still needed, chosen from those the most other over-budget
  images hold (packages held by the same images kept together), so the group is reusable by
  as many of them as possible. A new group is extended, up to a bound, with packages whose
  images are a subset of its own (a nested stack: a long chain, where each image holds its
  dependency's image), so the next, larger images of the chain reuse it instead of each
  making a new one.
- Should an image still be over (tiny budgets, adversarial graphs), its smallest layers are
  merged into one more group: the budget always holds.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

from imagesmith.errors import UsageError

__all__ = ["DEFAULT_MAX_LAYERS", "LayerPlan", "package_slots", "plan_layers"]

#: The most layers an image may have by default, base layers included: what Docker accepts.
DEFAULT_MAX_LAYERS = 125


def package_slots(max_layers: int, base_layers: int, *, extra_layers: int = 0, dependencies: bool) -> int:
    """How many layers the packages of one image may use under ``max_layers``.

    ``base_layers`` is the base image's layer count (the largest of a multi-platform base's),
    ``extra_layers`` the layers added after the packages (the profile script), and
    ``dependencies`` whether some image has packages below its own. The package's own layer and,
    with dependencies, at least one more must fit: otherwise :class:`UsageError` naming both
    numbers.
    """
    if max_layers < 1:
        raise UsageError(f"--max-layers {max_layers} must be a positive number of layers")
    needed = base_layers + extra_layers + 1 + (1 if dependencies else 0)
    if max_layers < needed:
        parts = [f"the base image has {base_layers} layer{'s' if base_layers != 1 else ''}"]
        if extra_layers:
            parts.append(f"the profile script takes {extra_layers}")
        what = "one for the dependencies and one for the package" if dependencies else "one for the package"
        raise UsageError(
            f"--max-layers {max_layers} is too small: {' and '.join(parts)}, and an image needs "
            f"{what} on top: give at least --max-layers {needed}"
        )
    return max_layers - base_layers - extra_layers


@dataclass(frozen=True)
class LayerPlan:
    """The layers of every image of a stack: ``layers[image]`` lists, bottom to top, the
    package keys of each layer (one key: the package's own layer; several: a group). The
    image's own package is always the last layer, alone. ``groups`` holds every group some
    image uses, each once, its keys in the stack's canonical order."""

    slots: int
    layers: Mapping[str, tuple[tuple[str, ...], ...]]
    groups: tuple[tuple[str, ...], ...]

    @property
    def grouped(self) -> bool:
        """Whether any image needed a group."""
        return bool(self.groups)


def plan_layers(
    stacks: Mapping[str, Sequence[str]],
    slots: int,
    canonical: Mapping[str, str],
    fixed: Collection[str] = (),
) -> LayerPlan:
    """Choose the layers of every image so that none has more than ``slots`` package layers.

    ``stacks`` maps an image to its packages bottom to top (dependencies first, the image's own
    package last); the keys identify packages across images. ``canonical`` gives each package
    a sort key independent of the order packages were given in (its install prefix), which
    breaks every tie, so the same stack always gives the same plan. Layers keep the image's
    dependency order: a layer sits where its first package would. ``fixed`` packages keep
    their own layer everywhere (a layer that exists only in a registry cannot be regrouped
    without downloading it); an image whose fixed packages alone exceed the slots raises
    :class:`UsageError`.
    """
    if slots < 1:
        raise UsageError(f"no layer left for packages ({slots} slots): raise --max-layers")
    below = slots - 1  # the image's own package takes one slot
    large = sorted(
        (image for image, stack in stacks.items() if len(stack) - 1 > below),
        key=lambda image: (len(stacks[image]), canonical[stacks[image][-1]], image),
    )
    chosen: dict[str, list[frozenset[str]]] = {}
    groups: list[frozenset[str]] = []
    if large:
        chosen = _choose_groups(stacks, large, below, canonical, frozenset(fixed), groups)
    layers: dict[str, tuple[tuple[str, ...], ...]] = {}
    used: dict[frozenset[str], None] = {}
    for image, stack in stacks.items():
        own = stack[-1]
        dependencies = list(dict.fromkeys(k for k in stack[:-1] if k != own))
        picked = chosen.get(image, [])
        for group in picked:
            used.setdefault(group, None)
        layers[image] = (*_ordered(dependencies, picked, canonical), (own,))
    ordered_groups = tuple(tuple(sorted(g, key=lambda k: canonical[k])) for g in used)
    return LayerPlan(slots, layers, ordered_groups)


def _ordered(
    dependencies: Sequence[str], groups: Sequence[frozenset[str]], canonical: Mapping[str, str]
) -> list[tuple[str, ...]]:
    """The image's dependency layers in its dependency order: each group where its first
    package is, its packages in canonical order; every other package alone."""
    group_of = {key: group for group in groups for key in group}
    out: list[tuple[str, ...]] = []
    placed: set[frozenset[str]] = set()
    for key in dependencies:
        group = group_of.get(key)
        if group is None:
            out.append((key,))
        elif group not in placed:
            placed.add(group)
            out.append(tuple(sorted(group, key=lambda k: canonical[k])))
    return out


def _choose_groups(
    stacks: Mapping[str, Sequence[str]],
    large: Sequence[str],
    below: int,
    canonical: Mapping[str, str],
    fixed: frozenset[str],
    groups: list[frozenset[str]],
) -> dict[str, list[frozenset[str]]]:
    """The groups each over-budget image uses (see the module docstring); ``groups`` collects
    every group made, in the order made."""
    closures = {image: frozenset(k for k in stacks[image][:-1] if k != stacks[image][-1]) for image in large}
    groupable = {image: members - fixed for image, members in closures.items()}
    # Which over-budget images hold each package: its "signature". Packages with the same one
    # are interchangeable for every such image; popular ones are held by many.
    holders: dict[str, list[int]] = defaultdict(list)
    for position, image in enumerate(large):
        for key in groupable[image]:
            holders[key].append(position)
    signature = {key: tuple(positions) for key, positions in holders.items()}
    held_by = {key: frozenset(positions) for key, positions in holders.items()}

    def rank(key: str) -> tuple[int, tuple[int, ...], str]:
        return (-len(signature[key]), signature[key], canonical[key])

    needs = [len(closures[image]) - below for image in large]
    # A new group is extended to this size along a nested stack: about the square root of the
    # largest need, so a chain of n images over budget needs about 2*sqrt(n) layers at most.
    extend_to = min(max(2, math.isqrt(max(needs)) + 1), max(2, below // 2))
    groups_of: dict[str, list[int]] = defaultdict(list)  # package -> the groups holding it
    index_of: dict[frozenset[str], int] = {}
    result: dict[str, list[frozenset[str]]] = {}
    for image, need in zip(large, needs, strict=True):
        members = groupable[image]
        held = len(closures[image]) - len(members)  # fixed packages: a layer each, always
        hits = Counter(g for key in members for g in groups_of[key])
        whole = sorted(
            (g for g, n in hits.items() if n == len(groups[g])), key=lambda g: (-len(groups[g]), g)
        )
        picked: list[frozenset[str]] = []
        covered: set[str] = set()
        saved = 0
        for g in whole:
            if saved >= need:
                break
            if covered.isdisjoint(groups[g]):
                picked.append(groups[g])
                covered |= groups[g]
                saved += len(groups[g]) - 1
        if saved < need:
            free = sorted((k for k in members if k not in covered), key=rank)
            take = free[: need - saved + 1]
            # Along a nested stack (each next package held by a subset of the images holding
            # the last one taken), take more now so the larger images reuse this group.
            for key in free[len(take) :]:
                if len(take) >= extend_to or not held_by[key] <= held_by[take[-1]]:
                    break
                take.append(key)
            if len(take) >= 2:
                picked.append(_new_group(frozenset(take), groups, groups_of, index_of))
                covered.update(take)
                saved += len(take) - 1
        layer_count = held + len(picked) + len(members) - len(covered)
        if layer_count > below and len(members) >= 2:
            # Not enough whole groups (a tiny budget or an adversarial graph): merge the
            # smallest layers into one more group; the budget always holds.
            units = sorted(
                [*picked, *(frozenset((k,)) for k in members - covered)],
                key=lambda unit: (len(unit), sorted(canonical[k] for k in unit)),
            )
            merge = min(layer_count - below + 1, len(units))
            merged = frozenset().union(*units[:merge])
            picked = [*units[merge:], _new_group(merged, groups, groups_of, index_of)]
            picked = [unit for unit in picked if len(unit) > 1]
            layer_count = held + len(units) - merge + 1
        if layer_count > below:
            others = f" and {len(members)} others in at least one more layer" if members else ""
            raise UsageError(
                f"the image of {canonical[stacks[image][-1]]} needs a layer of its own for each of "
                f"{held} dependencies whose layers are used as they are (in a registry){others}, "
                f"and one for itself: {layer_count + 1} layers, over the {below + 1} the budget "
                f"leaves for packages; raise --max-layers by {layer_count - below}"
            )
        result[image] = picked
    return result


def _new_group(
    members: frozenset[str],
    groups: list[frozenset[str]],
    groups_of: dict[str, list[int]],
    index_of: dict[frozenset[str], int],
) -> frozenset[str]:
    """Record ``members`` as a group (once: an equal group made earlier is the same group)."""
    if members not in index_of:
        index_of[members] = len(groups)
        groups.append(members)
        for key in members:
            groups_of[key].append(index_of[members])
    return members
