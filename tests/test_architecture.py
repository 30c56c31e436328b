"""The package layout holds: imports go one way, down the layers docs/architecture.md draws, with no
cycle; and that page lists every module there is.

The layers and the module list are read from docs/architecture.md itself, so the page and the
code cannot drift apart unnoticed. Every import counts, including those inside functions; an
import under ``if TYPE_CHECKING:`` names a type only (nothing runs), and the few that point up
are listed here by name, so a new one fails until it is argued for.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import imagesmith

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "imagesmith"
DOC = ROOT / "docs" / "architecture.md"

# Upward references for typing only (module -> module), each with its reason.
TYPE_ONLY_UP = {
    # A registry origin reads through the run's pool; the image value names its type only.
    ("imagesmith.oci.image", "imagesmith.registry.client"),
    # The layer builder feeds an early upload through a protocol-shaped follower.
    ("imagesmith.tar.layer", "imagesmith.registry.overlap"),
}


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def layers() -> dict[str, int]:
    """Unit (a package or module) -> its layer, from the table under '## Layers'."""
    text = DOC.read_text()
    section = text.split("## Layers", 1)[1].split("\n## ", 1)[0]
    table: dict[str, int] = {}
    for line in section.splitlines():
        match = re.match(r"\|\s*(\d+)\s*\|([^|]*)\|", line)
        if match:
            for unit in re.findall(r"`(imagesmith[\w.]*)`", match[2]):
                table[unit] = int(match[1])
    return table


def unit_of(module: str, table: dict[str, int]) -> str | None:
    # "imagesmith" (the package's __init__) is a unit of its own, not a prefix of every module.
    candidates = [u for u in table if module == u or (u != "imagesmith" and module.startswith(u + "."))]
    return max(candidates, key=len) if candidates else None


def _type_checking(node: ast.If) -> bool:
    return "TYPE_CHECKING" in ast.unparse(node.test)


def imports(name: str, path: Path, known: dict[str, Path]) -> Iterator[tuple[str, bool]]:
    """(imported imagesmith module, type only) for every import in ``path``."""
    tree = ast.parse(path.read_text())
    type_only: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and _type_checking(node):
            type_only.update(id(sub) for stmt in node.body for sub in ast.walk(stmt))
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("imagesmith"):
                    yield alias.name, id(node) in type_only
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            if not source.startswith("imagesmith"):
                continue
            for alias in node.names:
                sub = f"{source}.{alias.name}"
                yield (sub if sub in known else source), id(node) in type_only


def graph() -> tuple[dict[str, set[str]], set[tuple[str, str]]]:
    known = modules()
    edges: dict[str, set[str]] = {m: set() for m in known}
    typed: set[tuple[str, str]] = set()
    for name, path in known.items():
        for target, type_only in imports(name, path, known):
            if target == name or target not in known:
                continue
            if type_only:
                typed.add((name, target))
            else:
                edges[name].add(target)
    return edges, typed


def test_every_module_has_a_layer() -> None:
    table = layers()
    assert table, "docs/architecture.md has no '## Layers' table"
    missing = [m for m in modules() if unit_of(m, table) is None]
    assert not missing, f"modules in no layer of docs/architecture.md: {missing}"


def test_imports_go_down_the_layers() -> None:
    table = layers()
    edges, typed = graph()
    upward = []
    for source, targets in edges.items():
        here = table[unit_of(source, table) or ""]
        for target in sorted(targets):
            there = table[unit_of(target, table) or ""]
            if there > here:
                upward.append(f"{source} (layer {here}) imports {target} (layer {there})")
    assert not upward, "imports that reach up:\n" + "\n".join(upward)
    typed_up = {(s, t) for s, t in typed if table[unit_of(t, table) or ""] > table[unit_of(s, table) or ""]}
    assert typed_up == TYPE_ONLY_UP, f"type-only upward references changed: {sorted(typed_up ^ TYPE_ONLY_UP)}"


def test_no_import_cycle() -> None:
    edges, _ = graph()
    # Tarjan's strongly connected components, iteratively.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    cycles: list[list[str]] = []
    counter = 0
    for root in edges:
        if root in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    cycles.append(sorted(component))
    assert not cycles, f"import cycles: {cycles}"


def test_architecture_page_lists_every_module() -> None:
    text = DOC.read_text()
    missing = [
        str(path.relative_to(PACKAGE))
        for name, path in modules().items()
        if path.name != "__init__.py" and f"`{path.relative_to(PACKAGE)}`" not in text
    ]
    assert not missing, f"modules docs/architecture.md does not list: {missing}"
    tables = text.split("## Modules", 1)[1].split("\n## ", 1)[0]
    listed = set(re.findall(r"^\| `((?:[a-z_]+/)*[a-z_]+\.py)`", tables, re.MULTILINE))
    gone = sorted(p for p in listed if not (PACKAGE / p).exists())
    assert not gone, f"docs/architecture.md lists modules that do not exist: {gone}"


def test_no_public_name_is_also_a_submodule() -> None:
    """Importing ``imagesmith.X`` sets the package attribute ``X`` to the module: a public
    function of that name (the package loads its names lazily) would then be the module."""
    public = set(imagesmith.__all__)
    submodules = {
        path.stem if path.name != "__init__.py" else path.parent.name
        for path in PACKAGE.iterdir()
        if path.suffix == ".py" or (path / "__init__.py").is_file()
    }
    assert not public & submodules, f"public names that are also modules of imagesmith: {public & submodules}"
