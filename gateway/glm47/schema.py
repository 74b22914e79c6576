"""Typing tool-call argument values by the tool's JSON schema.

GLM-4.7 writes every argument value as raw text between ``<arg_value>`` and ``</arg_value>``: a
string value as-is (no quotes, no escaping), any other value as JSON. Which one it is can only be
told from the schema of the parameter, so the parser asks this module:

- ``ToolSchemas.param_types(tool, key)`` gives the set of JSON types the parameter's schema allows
  (``None`` when nothing is known: unknown tool, unknown parameter, or an unconstrained schema);
- ``is_string_only(types)`` says whether the value is a string kept verbatim (type ``"string"``,
  ``["string", "null"]``, ``anyOf``/``oneOf`` of string and null, a string ``enum``...);
- ``encode_value(raw, types)`` turns any other value into its JSON text: stripped, decoded as JSON
  (``True``/``False``/``None`` accepted), kept as a string when it does not decode or when the
  schema does not allow the decoded type but allows string.

Nothing here raises on model text or on an odd schema.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from json.encoder import encode_basestring
from typing import Any

__all__ = [
    "ToolSchemas",
    "allowed_types",
    "encode_string",
    "encode_value",
    "is_string_only",
    "json_type_allowed",
]

JSON_TYPES = frozenset({"string", "number", "integer", "boolean", "null", "array", "object"})

_STRING_OR_NULL = frozenset({"string", "null"})
# JSON's literals, and Python's, which the model writes now and then.
_LITERALS: Mapping[str, Any] = {
    "true": True,
    "false": False,
    "null": None,
    "True": True,
    "False": False,
    "None": None,
}
_MAX_DEPTH = 32

# ``json.dumps(value, ensure_ascii=False)`` without building an encoder per call.
# ``allow_nan=False`` keeps the output valid JSON: a value that would need ``NaN``/``Infinity``
# stays a string instead.
_ENCODER = json.JSONEncoder(ensure_ascii=False, allow_nan=False)


def encode_string(text: str) -> str:
    """``json.dumps(text, ensure_ascii=False)``, quotes included (the C escaper, per character)."""
    return encode_basestring(text)


def _type_names(value: object) -> set[str] | None:
    if isinstance(value, str):
        return {value}
    if isinstance(value, Sequence) and all(isinstance(item, str) for item in value):
        return {str(item) for item in value}
    return None


def _json_type_of(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list | tuple):
        return "array"
    return "object"


def allowed_types(schema: object, _depth: int = 0) -> frozenset[str] | None:
    """The JSON types ``schema`` allows, or ``None`` when it does not constrain the type.

    Looks at ``type`` (a string or a list), ``anyOf``/``oneOf`` (the union of the branches, nested
    to any reasonable depth), ``allOf`` (the intersection), and, without any of those, at the values
    of ``enum``/``const``.
    """
    if not isinstance(schema, Mapping) or _depth > _MAX_DEPTH:
        return None
    types = _type_names(schema.get("type"))
    for combinator in ("anyOf", "oneOf"):
        branches = schema.get(combinator)
        if not isinstance(branches, Sequence) or isinstance(branches, str) or not branches:
            continue
        union: set[str] | None = set()
        for branch in branches:
            branch_types = allowed_types(branch, _depth + 1)
            if branch_types is None:
                union = None
                break
            assert union is not None
            union |= branch_types
        if union is not None:
            types = union if types is None else types & union
    all_of = schema.get("allOf")
    if isinstance(all_of, Sequence) and not isinstance(all_of, str):
        for branch in all_of:
            branch_types = allowed_types(branch, _depth + 1)
            if branch_types is not None:
                types = set(branch_types) if types is None else types & branch_types
    if types is None:
        if "const" in schema:
            types = {_json_type_of(schema["const"])}
        else:
            enum = schema.get("enum")
            if isinstance(enum, Sequence) and not isinstance(enum, str) and enum:
                types = {_json_type_of(item) for item in enum}
    return frozenset(types) if types is not None else None


def is_string_only(types: frozenset[str] | None) -> bool:
    """A string (or string-or-null) parameter: its value is streamed verbatim, never decoded."""
    return types is not None and "string" in types and types <= _STRING_OR_NULL


def json_type_allowed(value: object, types: frozenset[str] | None) -> bool:
    """Whether a decoded JSON value has a type the schema allows (``None`` allows everything)."""
    if types is None:
        return True
    kind = _json_type_of(value)
    if kind in types:
        return True
    if kind == "integer":
        return "number" in types
    if kind == "number":
        return "integer" in types and isinstance(value, float) and value.is_integer()
    return False


class _Undecodable(ValueError):
    pass


def _reject_constant(name: str) -> Any:
    raise _Undecodable(name)


# ``NaN``/``Infinity`` are not JSON: such a value stays a string. (One decoder for all calls:
# ``json.loads`` with keyword arguments would build a new one each time.)
_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


def _decode(text: str) -> tuple[bool, Any]:
    if text in _LITERALS:
        return True, _LITERALS[text]
    if text.isdigit() and text.isascii() and (text[0] != "0" or len(text) == 1):
        try:
            return True, int(text)  # (the common case, without the decoder's overhead)
        except ValueError:  # more digits than int() converts: json.loads refuses them too
            return False, None
    try:
        return True, _DECODER.decode(text)
    except (ValueError, RecursionError):
        return False, None


def _encode(value: Any) -> str:
    """``json.dumps(value, ensure_ascii=False)``, scalars without the encoder's overhead."""
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if type(value) is int:
        return int.__repr__(value)
    return _ENCODER.encode(value)


def encode_value(raw: str, types: frozenset[str] | None) -> str:
    """The JSON text of a non-verbatim argument value (see the module docstring)."""
    text = raw.strip()
    ok, value = _decode(text)
    if not ok or (not json_type_allowed(value, types) and types is not None and "string" in types):
        return encode_basestring(text)
    try:
        return _encode(value)
    except (ValueError, RecursionError):
        return encode_basestring(text)


class ToolSchemas:
    """Parameter types of the tools a request offers, looked up by tool name and argument key.

    Lazy: nothing is examined until the first lookup, and each parameter's schema only once.
    """

    __slots__ = ("_params", "_tools", "_types")

    def __init__(self, tools: Sequence[Mapping[str, Any]] | None) -> None:
        self._tools = tools
        self._params: dict[str, Mapping[Any, Any]] | None = None
        self._types: dict[tuple[str, str], frozenset[str] | None] = {}

    def _index(self) -> dict[str, Mapping[Any, Any]]:
        index: dict[str, Mapping[Any, Any]] = {}
        for tool in self._tools or ():
            if not isinstance(tool, Mapping):
                continue
            function = tool.get("function", tool)
            if not isinstance(function, Mapping):
                continue
            name = function.get("name")
            if not isinstance(name, str) or name in index:
                continue
            parameters = function.get("parameters")
            properties = parameters.get("properties") if isinstance(parameters, Mapping) else None
            index[name] = properties if isinstance(properties, Mapping) else {}
        return index

    def param_types(self, tool: str, key: str) -> frozenset[str] | None:
        """Types allowed for ``key`` of ``tool``; ``None`` for an unknown tool or parameter."""
        try:
            return self._types[tool, key]
        except KeyError:
            pass
        if self._params is None:
            self._params = self._index()
        properties = self._params.get(tool)
        types = None if properties is None else allowed_types(properties.get(key))
        self._types[tool, key] = types
        return types
