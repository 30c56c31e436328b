"""Package files: loading, validation, dependency order, hashing."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import subprocess
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from imagesmith.errors import PackageError, UsageError
from imagesmith.inputs.envmods import EnvModification
from imagesmith.inputs.load import load_package, load_packages
from imagesmith.inputs.packages import Package, package_hash
from imagesmith.oci.digests import Digest

FIXTURES = Path(__file__).parent / "fixtures" / "packages"
DIFF_ID = Digest.of(b"layer")
HASH_RE = re.compile(r"[a-z2-7]{32}")


def write_json(path: Path, doc: dict[str, Any]) -> Path:
    path.write_text(json.dumps(doc))
    return path


def make_package(
    tmp_path: Path,
    name: str,
    *,
    depends: list[str] | None = None,
    content: str | None = None,
    **extra: Any,
) -> Path:
    """A package file ``<name>.json`` with a content directory ``<name>/`` beside it."""
    if content is None:
        (tmp_path / name).mkdir(exist_ok=True)
        content = name
    doc: dict[str, Any] = {
        "name": name,
        "version": "1.0",
        "prefix": f"/opt/{name}-1.0",
        "content": content,
        **extra,
    }
    if depends is not None:
        doc["depends"] = [f"{d}.json" for d in depends]
    return write_json(tmp_path / f"{name}.json", doc)


# --- fixtures shipped for the end-to-end tests -------------------------------------------------


def test_fixture_zlib() -> None:
    pkg = load_package(FIXTURES / "zlib.json")
    assert (pkg.name, pkg.version, pkg.prefix) == ("zlib", "1.3", "/opt/stack/zlib-1.3")
    assert pkg.content == (FIXTURES / "zlib").resolve()
    assert pkg.content_kind == "directory"
    assert pkg.hash is None and pkg.env is None and pkg.depends == ()
    assert (pkg.content / "lib" / "pkgconfig" / "zlib.pc").is_file()
    assert (pkg.content / "include" / "zlib.h").is_file()


def test_fixture_hello_is_runnable(tmp_path: Path) -> None:
    pkg = load_package(FIXTURES / "hello.toml")
    assert pkg.depends == (str((FIXTURES / "zlib.json").resolve()),)
    assert pkg.content is not None
    script = pkg.content / "bin" / "hello"
    assert os.access(script, os.X_OK)
    assert script.read_bytes() == b'#!/bin/sh\necho "hello from hello"\n'
    assert subprocess.run([script], capture_output=True, check=True).stdout == b"hello from hello\n"
    assert (pkg.content / "share" / "man" / "man1" / "hello.1").is_file()


def test_fixture_greet_tarball_with_explicit_env_and_hash() -> None:
    pkg = load_package(FIXTURES / "greet.json")
    assert pkg.content_kind == "tarball"
    assert pkg.content is not None
    assert pkg.content.name == "greet-1.0.tar.gz"
    assert pkg.hash == "greetfixture2222222222222222222a"
    assert pkg.env == (
        EnvModification("set", "GREETING", "hello"),
        EnvModification("prepend_path", "PATH", "/opt/stack/greet-1.0/bin"),
        EnvModification("append_path", "XDG_DATA_DIRS", "/opt/stack/greet-1.0/share:/usr/share"),
    )
    assert package_hash(pkg, [], DIFF_ID) == pkg.hash


def test_fixtures_load_in_dependency_order() -> None:
    pkgs = load_packages([FIXTURES / "greet.json"])
    assert [p.name for p in pkgs] == ["zlib", "hello", "greet"]


# --- load_package ------------------------------------------------------------------------------


def test_json_and_toml_give_equal_packages(tmp_path: Path) -> None:
    (tmp_path / "content").mkdir()
    make_package(tmp_path, "dep")
    doc = {
        "name": "tool",
        "version": "2.0+git.1",
        "prefix": "/opt/stack/tool-2.0",
        "content": "content",
        "hash": "abcdefghijklmnopqrstuvwxyz234567",
        "depends": ["dep.json"],
        "env": {
            "set": {"TOOL_HOME": "{prefix}"},
            "prepend_path": {"PATH": "{prefix}/bin", "MANPATH": ["{prefix}/share/man", "{prefix}/man"]},
            "unset": ["TOOL_DEBUG"],
        },
        "description": "a tool",
        "x-origin": {"url": "https://example.org"},
    }
    from_json = load_package(write_json(tmp_path / "tool.json", doc))
    (tmp_path / "tool.toml").write_text(
        """
