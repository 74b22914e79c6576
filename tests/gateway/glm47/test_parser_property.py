"""Property tests for the GLM-4.7 output parser (reproducible: derandomized hypothesis).

1. Chaos: any output built from text, partial tags and tags, cut into any chunks: the parser never
   raises, streaming gives the same message as the whole text, no event carries tool markup, every
   finished call's arguments are a JSON object.
2. Round trip: well-formed outputs rendered from a known message parse back to exactly that message.
"""

from __future__ import annotations

import json
import math
from itertools import pairwise
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.glm47.events import (
    ContentDelta,
    ParsedMessage,
    ParseEvent,
    ReasoningDelta,
    ToolCallArguments,
    ToolCallEnd,
    ToolCallResult,
    ToolCallStart,
)
from gateway.glm47.schema import JSON_STRING_LITERAL
from tests.gateway.glm47.parsing import ALL_TAGS, TOOL_TAGS, run

PROPERTY_SETTINGS = settings(derandomize=True, max_examples=300, deadline=None)

PARTIAL_TAGS = tuple(sorted({tag[:n] for tag in ALL_TAGS for n in range(1, len(tag))}))

TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            },
        },
    },
    {"type": "function", "function": {"name": "list_files", "parameters": {"type": "object"}}},
    {
        "type": "function",
        "function": {
            "name": "search",
            "parameters": {
                "type": "object",
                "properties": {
                    "q": {"type": "string"},
                    "opts": {"type": "object"},
                    "flag": {"type": "boolean"},
                    "ids": {"type": ["integer", "string"]},
                    "maybe": {"anyOf": [{"type": "string"}, {"type": "null"}]},
                    "score": {"type": "number"},
                },
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "write_file",
            "parameters": {
                "type": "object",
                "properties": {"path": {"type": "string"}, "content": {"type": "string"}},
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "plan",
            "parameters": {
                "$defs": {"Step": {"type": "object"}, "Label": {"enum": ["a", 1]}},
                "type": "object",
                "properties": {
                    "steps": {"type": "array", "items": {"$ref": "#/$defs/Step"}},
                    "label": {"$ref": "#/$defs/Label"},
                },
                "required": ["steps"],
            },
        },
    },
]

CHARS = st.one_of(
    st.sampled_from(list("<</>>  \n\t_abkt\u3000\u00a0")),
    st.characters(codec="utf-8"),
)
TEXT = st.text(CHARS, max_size=8)
FRAGMENT = st.one_of(
    TEXT,
    st.sampled_from(ALL_TAGS),
    st.sampled_from(ALL_TAGS),
    st.sampled_from(PARTIAL_TAGS),
    st.sampled_from(["get_weather", "search", "write_file", "list_files", "plan", "nope", " \n"]),
    st.sampled_from(["city", "days", "q", "opts", "flag", "ids", "maybe", "content", "x"]),
    st.sampled_from(["steps", "label", " city\n"]),
    st.sampled_from(["3", " true ", "True", "None", '{"a": [1, 2]}', "[1,", "NaN", "1e999", "<"]),
    st.sampled_from(["null", '"null"', '"3"', '[\\"a\\"]', '"a\\', "\n", "\n\n", "1"]),
)

MUTATIONS = st.sampled_from(["keep"] * 8 + ["drop", "drop", "partial", "noise", "double"])


@st.composite
def noisy_call(draw: st.DrawFn) -> str:
    """A tool call in GLM-4.7 syntax, with some of its parts dropped, cut, doubled or replaced."""
    name = draw(
        st.sampled_from(["get_weather", "search", "write_file", "list_files", "plan", "nope"])
    )
    parts = ["<tool_call>", draw(st.sampled_from(["", " ", "\n"])) + name]
    for _ in range(draw(st.integers(0, 3))):
        key = draw(
            st.sampled_from(["city", "days", "q", "opts", "flag", "ids", "maybe", "steps", "x"])
        )
        value = draw(st.one_of(FRAGMENT, TEXT))
        parts += ["<arg_key>", key, "</arg_key>", "<arg_value>", value, "</arg_value>"]
    parts.append("</tool_call>")
    out = []
    for part in parts:
        match draw(MUTATIONS):
            case "keep":
                out.append(part)
            case "partial":
                out.append(part[: draw(st.integers(0, max(len(part) - 1, 0)))])
            case "noise":
                out.append(draw(FRAGMENT))
            case "double":
                out += [part, part]
    return "".join(out)


SEGMENT = st.one_of(FRAGMENT, noisy_call(), noisy_call())


def cut(text: str, cuts: list[int]) -> list[str]:
    bounds = [0, *sorted(c % (len(text) + 1) for c in cuts), len(text)]
    return [text[a:b] for a, b in pairwise(bounds)]


def _reject(name: str) -> Any:
    raise ValueError(name)


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object whose keys are all different (strict parsers refuse the others)."""
    assert len({key for key, _ in pairs}) == len(pairs), pairs
    return dict(pairs)


def check_events(events: list[ParseEvent], *, tools_offered: bool) -> None:
    started: set[int] = set()
    ended: set[int] = set()
    seen_content = False
    for event in events:
        match event:
            case ReasoningDelta(text):
                assert text and not seen_content
                assert "</think>" not in text
            case ContentDelta(text):
                assert text
                seen_content = True
            case ToolCallStart(index, _):
                assert index == len(started)
                started.add(index)
            case ToolCallArguments(index, fragment):
                assert fragment and index in started and index not in ended
            case ToolCallEnd(index):
                assert index in started and index not in ended
                ended.add(index)
        if tools_offered:  # (a value's own text may mention tags: FORMAT.md 2b)
            texts = [getattr(event, name, "") for name in ("text", "name")]
            assert not any(tag in text for text in texts for tag in TOOL_TAGS), event
        else:
            assert not started


@PROPERTY_SETTINGS
@given(
    fragments=st.lists(SEGMENT, max_size=30),
    cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=12),
    thinking=st.booleans(),
    offer_tools=st.booleans(),
    truncated=st.booleans(),
)
def test_any_output_any_chunking(
    fragments: list[str], cuts: list[int], thinking: bool, offer_tools: bool, truncated: bool
) -> None:
    raw = "".join(fragments)
    options: dict[str, Any] = {
        "thinking": thinking,
        "tools": TOOLS if offer_tools else None,
        "truncated": truncated,
    }
    whole_events, whole = run([raw], **options)
    chunk_events, chunked = run(cut(raw, cuts), **options)
    char_events, by_char = run(list(raw), **options)
    assert chunked == whole
    assert by_char == whole
    for events in (whole_events, chunk_events, char_events):
        check_events(events, tools_offered=offer_tools)
    for text in (whole.reasoning_content, whole.content):
        assert text is None or (text and text == text.strip())
    if not thinking:
        assert whole.reasoning_content is None
    for call in whole.tool_calls:
        assert call.name
        arguments = json.loads(call.arguments, parse_constant=_reject, object_pairs_hook=_unique)
        assert isinstance(arguments, dict)
    if not offer_tools:
        assert whole.tool_calls == []


# -- round trip: render a known message in GLM-4.7 syntax and parse it back ------------------------

PLAIN = st.text(CHARS, max_size=12).filter(lambda s: not any(tag in s for tag in ALL_TAGS))
WORD = st.text(st.sampled_from(list("abcxyzXé漢 _-")), min_size=1, max_size=6).filter(
    lambda s: s.strip() == s and s not in ("True", "False", "None")
)
JSON_SCALAR = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**12), 10**12),
    st.floats(allow_nan=False, allow_infinity=False),
    WORD,
)
JSON_OBJECT = st.dictionaries(WORD, st.one_of(JSON_SCALAR, st.lists(JSON_SCALAR, max_size=3)))


def _not_json(s: str) -> bool:
    try:
        json.loads(s)
    except ValueError:
        return True
    return False


VALUES: dict[str, dict[str, st.SearchStrategy[Any]]] = {
    "get_weather": {"city": PLAIN, "days": st.integers(0, 30)},
    "list_files": {},
    "search": {
        "q": PLAIN,
        "opts": JSON_OBJECT,
        "flag": st.booleans(),
        "ids": st.one_of(st.integers(), WORD.filter(_not_json)),
        "maybe": PLAIN.filter(lambda s: s != "null" and not JSON_STRING_LITERAL.fullmatch(s)),
        "score": st.floats(allow_nan=False, allow_infinity=False).filter(math.isfinite),
    },
    "write_file": {"path": PLAIN, "content": PLAIN},
}


@st.composite
def calls(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    name = draw(st.sampled_from(sorted(VALUES)))
    keys = draw(st.lists(st.sampled_from(sorted(VALUES[name]) or ["_"]), unique=True))
    args = {key: draw(VALUES[name][key]) for key in keys if key in VALUES[name]}
    return name, args


def render_call(name: str, args: dict[str, Any], newlines: bool) -> str:
    sep = "\n" if newlines else ""
    parts = [f"<tool_call>{name}{sep}"]
    for key, value in args.items():
        text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        parts.append(f"<arg_key>{key}</arg_key>{sep}<arg_value>{text}</arg_value>{sep}")
    parts.append("</tool_call>")
    return "".join(parts)


@PROPERTY_SETTINGS
@given(
    thinking=st.booleans(),
    reasoning=PLAIN,
    segments=st.lists(st.tuples(PLAIN, calls()), max_size=4),
    tail=PLAIN,
    newlines=st.booleans(),
    cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=12),
)
def test_round_trip(
    thinking: bool,
    reasoning: str,
    segments: list[tuple[str, tuple[str, dict[str, Any]]]],
    tail: str,
    newlines: bool,
    cuts: list[int],
) -> None:
    if thinking and reasoning.lstrip().startswith("<think>"):
        return
    raw = f"{reasoning}</think>" if thinking else ""
    for text, (name, args) in segments:
        raw += text + render_call(name, args, newlines)
    raw += tail
    content = ("".join(text for text, _ in segments) + tail).strip() or None
    expected = ParsedMessage(
        reasoning_content=(reasoning.strip() or None) if thinking else None,
        content=content,
    )
    for _, (name, args) in segments:
        expected.tool_calls.append(ToolCallResult(name, json.dumps(args, ensure_ascii=False)))
    for chunks in ([raw], cut(raw, cuts), list(raw)):
        events, message = run(chunks, thinking=thinking, tools=TOOLS)
        assert message == expected
        check_events(events, tools_offered=True)
