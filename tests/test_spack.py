"""Spack packages: install prefixes, build-cache tarballs, wrapped spec.json files, the config hook."""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import itertools
import json
import shutil
import tarfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import zstandard
from cli_support import build_argv, ok

from imagesmith.errors import PackageError
from imagesmith.inputs.load import load_package, load_packages
from imagesmith.inputs.packages import Package, package_hash
from imagesmith.inputs.spack import (
    SpackDependency,
    is_spack_spec,
    load_spack_package,
    parse_spack_spec,
    spack_config_fields,
)
from imagesmith.oci.digests import Digest
from imagesmith.oci.model import Platform

FIXTURES = Path(__file__).parent / "fixtures" / "spack"
STORE = FIXTURES / "store" / "linux-ubuntu22.04-x86_64" / "gcc-12.3.0"
ZLIB_HASH = "ukpivbkpwot7el2z6az77r4y4hoz3zeg"
SQLITE_HASH = "xjgeg6lsj3pxmuhvlezicu46odq3dx3o"
PYTHON_HASH = "yezkesqz247juissmuxzs2pzbozhnll3"
HOST_SLUG = str(Platform.host()).replace("/", "-")  # a one-platform image's default tag suffix
ZLIB = STORE / f"zlib-1.3-{ZLIB_HASH}"
SQLITE = STORE / f"sqlite-3.43.2-{SQLITE_HASH}"
PYTHON_TGZ = FIXTURES / f"python-3.11.7-{PYTHON_HASH}.tar.gz"
PYTHON_SPEC = FIXTURES / "python.spec.json"
PYTHON_WRAPPER = FIXTURES / "python.json"
SQLITE_WRAPPER = FIXTURES / "sqlite-wrapper.toml"
PYTHON_PREFIX = f"/opt/spack/linux-ubuntu22.04-x86_64/gcc-12.3.0/python-3.11.7-{PYTHON_HASH}"
SQLITE_PREFIX = f"/opt/spack/linux-ubuntu22.04-x86_64/gcc-12.3.0/sqlite-3.43.2-{SQLITE_HASH}"


def dag_hash(name: str) -> str:
    """A well-formed, made-up Spack DAG hash for a test node."""
    return base64.b32encode(hashlib.sha256(name.encode()).digest()).decode().lower()[:32]


def node(
    name: str, deps: Sequence[tuple[str, Any]] = (), *, form: str = "parameters", **extra: Any
) -> dict[str, Any]:
    """A spec node with dependencies given as (name, deptypes), in the v4+ or v2/v3 form."""
    out: dict[str, Any] = {"name": name, "version": "1.0", "hash": dag_hash(name), **extra}
    if deps:
        out["dependencies"] = [
            {"name": d, "hash": dag_hash(d), "parameters": {"deptypes": t, "virtuals": []}}
            if form == "parameters"
            else {"name": d, "hash": dag_hash(d), "type": t}
            for d, t in deps
        ]
    return out


def spec_doc(*nodes: object, version: int = 4) -> dict[str, Any]:
    return {"spec": {"_meta": {"version": version}, "nodes": list(nodes)}}


def make_prefix(root: Path, doc: object, name: str = "pfx") -> Path:
    """An install prefix ``root/name`` with ``.spack/spec.json`` and a ``bin`` directory."""
    prefix = root / name
    (prefix / ".spack").mkdir(parents=True)
    (prefix / "bin").mkdir()
    (prefix / ".spack" / "spec.json").write_text(json.dumps(doc))
    return prefix


