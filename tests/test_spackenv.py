"""Spack environments (imagesmith.inputs.spackenv): the lockfile, the install database, bad input.

Inputs here are written in Spack's own formats (lockfile v6 with specfile-5 nodes, database
v8); tests/test_spack_stack.py reads environments made by the real Spack 1.2 and 0.23.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from imagesmith.errors import PackageError, UsageError
from imagesmith.inputs.spackenv import load_environment, read_environment


def _hash(name: str) -> str:
    return (name.replace("-", "") + "a" * 32)[:32]


class Tree:
    """A Spack install tree with a database, and environments of its specs."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.nodes: dict[str, dict[str, Any]] = {}
        self.installed: dict[str, Path] = {}

    def spec(self, name: str, *deps: str, external: bool = False) -> str:
        """A node; a dependency ``"x:build"`` is a build dependency, others link ones."""
        node: dict[str, Any] = {
            "name": name,
            "version": "1.0",
            "arch": {"platform": "linux", "platform_os": "debian12", "target": "x86_64"},
            "hash": _hash(name),
            "dependencies": [
                {"name": d, "hash": _hash(d), "parameters": {"deptypes": [t or "link"], "virtuals": []}}
                for d, _, t in (dep.partition(":") for dep in deps)
            ],
        }
        if external:
            node["external"] = {"path": "/usr", "module": None}
        self.nodes[node["hash"]] = node
        return str(node["hash"])

    def closure(self, node_hash: str) -> list[dict[str, Any]]:
        order: list[dict[str, Any]] = []
        todo = [node_hash]
        while todo:
            h = todo.pop(0)
            if any(n["hash"] == h for n in order):
                continue
            order.append(self.nodes[h])
            todo.extend(d["hash"] for d in self.nodes[h]["dependencies"])
        return order

    def install(self, *names: str) -> None:
        for name in names:
            node_hash = _hash(name)
            prefix = self.root / "linux-x86_64" / f"{name}-1.0-{node_hash}"
            (prefix / ".spack").mkdir(parents=True, exist_ok=True)
            (prefix / "bin").mkdir(exist_ok=True)
            (prefix / "bin" / name).write_text(f"#!/bin/sh\necho {name}\n")
            spec = {"spec": {"_meta": {"version": 5}, "nodes": self.closure(node_hash)}}
            (prefix / ".spack" / "spec.json").write_text(json.dumps(spec))
            self.installed[node_hash] = prefix
        self.write_database()

    def write_database(self) -> None:
        installs = {
            h: {"spec": self.nodes[h], "path": str(p), "installed": True, "explicit": False, "ref_count": 0}
            for h, p in self.installed.items()
        }
        (self.root / ".spack-db").mkdir(parents=True, exist_ok=True)
        doc = {"database": {"version": "8", "installs": installs}}
        (self.root / ".spack-db" / "index.json").write_text(json.dumps(doc))

    def environment(self, directory: Path, *roots: str, version: int = 6) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "spack.yaml").write_text("spack:\n  specs: [" + ", ".join(roots) + "]\n")
        concrete: dict[str, Any] = {}
        for root in roots:
            for node in self.closure(_hash(root)):
                concrete[node["hash"]] = node
        lock = {
            "_meta": {"file-type": "spack-lockfile", "lockfile-version": version, "specfile-version": 5},
            "spack": {"version": "1.2.0.dev0", "type": "git", "commit": "9cf66332df"},
            "roots": [{"hash": _hash(r), "spec": r} for r in roots],
            "concrete_specs": concrete,
        }
        (directory / "spack.lock").write_text(json.dumps(lock))
        return directory


@pytest.fixture
def tree(tmp_path: Path) -> Tree:
    t = Tree(tmp_path / "opt" / "spack")
    t.spec("zlib")
    t.spec("gmake", external=True)
    t.spec("cmake", "zlib")
    t.spec("libxml2", "zlib", "gmake")
    t.spec("python", "zlib", "libxml2")
    t.spec("tool", "python")
    t.spec("other", "zlib", "cmake:build")  # a build dependency: not needed at run time
    return t


