"""A repair's grammar: whatever it lets the model write after the failure's point gives calls
that pass every check and validate against their schemas."""

from __future__ import annotations

import json
import random

import jsonschema
import pytest

from gateway.glm47.repair_grammar import call_rest_grammar
from gateway.pipeline.tool_check import CallFailure
from tests.gateway.glm47.gbnf_sampler import GBNFSampler
from tests.gateway.glm47.parsing import checked_parse

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "write_file",
            "parameters": {
                "type": "object",
                "properties": {
                    "path": {"type": "string"},
                    "content": {"type": "string"},
                    "lines": {"type": "integer"},
                    "mode": {"type": "string", "enum": ["create", "append"]},
                    "tags": {"type": "array", "items": {"type": "string"}},
                },
                "required": ["path", "content", "lines"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                "required": ["city"],
            },
        },
    },
]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
PATH = ("path", "a.txt")
FAILURES = {
    "unknown_tool": CallFailure("unknown_tool", 0, None),
    "missing_argument": CallFailure("missing_argument", 0, "write_file", (PATH,)),
    "wrong_type": CallFailure("wrong_type", 0, "write_file", (PATH,), open_key="lines"),
    "not_in_enum": CallFailure("not_in_enum", 0, "write_file", (PATH,), open_key="mode"),
    "unclosed_call": CallFailure("unclosed_call", 0, "write_file", (PATH,), "content", True, "hel"),
}


def _parse(text: str, chunk: int) -> tuple[list[tuple[str, str]], CallFailure | None]:
    message, failure = checked_parse(TOOLS, text, chunk, incremental=True)
    return [(c.name, c.arguments) for c in message.tool_calls], failure


@pytest.mark.parametrize("problem", sorted(FAILURES))
def test_what_the_repair_grammar_allows_passes(problem: str) -> None:
    failure = FAILURES[problem]
    grammar = call_rest_grammar(
        TOOLS,
        name=failure.name,
        given=failure.given,
        open_key=failure.open_key,
        open_string=failure.open_string,
    )
    sampler = GBNFSampler(grammar)
    rng = random.Random(problem)
    for _ in range(150):
        text = failure.markup() + sampler.sample(rng)
        calls, found = _parse(text, 1 + rng.randrange(9))
        assert found is None, (text, found)
        assert calls, text
        for name, arguments in calls:
            jsonschema.validate(json.loads(arguments), SCHEMAS[name])


def test_the_grammar_needs_tools_and_a_known_name() -> None:
    with pytest.raises(ValueError):
        call_rest_grammar([], name=None)