def write_tarball(path: Path, members: dict[str, bytes | None], *, compress: str = "gzip") -> Path:
    """A tarball of ``members`` (None marks a directory), gzip- or zstd-compressed."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            if data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    body = raw.getvalue()
    path.write_bytes(gzip.compress(body, mtime=0) if compress == "gzip" else zstandard.compress(body))
    return path


def buildcache_members(prefix: str, spec: object) -> dict[str, bytes | None]:
    parts = prefix.split("/")
    members: dict[str, bytes | None] = {"/".join(parts[: i + 1]) + "/": None for i in range(len(parts))}
    members[f"{prefix}/.spack/spec.json"] = json.dumps(spec).encode()
    members[f"{prefix}/bin/tool"] = b"#!/bin/sh\n"
    return members


def names(pkgs: list[Package]) -> list[str]:
    return [p.name for p in pkgs]


def installed_store(root: Path) -> Path:
    """A copy of the fixture store as Spack leaves an install tree: its database
    (``.spack-db/index.json``) records where each package is installed, which relocation needs.
    Returns the directory of the prefixes (the layout's ``linux-.../gcc-...``)."""
    shutil.copytree(FIXTURES / "store", root)
    installs: dict[str, dict[str, Any]] = {}
    for spec_file in sorted(root.glob("*/*/*/.spack/spec.json")):
        for node_ in json.loads(spec_file.read_text())["spec"]["nodes"]:
            installs.setdefault(node_["hash"], {"spec": node_, "path": None, "installed": False})
        top = json.loads(spec_file.read_text())["spec"]["nodes"][0]
        installs[top["hash"]].update(path=str(spec_file.parent.parent), installed=True)
    (root / ".spack-db").mkdir()
    database = {"database": {"version": "8", "installs": installs}}
    (root / ".spack-db" / "index.json").write_text(json.dumps(database))
    return root / STORE.relative_to(FIXTURES / "store")


# --- loading one package -----------------------------------------------------------------------


def test_install_prefix_v4() -> None:
    pkg = load_package(ZLIB)
    assert (pkg.name, pkg.version, pkg.hash) == ("zlib", "1.3", ZLIB_HASH)
    assert pkg.prefix == str(ZLIB.absolute())
    assert (pkg.content, pkg.content_kind) == (ZLIB.resolve(), "directory")
    assert pkg.env is None and pkg.depends == () and not pkg.ld_library_path
    assert pkg.spack is not None
    assert (pkg.spack.name, pkg.spack.version, pkg.spack.hash) == ("zlib", "1.3", ZLIB_HASH)
    assert pkg.spack.format_version == 4
    assert pkg.spack.runtime == ()  # gmake is build-only
    assert [n["name"] for n in pkg.spack.nodes] == ["zlib", "gmake"]
    assert load_spack_package(ZLIB) == pkg


def test_install_prefix_v5_skips_build_only_and_external_dependencies() -> None:
    pkg = load_package(SQLITE)
    assert pkg.spack is not None and pkg.spack.format_version == 5
    # gcc (an external, build-only) and gmake (build-only) are not layers.
    assert pkg.spack.runtime == (SpackDependency("zlib", "1.3", ZLIB_HASH),)


def test_spec_json_inside_a_prefix_stands_for_the_prefix() -> None:
    assert load_package(ZLIB / ".spack" / "spec.json") == load_package(ZLIB)
    pkgs = load_packages([ZLIB, ZLIB / ".spack" / "spec.json", str(ZLIB) + "/"])
    assert names(pkgs) == ["zlib"]


def test_prefix_reached_through_a_symlink_keeps_its_spelling(tmp_path: Path) -> None:
    real = tmp_path / "real" / ZLIB.name
    shutil.copytree(ZLIB, real, symlinks=True)
    (tmp_path / "store").symlink_to(tmp_path / "real")
    pkg = load_package(tmp_path / "store" / ZLIB.name)
    assert pkg.prefix == str(tmp_path / "store" / ZLIB.name)  # where Spack's rpaths point
    assert pkg.content == real.resolve()


def test_buildcache_tarball_is_root_relative() -> None:
    pkg = load_package(PYTHON_TGZ)
    assert (pkg.name, pkg.version, pkg.hash) == ("python", "3.11.7", PYTHON_HASH)
    assert pkg.prefix == PYTHON_PREFIX
    assert (pkg.content, pkg.content_kind) == (PYTHON_TGZ.resolve(), "tarball")
    assert pkg.spack is not None
    # openssl is an external, gmake and pkgconf build-only: only zlib and sqlite, dependencies first.
    assert [d.name for d in pkg.spack.runtime] == ["zlib", "sqlite"]


@pytest.mark.parametrize("suffix", [".tar.zst", ".spack", ".tar"])
def test_buildcache_tarball_compressions_and_names(tmp_path: Path, suffix: str) -> None:
    spec = spec_doc(node("tool"))
    prefix = "opt/store/tool-1.0"
    members = buildcache_members(prefix, spec)
    path = tmp_path / f"tool{suffix}"
    if suffix == ".tar":
        raw = io.BytesIO()
        write_tarball(tmp_path / "x.tgz", members)
        raw.write(gzip.decompress((tmp_path / "x.tgz").read_bytes()))
        path.write_bytes(raw.getvalue())
    else:
        write_tarball(path, members, compress="zstd" if suffix == ".tar.zst" else "gzip")
    pkg = load_package(path)
    assert (pkg.name, pkg.prefix, pkg.hash) == ("tool", "/opt/store/tool-1.0", dag_hash("tool"))


def test_the_shallowest_spec_json_names_the_prefix(tmp_path: Path) -> None:
    # A package may ship another install tree inside its prefix; its own spec is the outer one.
    members = buildcache_members("opt/outer-1.0", spec_doc(node("outer")))
    members["opt/outer-1.0/share/"] = None
    members["opt/outer-1.0/share/inner/"] = None
    members["opt/outer-1.0/share/inner/.spack/"] = None
    members["opt/outer-1.0/share/inner/.spack/spec.json"] = json.dumps(spec_doc(node("inner"))).encode()
    pkg = load_package(write_tarball(tmp_path / "outer.tar.gz", members))
    assert (pkg.name, pkg.prefix) == ("outer", "/opt/outer-1.0")


# --- wrappers: a package file naming a spec.json -----------------------------------------------


def test_wrapper_around_a_bare_spec_and_a_tarball() -> None:
    pkg = load_package(PYTHON_WRAPPER)
    assert (pkg.name, pkg.version, pkg.hash, pkg.prefix) == ("python", "3.11.7", PYTHON_HASH, PYTHON_PREFIX)
    assert pkg.source == PYTHON_WRAPPER.resolve() and pkg.content_kind == "tarball"
    assert pkg.spack == load_package(PYTHON_TGZ).spack
    assert pkg.env is None


def test_wrapper_gives_the_prefix_and_the_env() -> None:
    pkg = load_package(SQLITE_WRAPPER)
    assert (pkg.name, pkg.hash, pkg.prefix) == ("sqlite", SQLITE_HASH, SQLITE_PREFIX)
    assert pkg.content == SQLITE.resolve()
    assert pkg.env is not None
    assert [(m.op, m.name, m.value) for m in pkg.env] == [
        ("prepend_path", "PATH", f"{SQLITE_PREFIX}/bin"),
        ("set", "SQLITE_FIXTURE", "1"),
    ]


def test_wrapper_fields_must_agree_with_the_spec(tmp_path: Path) -> None:
    (tmp_path / "c").mkdir()
    doc = {"spack_spec": str(PYTHON_SPEC), "prefix": "/opt/p", "content": "c", "version": "3.12"}
    (tmp_path / "w.json").write_text(json.dumps(doc))
    with pytest.raises(
        PackageError, match=r"w\.json: version '3\.12' differs from the version in spack_spec"
    ):
        load_package(tmp_path / "w.json")
    doc = {"spack_spec": "gone.json", "prefix": "/opt/p", "content": "c"}
    (tmp_path / "w.json").write_text(json.dumps(doc))
    with pytest.raises(PackageError, match=r"w\.json: spack_spec 'gone\.json' not found"):
        load_package(tmp_path / "w.json")
    doc = {"spack_spec": str(PYTHON_SPEC), "content": "c"}
    (tmp_path / "w.json").write_text(json.dumps(doc))
    with pytest.raises(PackageError, match=r"w\.json: 'prefix' is required"):
        load_package(tmp_path / "w.json")
    doc = {"spack_spec": str(ZLIB), "prefix": "/opt/z", "content": "c", "name": "zlib", "hash": ZLIB_HASH}
    (tmp_path / "w.json").write_text(json.dumps(doc))  # a prefix directory names its spec.json
    assert load_package(tmp_path / "w.json").spack == load_package(ZLIB).spack


# --- dependencies ------------------------------------------------------------------------------


@pytest.mark.parametrize("given", list(itertools.permutations([PYTHON_TGZ, SQLITE, ZLIB])))
def test_runtime_dependencies_are_matched_by_hash_in_topological_order(given: tuple[Path, ...]) -> None:
    pkgs = load_packages(list(given))
    assert names(pkgs) == ["zlib", "sqlite", "python"]  # build-only gmake, pkgconf: no layers
    zlib, sqlite, python = pkgs
    assert sqlite.depends == (zlib.key,)
    assert python.depends == (zlib.key, sqlite.key)


def test_the_same_dag_hash_is_one_package_and_the_first_given_wins() -> None:
    pkgs = load_packages(
        [PYTHON_TGZ, PYTHON_WRAPPER, SQLITE, SQLITE_WRAPPER, ZLIB, ZLIB / ".spack" / "spec.json"]
    )
    assert names(pkgs) == ["zlib", "sqlite", "python"]
    assert pkgs[1].source == SQLITE.absolute() and pkgs[2].source == PYTHON_TGZ.resolve()
    pkgs = load_packages([SQLITE_WRAPPER, SQLITE, ZLIB])
    assert names(pkgs) == ["zlib", "sqlite"] and pkgs[1].prefix == SQLITE_PREFIX


def test_wrappers_resolve_like_prefixes() -> None:
    pkgs = load_packages([PYTHON_WRAPPER, SQLITE_WRAPPER, ZLIB])
    assert names(pkgs) == ["zlib", "sqlite", "python"]
    assert pkgs[2].depends == (pkgs[0].key, pkgs[1].key)


def test_missing_runtime_dependency_is_named_with_how_to_provide_it() -> None:
    with pytest.raises(PackageError) as info:
        load_packages([PYTHON_TGZ, ZLIB])
    message = str(info.value)
    assert f"python-3.11.7 ({PYTHON_TGZ.resolve()}) needs sqlite@3.43.2/{SQLITE_HASH}" in message
    assert "zlib" not in message.split("needs", 1)[1].split("at run time")[0]
    assert "install prefix or build-cache tarball" in message
    with pytest.raises(PackageError, match=rf"needs zlib@1\.3/{ZLIB_HASH}, sqlite@3\.43\.2/{SQLITE_HASH} "):
        load_packages([PYTHON_TGZ])
    # load_package alone does not look for dependencies.
    assert load_package(PYTHON_TGZ).depends == ()


def test_a_package_file_with_the_hash_provides_a_dependency(tmp_path: Path) -> None:
    (tmp_path / "z").mkdir()
    doc = {"name": "zlib", "version": "1.3", "prefix": "/opt/zlib", "content": "z", "hash": ZLIB_HASH}
    (tmp_path / "zlib.json").write_text(json.dumps(doc))
    pkgs = load_packages([SQLITE, tmp_path / "zlib.json"])
    assert names(pkgs) == ["zlib", "sqlite"] and pkgs[0].spack is None
    assert pkgs[1].depends == (pkgs[0].key,)
    # With the prefix given too, the hash names one package: the first loaded.
    assert names(load_packages([ZLIB, SQLITE, tmp_path / "zlib.json"])) == ["zlib", "sqlite"]
    assert load_packages([tmp_path / "zlib.json", ZLIB])[0].spack is None
    (tmp_path / "libz.json").write_text(json.dumps({**doc, "name": "libz"}))
    with pytest.raises(PackageError, match=rf"needs zlib@1\.3/{ZLIB_HASH}, but the package given with hash"):
        load_packages([SQLITE, tmp_path / "libz.json"])


def test_package_files_can_depend_on_spack_packages(tmp_path: Path) -> None:
    (tmp_path / "app").mkdir()
    doc = {
        "name": "app",
        "version": "1",
        "prefix": "/opt/app",
        "content": "app",
        "depends": [str(SQLITE / ".spack" / "spec.json"), str(ZLIB)],
    }
    (tmp_path / "app.json").write_text(json.dumps(doc))
    pkgs = load_packages([tmp_path / "app.json"])
    assert names(pkgs) == ["zlib", "sqlite", "app"]
    # The spec.json path became the key of the package it stands for.
    assert pkgs[2].depends == (pkgs[1].key, pkgs[0].key)


def test_run_dependencies_and_the_type_form(tmp_path: Path) -> None:
    doc = spec_doc(
        node("app", [("helper", ["build", "run"]), ("cmake", ["build"]), ("libc", "link")], form="type"),
        node("cmake", [("libc", ["build", "link"])], form="type"),
        node("helper", [("libd", ["link"])], form="type"),
        node("libc", form="type"),
        node("libd", form="type"),
        version=3,
    )
    spec = parse_spack_spec(doc, "test")
    assert [d.name for d in spec.runtime] == ["libd", "helper", "libc"]


# --- errors ------------------------------------------------------------------------------------


def test_a_bare_spec_json_needs_a_wrapper() -> None:
    with pytest.raises(
        PackageError, match=r"python\.spec\.json is a Spack spec\.json outside an install prefix"
    ):
        load_package(PYTHON_SPEC)
    with pytest.raises(PackageError, match=r"package file with spack_spec, prefix and content"):
        load_packages([PYTHON_SPEC])


def test_a_directory_without_a_spec_is_not_a_package(tmp_path: Path) -> None:
    with pytest.raises(PackageError, match=r"directory without \.spack/spec\.json"):
        load_packages([tmp_path])


def _root(**change: Any) -> dict[str, Any]:
    root = node("app", [("dep", ["build", "link"])])
    for key, value in change.items():
        if value is None:
            root.pop(key, None)
        else:
            root[key] = value
    return root


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        (spec_doc(), r"spec\.nodes is empty"),
        ({"spec": {"nodes": [node("a")]}}, r"spec\._meta\.version is required"),
        (spec_doc(node("a"), version=1), r"spec\._meta\.version 1 is not a specfile format"),
        (spec_doc(node("a"), version=6), r"spec\._meta\.version 6 is not a specfile format"),
        ({"spec": {"_meta": {"version": 4}, "nodes": {}}}, r"spec\.nodes must be a list"),
        (spec_doc(_root(hash="ABC"), node("dep")), r"spec\.nodes\[0\]\.hash 'ABC' must be a Spack DAG hash"),
        (spec_doc(_root(name=None), node("dep")), r"spec\.nodes\[0\]\.name is required"),
        (spec_doc(_root(name="a b"), node("dep")), r"spec\.nodes\[0\]\.name 'a b' must be letters"),
        (spec_doc(_root(version=None), node("dep")), r"spec\.nodes\[0\]\.version is required"),
        (spec_doc(_root(version="1 2"), node("dep")), r"spec\.nodes\[0\]\.version '1 2' must be non-empty"),
        (spec_doc(_root(external={"path": "/usr"}), node("dep")), r"app is an external package"),
        (spec_doc(_root(), node("dep", hash="x")), r"spec\.nodes\[1\]\.hash 'x' must be"),
        (spec_doc(_root(), "dep"), r"spec\.nodes\[1\] must be an object"),
        (spec_doc(_root()), r"app depends on dep/\w{32}, which is not among spec\.nodes"),
        (
            spec_doc(_root(dependencies=[{"name": "dep", "hash": dag_hash("dep")}]), node("dep")),
            r"spec\.nodes\[0\]\.dependencies\[0\] has neither parameters\.deptypes nor type",
        ),
        (
            spec_doc(_root(dependencies=[{"name": "dep", "hash": "no", "type": ["link"]}]), node("dep")),
            r"spec\.nodes\[0\]\.dependencies\[0\]\.hash 'no' must be",
        ),
        (
            spec_doc(
                _root(dependencies=[{"name": "dep", "hash": dag_hash("dep"), "type": [1]}]), node("dep")
            ),
            r"spec\.nodes\[0\]\.dependencies\[0\]\.type must be a list of dependency types",
        ),
        (spec_doc(_root(dependencies={}), node("dep")), r"spec\.nodes\[0\]\.dependencies must be a list"),
    ],
)
def test_malformed_specs_name_the_file_and_field(tmp_path: Path, doc: object, message: str) -> None:
    prefix = make_prefix(tmp_path, doc)
    with pytest.raises(PackageError, match=message) as info:
        load_packages([prefix])
    assert str(prefix / ".spack" / "spec.json") in str(info.value)


