"""Environment modifications: what packages do to an image's ``Env``, and how they merge.

A package sets, unsets or edits path-list variables (``PATH``, ``MANPATH``...). The merge starts
from the base image's ``Env``, applies every package's modifications in dependency order and then
the user's, and yields a new ``Env`` list. Path lists never carry an entry twice, so stacking many
packages does not grow ``PATH`` with duplicates (as Spack's images do).
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal, get_args

from imagesmith.errors import PackageError, UsageError

__all__ = [
    "DEFAULT_PATH",
    "ENV_OPS",
    "EnvModification",
    "EnvOp",
    "apply_env",
    "env_from_json",
    "env_to_json",
    "infer_env",
    "is_valid_name",
    "parse_env_assignment",
    "parse_env_list",
]

EnvOp = Literal["set", "unset", "prepend_path", "append_path", "remove_path"]
ENV_OPS: tuple[EnvOp, ...] = get_args(EnvOp)
_PATH_OPS = frozenset({"prepend_path", "append_path", "remove_path"})

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
PREFIX_PLACEHOLDER = "{prefix}"

# Spack's default prefix inspections, in the order entries appear in each variable.
_INSPECTIONS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("PATH", ("bin", "sbin")),
    ("MANPATH", ("man", "share/man")),
    ("PKG_CONFIG_PATH", ("lib/pkgconfig", "lib64/pkgconfig", "share/pkgconfig")),
    ("ACLOCAL_PATH", ("share/aclocal",)),
    ("CMAKE_PREFIX_PATH", ("",)),
)
_LIBRARY_DIRS = ("lib", "lib64")


def is_valid_name(name: str) -> bool:
    """Whether ``name`` is a portable environment variable name (``[A-Za-z_][A-Za-z0-9_]*``)."""
    return isinstance(name, str) and _NAME.fullmatch(name) is not None


@dataclass(frozen=True)
class EnvModification:
    """One change to an environment variable.

    ``set`` gives ``name`` the value ``value``; ``unset`` removes it (``value`` is None);
    ``prepend_path``, ``append_path`` and ``remove_path`` edit a list of entries separated by
    ``separator``, and ``value`` may hold several entries joined by that separator. Values may
    contain the token ``{prefix}``, replaced by :meth:`expand`.
    """

    op: EnvOp
    name: str
    value: str | None = None
    separator: str = ":"

    def __post_init__(self) -> None:
        if self.op not in ENV_OPS:
            raise UsageError(f"unknown environment operation {self.op!r}: use one of {', '.join(ENV_OPS)}")
        if not is_valid_name(self.name):
            raise UsageError(
                f"invalid environment variable name {self.name!r}: use letters, digits and _, "
                "not starting with a digit"
            )
        if self.op == "unset":
            if self.value is not None:
                raise UsageError(f"unset {self.name}: takes no value")
        elif not isinstance(self.value, str):
            raise UsageError(f"{self.op} {self.name}: a string value is required")
        if not isinstance(self.separator, str) or not self.separator:
            raise UsageError(f"{self.op} {self.name}: the separator must be a non-empty string")

    def expand(self, prefix: str) -> EnvModification:
        """Return a copy whose value has every literal ``{prefix}`` replaced by ``prefix``."""
        if self.value is None or PREFIX_PLACEHOLDER not in self.value:
            return self
        return replace(self, value=self.value.replace(PREFIX_PLACEHOLDER, prefix))

    def to_json(self) -> dict[str, str]:
        """The modification as plain data (for hashing and labels); ``value`` only when set."""
        out = {"op": self.op, "name": self.name}
        if self.value is not None:
            out["value"] = self.value
        if self.op in _PATH_OPS:
            out["separator"] = self.separator
        return out


def parse_env_list(env: Iterable[str], *, where: str = "environment") -> dict[str, str]:
    """Turn a ``KEY=VALUE`` list (an image config's ``Env``) into an ordered dict.

    The value is everything after the first ``=`` and may be empty. A later entry for the same
    key replaces the earlier value but keeps the earlier position, as a shell would end up. An
    entry without ``=`` or with an empty key raises :class:`UsageError` naming the entry and
    ``where`` it came from.
    """
    out: dict[str, str] = {}
    for entry in env:
        if not isinstance(entry, str):
            raise UsageError(f"{where}: entry {entry!r} is not a string of the form KEY=VALUE")
        key, sep, value = entry.partition("=")
        if not sep or not key:
            raise UsageError(f"{where}: entry {entry!r} is not of the form KEY=VALUE")
        out[key] = value
    return out


def parse_env_assignment(text: str) -> tuple[str, str]:
    """Parse one ``KEY=VALUE`` assignment given by the user (``--env``).

    ``KEY`` must match ``[A-Za-z_][A-Za-z0-9_]*``; the value is the rest after the first ``=``
    and may be empty or contain further ``=``. Anything else raises :class:`UsageError`.
    """
    key, sep, value = text.partition("=")
    if not sep:
        raise UsageError(f"invalid environment assignment {text!r}: expected KEY=VALUE")
    if not is_valid_name(key):
        raise UsageError(
            f"invalid environment assignment {text!r}: the name {key!r} must be letters, "
            "digits and _, not starting with a digit"
        )
    return key, value


def _entries(value: str, separator: str) -> list[str]:
    return [part for part in value.split(separator) if part]


def _dedupe(entries: Iterable[str]) -> list[str]:
    # dict keeps insertion order, so this keeps the first occurrence of each entry.
    return list(dict.fromkeys(entries))


def apply_env(base_env: Sequence[str], modifications: Iterable[EnvModification]) -> list[str]:
    """Apply ``modifications`` in order to a base ``Env`` list and return the new list.

    ``PATH`` is taken as :data:`DEFAULT_PATH` when the base has none (as the container runtime
    would), and is then placed first. ``set`` replaces a value, ``unset`` removes the variable.
    The path operations split the current value and the modification's value on the
    modification's separator, drop empty entries and keep the first occurrence of each entry:
    ``prepend_path`` puts its entries first (moving ones already present to the front),
    ``append_path`` adds entries at the end unless already present, ``remove_path`` removes every
    occurrence (leaving an empty value rather than removing the variable) and does nothing to a
    variable that is not set. Variables no modification touches keep their value verbatim. The
    result lists the base variables in their order, then new variables in the order they were
    first created; a variable unset and later set again returns to its first position.
    """
    current = parse_env_list(base_env, where="base image Env")
    state: dict[str, str | None] = {}
    if "PATH" not in current:
        state["PATH"] = DEFAULT_PATH
    state.update(current)
    for mod in modifications:
        old = state.get(mod.name)
        if mod.op == "set":
            state[mod.name] = mod.value
        elif mod.op == "unset":
            if mod.name in state:
                state[mod.name] = None
        else:
            assert mod.value is not None
            sep = mod.separator
            added = _entries(mod.value, sep)
            existing = _entries(old, sep) if old is not None else []
            if mod.op == "prepend_path":
                merged = _dedupe(added + existing)
            elif mod.op == "append_path":
                merged = _dedupe(existing + added)
            else:
                if old is None:
                    continue
                gone = set(added)
                merged = _dedupe(e for e in existing if e not in gone)
            if old is None and not merged:
                # Nothing to add to a variable that does not exist: do not create it empty.
                continue
            state[mod.name] = sep.join(merged)
    return [f"{name}={value}" for name, value in state.items() if value is not None]


def _fail(where: str, key: str, problem: str) -> PackageError:
    return PackageError(f"{where}: env.{key}: {problem}")


def _check_name(where: str, key: str, name: object) -> str:
    if not isinstance(name, str) or not is_valid_name(name):
        raise _fail(
            where,
            key,
            f"invalid variable name {name!r}: use letters, digits and _, not starting with a digit",
        )
    return name


def _path_value(where: str, key: str, raw: object, separator: str) -> str:
    if isinstance(raw, str):
        return raw
    if isinstance(raw, list) and raw and all(isinstance(item, str) for item in raw):
        for item in raw:
            if separator in item:
                raise _fail(
                    where,
                    key,
                    f"list entry {item!r} contains the separator {separator!r}; give one entry per list item",
                )
        return separator.join(raw)
    raise _fail(where, key, "must be a string or a non-empty list of strings")


def env_from_json(obj: Any, where: str) -> tuple[EnvModification, ...]:
    """Read the ``env`` section of a package file into modifications (``{prefix}`` unexpanded).

    ``obj`` maps operations to their arguments: ``set`` maps names to strings, ``unset`` lists
    names, and each path operation maps names to a string (entries may be joined by ``:``), a
    list of entries, or a table ``{"value": string-or-list, "separator": ";"}``. Modifications
    come out in the order the operations and names appear in the file, which JSON and TOML both
    preserve; a list of entries becomes one modification so its entries keep their order.
    Problems raise :class:`PackageError` naming ``where`` and the offending key.
    """
    if not isinstance(obj, Mapping):
        raise PackageError(f"{where}: env must be a table/object of operations, not {_kind(obj)}")
    out: list[EnvModification] = []
    for op, args in obj.items():
        if op not in ENV_OPS:
            raise _fail(where, str(op), f"unknown operation; use one of {', '.join(ENV_OPS)}")
        if op == "unset":
            if not isinstance(args, list):
                raise _fail(where, op, f"must be a list of variable names, not {_kind(args)}")
            for name in args:
                out.append(EnvModification("unset", _check_name(where, op, name)))
            continue
        if not isinstance(args, Mapping):
            raise _fail(where, op, f"must be a table/object of NAME = value, not {_kind(args)}")
        for name, raw in args.items():
            key = f"{op}.{name}"
            _check_name(where, op, name)
            if op == "set":
                if not isinstance(raw, str):
                    raise _fail(where, key, f"must be a string, not {_kind(raw)} (quote it)")
                out.append(EnvModification("set", name, raw))
                continue
            separator = ":"
            if isinstance(raw, Mapping):
                unknown = set(raw) - {"value", "separator"}
                if unknown:
                    raise _fail(where, key, f"unknown key(s) {', '.join(sorted(map(str, unknown)))}")
                if "value" not in raw:
                    raise _fail(where, key, "a table needs a 'value'")
                separator = raw.get("separator", ":")
                if not isinstance(separator, str) or not separator:
                    raise _fail(where, f"{key}.separator", "must be a non-empty string")
                raw = raw["value"]
            value = _path_value(where, key, raw, separator)
            out.append(EnvModification(op, name, value, separator))
    return tuple(out)


def env_to_json(modifications: Iterable[EnvModification]) -> list[dict[str, str]]:
    """Modifications as a JSON-ready list, in order (used for hashing and for labels)."""
    return [mod.to_json() for mod in modifications]


def infer_env(
    prefix: str, has_dir: Callable[[str], bool], *, ld_library_path: bool = False
) -> tuple[EnvModification, ...]:
    """Infer a package's modifications from its prefix layout, as Spack's prefix inspections do.

    ``has_dir`` answers whether a directory exists at a path relative to the prefix (``"bin"``,
    ``"share/man"``). ``bin`` and ``sbin`` go on ``PATH``; ``man`` and ``share/man`` on
    ``MANPATH``; ``lib/pkgconfig``, ``lib64/pkgconfig`` and ``share/pkgconfig`` on
    ``PKG_CONFIG_PATH``; ``share/aclocal`` on ``ACLOCAL_PATH``; the prefix itself always on
    ``CMAKE_PREFIX_PATH``; ``lib`` and ``lib64`` on ``LD_LIBRARY_PATH`` only when
    ``ld_library_path`` is true. Each variable gets one ``prepend_path`` with its absolute
    entries in that order.
    """
    if not prefix.startswith("/") or ":" in prefix:
        raise PackageError(
            f"cannot infer the environment of prefix {prefix!r}: it must be absolute and contain no ':'"
        )
    inspections = _INSPECTIONS
    if ld_library_path:
        inspections = (*inspections, ("LD_LIBRARY_PATH", _LIBRARY_DIRS))
    out: list[EnvModification] = []
    for variable, subdirs in inspections:
        found = [posixpath.join(prefix, sub) if sub else prefix for sub in subdirs if not sub or has_dir(sub)]
        if found:
            out.append(EnvModification("prepend_path", variable, ":".join(found)))
    return tuple(out)


def _kind(value: object) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, Mapping):
        return "a table"
    return f"a {type(value).__name__}"
