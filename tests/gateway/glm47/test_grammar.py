"""The grammar and the parser agree: every output a constrained model may write parses back to
what the grammar allowed (FORMAT.md section 2, rule 6), ``$ref``s included.

Outputs are sampled from the grammars themselves (``gbnf_sampler.py``), parsed, and checked
against the tool's schema with ``jsonschema``; values whose text has only one typing are checked
exactly. (``test_grammar_engine.py`` runs the same grammars on llama.cpp.)
"""

from __future__ import annotations

import functools
import json
import random
import re
from collections.abc import Mapping
from typing import Any

import jsonschema
import pytest

from gateway.glm47.events import MessageAccumulator, ParsedMessage
from gateway.glm47.grammar import TOOL_TAGS, json_grammar, tool_call_grammar
from gateway.glm47.parser import GLM47Parser
from gateway.glm47.refs import object_schema
from gateway.glm47.schema import allowed_types, is_string_only
from tests.gateway.glm47.gbnf_sampler import GBNFSampler

SAMPLES = 250

PAINT: dict[str, Any] = {  # the shapes pydantic v2 writes
    "$defs": {
        "Color": {"enum": ["red", "null", "true", '"q"', " pad "], "type": "string"},
        "Point": {
            "type": "object",
            "properties": {"x": {"type": "integer"}, "y": {"type": "number"}},
            "required": ["x"],
        },
        "Node": {
            "type": "object",
            "properties": {
                "name": {"type": "string"},
                "kids": {"type": "array", "items": {"$ref": "#/$defs/Node"}},
            },
            "required": ["name"],
        },
        "Level": {"enum": [1, 2, "3"]},
    },
    "type": "object",
    "properties": {
        "color": {"$ref": "#/$defs/Color"},
        "where": {"anyOf": [{"$ref": "#/$defs/Point"}, {"type": "null"}]},
        "tree": {"$ref": "#/$defs/Node"},
        "level": {"$ref": "#/$defs/Level"},
        "note": {"anyOf": [{"type": "string"}, {"type": "null"}]},
        "shade": {"anyOf": [{"$ref": "#/$defs/Color"}, {"type": "null"}]},  # Optional[Color]
        "tag": {"const": "v1"},
        "n": {"type": ["integer", "string"]},
        "any": {},
        "flags": {"type": "array", "items": {"type": "boolean"}},
    },
    "required": ["color", "tree"],
}
TOOLS: list[dict[str, Any]] = [
    {"type": "function", "function": {"name": "paint", "parameters": PAINT}},
    {
        "type": "function",
        "function": {
            "name": "rooted",
            "parameters": {
                "$ref": "#/definitions/Args",
                "definitions": {
                    "Args": {
                        "type": "object",
                        "properties": {
                            "path": {"type": "string"},
                            "mode": {"$ref": "#/definitions/Mode"},
                            "opts": {"$ref": "#/definitions/Opts"},
                        },
                        "required": ["path", "mode"],
                    },
                    "Mode": {"enum": ["r", "w"]},
                    "Opts": {
                        "type": "object",
                        "properties": {"a~b": {"type": "string"}, "k/v": {"type": "integer"}},
                    },
                },
            },
        },
    },
    {"type": "function", "function": {"name": "noop", "parameters": {"type": "object"}}},
]
CALL = re.compile(
    r"<tool_call>(.*?)((?:<arg_key>.*?</arg_key><arg_value>.*?</arg_value>)*)</tool_call>", re.S
)
ARG = re.compile(r"<arg_key>(.*?)</arg_key><arg_value>(.*?)</arg_value>", re.S)


def parse(text: str, chunk: int) -> ParsedMessage:
    parser = GLM47Parser(thinking=True, tools=TOOLS)
    acc = MessageAccumulator()
    for i in range(0, len(text), chunk):
        for event in parser.feed(text[i : i + chunk]):
            acc.add(event)
    for event in parser.finish():
        acc.add(event)
    return acc.result()


def parameters(name: str) -> Mapping[str, Any]:
    return next(t["function"]["parameters"] for t in TOOLS if t["function"]["name"] == name)


@functools.cache
def _validator(schema_json: str, defs_json: str) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator({**json.loads(schema_json), **json.loads(defs_json)})


def validator(schema_json: str, root: Mapping[str, Any]) -> jsonschema.Draft202012Validator:
    """A cached validator of a schema, with the ``$defs``/``definitions`` of its document."""
    defs = {k: v for k, v in root.items() if k in ("$defs", "definitions")}
    return _validator(schema_json, json.dumps(defs))