def test_malformed_json_and_dependency_cycles(tmp_path: Path) -> None:
    prefix = make_prefix(tmp_path, {}, "a")
    (prefix / ".spack" / "spec.json").write_text("{")
    with pytest.raises(PackageError, match=r"a/\.spack/spec\.json: invalid JSON"):
        load_package(prefix)
    cyclic = spec_doc(node("x", [("y", ["link"])]), node("y", [("x", ["run"])]))
    with pytest.raises(PackageError, match=r"form a cycle"):
        load_package(make_prefix(tmp_path, cyclic, "b"))


def test_a_prefix_with_a_colon_is_refused(tmp_path: Path) -> None:
    prefix = make_prefix(tmp_path, spec_doc(node("a")), "a:b")
    with pytest.raises(PackageError, match=r"Spack install prefix .*: prefix .* must not contain ':'"):
        load_package(prefix)


@pytest.mark.parametrize(
    ("members", "message"),
    [
        ({"opt/": None, "opt/x/": None, "opt/x/bin/tool": b""}, r"holds no <prefix>/\.spack/spec\.json"),
        (
            {".spack/": None, ".spack/spec.json": b"{}", "bin/tool": b""},
            r"holds \.spack/spec\.json at its top",
        ),
        (
            {"opt/": None, "etc/passwd": b"x", **buildcache_members("opt/t-1", spec_doc(node("t")))},
            r"member 'etc/passwd' lies outside the install prefix /opt/t-1",
        ),
        (
            {"linux-x86_64-gcc-12-t-1-abc.tar.gz": b"x", "linux-x86_64-gcc-12-t-1-abc.spec.json": b"{}"},
            r"old-style Spack \.spack archive",
        ),
        (
            {"../evil": b"", **buildcache_members("opt/t-1", spec_doc(node("t")))},
            r"member '\.\./evil' contains '\.\.'",
        ),
    ],
)
def test_bad_buildcache_tarballs(tmp_path: Path, members: dict[str, bytes | None], message: str) -> None:
    path = write_tarball(tmp_path / "bad.tar.gz", members)
    with pytest.raises(PackageError, match=message) as info:
        load_packages([path])
    assert str(path) in str(info.value)


