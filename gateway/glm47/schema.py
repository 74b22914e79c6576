"""Typing tool-call argument values by the tool's JSON schema (FORMAT.md section 2, rule 6).

GLM-4.7 writes every argument value as raw text between ``<arg_value>`` and ``</arg_value>``: a
string value as-is (no quotes, no escaping), any other value as JSON. Which one it is can only be
told from the schema of the parameter, so the parser asks this module:

- ``ToolSchemas.param(tool, key)`` gives the parameter's ``Param``: the set of JSON types its
  schema allows (``None`` when nothing is known: unknown tool, unknown parameter, or an
  unconstrained schema) and, for an ``enum``/``const`` schema, its members. Local ``$ref``s are
  resolved (``refs.py``), also at the root of the parameters;
- ``is_string_only(types)``: the value is a string kept verbatim (type ``"string"``,
  ``["string", "null"]``, ``anyOf``/``oneOf`` of string and null, a string ``enum``...);
  ``"null" in types`` makes it nullable: the exact text ``null`` is JSON null and an exact JSON
  string literal is that string (``encode_nullable``);
- ``encode_value(raw, types, members)`` turns any other value into its JSON text.

Nothing here raises on model text or on an odd schema.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from json.encoder import encode_basestring
from typing import Any, NamedTuple

from .refs import UNRESOLVED, object_schema, resolve_ref

__all__ = [
    "Param",
    "ToolSchemas",
    "allowed_types",
    "encode_nullable",
    "encode_string",
    "encode_value",
    "enum_members",
    "is_member",
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

# One exact JSON string literal, nothing around it (the nullable-string rule).
JSON_STRING_LITERAL = re.compile(r'"(?:[^"\\\x00-\x1f]|\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4}))*"')
_SURROGATE = re.compile("[\ud800-\udfff]")
# The model sometimes escapes a whole JSON value as if it were inside a string.
_ESCAPED = re.compile(r'\\([\\"])')


class Param(NamedTuple):
    """What the parser needs to know about one parameter."""

    types: frozenset[str] | None
    members: tuple[Any, ...] | None = None  # enum/const values, when the schema lists them


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


def _branches(schema: Mapping[Any, Any], key: str) -> Sequence[Any]:
    branches = schema.get(key)
    if isinstance(branches, Sequence) and not isinstance(branches, str):
        return branches
    return ()


class _Cycle:
    """A ``$ref`` back into a schema being examined: it adds no type of its own."""


_CYCLE = _Cycle()
_TYPING_KEYS = ("type", "anyOf", "oneOf", "allOf", "enum", "const")
_Types = frozenset[str] | None | _Cycle


def _types(schema: object, root: object, seen: frozenset[str], depth: int) -> _Types:
    if not isinstance(schema, Mapping) or depth > _MAX_DEPTH:
        return None
    names = _type_names(schema.get("type"))
    types = frozenset(names) if names is not None else None
    ref = schema.get("$ref")
    if isinstance(ref, str):  # (siblings of a $ref constrain it further: an implicit allOf)
        if ref in seen:
            target_types: _Types = _CYCLE
        else:
            target = resolve_ref(ref, root)
            target_types = (
                None if target is UNRESOLVED else _types(target, root, seen | {ref}, depth + 1)
            )
        if isinstance(target_types, frozenset):
            types = target_types if types is None else types & target_types
        elif target_types is _CYCLE and not any(key in schema for key in _TYPING_KEYS):
            return _CYCLE
    for combinator in ("anyOf", "oneOf"):
        branches = _branches(schema, combinator)
        if not branches:
            continue
        union: set[str] | None = set()
        cycles = 0
        for branch in branches:
            branch_types = _types(branch, root, seen, depth + 1)
            if branch_types is None:
                union = None
                break
            if isinstance(branch_types, frozenset):
                assert union is not None
                union |= branch_types
            else:
                cycles += 1  # the least fixpoint: a branch that is the union itself adds nothing
        if union is not None and cycles < len(branches):
            types = frozenset(union) if types is None else types & union
    for branch in _branches(schema, "allOf"):
        branch_types = _types(branch, root, seen, depth + 1)
        if isinstance(branch_types, frozenset):
            types = branch_types if types is None else types & branch_types
    if types is None:
        members = _members(schema, root, seen, depth)
        if members is not None:
            types = frozenset(_json_type_of(item) for item in members)
    return types


def allowed_types(schema: object, root: object = None) -> frozenset[str] | None:
    """The JSON types ``schema`` allows, or ``None`` when it does not constrain the type.

    Looks at ``type`` (a string or a list), ``$ref`` (resolved in ``root``, by default
    ``schema`` itself), ``anyOf``/``oneOf`` (the union of the branches), ``allOf`` (the
    intersection), and, without any of those, at the members of ``enum``/``const``.
    """
    types = _types(schema, schema if root is None else root, frozenset(), 0)
    return types if isinstance(types, frozenset) else None


def _members(
    schema: Mapping[Any, Any], root: object, seen: frozenset[str], depth: int
) -> tuple[Any, ...] | None:
    if "const" in schema:
        return (schema["const"],)
    enum = schema.get("enum")
    if isinstance(enum, Sequence) and not isinstance(enum, str) and enum:
        return tuple(enum)
    if schema.get("type") == "null":
        return (None,)  # (how pydantic writes the None of an Optional[SomeEnum])
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref not in seen and depth <= _MAX_DEPTH:
        target = resolve_ref(ref, root)
        if isinstance(target, Mapping):
            return _members(target, root, seen | {ref}, depth + 1)
    for combinator in ("anyOf", "oneOf"):
        branches = _branches(schema, combinator)
        if not branches:
            continue
        union: list[Any] = []
        for branch in branches:
            if not isinstance(branch, Mapping) or depth >= _MAX_DEPTH:
                return None
            found = _members(branch, root, seen, depth + 1)
            if found is None:
                return None  # one branch allows more than a list of values
            union += found
        return tuple(union)
    return None


def enum_members(schema: object, root: object = None) -> tuple[Any, ...] | None:
    """The values an ``enum``/``const`` schema lists (through ``$ref`` and unions), or ``None``."""
    if not isinstance(schema, Mapping):
        return None
    return _members(schema, schema if root is None else root, frozenset(), 0)


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


def _is_member(value: object, members: Sequence[Any]) -> bool:
    kind = _json_type_of(value)
    numeric = kind in ("integer", "number")
    for member in members:
        other = _json_type_of(member)
        same_kind = other == kind or (numeric and other in ("integer", "number"))
        if same_kind and member == value:
            return True
    return False


def is_member(value: object, members: Sequence[Any]) -> bool:
    """Whether a decoded JSON value is one of ``members`` (``1`` is ``1.0``, not ``True``)."""
    return _is_member(value, members)


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
    return _utf8_safe(_ENCODER.encode(value))


def _utf8_safe(text: str) -> str:
    """A lone surrogate (a JSON ``\\ud83d`` without its pair) stays escaped: UTF-8 has none."""
    if _SURROGATE.search(text) is None:
        return text
    return _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def encode_value(
    raw: str, types: frozenset[str] | None, members: Sequence[Any] | None = None
) -> str:
    """The JSON text of a value that is not string-only (FORMAT.md section 2, rule 6).

    Stripped and decoded as JSON; failing that, a value holding ``\\"`` is unescaped once and
    decoded again (the model escaped it as if inside a string); a string where the schema allows
    no string is decoded once more (``"3"`` for an integer). With ``members``, a non-member
    whose text is a string member becomes that member. What still does not decode, or decodes to
    a type the schema does not allow while it allows string, stays the stripped text.
    """
    text = raw.strip()
    ok, value = _decode(text)
    if not ok and '\\"' in text:
        ok, value = _decode(_ESCAPED.sub(r"\1", text))
    if ok and types is not None and "string" not in types and isinstance(value, str):
        again, inner = _decode(value)
        if again:
            value = inner
    if members is not None and text in members and not (ok and _is_member(value, members)):
        return encode_basestring(text)  # (a str equals only a str: the member is that string)
    if not ok or (not json_type_allowed(value, types) and types is not None and "string" in types):
        return encode_basestring(text)
    try:
        return _encode(value)
    except (ValueError, RecursionError):
        return encode_basestring(text)


def encode_nullable(text: str) -> str:
    """The JSON text of a nullable string's verbatim ``text``: ``null``, a literal, or the text."""
    if text == "null":
        return "null"
    if JSON_STRING_LITERAL.fullmatch(text):
        return _utf8_safe(encode_basestring(json.loads(text)))
    return encode_basestring(text)


