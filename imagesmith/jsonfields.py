"""``JsonFields``: a result's ``to_json`` written once, from its dataclass fields.

A frozen dataclass that inherits ``JsonFields`` prints as its fields, in their order: each key
is the field's name (``media_type`` and ``artifact_type`` in the OCI spelling, ``mediaType``
and ``artifactType``; a class renames others in ``json_names``), each value as JSON has it: paths,
references and digests as their text, tuples as lists, nested results by their own
``to_json``. A result whose JSON is shaped otherwise writes its own ``to_json``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, ClassVar

__all__ = ["JsonFields", "json_value"]

_SPEC_NAMES = {"media_type": "mediaType", "artifact_type": "artifactType"}


def json_value(value: Any) -> Any:
    """``value`` as JSON data: scalars as they are, sequences as lists, mappings as objects,
    anything with a ``to_json`` by it, anything else (paths, references) by its text."""
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, str):
        return str(value)
    if isinstance(value, (tuple, list)):
        return [json_value(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): json_value(v) for k, v in value.items()}
    to_json = getattr(value, "to_json", None)
    if callable(to_json):
        return to_json()
    return str(value)


class JsonFields:
    """A dataclass whose ``to_json`` is its fields (see the module's docstring)."""

    __slots__ = ()
    json_names: ClassVar[Mapping[str, str]] = {}

    def to_json(self) -> dict[str, Any]:
        assert dataclasses.is_dataclass(self)
        names = {**_SPEC_NAMES, **self.json_names}
        return {
            names.get(f.name, f.name): json_value(getattr(self, f.name)) for f in dataclasses.fields(self)
        }