def test_unreadable_tarballs(tmp_path: Path) -> None:
    (tmp_path / "junk.tar.gz").write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(PackageError, match=r"junk\.tar\.gz cannot be read"):
        load_package(tmp_path / "junk.tar.gz")
    with pytest.raises(PackageError, match=r"gone\.tar\.gz not found"):
        load_packages([tmp_path / "gone.tar.gz"])
    members = buildcache_members("opt/t-1", {"spec": {"nodes": []}})
    path = write_tarball(tmp_path / "t.tar.gz", members)
    with pytest.raises(
        PackageError, match=r"t\.tar\.gz \(opt/t-1/\.spack/spec\.json\): spec\._meta\.version"
    ):
        load_package(path)


# --- hashing and the config hook ---------------------------------------------------------------


def test_package_hash_is_the_dag_hash() -> None:
    pkg = load_package(SQLITE)
    assert package_hash(pkg, ["a" * 32], Digest.of(b"anything")) == SQLITE_HASH


def test_is_spack_spec() -> None:
    assert is_spack_spec(json.loads(PYTHON_SPEC.read_text()))
    assert not is_spack_spec({"name": "zlib"}) and not is_spack_spec([]) and not is_spack_spec({"spec": []})


def test_spack_config_fields() -> None:
    digest = Digest.of(b"the compressed layer")
    plain = load_package(Path(__file__).parent / "fixtures" / "packages" / "zlib.json")
    assert spack_config_fields(plain, digest) == {}
    pkg = load_package(PYTHON_TGZ)
    fields = spack_config_fields(pkg, digest)
    assert fields == {
        "spec": {"_meta": {"version": 4}, "nodes": json.loads(PYTHON_SPEC.read_text())["spec"]["nodes"]},
        "buildcache_layout_version": 2,
        "binary_cache_checksum": {"hash_algorithm": "sha256", "hash": digest.hex},
    }
    fields["spec"]["nodes"][0]["name"] = "changed"
    assert spack_config_fields(pkg, digest)["spec"]["nodes"][0]["name"] == "python"
    assert spack_config_fields(load_package(SQLITE), digest)["spec"]["_meta"] == {"version": 5}


