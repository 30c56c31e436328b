"""Environment modifications: parsing, merging, inference."""

from __future__ import annotations

import pytest

from imagesmith.errors import PackageError, UsageError
from imagesmith.inputs.envmods import (
    DEFAULT_PATH,
    EnvModification,
    apply_env,
    env_from_json,
    env_to_json,
    infer_env,
    parse_env_assignment,
    parse_env_list,
)


def prepend(name: str, value: str, separator: str = ":") -> EnvModification:
    return EnvModification("prepend_path", name, value, separator)


def append(name: str, value: str, separator: str = ":") -> EnvModification:
    return EnvModification("append_path", name, value, separator)


def as_dict(env: list[str]) -> dict[str, str]:
    return parse_env_list(env)


# --- EnvModification ---------------------------------------------------------------------------


def test_expand_replaces_every_prefix_token() -> None:
    mod = prepend("PATH", "{prefix}/bin:{prefix}/sbin")
    assert mod.expand("/opt/x").value == "/opt/x/bin:/opt/x/sbin"


def test_expand_leaves_other_braces_alone() -> None:
    mod = EnvModification("set", "X", "{{prefix}} {name} {prefix")
    assert mod.expand("/p").value == "{/p} {name} {prefix"


def test_expand_of_unset_is_identity() -> None:
    mod = EnvModification("unset", "X")
    assert mod.expand("/p") is mod


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("frobnicate", "X", "v"), "unknown environment operation"),
        (("set", "1X", "v"), "invalid environment variable name"),
        (("set", "A-B", "v"), "invalid environment variable name"),
        (("set", "", "v"), "invalid environment variable name"),
        (("set", "X", None), "a string value is required"),
        (("prepend_path", "X", None), "a string value is required"),
        (("unset", "X", "v"), "takes no value"),
    ],
)
def test_modification_validation(args: tuple[str, str, str | None], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        EnvModification(*args)  # type: ignore[arg-type]


def test_empty_separator_refused() -> None:
    with pytest.raises(UsageError, match="separator"):
        EnvModification("prepend_path", "X", "a", "")


def test_to_json() -> None:
    assert env_to_json([EnvModification("unset", "X"), prepend("P", "/a")]) == [
        {"op": "unset", "name": "X"},
        {"op": "prepend_path", "name": "P", "value": "/a", "separator": ":"},
    ]


# --- parse_env_list / parse_env_assignment -----------------------------------------------------


def test_parse_env_list_keeps_order_and_splits_on_first_equals() -> None:
    assert list(parse_env_list(["B=1", "A=x=y", "C="]).items()) == [
        ("B", "1"),
        ("A", "x=y"),
        ("C", ""),
    ]


def test_parse_env_list_later_duplicate_wins_in_first_position() -> None:
    assert list(parse_env_list(["A=1", "B=2", "A=3"]).items()) == [("A", "3"), ("B", "2")]


@pytest.mark.parametrize("entry", ["NOEQUALS", "=value", ""])
def test_parse_env_list_rejects_entries_without_key(entry: str) -> None:
    with pytest.raises(UsageError, match=repr(entry)):
        parse_env_list(["A=1", entry])


def test_parse_env_list_names_where() -> None:
    with pytest.raises(UsageError, match="base image Env"):
        parse_env_list(["X"], where="base image Env")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("A=b", ("A", "b")),
        ("_x1=", ("_x1", "")),
        ("K=a=b c", ("K", "a=b c")),
    ],
)
def test_parse_env_assignment(text: str, expected: tuple[str, str]) -> None:
    assert parse_env_assignment(text) == expected


@pytest.mark.parametrize("text", ["novalue", "=x", "1A=x", "A B=x", "A-B=x", "Ä=x"])
def test_parse_env_assignment_rejects(text: str) -> None:
    with pytest.raises(UsageError, match="invalid environment assignment"):
        parse_env_assignment(text)


# --- apply_env ---------------------------------------------------------------------------------


def test_path_defaults_when_base_has_none() -> None:
    assert apply_env([], []) == [f"PATH={DEFAULT_PATH}"]
    assert apply_env(["LANG=C"], [prepend("PATH", "/opt/a/bin")]) == [
        f"PATH=/opt/a/bin:{DEFAULT_PATH}",
        "LANG=C",
    ]


def test_base_path_is_used_and_untouched_variables_kept_verbatim() -> None:
    base = ["PATH=/bin::/bin", "WEIRD=a::b"]
    assert apply_env(base, []) == base
    assert apply_env(base, [EnvModification("set", "X", "1")]) == [*base, "X=1"]


def test_prepend_puts_entries_first_and_dedupes() -> None:
    out = apply_env(["PATH=/usr/bin:/bin"], [prepend("PATH", "/bin"), prepend("PATH", "/opt/a/bin")])
    assert as_dict(out)["PATH"] == "/opt/a/bin:/bin:/usr/bin"


def test_append_adds_at_end_unless_present() -> None:
    out = apply_env(["PATH=/usr/bin:/bin"], [append("PATH", "/usr/bin"), append("PATH", "/opt/a/bin")])
    assert as_dict(out)["PATH"] == "/usr/bin:/bin:/opt/a/bin"