class _Tool(NamedTuple):
    root: object  # the parameters schema: what a $ref inside it is resolved against
    properties: Mapping[Any, Any]
    required: frozenset[str]


class ToolSchemas:
    """Parameter types of the tools a request offers, looked up by tool name and argument key.

    Lazy: nothing is examined until the first lookup, and each parameter's schema only once.
    """

    __slots__ = ("_names", "_params", "_tools", "_types")

    def __init__(self, tools: Sequence[Mapping[str, Any]] | None) -> None:
        self._tools = tools
        self._params: dict[str, _Tool] | None = None
        self._names: tuple[str, ...] | None = None
        self._types: dict[tuple[str, str], Param] = {}

    def _index(self) -> dict[str, _Tool]:
        if self._params is not None:
            return self._params
        index: dict[str, _Tool] = {}
        for tool in self._tools or ():
            if not isinstance(tool, Mapping):
                continue
            function = tool.get("function", tool)
            if not isinstance(function, Mapping):
                continue
            name = function.get("name")
            if not isinstance(name, str) or name in index:
                continue
            root = function.get("parameters")
            parameters = object_schema(root)
            properties: object = None
            required: object = None
            if isinstance(parameters, Mapping):
                properties = parameters.get("properties")
                required = parameters.get("required")
            index[name] = _Tool(
                root,
                properties if isinstance(properties, Mapping) else {},
                frozenset(_type_names(required) or ()),
            )
        self._params = index
        return index

    def param(self, tool: str, key: str) -> Param:
        """The parameter ``key`` of ``tool``; ``Param(None)`` for an unknown tool or parameter."""
        try:
            return self._types[tool, key]
        except KeyError:
            pass
        entry = self._index().get(tool)
        if entry is None or key not in entry.properties:
            param = Param(None)
        else:
            schema = entry.properties[key]
            param = Param(allowed_types(schema, entry.root), enum_members(schema, entry.root))
        self._types[tool, key] = param
        return param

    def param_types(self, tool: str, key: str) -> frozenset[str] | None:
        """Types allowed for ``key`` of ``tool``; ``None`` for an unknown tool or parameter."""
        return self.param(tool, key).types

    def offered(self, tool: str) -> bool:
        return tool in self._index()

    def required(self, tool: str) -> frozenset[str]:
        entry = self._index().get(tool)
        return entry.required if entry is not None else frozenset()

    def names(self) -> tuple[str, ...]:
        """The offered tool names, longest first (for splitting a name from a key)."""
        if self._names is None:
            self._names = tuple(sorted(self._index(), key=len, reverse=True))
        return self._names
