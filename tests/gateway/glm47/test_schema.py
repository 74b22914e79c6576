"""Typing of argument values by the tool's schema (FORMAT.md section 2, rule 6), revised."""

from __future__ import annotations

import json
from typing import Any

import pytest

from gateway.glm47.events import MessageAccumulator, ToolCallArguments
from gateway.glm47.parser import GLM47Parser
from gateway.glm47.refs import UNRESOLVED, follow_refs, resolve_ref
from gateway.glm47.schema import (
    ToolSchemas,
    allowed_types,
    encode_nullable,
    encode_value,
    enum_members,
)

STRING = frozenset({"string"})
INTEGER = frozenset({"integer"})

# What pydantic v2 writes for nested models, enums and optional fields.
PYDANTIC: dict[str, Any] = {
    "$defs": {
        "Color": {"enum": ["red", "green"], "title": "Color", "type": "string"},
        "Point": {
            "properties": {"x": {"type": "integer"}, "y": {"type": "integer"}},
            "required": ["x", "y"],
            "type": "object",
        },
        "Level": {"enum": [1, 2, 3], "type": "integer"},
    },
    "properties": {
        "color": {"$ref": "#/$defs/Color"},
        "where": {"anyOf": [{"$ref": "#/$defs/Point"}, {"type": "null"}], "default": None},
        "points": {"items": {"$ref": "#/$defs/Point"}, "type": "array"},
        "level": {"$ref": "#/$defs/Level", "description": "how much"},
        "label": {"anyOf": [{"type": "string"}, {"type": "null"}], "default": None},
        "tag": {"const": "v1"},
        "count": {"allOf": [{"$ref": "#/$defs/Level"}]},
    },
    "required": ["color", "points"],
    "title": "Paint",
    "type": "object",
}


def test_resolve_ref_local_pointers() -> None:
    root = {"$defs": {"a/b": {"type": "string"}, "t~n": {"type": "integer"}, "sp ace": {}}}
    root["definitions"] = {"L": [{"type": "null"}, {"type": "boolean"}]}
    assert resolve_ref("#/$defs/a~1b", root) == {"type": "string"}
    assert resolve_ref("#/$defs/t~0n", root) == {"type": "integer"}
    assert resolve_ref("#/$defs/sp%20ace", root) == {}
    assert resolve_ref("#/definitions/L/1", root) == {"type": "boolean"}
    assert resolve_ref("#", root) is root
    for missing in ("#/$defs/nope", "#/definitions/L/7", "#/definitions/L/x", "#anchor"):
        assert resolve_ref(missing, root) is UNRESOLVED
    assert resolve_ref("https://example.com/s.json#/a", root) is UNRESOLVED


def test_follow_refs_guards_cycles() -> None:
    root: dict[str, Any] = {"$defs": {"A": {"$ref": "#/$defs/B"}, "B": {"$ref": "#/$defs/A"}}}
    assert follow_refs({"$ref": "#/$defs/A"}, root) is UNRESOLVED
    assert follow_refs({"$ref": "#"}, {"$ref": "#"}) is UNRESOLVED
    assert follow_refs({"type": "object"}, root) == {"type": "object"}


@pytest.mark.parametrize(
    ("key", "types"),
    [
        ("color", {"string"}),
        ("where", {"object", "null"}),
        ("points", {"array"}),
        ("level", {"integer"}),
        ("label", {"string", "null"}),
        ("tag", {"string"}),
        ("count", {"integer"}),
    ],
)
def test_allowed_types_through_refs(key: str, types: set[str]) -> None:
    assert allowed_types(PYDANTIC["properties"][key], PYDANTIC) == frozenset(types)


def test_allowed_types_of_recursive_and_broken_refs() -> None:
    root: dict[str, Any] = {
        "$defs": {
            "Tree": {"anyOf": [{"type": "string"}, {"$ref": "#/$defs/Tree"}]},
            "Self": {"$ref": "#/$defs/Self"},
        }
    }
    assert allowed_types({"$ref": "#/$defs/Tree"}, root) == STRING
    assert allowed_types({"$ref": "#/$defs/Self"}, root) is None
    assert allowed_types({"$ref": "#/$defs/Missing"}, root) is None
    assert allowed_types({"$ref": "#/$defs/Tree", "type": "integer"}, root) == frozenset()


def test_enum_members() -> None:
    props = PYDANTIC["properties"]
    assert enum_members(props["color"], PYDANTIC) == ("red", "green")
    assert enum_members(props["level"], PYDANTIC) == (1, 2, 3)
    assert enum_members(props["tag"], PYDANTIC) == ("v1",)
    assert enum_members({"anyOf": [{"enum": ["a"]}, {"const": None}]}) == ("a", None)
    assert enum_members({"anyOf": [{"enum": ["a"]}, {"type": "integer"}]}) is None
    assert enum_members(props["points"], PYDANTIC) is None