def test_multi_entry_values_keep_their_order() -> None:
    out = apply_env(["PATH=/bin"], [prepend("PATH", "/a/bin:/a/sbin"), append("PATH", "/z:/y")])
    assert as_dict(out)["PATH"] == "/a/bin:/a/sbin:/bin:/z:/y"


def test_touched_path_lists_drop_empty_entries_and_duplicates() -> None:
    out = apply_env(["P=:/a::/b:/a:"], [append("P", "::/c::")])
    assert as_dict(out)["P"] == "/a:/b:/c"


def test_no_duplicate_path_entries_across_packages() -> None:
    packages = [
        infer_env("/opt/zlib", lambda d: d in {"lib", "lib/pkgconfig"}),
        infer_env("/opt/hello", lambda d: d in {"bin", "share/man"}),
        infer_env("/opt/tool", lambda d: d in {"bin", "sbin", "share/man"}),
        # A package that re-adds what is already there.
        (prepend("PATH", "/opt/hello/bin:/usr/bin"), append("MANPATH", "/opt/hello/share/man")),
    ]
    mods = [m for p in packages for m in p]
    env = as_dict(apply_env([f"PATH={DEFAULT_PATH}"], mods))
    for value in env.values():
        entries = value.split(":")
        assert len(entries) == len(set(entries)), value
    assert env["PATH"] == (
        "/opt/hello/bin:/usr/bin:/opt/tool/bin:/opt/tool/sbin:"
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/sbin:/bin"
    )
    assert env["MANPATH"] == "/opt/tool/share/man:/opt/hello/share/man"
    assert env["CMAKE_PREFIX_PATH"] == "/opt/tool:/opt/hello:/opt/zlib"
    assert env["PKG_CONFIG_PATH"] == "/opt/zlib/lib/pkgconfig"


def test_set_replaces_and_unset_removes() -> None:
    out = apply_env(
        ["A=1", "B=2", "C=3"],
        [EnvModification("set", "B", "two"), EnvModification("unset", "A")],
    )
    # The default PATH comes first, as it does in images built by docker.
    assert out == [f"PATH={DEFAULT_PATH}", "B=two", "C=3"]


def test_set_value_is_verbatim() -> None:
    out = apply_env(["PATH=/bin"], [EnvModification("set", "PATH", "/a::/a:")])
    assert out == ["PATH=/a::/a:"]


def test_unset_missing_is_noop_and_unset_path_removes_default() -> None:
    assert apply_env(["A=1"], [EnvModification("unset", "NOPE")]) == [f"PATH={DEFAULT_PATH}", "A=1"]
    assert apply_env(["A=1"], [EnvModification("unset", "PATH")]) == ["A=1"]


def test_remove_path_removes_every_occurrence() -> None:
    mod = EnvModification("remove_path", "P", "/a:/c")
    out = apply_env(["P=/a:/b:/a:/c:/d"], [mod])
    assert as_dict(out)["P"] == "/b:/d"


def test_remove_path_leaves_empty_value_and_ignores_missing_variable() -> None:
    assert as_dict(apply_env(["P=/a"], [EnvModification("remove_path", "P", "/a")]))["P"] == ""
    assert "Q" not in as_dict(apply_env([], [EnvModification("remove_path", "Q", "/a")]))


def test_path_op_on_missing_variable_creates_it_unless_empty() -> None:
    out = as_dict(apply_env([], [prepend("NEW", "/x"), append("OTHER", "::")]))
    assert out["NEW"] == "/x"
    assert "OTHER" not in out


def test_custom_separator() -> None:
    out = apply_env(["L=a;b"], [prepend("L", "c;a", ";"), append("L", "d", ";")])
    assert as_dict(out)["L"] == "c;a;b;d"


def test_order_base_then_new_in_first_set_order_and_reset_returns_to_place() -> None:
    out = apply_env(
        ["PATH=/bin", "A=1", "B=2"],
        [
            EnvModification("set", "Z", "z"),
            EnvModification("unset", "A"),
            prepend("Y", "/y"),
            EnvModification("set", "A", "again"),
            EnvModification("set", "Z", "zz"),
        ],
    )
    assert out == ["PATH=/bin", "A=again", "B=2", "Z=zz", "Y=/y"]


def test_modifications_apply_in_order() -> None:
    mods = [
        EnvModification("set", "X", "/a"),
        prepend("X", "/b"),
        EnvModification("unset", "X"),
        append("X", "/c"),
    ]
    assert as_dict(apply_env([], mods))["X"] == "/c"


def test_apply_env_rejects_malformed_base() -> None:
    with pytest.raises(UsageError, match="'JUNK'"):
        apply_env(["JUNK"], [])


# --- env_from_json -----------------------------------------------------------------------------