def test_roots_and_their_runtime_closure(tree: Tree, tmp_path: Path) -> None:
    tree.install("zlib", "libxml2", "python", "tool", "other")
    env = read_environment(tree.environment(tmp_path / "env", "tool", "other"), install_tree=tree.root)
    assert env.lockfile_version == 6
    assert [(r.spec, r.name, r.hash) for r in env.roots] == [
        ("tool", "tool", _hash("tool")),
        ("other", "other", _hash("other")),
    ]
    names = sorted(p.name.split("-")[0] for p in env.prefixes)
    assert names == ["libxml2", "other", "python", "tool", "zlib"]
    packages, roots = load_environment(tmp_path / "env", install_tree=tree.root)
    assert [p.name for p in packages] == ["zlib", "libxml2", "python", "tool", "other"]
    assert [p.name for p in roots] == ["tool", "other"]


def test_lockfile_version_5_is_read(tree: Tree, tmp_path: Path) -> None:
    tree.install("zlib")
    env = read_environment(tree.environment(tmp_path / "env", "zlib", version=5), install_tree=tree.root)
    assert env.lockfile_version == 5 and [r.name for r in env.roots] == ["zlib"]


def test_default_install_tree_is_spack_roots(
    tree: Tree, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tree.install("zlib")
    monkeypatch.setenv("SPACK_ROOT", str(tmp_path))  # tree.root is $SPACK_ROOT/opt/spack
    env = read_environment(tree.environment(tmp_path / "env", "zlib"))
    assert [r.name for r in env.roots] == ["zlib"]
    monkeypatch.delenv("SPACK_ROOT")
    with pytest.raises(UsageError, match="--spack-install-tree"):
        read_environment(tmp_path / "env")


def test_the_first_missing_spec_is_named(tree: Tree, tmp_path: Path) -> None:
    tree.install("zlib", "tool")  # libxml2 and python are not installed
    env = tree.environment(tmp_path / "env", "tool")
    with pytest.raises(PackageError) as caught:
        read_environment(env, install_tree=tree.root)
    message = str(caught.value)
    # libxml2 comes before python in dependency order
    assert f"libxml2@1.0/{_hash('libxml2')} is not installed" in message
    assert "(and 1 more)" in message and f"spack -e {env} install" in message


def test_not_concretized(tmp_path: Path) -> None:
    (tmp_path / "env").mkdir()
    (tmp_path / "env" / "spack.yaml").write_text("spack:\n  specs: [zlib]\n")
    with pytest.raises(PackageError, match=r"not concretized .*spack -e .* concretize"):
        read_environment(tmp_path / "env", install_tree=tmp_path)


def test_not_an_environment(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="not a Spack environment"):
        read_environment(tmp_path, install_tree=tmp_path)
    with pytest.raises(UsageError, match="not found"):
        read_environment(tmp_path / "nowhere", install_tree=tmp_path)


@pytest.mark.parametrize(("version", "hint"), [(2, "older than 0.17"), (7, "newer Spack")])
def test_lockfile_versions_not_read(tree: Tree, tmp_path: Path, version: int, hint: str) -> None:
    tree.install("zlib")
    env = tree.environment(tmp_path / "env", "zlib", version=version)
    expected = f"lockfile version {version}; imagesmith reads versions 3-6 .*{hint}"
    with pytest.raises(PackageError, match=expected):
        read_environment(env, install_tree=tree.root)


def test_no_database(tree: Tree, tmp_path: Path) -> None:
    env = tree.environment(tmp_path / "env", "zlib")
    with pytest.raises(UsageError, match=r"no Spack database at .*\.spack-db/index\.json"):
        read_environment(env, install_tree=tmp_path / "elsewhere")


def test_a_cycle_in_the_lockfile(tree: Tree, tmp_path: Path) -> None:
    tree.spec("a", "b")
    tree.spec("b", "a")
    tree.install("a", "b")
    with pytest.raises(PackageError, match="cycle"):
        read_environment(tree.environment(tmp_path / "env", "a"), install_tree=tree.root)


def test_a_broken_lockfile(tmp_path: Path) -> None:
    (tmp_path / "env").mkdir()
    (tmp_path / "env" / "spack.lock").write_text("{not json")
    with pytest.raises(PackageError, match="not valid JSON"):
        read_environment(tmp_path / "env", install_tree=tmp_path)
    (tmp_path / "env" / "spack.lock").write_text(json.dumps({"_meta": {"lockfile-version": 6}, "roots": []}))
    with pytest.raises(PackageError, match="needs 'roots'"):
        read_environment(tmp_path / "env", install_tree=tmp_path)
