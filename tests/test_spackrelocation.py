"""Spack's relocation record (.spack/binary_distribution) for an install prefix.

What it must hold is Spack's rule (binary_distribution.get_buildinfo_dict and
tarfile_of_spec_prefix); tests/test_spack_kit.py compares it with the one real Spack writes for
the kit's packages and installs from it into another install tree.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from imagesmith.inputs.spackrelocation import Relocation, _unpadded, buildinfo, find_relocation
from imagesmith.tar.entries import directory_entries

ROOT_HASH = "a" * 32
LIB_HASH = "b" * 32
RUN_HASH = "c" * 32
DEEP_HASH = "d" * 32
EXT_HASH = "e" * 32
BUILD_HASH = "f" * 32


def dep(name: str, dag_hash: str, *types: str) -> dict[str, Any]:
    return {"name": name, "hash": dag_hash, "parameters": {"deptypes": list(types), "virtuals": []}}


NODES: list[dict[str, Any]] = [
    {
        "name": "top",
        "hash": ROOT_HASH,
        "dependencies": [
            dep("lib", LIB_HASH, "build", "link"),
            dep("tool", RUN_HASH, "run"),
            dep("ext", EXT_HASH, "link"),
            dep("cmake", BUILD_HASH, "build"),
        ],
    },
    {"name": "lib", "hash": LIB_HASH, "dependencies": [dep("deep", DEEP_HASH, "link")]},
    {"name": "tool", "hash": RUN_HASH},
    {"name": "deep", "hash": DEEP_HASH},
    {"name": "ext", "hash": EXT_HASH, "external": {"path": "/usr", "module": None}},
    {"name": "cmake", "hash": BUILD_HASH},
]


def make_store(root: Path, *, paths: dict[str, str] | None = None) -> dict[str, Path]:
    """An install tree ``root/opt/spack`` with a database recording each node's prefix."""
    store = root / "opt" / "spack"
    prefixes = {n["hash"]: store / "linux-x86_64" / f"{n['name']}-1.0-{n['hash']}" for n in NODES}
    installs: dict[str, object] = {}
    for n in NODES:
        recorded = (paths or {}).get(n["hash"], str(prefixes[n["hash"]]))
        recorded = recorded if not n.get("external") else "/usr"
        installs[n["hash"]] = {"spec": n, "path": recorded, "installed": True}
    (store / ".spack-db").mkdir(parents=True)
    database = {"database": {"version": "8", "installs": installs}}
    (store / ".spack-db" / "index.json").write_text(json.dumps(database))
    for path in prefixes.values():
        (path / ".spack").mkdir(parents=True)
    return {"store": store, **{n["name"]: prefixes[n["hash"]] for n in NODES}}


def test_the_record_fields_come_from_the_install_tree_and_its_database(tmp_path: Path) -> None:
    tree = make_store(tmp_path)
    found = find_relocation(tree["top"], NODES)
    assert isinstance(found, Relocation)
    store = str(tree["store"])
    assert found.buildpath == store
    assert found.relative_prefix == f"linux-x86_64/top-1.0-{ROOT_HASH}"
    assert found.sbang_install_path == f"{store}/bin/sbang"
    assert found.spackprefix == str(tmp_path)  # the tree is Spack's default $spack/opt/spack
    # The package, its link dependencies (transitively, breadth first), its direct run
    # dependencies; never externals or build-only dependencies.
    assert [h for h, _ in found.hash_to_prefix] == [ROOT_HASH, LIB_HASH, DEEP_HASH, RUN_HASH]
    assert dict(found.hash_to_prefix)[DEEP_HASH] == str(tree["deep"])
    assert found.prefixes[-2:] == [f"{store}/bin/sbang", store]