def test_env_from_json_in_file_order() -> None:
    obj = {
        "prepend_path": {"PATH": "{prefix}/bin", "MANPATH": ["{prefix}/share/man", "{prefix}/man"]},
        "set": {"CC": "gcc"},
        "unset": ["FOO", "BAR"],
        "append_path": {"PYTHONPATH": {"value": ["{prefix}/lib", "/x"], "separator": ";"}},
        "remove_path": {"PATH": "/usr/games"},
    }
    assert env_from_json(obj, "pkg.json") == (
        EnvModification("prepend_path", "PATH", "{prefix}/bin"),
        EnvModification("prepend_path", "MANPATH", "{prefix}/share/man:{prefix}/man"),
        EnvModification("set", "CC", "gcc"),
        EnvModification("unset", "FOO"),
        EnvModification("unset", "BAR"),
        EnvModification("append_path", "PYTHONPATH", "{prefix}/lib;/x", ";"),
        EnvModification("remove_path", "PATH", "/usr/games"),
    )


def test_env_from_json_empty_means_no_modifications() -> None:
    assert env_from_json({}, "pkg.json") == ()


def test_list_entries_keep_their_order_when_prepended() -> None:
    mods = env_from_json({"prepend_path": {"MANPATH": ["/p/share/man", "/p/man"]}}, "x")
    assert as_dict(apply_env(["MANPATH=/usr/share/man"], mods))["MANPATH"] == (
        "/p/share/man:/p/man:/usr/share/man"
    )


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        ([], r"pkg\.json: env must be a table"),
        ({"sett": {}}, r"pkg\.json: env\.sett: unknown operation"),
        ({"set": ["A"]}, r"env\.set: must be a table"),
        ({"set": {"A": 1}}, r"env\.set\.A: must be a string, not a number"),
        ({"set": {"A": True}}, r"env\.set\.A: must be a string, not a boolean"),
        ({"set": {"1A": "x"}}, r"env\.set: invalid variable name '1A'"),
        ({"unset": "A"}, r"env\.unset: must be a list"),
        ({"unset": ["A", 3]}, r"env\.unset: invalid variable name 3"),
        ({"prepend_path": {"P": 5}}, r"env\.prepend_path\.P: must be a string or a non-empty list"),
        ({"prepend_path": {"P": []}}, r"env\.prepend_path\.P: must be a string or a non-empty list"),
        ({"prepend_path": {"P": ["/a", 1]}}, r"env\.prepend_path\.P: must be a string"),
        ({"append_path": {"P": ["/a:/b"]}}, r"env\.append_path\.P: list entry '/a:/b' contains"),
        ({"append_path": {"P": {"separator": ";"}}}, r"env\.append_path\.P: a table needs a 'value'"),
        ({"append_path": {"P": {"value": "/a", "sep": ";"}}}, r"env\.append_path\.P: unknown key"),
        (
            {"append_path": {"P": {"value": "/a", "separator": ""}}},
            r"env\.append_path\.P\.separator: must be a non-empty string",
        ),
    ],
)
def test_env_from_json_errors_name_file_and_key(obj: object, message: str) -> None:
    with pytest.raises(PackageError, match=message):
        env_from_json(obj, "pkg.json")


# --- infer_env ---------------------------------------------------------------------------------


def test_infer_env_full_layout() -> None:
    dirs = {
        "bin",
        "sbin",
        "man",
        "share/man",
        "lib",
        "lib64",
        "lib/pkgconfig",
        "lib64/pkgconfig",
        "share/pkgconfig",
        "share/aclocal",
    }
    seen: list[str] = []

    def has_dir(rel: str) -> bool:
        seen.append(rel)
        return rel in dirs

    p = "/opt/stack/x-1"
    assert infer_env(p, has_dir) == (
        prepend("PATH", f"{p}/bin:{p}/sbin"),
        prepend("MANPATH", f"{p}/man:{p}/share/man"),
        prepend("PKG_CONFIG_PATH", f"{p}/lib/pkgconfig:{p}/lib64/pkgconfig:{p}/share/pkgconfig"),
        prepend("ACLOCAL_PATH", f"{p}/share/aclocal"),
        prepend("CMAKE_PREFIX_PATH", p),
    )
    # Paths asked about are relative to the prefix.
    assert all(not rel.startswith("/") for rel in seen)
    assert "lib" not in seen


def test_infer_env_ld_library_path_only_when_asked() -> None:
    p = "/opt/z"
    mods = infer_env(p, lambda rel: rel in {"lib", "lib64"}, ld_library_path=True)
    assert mods == (prepend("CMAKE_PREFIX_PATH", p), prepend("LD_LIBRARY_PATH", f"{p}/lib:{p}/lib64"))
    assert infer_env(p, lambda rel: rel in {"lib", "lib64"}) == (prepend("CMAKE_PREFIX_PATH", p),)


def test_infer_env_empty_prefix_still_sets_cmake_prefix_path() -> None:
    assert infer_env("/opt/e", lambda rel: False) == (prepend("CMAKE_PREFIX_PATH", "/opt/e"),)


@pytest.mark.parametrize("prefix", ["relative/p", "/opt/a:b"])
def test_infer_env_rejects_bad_prefix(prefix: str) -> None:
    with pytest.raises(PackageError, match="cannot infer"):
        infer_env(prefix, lambda rel: True)