@pytest.mark.parametrize(
    ("raw", "types", "members", "json_text"),
    [
        ('"3"', INTEGER, None, "3"),  # a quoted number for an integer: T30
        (' "3" ', frozenset({"number"}), None, "3"),
        ('"true"', frozenset({"boolean"}), None, "true"),
        ('"3"', frozenset({"integer", "string"}), None, '"3"'),  # a string is allowed: kept
        ('"abc"', INTEGER, None, '"abc"'),  # decodes once, not twice: the decoded string
        ('"[1, 2]"', frozenset({"array"}), None, "[1, 2]"),
        ('[\\"a\\", \\"b\\"]', frozenset({"array"}), None, '["a", "b"]'),  # escaped JSON: T29
        ('{\\"p\\": \\"C:\\\\\\\\x\\"}', frozenset({"object"}), None, '{"p": "C:\\\\x"}'),
        ('[\\"a\\"', frozenset({"array"}), None, '"[\\\\\\"a\\\\\\""'),  # still broken: text
        ("7", frozenset({"string", "integer"}), ("7", 8), '"7"'),  # FORMAT.md's example
        ("8", frozenset({"string", "integer"}), ("7", 8), "8"),
        ("true", frozenset({"string", "boolean"}), ("true", False), '"true"'),
        ("false", frozenset({"string", "boolean"}), ("true", False), "false"),
        ("1", frozenset({"boolean", "string"}), ("1", True), '"1"'),  # 1 is not True here
        ("2", frozenset({"integer", "string"}), ("1", 2.0), "2"),  # 2 == 2.0: a member
        ("3", frozenset({"integer"}), (1, 2), "3"),  # not a member, no string member: as typed
    ],
)
def test_encode_value(
    raw: str, types: frozenset[str], members: tuple[Any, ...] | None, json_text: str
) -> None:
    assert encode_value(raw, types, members) == json_text


@pytest.mark.parametrize(
    ("text", "json_text"),
    [
        ("null", "null"),
        ('"null"', '"null"'),
        ('"abc"', '"abc"'),
        ('"a\\"b\\u00e9"', '"a\\"bé"'),
        (" null", '" null"'),
        ("null\n", '"null\\n"'),
        ("nul", '"nul"'),
        ("None", '"None"'),
        ('"abc" ', '"\\"abc\\" "'),
        ('"ab', '"\\"ab"'),
        ('"a\\q"', '"\\"a\\\\q\\""'),
        ("", '""'),
    ],
)
def test_encode_nullable(text: str, json_text: str) -> None:
    assert encode_nullable(text) == json_text


def test_tool_schemas_resolve_the_root_and_required() -> None:
    schemas = ToolSchemas(
        [
            {"type": "function", "function": {"name": "paint", "parameters": PYDANTIC}},
            {
                "type": "function",
                "function": {
                    "name": "rooted",
                    "parameters": {
                        "$ref": "#/$defs/Args",
                        "$defs": {
                            "Args": {
                                "type": "object",
                                "properties": {"n": {"$ref": "#/$defs/N"}},
                                "required": ["n"],
                            },
                            "N": {"type": "integer"},
                        },
                    },
                },
            },
            {"type": "function", "function": {"name": "loop", "parameters": {"$ref": "#"}}},
        ]
    )
    assert schemas.param_types("rooted", "n") == INTEGER
    assert schemas.required("rooted") == {"n"}
    assert schemas.required("paint") == {"color", "points"}
    assert schemas.param("paint", "level").members == (1, 2, 3)
    assert schemas.param_types("loop", "x") is None
    assert schemas.offered("loop") and not schemas.offered("nope")
    assert schemas.required("nope") == frozenset()
    assert schemas.names() == ("rooted", "paint", "loop")


# -- the same rules end to end, through the parser -------------------------------------------------

PAINT = [{"type": "function", "function": {"name": "paint", "parameters": PYDANTIC}}]


def parse_args(args: str) -> dict[str, Any]:
    raw = f"x</think><tool_call>paint{args}</tool_call>"
    results = []
    for chunks in ([raw], list(raw)):
        parser = GLM47Parser(thinking=True, tools=PAINT)
        acc = MessageAccumulator()
        for chunk in chunks:
            for event in parser.feed(chunk):
                acc.add(event)
        for event in parser.finish():
            acc.add(event)
        message = acc.result()
        assert len(message.tool_calls) == 1
        results.append(json.loads(message.tool_calls[0].arguments))
    assert results[0] == results[1]
    return dict(results[0])


def arg(key: str, value: str) -> str:
    return f"<arg_key>{key}</arg_key><arg_value>{value}</arg_value>"


def test_pydantic_schema_end_to_end() -> None:
    args = (
        arg("color", "red")
        + arg("where", '{"x": 1, "y": "2"}')
        + arg("points", '[{\\"x\\": 1, \\"y\\": 2}]')
        + arg("level", '"2"')
        + arg("label", "null")
        + arg("tag", "v1")
        + arg("count", "3")
    )
    assert parse_args(args) == {
        "color": "red",
        "where": {"x": 1, "y": "2"},
        "points": [{"x": 1, "y": 2}],
        "level": 2,
        "label": None,
        "tag": "v1",
        "count": 3,
    }


@pytest.mark.parametrize(
    ("text", "value"),
    [("null", None), ('"null"', "null"), ('"x"', "x"), ("nullable", "nullable"), ("", "")],
)
def test_nullable_string_values(text: str, value: str | None) -> None:
    assert parse_args(arg("label", text)) == {"label": value}


def test_nullable_string_streams_once_it_cannot_be_null_or_a_literal() -> None:
    parser = GLM47Parser(thinking=True, tools=PAINT)
    parser.feed("x</think><tool_call>paint<arg_key>label</arg_key><arg_value>")
    assert parser.feed("nu") == []  # may still be null
    assert parser.feed("mber") == [ToolCallArguments(0, '"number')]
    assert parser.feed(" 1") == [ToolCallArguments(0, " 1")]
    parser = GLM47Parser(thinking=True, tools=PAINT)
    parser.feed("x</think><tool_call>paint<arg_key>label</arg_key><arg_value>")
    assert parser.feed('"a\\') == []  # a literal, cut inside an escape
    assert parser.feed('u00e9"') == []  # complete: may still be exactly this literal
    assert parser.feed(" and more") == [ToolCallArguments(0, '"\\"a\\\\u00e9\\" and more')]