def test_what_cannot_be_made_right_says_why(tmp_path: Path) -> None:
    loose = tmp_path / "loose" / "top"
    (loose / ".spack").mkdir(parents=True)
    assert "is not inside a Spack install tree" in str(find_relocation(loose, NODES))
    tree = make_store(tmp_path / "moved", paths={ROOT_HASH: "/elsewhere/top"})
    assert "does not record" in str(find_relocation(tree["top"], NODES))
    tree = make_store(tmp_path / "upstream", paths={DEEP_HASH: "not-absolute"})
    problem = find_relocation(tree["top"], NODES)
    assert isinstance(problem, str) and f"deep/{DEEP_HASH}" in problem
    (tree["store"] / ".spack-db" / "index.json").write_text("{")
    assert "cannot be read" in str(find_relocation(tree["top"], NODES))


def test_padding_is_not_part_of_the_sbang_path(tmp_path: Path) -> None:
    assert _unpadded("/spack/store/__spack_path_placeholder__/__spack_path_placeholder__/__spack_p") == (
        "/spack/store"
    )
    assert _unpadded("/spack/store/__spack_path_placeholder__/__spack_path_placeholder___") == "/spack/store"
    assert _unpadded("/spack/store") == "/spack/store"


def test_files_are_classified_as_spack_does(tmp_path: Path) -> None:
    tree = make_store(tmp_path)
    top = tree["top"]
    relocation = find_relocation(top, NODES)
    assert isinstance(relocation, Relocation)
    lib = str(tree["lib"])
    (top / "bin").mkdir()
    (top / "bin" / "tool").write_bytes(b"\x7fELF\x02\x01\x01" + b"\0" * 64)  # ELF: always a binary
    (top / "bin" / "script").write_text(f"#!/bin/sh\nexec {lib}/bin/x\n")  # names a prefix
    (top / "bin" / "plain").write_text("#!/bin/sh\necho hello\n")  # text naming none
    (top / "bin" / "embedded").write_text(f"see /x/y{lib}\n")  # inside a longer path: not a prefix
    (top / "bin" / "sbang").write_text(f"#!/bin/sh {tree['store']}/bin/sbang\n")  # the tree root
    (top / "share").mkdir()
    (top / "share" / "data.bin").write_bytes(b"\x00\x01\x02" + lib.encode() + b"\xff\x00")  # binary data
    (top / "share" / "latin1.txt").write_bytes(f"caf\xe9 {lib}\n".encode("latin-1"))  # ISO-8859-1 text
    (top / "share" / "tiny").write_bytes(b"short")  # under 8 bytes: unknown
    (top / ".spack" / "spec.json").write_text(f'{{"path": "{lib}"}}')  # .spack is never relocated
    (top / "share" / "link-abs").symlink_to(f"{lib}/lib/liblib.so")
    (top / "share" / "link-rel").symlink_to("data.bin")
    (top / "share" / "link-out").symlink_to("/usr/lib/libc.so.6")
    os.link(top / "bin" / "tool", top / "bin" / "tool-hardlink")  # one inode: listed once
    data = buildinfo(relocation, directory_entries(top, str(top).lstrip("/")), str(top).lstrip("/"))
    record = json.loads(data)
    assert list(record) == [
        "sbang_install_path",
        "buildpath",
        "spackprefix",
        "relative_prefix",
        "hardlinks_deduped",
        "hash_to_prefix",
        "relocate_binaries",
        "relocate_links",
        "relocate_textfiles",
    ]
    assert record["relocate_binaries"] == ["bin/tool"]
    assert record["relocate_textfiles"] == ["bin/sbang", "bin/script", "share/latin1.txt"]
    assert record["relocate_links"] == ["share/link-abs"]
    assert record["hardlinks_deduped"] is True
    assert record["hash_to_prefix"][LIB_HASH] == lib
    assert data.endswith(b"\n")


def test_a_prefix_across_a_chunk_boundary_is_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import imagesmith.inputs.spackrelocation as module

    monkeypatch.setattr(module, "_CHUNK", 64)
    tree = make_store(tmp_path)
    top = tree["top"]
    relocation = find_relocation(top, NODES)
    assert isinstance(relocation, Relocation)
    (top / "big.txt").write_text("x " * 40 + str(tree["lib"]) + "\n" + "y " * 100)
    data = buildinfo(relocation, directory_entries(top, str(top).lstrip("/")), str(top).lstrip("/"))
    assert json.loads(data)["relocate_textfiles"] == ["big.txt"]