# --- building images ---------------------------------------------------------------------------


@pytest.fixture
def tiny_base(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A one-file base image in an OCI layout (no registry, no busybox)."""
    monkeypatch.setenv("IMAGESMITH_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    (tmp_path / "rootfs" / "etc").mkdir(parents=True)
    (tmp_path / "rootfs" / "etc" / "motd").write_text("base\n")
    ok("import", str(tmp_path / "rootfs"), "--output", f"oci:{tmp_path / 'base'}:1")
    return f"oci:{tmp_path / 'base'}:1"


def test_build_from_spack_packages(tiny_base: str, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = json.loads(
        ok(
            "build",
            "--base-image",
            tiny_base,
            "--output",
            f"oci:{out}",
            "--json",
            str(PYTHON_TGZ),
            str(SQLITE),
            str(ZLIB),
        )
    )
    assert result["tag"] == f"python-3.11.7-{PYTHON_HASH}.spack"
    assert [(layer["package"], layer["hash"]) for layer in result["layers"]] == [
        ("zlib", ZLIB_HASH),
        ("sqlite", SQLITE_HASH),
        ("python", PYTHON_HASH),
    ]
    python_layer = out / "blobs" / "sha256" / result["layers"][-1]["digest"].split(":")[1]
    with tarfile.open(python_layer) as tar:
        got = tar.getnames()
    assert f"{PYTHON_PREFIX.lstrip('/')}/.spack/spec.json" in got  # used as is
    assert all(
        PYTHON_PREFIX.lstrip("/").startswith(n) or n.startswith(PYTHON_PREFIX.lstrip("/")) for n in got
    )
    sqlite_layer = out / "blobs" / "sha256" / result["layers"][1]["digest"].split(":")[1]
    with tarfile.open(sqlite_layer) as tar:
        assert f"{str(SQLITE.absolute()).lstrip('/')}/bin/sqlite3" in tar.getnames()


@pytest.mark.integration
def test_push_a_spack_prefix_to_a_registry(
    registry: Any, base: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("IMAGESMITH_CACHE_DIR", str(tmp_path / "cache"))
    store = installed_store(tmp_path / "store")
    sqlite, zlib = store / SQLITE.name, store / ZLIB.name
    # A text file naming an install prefix is what Spack relocates as text.
    (sqlite / "lib" / "pkgconfig" / "sqlite3.pc").write_text(f"prefix={sqlite}\nRequires: zlib\n")
    out = json.loads(
        ok(
            *build_argv(
                registry.host, base, "--repo", f"{registry.host}/spack", "--json", str(sqlite), str(zlib)
            )
        )
    )
    assert out["tag"] == f"sqlite-3.43.2-{SQLITE_HASH}.spack" and out["spack"] and out["notes"] == []
    assert out["reference"] == f"{registry.host}/spack:sqlite-3.43.2-{SQLITE_HASH}.spack"
    assert out["tag"] in registry.tags("spack")
    assert [layer["package"] for layer in out["layers"]] == ["zlib", "sqlite"]
    # The config carries what Spack reads from an image (checked with an independent reader).
    import subprocess

    from conftest import need_tool

    need_tool("skopeo")
    config = json.loads(
        subprocess.run(
            ["skopeo", "inspect", "--tls-verify=false", "--config", "--raw", f"docker://{out['reference']}"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    assert config["spec"]["nodes"][0]["hash"] == SQLITE_HASH
    assert config["buildcache_layout_version"] == 2
    top_layer = out["layers"][-1]["digest"]
    assert config["binary_cache_checksum"] == {"hash_algorithm": "sha256", "hash": top_layer.split(":")[1]}
    assert len(config["rootfs"]["diff_ids"]) == 3  # base, zlib, sqlite
    # The package layer holds the relocation record `spack buildcache push` would write.
    blob = registry.get(f"/v2/spack/blobs/{top_layer}").content
    with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
        record = tar.extractfile(f"{str(sqlite).lstrip('/')}/.spack/binary_distribution")
        assert record is not None
        buildinfo = json.load(record)
    assert buildinfo["buildpath"] == str(tmp_path / "store")
    assert buildinfo["relative_prefix"] == str(sqlite.relative_to(tmp_path / "store"))
    assert buildinfo["hash_to_prefix"] == {SQLITE_HASH: str(sqlite), ZLIB_HASH: str(zlib)}
    assert buildinfo["relocate_textfiles"] == ["lib/pkgconfig/sqlite3.pc"]


@pytest.mark.parametrize(
    ("option", "reason"),
    [
        ("--profile-script", "--profile-script puts a layer above the package"),
        ("--compression=zstd", "zstd-compressed, and Spack extracts gzip or uncompressed tarballs only"),
    ],
)
def test_options_that_break_spack_installs_drop_the_spack_tag(
    tiny_base: str, tmp_path: Path, option: str, reason: str
) -> None:
    from cli_support import cli

    store = installed_store(tmp_path / "store")
    zlib = store / ZLIB.name
    ok("build", "--base-image", tiny_base, "--output", f"oci:{tmp_path / 'ok'}", str(zlib))
    assert (tmp_path / "ok" / "index.json").read_text().count(f"zlib-1.3-{ZLIB_HASH}.spack") == 1
    code, out, err = cli(
        "build", "--base-image", tiny_base, "--output", f"oci:{tmp_path / 'out'}", "--json", option, str(zlib)
    )
    assert code == 0, err
    tag = json.loads(out)["tag"]
    assert tag == f"zlib-1.3-{ZLIB_HASH}.{HOST_SLUG}" and reason in err and err.count("\n") == 1


def test_a_prefix_spack_cannot_install_from_gets_no_spack_tag(tiny_base: str, tmp_path: Path) -> None:
    from cli_support import cli

    # The fixture store has no Spack database: where the packages were installed is unknown.
    code, out, err = cli(
        "build", "--base-image", tiny_base, "--output", f"oci:{tmp_path / 'out'}", "--json", str(ZLIB)
    )
    assert code == 0, err
    result = json.loads(out)
    assert result["tag"] == f"zlib-1.3-{ZLIB_HASH}.{HOST_SLUG}" and not result["spack"]
    (note,) = err.splitlines()
    assert note.startswith("imagesmith: note: zlib-1.3 is not a Spack build-cache entry (no .spack tag")
    assert "is not inside a Spack install tree" in note
    config = json.loads(ok("inspect", "--json", f"oci:{tmp_path / 'out'}:{result['tag']}"))
    assert "spec" not in json.dumps(config["config"])


@pytest.mark.parametrize(
    ("target", "arch"),
    [
        ("x86_64", "amd64"),
        ("zen3", "amd64"),
        (
            {"name": "neoverse_n1", "vendor": "ARM", "features": [], "generation": 0, "parents": ["aarch64"]},
            "arm64",
        ),
        (
            {
                "name": "made_up_core",
                "vendor": "x",
                "features": [],
                "generation": 0,
                "parents": ["x86_64_v3"],
            },
            "amd64",
        ),
        ("power9le", "ppc64le"),
        ("unheard_of", None),
        (None, None),
    ],
)
def test_a_spack_build_goes_only_into_images_of_its_architecture(
    tmp_path: Path, target: object, arch: str | None
) -> None:
    from imagesmith.inputs.spack import spec_architecture
    from imagesmith.oci.model import Platform

    extra: dict[str, Any] = (
        {} if target is None else {"arch": {"platform": "linux", "platform_os": "debian12", "target": target}}
    )
    prefix = make_prefix(tmp_path, spec_doc(node("tool", (), **extra)))
    package = load_package(prefix)
    assert package.spack is not None
    found = spec_architecture(package.spack)
    assert (found[0] if found else None) == arch
    for platform in ("linux/amd64", "linux/arm64", "linux/ppc64le"):
        wanted = Platform.parse(platform)
        if arch is None or wanted.architecture == arch:
            assert package.for_platform(wanted).content == prefix.resolve()
        else:
            with pytest.raises(
                PackageError, match=rf"tool-1.0 .* is a Spack build for .* cannot go into the {platform}"
            ):
                package.for_platform(wanted)


def test_a_multi_platform_build_refuses_a_single_architecture_spack_prefix() -> None:
    from cli_support import cli

    # Refused before the base is even looked at (the registry named here does not exist).
    code, _, err = cli(
        "build",
        "--base-image",
        "127.0.0.1:9/none:1",
        "--platform",
        "linux/amd64,linux/arm64",
        "--repo",
        "127.0.0.1:9/out",
        str(ZLIB),
    )
    assert code == 2
    assert "is a Spack build for x86_64 (amd64): it cannot go into the linux/arm64 image" in err
