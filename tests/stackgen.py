"""A generated stack of package files, shaped like a software stack, for tests and `make bench`.

Packages come in levels of ``width`` packages; a package depends on
``lo``-``hi`` packages below it, mostly from the level just below (70 %), otherwise from any
level below, so dependency closures grow with the level as they do in a Spack stack: with the
defaults (1,000 packages, 100 per level, 1-3 dependencies) the median closure is 15 packages,
the largest 267, and 63 packages have more than the 123 dependencies an image on a one-layer
base can hold one layer each under the default budget of 125 layers. Each package is a small
install prefix: ``bin/NAME`` (a shell script printing ``NAME``), ``lib/libNAME.so`` (4 KiB of
seeded random bytes) and ``share/doc/NAME/README``. Everything is derived from ``seed``: the
same arguments write the same files.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Stack", "write_stack"]


@dataclass(frozen=True)
class Stack:
    """A written stack: its package files (dependencies first) and each one's dependencies."""

    files: list[Path]
    depends: dict[str, list[str]]  # name -> names of its direct dependencies

    def closure(self, name: str) -> set[str]:
        """Every package ``name`` needs at run time, itself excluded."""
        seen: set[str] = set()
        todo = list(self.depends[name])
        while todo:
            dep = todo.pop()
            if dep not in seen:
                seen.add(dep)
                todo.extend(self.depends[dep])
        return seen


def write_stack(
    root: Path, packages: int = 1000, *, width: int = 100, lo: int = 1, hi: int = 3, seed: int = 12
) -> Stack:
    """Write ``packages`` package files (JSON) and their prefixes under ``root``."""
    rng = random.Random(seed)
    levels: list[list[str]] = []
    depends: dict[str, list[str]] = {}
    files: list[Path] = []
    while len(files) < packages:
        level: list[str] = []
        for index in range(min(width, packages - len(files))):
            name = f"l{len(levels)}p{index:03}"
            chosen: set[str] = set()
            if levels:
                for _ in range(rng.randint(lo, hi)):
                    back = 1 if rng.random() < 0.7 else rng.randint(1, len(levels))
                    chosen.add(rng.choice(levels[-back]))
            depends[name] = sorted(chosen)
            files.append(_package(root, name, depends[name], rng))
            level.append(name)
        levels.append(level)
    return Stack(files, depends)


def _package(root: Path, name: str, depends: list[str], rng: random.Random) -> Path:
    prefix = root / "content" / name
    for sub in ("bin", "lib", f"share/doc/{name}"):
        (prefix / sub).mkdir(parents=True, exist_ok=True)
    script = prefix / "bin" / name
    script.write_text(f"#!/bin/sh\necho {name}\n")
    script.chmod(0o755)
    (prefix / "lib" / f"lib{name}.so").write_bytes(rng.randbytes(4096))
    (prefix / "share/doc" / name / "README").write_text(f"{name}\n" * 50)
    path = root / f"{name}.json"
    path.write_text(
        json.dumps(
            {
                "name": name,
                "version": "1.0",
                "prefix": f"/opt/stack/{name}-1.0",
                "content": f"content/{name}",
                "depends": [f"{d}.json" for d in depends],
            }
        )
    )
    return path
