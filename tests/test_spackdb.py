"""Spack's build-cache database (index.spack): versions, records, conversion, reading.

The document itself is checked against the one real Spack writes for the same packages in
tests/test_spack_kit.py; here, its rules one by one.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from imagesmith.errors import ManifestError
from imagesmith.inputs.spackdb import build_database, database_media_type, parse_database

H = {name: (name * 32)[:32] for name in ("aaaa", "bbbb", "cccc", "dddd", "eeee")}


def node(name: str, *deps: tuple[str, list[str]], fmt: int = 5, **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"name": name, "version": "1.0", "hash": H[name], **extra}
    if deps:
        out["dependencies"] = [
            {"name": d, "hash": H[d], "parameters": {"deptypes": t, "virtuals": []}}
            if fmt >= 4
            else {"name": d, "hash": H[d], "type": t}
            for d, t in deps
        ]
    if fmt >= 5:
        out["annotations"] = {"original_specfile_version": 5}
    return out


def test_records_every_node_dependencies_first_with_reference_counts() -> None:
    # aaaa -> bbbb (link), cccc (build); bbbb -> dddd (link); eeee -> bbbb (run): two packages.
    top = [
        node("aaaa", ("bbbb", ["link"]), ("cccc", ["build"])),
        node("bbbb", ("dddd", ["link"])),
        node("cccc"),
        node("dddd"),
    ]
    other = [node("eeee", ("bbbb", ["run"])), node("bbbb", ("dddd", ["link"])), node("dddd")]
    db = build_database([(5, top), (5, other)])
    assert db.version == "8" and db.media_type == "application/vnd.spack.db.v8+json"
    assert list(db.records) == [H["dddd"], H["bbbb"], H["cccc"], H["aaaa"], H["eeee"]]
    assert {h: r.ref_count for h, r in db.records.items()} == {
        H["dddd"]: 1,
        H["bbbb"]: 2,
        H["cccc"]: 1,
        H["aaaa"]: 0,
        H["eeee"]: 0,
    }
    assert db.packages == (H["aaaa"], H["eeee"])  # only packages the cache holds are in_buildcache
    assert db.records[H["aaaa"]].node == top[0]  # exactly as read
    # Compact JSON as Spack writes it, and it reads back the same.
    data = db.to_bytes()
    assert data.startswith(b'{"database":{"version":"8","installs":{"' + H["dddd"].encode())
    assert parse_database(data, "db") == db
    assert db.spec_nodes(H["aaaa"]) == [top[0], top[1], top[2], top[3]]
    assert db.spec_nodes("missing") is None


def test_version_7_unless_a_spec_is_format_5_and_old_formats_are_converted() -> None:
    v4 = [
        node("aaaa", ("bbbb", ["link"]), fmt=4, compiler={"name": "gcc", "version": "12.2.0"}),
        node("bbbb", fmt=4, compiler={"name": "gcc", "version": "12.2.0"}),
    ]
    v2 = [node("cccc", ("dddd", ["build", "link"]), fmt=2), node("dddd", fmt=2)]
    seven = build_database([(4, v4), (2, v2)])
    assert seven.version == "7"
    assert seven.records[H["aaaa"]].node == v4[0]  # format 4 as it is
    # Formats 2 and 3 give dependency types as "type"; version 7 reads parameters.deptypes.
    assert seven.records[H["cccc"]].node["dependencies"] == [
        {"name": "dddd", "hash": H["dddd"], "parameters": {"deptypes": ["build", "link"], "virtuals": []}}
    ]
    # One format-5 spec makes it version 8, and older nodes become what Spack 1.x writes.
    eight = build_database([(4, v4), (5, [node("eeee")])])
    assert eight.version == "8"
    converted = eight.records[H["aaaa"]].node
    assert "compiler" not in converted
    assert converted["annotations"] == {"original_specfile_version": 4, "compiler": "gcc@=12.2.0"}
    assert converted["dependencies"] == v4[0]["dependencies"]
    assert eight.records[H["eeee"]].node["annotations"] == {"original_specfile_version": 5}
    assert v4[0]["compiler"] == {"name": "gcc", "version": "12.2.0"}  # the input is not touched
    assert database_media_type("7") == "application/vnd.spack.db.v7+json"


def test_a_node_missing_from_a_spec_is_not_recorded() -> None:
    db = build_database([(5, [node("aaaa", ("bbbb", ["link"]))])])
    assert list(db.records) == [H["aaaa"]]
    assert db.spec_nodes(H["aaaa"]) is None  # the DAG is incomplete there


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"{", "is not JSON"),
        (b"[]", "no 'database' object"),
        (b'{"database": {"version": "9", "installs": {}}}', "version '9'"),
        (b'{"database": {"version": 8, "installs": {}}}', "version 8"),
        (b'{"database": {"version": "8", "installs": []}}', "'installs' must be an object"),
        (b'{"database": {"version": "8", "installs": {"x": {"ref_count": 0}}}}', "no 'spec' object"),
        (b'{"database": {"version": "8", "installs": {"x": {"spec": {}, "ref_count": "1"}}}}', "ref_count"),
    ],
)
def test_bad_databases_are_refused(data: bytes, message: str) -> None:
    with pytest.raises(ManifestError, match=message):
        parse_database(data, "index.spack")


def test_older_versions_are_read() -> None:
    record = {"spec": node("aaaa"), "in_buildcache": True}
    doc = {"database": {"version": "6", "installs": {H["aaaa"]: record}}}
    db = parse_database(json.dumps(doc).encode(), "old")
    assert db.version == "6" and db.packages == (H["aaaa"],) and db.records[H["aaaa"]].ref_count == 0