name = "tool"
version = "2.0+git.1"
prefix = "/opt/stack/tool-2.0"
content = "content"
hash = "abcdefghijklmnopqrstuvwxyz234567"
depends = ["dep.json"]
description = "a tool"

[env.set]
TOOL_HOME = "{prefix}"

[env.prepend_path]
PATH = "{prefix}/bin"
MANPATH = ["{prefix}/share/man", "{prefix}/man"]

[env]
unset = ["TOOL_DEBUG"]

["x-origin"]
url = "https://example.org"
"""
    )
    from_toml = load_package(tmp_path / "tool.toml")
    assert replace(from_json, source=from_toml.source) == from_toml
    assert from_json.metadata == from_toml.metadata
    assert from_toml.env == (
        EnvModification("set", "TOOL_HOME", "/opt/stack/tool-2.0"),
        EnvModification("prepend_path", "PATH", "/opt/stack/tool-2.0/bin"),
        EnvModification("prepend_path", "MANPATH", "/opt/stack/tool-2.0/share/man:/opt/stack/tool-2.0/man"),
        EnvModification("unset", "TOOL_DEBUG"),
    )
    assert from_toml.key == str((tmp_path / "tool.toml").resolve())
    assert from_toml.depends == (str((tmp_path / "dep.json").resolve()),)
    assert hash(from_toml) == hash(replace(from_toml))


def test_empty_env_is_explicit_and_disables_inference(tmp_path: Path) -> None:
    assert load_package(make_package(tmp_path, "a", env={})).env == ()
    assert load_package(make_package(tmp_path, "b")).env is None


def test_ld_library_path_flag(tmp_path: Path) -> None:
    assert load_package(make_package(tmp_path, "a", ld_library_path=True)).ld_library_path
    with pytest.raises(PackageError, match="only applies to an inferred env"):
        load_package(make_package(tmp_path, "b", ld_library_path=True, env={}))
    with pytest.raises(PackageError, match="'ld_library_path' must be true or false"):
        load_package(make_package(tmp_path, "c", ld_library_path="yes"))


@pytest.mark.parametrize("suffix", [".tar", ".tar.gz", ".tgz", ".tar.zst", ".TAR.GZ"])
def test_tarball_content(tmp_path: Path, suffix: str) -> None:
    (tmp_path / f"c{suffix}").write_bytes(b"")
    pkg = load_package(make_package(tmp_path, "a", content=f"c{suffix}"))
    assert pkg.content_kind == "tarball"
    assert pkg.content == (tmp_path / f"c{suffix}").resolve()


def test_content_paths_are_relative_to_the_package_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "sub" / "pfx").mkdir(parents=True)
    make_package(tmp_path / "sub", "a", content="pfx")
    monkeypatch.chdir(tmp_path)
    pkg = load_package("sub/a.json")
    assert pkg.content == (tmp_path / "sub" / "pfx").resolve()
    assert pkg.source == (tmp_path / "sub" / "a.json").resolve()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"name": None}, r"'name' is required"),
        ({"version": None}, r"'version' is required"),
        ({"prefix": None}, r"'prefix' is required"),
        ({"content": None}, r"'content' is required"),
        ({"name": "a b"}, r"name 'a b' must be"),
        ({"name": ""}, r"name '' must be"),
        ({"name": "a/b"}, r"name 'a/b' must be"),
        ({"name": 3}, r"'name' must be a string"),
        ({"version": 1.3}, r"'version' must be a string \(quote it\)"),
        ({"version": ""}, r"version '' must be non-empty"),
        ({"version": "1 2"}, r"version '1 2' must be non-empty, without whitespace"),
        ({"prefix": "opt/x"}, r"prefix 'opt/x' must be absolute"),
        ({"prefix": "/"}, r"prefix '/' cannot be / itself"),
        ({"prefix": "//"}, r"prefix '//' cannot be / itself"),
        ({"prefix": "/opt/../etc"}, r"must not contain \.\."),
        ({"prefix": "/opt/x/"}, r"must be normalised \(write '/opt/x'\)"),
        ({"prefix": "/opt//x"}, r"must be normalised"),
        ({"prefix": "/opt/./x"}, r"must be normalised"),
        ({"prefix": "//opt/x"}, r"must be normalised"),
        ({"prefix": "/opt/a:b"}, r"must not contain ':'"),
        ({"prefix": "/opt/a\nb"}, r"control characters"),
        ({"content": ""}, r"'content' must not be empty"),
        ({"content": "nope"}, r"content 'nope' not found"),
        ({"content": "file.txt"}, r"content 'file.txt' is a file but not a tarball"),
        ({"hash": "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"}, r"hash .* must be 32 characters"),
        ({"hash": "abc"}, r"hash 'abc' must be 32 characters"),
        ({"hash": "abcdefghijklmnopqrstuvwxyz234561"}, r"must be 32 characters of lowercase base32"),
        ({"depends": "b.json"}, r"'depends' must be a list of package file paths"),
        ({"depends": [""]}, r"'depends' must be a list"),
        ({"depends": ["a.json"]}, r"'depends' lists the package itself"),
        ({"env": {"set": {"X": 1}}}, r"env\.set\.X: must be a string"),
        ({"env": []}, r"env must be a table"),
        ({"description": 5}, r"'description' must be a string"),
        ({"dependencies": []}, r"unknown key\(s\) 'dependencies'"),
    ],
)
def test_validation_errors_name_file_and_field(tmp_path: Path, change: dict[str, Any], message: str) -> None:
    (tmp_path / "pfx").mkdir()
    (tmp_path / "file.txt").write_text("x")
    doc: dict[str, Any] = {"name": "a", "version": "1", "prefix": "/opt/a", "content": "pfx"}
    for key, value in change.items():
        if value is None:
            del doc[key]
        else:
            doc[key] = value
    path = write_json(tmp_path / "a.json", doc)
    with pytest.raises(PackageError, match=message) as info:
        load_package(path)
    assert str(path) in str(info.value)


def test_unreadable_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(PackageError, match=r"package file .*missing\.json not found"):
        load_package(tmp_path / "missing.json")
    with pytest.raises(PackageError, match=r"unknown type '\.yaml'; use \.json or \.toml"):
        load_package(tmp_path / "a.yaml")
    (tmp_path / "dir.json").mkdir()
    with pytest.raises(PackageError, match=r"cannot read package file .*dir\.json"):
        load_package(tmp_path / "dir.json")


@pytest.mark.parametrize(
    ("name", "data", "message"),
    [
        ("bad.json", b'{"name": ', r"bad\.json: invalid JSON"),
        ("dup.json", b'{"name": "a", "name": "b"}', r"dup\.json: invalid JSON: duplicate key 'name'"),
        ("bad.toml", b'name = "a\n', r"bad\.toml: invalid TOML"),
        ("list.json", b"[]", r"list\.json: the top level must be an object"),
        ("latin.json", b'{"name": "\xe9"}', r"latin\.json: not UTF-8"),
    ],
)
def test_malformed_files(tmp_path: Path, name: str, data: bytes, message: str) -> None:
    (tmp_path / name).write_bytes(data)
    with pytest.raises(PackageError, match=message):
        load_package(tmp_path / name)


def test_spack_spec_json_is_recognised(tmp_path: Path) -> None:
    path = write_json(tmp_path / "spec.json", {"spec": {"_meta": {"version": 4}, "nodes": []}})
    with pytest.raises(PackageError, match=r"is a Spack spec\.json"):
        load_package(path)


def test_duplicate_depends_are_merged(tmp_path: Path) -> None:
    make_package(tmp_path, "b")
    path = make_package(tmp_path, "a", depends=["b", "./b"])
    assert load_package(path).depends == (str((tmp_path / "b.json").resolve()),)


# --- load_packages -----------------------------------------------------------------------------


def names(pkgs: list[Package]) -> list[str]:
    return [p.name for p in pkgs]


def test_diamond_loads_each_once_dependencies_first(tmp_path: Path) -> None:
    make_package(tmp_path, "d")
    make_package(tmp_path, "b", depends=["d"])
    make_package(tmp_path, "c", depends=["d"])
    make_package(tmp_path, "a", depends=["b", "c"])
    assert names(load_packages([tmp_path / "a.json"])) == ["d", "b", "c", "a"]
    # Listing every file, in any order, still gives each once and dependencies first.
    every = [tmp_path / f"{n}.json" for n in "cadb"]
    assert names(load_packages(every)) == ["d", "c", "b", "a"]


def test_order_is_deterministic_and_follows_listing_order(tmp_path: Path) -> None:
    for n in ("x", "y", "z"):
        make_package(tmp_path, n)
    make_package(tmp_path, "top", depends=["z", "x"])
    paths = [tmp_path / "y.json", tmp_path / "top.json"]
    first = load_packages(paths)
    assert names(first) == ["y", "z", "x", "top"]
    assert load_packages(paths) == first


def test_same_file_given_twice_loads_once(tmp_path: Path) -> None:
    path = make_package(tmp_path, "a")
    assert names(load_packages([path, str(path), tmp_path / "." / "a.json"])) == ["a"]


def test_cycle_is_reported_with_its_members(tmp_path: Path) -> None:
    make_package(tmp_path, "a", depends=["b"])
    make_package(tmp_path, "b", depends=["c"])
    make_package(tmp_path, "c", depends=["a"])
    make_package(tmp_path, "root", depends=["a"])
    with pytest.raises(PackageError) as info:
        load_packages([tmp_path / "root.json"])
    assert str(info.value) == (
        "dependency cycle: a-1.0 (a.json) -> b-1.0 (b.json) -> c-1.0 (c.json) -> a-1.0 (a.json)"
    )


def test_missing_dependency_names_the_dependent(tmp_path: Path) -> None:
    make_package(tmp_path, "a", depends=["gone"])
    with pytest.raises(PackageError, match=r"package a-1\.0 \(.*a\.json\) depends on .*gone\.json"):
        load_packages([tmp_path / "a.json"])


def test_invalid_dependency_names_the_dependency_file(tmp_path: Path) -> None:
    write_json(tmp_path / "b.json", {"name": "b"})
    make_package(tmp_path, "a", depends=["b"])
    with pytest.raises(PackageError, match=r"b\.json: 'version' is required"):
        load_packages([tmp_path / "a.json"])


def test_missing_root_file(tmp_path: Path) -> None:
    with pytest.raises(PackageError, match="not found"):
        load_packages([tmp_path / "nope.json"])


def test_two_packages_with_the_same_prefix_conflict(tmp_path: Path) -> None:
    make_package(tmp_path, "a")
    make_package(tmp_path, "b", prefix="/opt/a-1.0")
    with pytest.raises(PackageError, match=r"both install to /opt/a-1\.0"):
        load_packages([tmp_path / "a.json", tmp_path / "b.json"])


def test_load_packages_wants_a_list(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="list of package files"):
        load_packages(str(make_package(tmp_path, "a")))


def test_deep_chain_does_not_recurse(tmp_path: Path) -> None:
    count = 1500
    for i in range(count):
        make_package(tmp_path, f"p{i}", depends=[f"p{i + 1}"] if i + 1 < count else None)
    pkgs = load_packages([tmp_path / "p0.json"])
    assert names(pkgs) == [f"p{i}" for i in reversed(range(count))]


# --- package_hash ------------------------------------------------------------------------------


@pytest.fixture
def pkg(tmp_path: Path) -> Package:
    return load_package(make_package(tmp_path, "a"))


def test_hash_shape_and_determinism(pkg: Package) -> None:
    deps = ["abcdefghijklmnopqrstuvwxyz234567", "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"]
    value = package_hash(pkg, deps, DIFF_ID)
    assert HASH_RE.fullmatch(value)
    assert package_hash(pkg, deps, DIFF_ID) == value
    # Dependency hashes are sorted first: their order does not matter.
    assert package_hash(pkg, list(reversed(deps)), DIFF_ID) == value


def test_hash_is_the_documented_formula_and_ignores_file_locations(pkg: Package) -> None:
    # A golden value: if this changes, every published tag changes too (docs/packages.md).
    canonical = (
        '{"dependencies":["bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"],'
        f'"diff_id":"{DIFF_ID}",'
        '"env":[{"name":"X","op":"prepend_path","separator":":","value":"/opt/a-1.0/bin"}],'
        '"ld_library_path":false,"name":"a","prefix":"/opt/a-1.0","schema":1,"version":"1.0"}'
    )
    expected = base64.b32encode(hashlib.sha256(canonical.encode()).digest()).decode().lower()[:32]
    with_env = replace(pkg, env=(EnvModification("prepend_path", "X", "/opt/a-1.0/bin"),))
    assert package_hash(with_env, ["bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"], DIFF_ID) == expected
    assert expected == "5ko2bqyla5jzx7v73ctf5oaxe2644x6g"
    moved = replace(pkg, source=Path("/elsewhere/a.json"), content=Path("/elsewhere/a"))
    assert package_hash(moved, [], DIFF_ID) == package_hash(pkg, [], DIFF_ID)


@pytest.mark.parametrize(
    "change",
    [
        {"name": "b"},
        {"version": "1.1"},
        {"prefix": "/opt/other"},
        {"env": ()},
        {"env": (EnvModification("set", "X", "1"),)},
        {"ld_library_path": True},
    ],
)
def test_hash_sensitive_to_metadata(pkg: Package, change: dict[str, Any]) -> None:
    assert package_hash(replace(pkg, **change), [], DIFF_ID) != package_hash(pkg, [], DIFF_ID)


def test_hash_sensitive_to_dependencies_and_diff_id(pkg: Package) -> None:
    base = package_hash(pkg, ["aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"], DIFF_ID)
    assert package_hash(pkg, ["aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaab"], DIFF_ID) != base
    assert package_hash(pkg, [], DIFF_ID) != base
    assert package_hash(pkg, ["aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"], Digest.of(b"other")) != base


def test_explicit_hash_wins(pkg: Package) -> None:
    explicit = replace(pkg, hash="zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz")
    assert package_hash(explicit, ["aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"], DIFF_ID) == explicit.hash


def test_bad_dependency_hash(pkg: Package) -> None:
    with pytest.raises(PackageError, match="dependency hash 'nope'"):
        package_hash(pkg, ["nope"], DIFF_ID)


def test_documented_example_loads_the_same_from_json_and_toml(tmp_path: Path) -> None:
    docs = (Path(__file__).parent.parent / "docs" / "packages.md").read_text()
    blocks = re.findall(r"```(json|toml)\n(.*?)```", docs, re.S)
    zlib_doc, python_toml, python_json = blocks[0][1], blocks[1][1], blocks[2][1]
    assert [kind for kind, _ in blocks[:3]] == ["json", "toml", "json"]
    (tmp_path / "zlib").mkdir()
    (tmp_path / "python-3.11.2.tar.gz").write_bytes(b"")
    (tmp_path / "zlib.json").write_text(zlib_doc)
    (tmp_path / "python.toml").write_text(python_toml)
    (tmp_path / "python.json").write_text(python_json)
    from_toml = load_package(tmp_path / "python.toml")
    from_json = load_package(tmp_path / "python.json")
    assert replace(from_json, source=from_toml.source) == from_toml
    assert [p.name for p in load_packages([tmp_path / "python.toml"])] == ["zlib", "python"]
    assert from_toml.env == (
        EnvModification("unset", "PYTHONHOME"),
        EnvModification("set", "PYTHONNOUSERSITE", "1"),
        EnvModification("prepend_path", "PATH", "/opt/stack/python-3.11.2/bin"),
        EnvModification("prepend_path", "MANPATH", "/opt/stack/python-3.11.2/share/man"),
        EnvModification("append_path", "PKG_CONFIG_PATH", "/opt/stack/python-3.11.2/lib/pkgconfig"),
    )