def _reject(name: str) -> Any:
    raise ValueError(name)


def expected_value(schema: Any, root: Any, text: str) -> tuple[bool, Any]:
    """(known, value): what a value's text must parse to, where only one typing is possible."""
    types = allowed_types(schema, root)
    if is_string_only(types):
        assert types is not None
        if "null" in types and text == "null":
            return True, None
        if "null" in types and text.startswith('"') and text == text.strip():
            try:
                literal = json.loads(text)
            except ValueError:
                return True, text
            return True, literal if isinstance(literal, str) else text
        return True, text
    try:
        value = json.loads(text, parse_constant=_reject)
        validator(json.dumps(schema), root).validate(value)
    except (ValueError, jsonschema.ValidationError):
        return False, None  # raw text, or JSON the schema refuses: the parser keeps a string
    return True, value


@pytest.mark.parametrize("thinking", [True, False])
@pytest.mark.parametrize("tool", TOOLS, ids=lambda t: t["function"]["name"])
def test_constrained_calls_parse_back_to_what_the_grammar_allowed(
    tool: dict[str, Any], thinking: bool
) -> None:
    sampler = GBNFSampler(tool_call_grammar([tool], thinking=thinking))
    rng = random.Random(f"{tool['function']['name']}-{thinking}")
    for _ in range(SAMPLES):
        text = sampler.sample(rng)
        output = text if thinking else "</think>" + text  # (the parser's view: thinking on)
        message = parse(output, 1 + rng.randrange(7))
        assert message == parse(output, len(output) or 1)
        body = output.split("</think>", 1)[1]
        written = CALL.findall(body)
        assert len(message.tool_calls) == len(written) >= 1, text
        for call, (name, args_text) in zip(message.tool_calls, written, strict=True):
            assert call.name == name
            args = json.loads(call.arguments)
            root = parameters(name)
            validator(json.dumps(root), {}).validate(args)
            schema = object_schema(root)
            assert isinstance(schema, Mapping)
            props = schema.get("properties", {})
            for key, value_text in ARG.findall(args_text):
                known, value = expected_value(props[key], root, value_text)
                if known:
                    assert args[key] == value, (key, value_text)


def test_json_values_in_arguments_never_hold_a_tool_tag() -> None:
    # A JSON string that held "</arg_value> <arg_key>" would be cut there by the parser.
    grammar = tool_call_grammar(TOOLS[:1], thinking=False)
    sampler = GBNFSampler(grammar)
    rng = random.Random(7)
    seen_lt = 0
    for _ in range(SAMPLES):
        text = sampler.sample(rng, budget=60)
        for _, args_text in CALL.findall(text):
            for _, value_text in ARG.findall(args_text):
                seen_lt += "<" in value_text
                assert not any(tag in value_text for tag in TOOL_TAGS)
    assert seen_lt > 0  # the tries were walked
    assert '"\\"" json-chars "\\""' in grammar


def test_string_enum_members_are_written_verbatim() -> None:
    grammar = tool_call_grammar(TOOLS[:1], thinking=False)
    # Raw "null" and '"q"' would be typed again in a nullable string: written as JSON there.
    rules = dict(line.split(" ::= ", 1) for line in grammar.splitlines() if line)
    enums = {body for name, body in rules.items() if name.startswith("arg-enum")}
    assert '"red" | "null" | "true" | "\\"q\\"" | " pad "' in enums
    assert '"red" | "\\"null\\"" | "true" | "\\"\\\\\\"q\\\\\\"\\"" | " pad " | "null"' in enums


def test_recursive_refs_become_recursive_rules() -> None:
    grammar = json_grammar(PAINT["$defs"]["Node"] | {"$defs": PAINT["$defs"]}, thinking=False)
    rules = dict(line.split(" ::= ", 1) for line in grammar.splitlines() if line)
    assert "ref-node" in rules
    assert any("ref-node" in body for name, body in rules.items() if name != "ref-node")
    loop = {"$defs": {"A": {"$ref": "#/$defs/B"}, "B": {"$ref": "#/$defs/A"}}, "$ref": "#/$defs/A"}
    rules = dict(line.split(" ::= ", 1) for line in json_grammar(loop, thinking=False).splitlines())
    assert rules["root"] in rules and rules[rules["root"]] in ("json-value", "ref-b", "ref-a")
