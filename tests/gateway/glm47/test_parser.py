"""GLM-4.7 output parser: the shared parse vectors under every chunking, plus targeted cases."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from itertools import combinations, pairwise
from typing import Any

import pytest

from gateway.glm47.events import (
    ContentDelta,
    ParsedMessage,
    ParseEvent,
    ReasoningDelta,
    ToolCallArguments,
    ToolCallEnd,
    ToolCallStart,
)
from gateway.glm47.parser import GLM47Parser
from gateway.glm47.schema import (
    ToolSchemas,
    allowed_types,
    encode_value,
    is_string_only,
    json_type_allowed,
)
from tests.gateway.glm47.parsing import ALL_TAGS, CASES, fold, parse_events

TOOLS: list[dict[str, Any]] = next(case["tools"] for case in CASES if case["tools"])


# -- helpers ---------------------------------------------------------------------------------------


def parse(
    chunks: Iterable[str],
    *,
    thinking: bool = True,
    tools: Sequence[Mapping[str, Any]] | None = TOOLS,
    truncated: bool = False,
) -> ParsedMessage:
    return fold(parse_events(chunks, thinking=thinking, tools=tools, truncated=truncated))


def finish_reason(engine_finish: str, message: ParsedMessage) -> str:
    """The caller's rule: length if the engine hit the limit, else tool_calls if any, else stop."""
    if engine_finish == "length":
        return "length"
    return "tool_calls" if message.tool_calls else "stop"


def as_expected(message: ParsedMessage, engine_finish: str) -> dict[str, Any]:
    return {
        "reasoning_content": message.reasoning_content,
        "content": message.content,
        "tool_calls": [{"name": c.name, "arguments": c.arguments} for c in message.tool_calls],
        "finish_reason": finish_reason(engine_finish, message),
    }


def splits(text: str, parts: int) -> Iterator[list[str]]:
    """Every way of cutting ``text`` into ``parts`` chunks (empty chunks included)."""
    for cuts in combinations(range(len(text) + 1), parts - 1):
        bounds = (0, *cuts, len(text))
        yield [text[a:b] for a, b in pairwise(bounds)]


def event_texts(event: ParseEvent) -> list[str]:
    match event:
        case ReasoningDelta(text) | ContentDelta(text):
            return [text]
        case ToolCallStart(_, name):
            return [name]
        case ToolCallArguments(_, fragment):
            return [fragment]
    return []


def tool_call(name: str, args: str) -> str:
    return f"<tool_call>{name}{args}</tool_call>"


def arg(key: str, value: str) -> str:
    return f"<arg_key>{key}</arg_key><arg_value>{value}</arg_value>"


# -- the shared vectors, under every chunking ------------------------------------------------------

CASE_IDS = [case["id"] for case in CASES]


def options(case: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "thinking": case["thinking"],
        "tools": case["tools"],
        "truncated": case["finish"] == "length",
    }


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_vector_whole(case: dict[str, Any]) -> None:
    message = parse([case["raw"]], **options(case))
    assert as_expected(message, case["finish"]) == case["expected"]


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_vector_one_char_at_a_time(case: dict[str, Any]) -> None:
    message = parse(list(case["raw"]), **options(case))
    assert as_expected(message, case["finish"]) == case["expected"]


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_vector_every_two_way_split(case: dict[str, Any]) -> None:
    for chunks in splits(case["raw"], 2):
        message = parse(chunks, **options(case))
        assert as_expected(message, case["finish"]) == case["expected"], chunks


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_vector_every_three_way_split(case: dict[str, Any]) -> None:
    expected = case["expected"]
    for chunks in splits(case["raw"], 3):
        message = parse(chunks, **options(case))
        if as_expected(message, case["finish"]) != expected:  # (assert only on failure: speed)
            assert as_expected(message, case["finish"]) == expected, chunks


# -- streaming shape -------------------------------------------------------------------------------


@pytest.mark.parametrize("case", [c for c in CASES if c["tools"]], ids=lambda c: c["id"])
def test_stream_shape_one_char_at_a_time(case: dict[str, Any]) -> None:
    events = parse_events(list(case["raw"]), **options(case))
    started: dict[int, str] = {}
    ended: set[int] = set()
    arguments = "".join(call["arguments"] for call in case["expected"]["tool_calls"])
    for event in events:
        for text in event_texts(event):
            assert text, event  # no empty deltas
            for tag in ALL_TAGS:
                # Only a value's own text may hold tag text (FORMAT.md 2b), never structure.
                data = isinstance(event, ToolCallArguments) and tag in arguments
                assert tag not in text or data, event
        match event:
            case ToolCallStart(index, name):
                assert index == len(started)
                started[index] = name
            case ToolCallArguments(index, _):
                assert index in started and index not in ended
            case ToolCallEnd(index):
                assert index in started and index not in ended
                ended.add(index)
    expected_names = [call["name"] for call in case["expected"]["tool_calls"]]
    assert [started[i] for i in sorted(ended)] == expected_names


def test_first_call_event_is_start_with_the_full_name() -> None:
    raw = "ok</think><tool_call>  get_weather \n<arg_key>city</arg_key><arg_value>Paris"
    parser = GLM47Parser(thinking=True, tools=TOOLS)
    call_events: list[ParseEvent] = []
    for ch in raw:
        call_events += [
            e for e in parser.feed(ch) if isinstance(e, ToolCallStart | ToolCallArguments)
        ]
    assert call_events[0] == ToolCallStart(0, "get_weather")
    # The string value streamed before </arg_value>: only the quote is missing.
    assert "".join(e.fragment for e in call_events[1:] if isinstance(e, ToolCallArguments)) == (
        '{"city": "Paris'
    )
    rest = parser.feed("</arg_value></tool_call>") + parser.finish()
    assert rest == [ToolCallArguments(0, '"'), ToolCallArguments(0, "}"), ToolCallEnd(0)]


def test_no_delta_mixes_reasoning_and_content_and_no_tag_leaks() -> None:
    raw = "  think hard </think>  answer <tool_call>list_files</tool_call> after  "
    for chunks in splits(raw, 2):
        events = parse_events(chunks, thinking=True, tools=TOOLS)
        kinds = [type(e) for e in events if isinstance(e, ReasoningDelta | ContentDelta)]
        assert kinds == sorted(kinds, key=lambda k: k is ContentDelta)
        assert all(tag not in t for e in events for t in event_texts(e) for tag in ALL_TAGS)
        message = fold(events)
        assert message.reasoning_content == "think hard"
        assert message.content == "answer  after"


def test_large_string_value_streams_progressively() -> None:
    body = "".join(f'line {i}: <b>"quoted"</b> & \\ tab\t 漢字 😀\n' for i in range(500))
    assert len(body.encode()) > 20_000
    parser = GLM47Parser(thinking=True, tools=TOOLS)
    head = "x</think><tool_call>write_file" + arg("path", "a.txt") + "<arg_key>content</arg_key>"
    events = parser.feed(head + "<arg_value>")
    fragments = [e.fragment for e in events if isinstance(e, ToolCallArguments)]
    assert "".join(fragments) == '{"path": "a.txt", "content": "'
    before = len(fragments)
    emitting_feeds = 0
    for i in range(0, len(body), 100):
        new = [
            e.fragment for e in parser.feed(body[i : i + 100]) if isinstance(e, ToolCallArguments)
        ]
        emitting_feeds += bool(new)
        fragments += new
    assert emitting_feeds == (len(body) + 99) // 100  # every chunk produced output at once
    streamed = "".join(fragments[before:])
    assert json.dumps(body, ensure_ascii=False)[1:-1].startswith(streamed)
    assert len(streamed) > 0.9 * len(json.dumps(body, ensure_ascii=False))
    events = parser.feed("</arg_value></tool_call>") + parser.finish()
    fragments += [e.fragment for e in events if isinstance(e, ToolCallArguments)]
    assert events[-1] == ToolCallEnd(0)
    arguments = "".join(fragments)
    assert arguments == json.dumps({"path": "a.txt", "content": body}, ensure_ascii=False)


def test_long_argument_fed_in_small_chunks_matches_whole() -> None:
    body = "<div>\n" + "a<b & c</d> <</arg_valu\n" * 200 + "</div><"
    raw = "x</think>" + tool_call("write_file", arg("path", " p ") + arg("content", body))
    expected = {"path": " p ", "content": body}
    for size in (1, 2, 3, 4, 7, 13):
        chunks = [raw[i : i + size] for i in range(0, len(raw), size)]
        message = parse(chunks)
        assert [c.arguments for c in message.tool_calls] == [
            json.dumps(expected, ensure_ascii=False)
        ]


# -- typing of values ------------------------------------------------------------------------------


def args_of(raw: str, tools: Sequence[Mapping[str, Any]] | None = TOOLS) -> Any:
    whole = parse([raw], tools=tools)
    assert parse(list(raw), tools=tools) == whole
    assert len(whole.tool_calls) == 1
    return json.loads(whole.tool_calls[0].arguments)


def test_optional_string_value_123_stays_string() -> None:
    raw = "x</think>" + tool_call("search", arg("maybe", "123"))
    assert args_of(raw) == {"maybe": "123"}


def test_optional_string_is_verbatim_not_stripped() -> None:
    raw = "x</think>" + tool_call("search", arg("maybe", " null \n"))
    assert args_of(raw) == {"maybe": " null \n"}


def test_integer_or_string_value() -> None:
    raw = "x</think>" + tool_call("search", arg("ids", "abc") + arg("flag", "True"))
    assert args_of(raw) == {"ids": "abc", "flag": True}
    raw = "x</think>" + tool_call("search", arg("ids", " 12 "))
    assert args_of(raw) == {"ids": 12}
    raw = "x</think>" + tool_call("search", arg("ids", "[1]"))  # an array is not allowed: string
    assert args_of(raw) == {"ids": "[1]"}


@pytest.mark.parametrize(
    ("text", "value"),
    [("True", True), ("False", False), ("None", None), ("true", True), ("null", None)],
)
def test_python_literals_are_accepted(text: str, value: Any) -> None:
    raw = "x</think>" + tool_call("search", arg("flag", text))
    assert args_of(raw) == {"flag": value}
    assert args_of("x</think>" + tool_call("unknown_tool", arg("k", text))) == {"k": value}


def test_unknown_tool_or_parameter_tries_json_then_string() -> None:
    raw = "x</think>" + tool_call(
        "mystery", arg("n", " 3 ") + arg("o", '{"a":1}') + arg("s", " hello ")
    )
    assert args_of(raw) == {"n": 3, "o": {"a": 1}, "s": "hello"}
    raw = "x</think>" + tool_call("get_weather", arg("extra", "2.5") + arg("city", "2.5"))
    assert args_of(raw) == {"extra": 2.5, "city": "2.5"}


def test_values_that_must_not_become_invalid_json() -> None:
    deep = "[" * 100_000 + "]" * 100_000
    raw = "x</think>" + tool_call(
        "mystery", arg("a", "NaN") + arg("b", "1e999") + arg("c", "9" * 5000) + arg("d", deep)
    )
    message = parse([raw])
    decoded = json.loads(message.tool_calls[0].arguments)  # strict: NaN/Infinity would fail
    assert decoded["a"] == "NaN" and decoded["b"] == "1e999"
    assert decoded["c"] == "9" * 5000 and decoded["d"] == deep


def test_value_ending_with_lt_before_close_tag() -> None:
    for key, value in (("content", "a <"), ("content", "<"), ("q", "x<<"), ("opts", "1<")):
        tool = "write_file" if key == "content" else "search"
        raw = "x</think>" + tool_call(tool, arg(key, value)) + "done"
        for chunks in [[raw], list(raw), *splits(raw, 2)]:
            message = parse(chunks)
            assert [json.loads(c.arguments) for c in message.tool_calls] == [{key: value}]
            assert message.content == "done"


def test_object_value_keeps_order_and_default_separators() -> None:
    raw = "x</think>" + tool_call("search", arg("opts", '{"b":1,"a":[true,null,"é"]}'))
    message = parse([raw])
    assert message.tool_calls[0].arguments == '{"opts": {"b": 1, "a": [true, null, "é"]}}'


# -- text, whitespace, partial tags ----------------------------------------------------------------


def test_lone_lt_is_released_as_soon_as_it_cannot_be_a_tag() -> None:
    parser = GLM47Parser(thinking=True, tools=TOOLS)
    assert parser.feed("r</think>a <") == [ReasoningDelta("r"), ContentDelta("a")]
    assert parser.feed(" b") == [ContentDelta(" < b")]
    assert parser.feed(" <t") == []
    assert parser.feed("x") == [ContentDelta(" <tx")]
    assert parser.feed("</to") == []
    assert parser.finish() == [ContentDelta("</to")]


def test_lone_lt_in_reasoning_without_tools() -> None:
    parser = GLM47Parser(thinking=True, tools=None)
    assert parser.feed("1 <") == [ReasoningDelta("1")]
    assert parser.feed("2") == [ReasoningDelta(" <2")]
    assert parser.feed("</") == []
    assert parser.feed("b>") == [ReasoningDelta("</b>")]


def test_partial_tag_held_then_completed() -> None:
    parser = GLM47Parser(thinking=True, tools=None)
    assert parser.feed("abc</thi") == [ReasoningDelta("abc")]
    assert parser.feed("nk>xyz") == [ContentDelta("xyz")]


def test_partial_tag_at_end_is_text_but_dropped_inside_a_call() -> None:
    assert parse(["ok</think>see <tool_ca"]).content == "see <tool_ca"
    assert parse(["think <tool_ca"]).reasoning_content == "think <tool_ca"
    message = parse(["ok</think>hi<tool_call>get_weather<arg_key>city</arg_k"])
    assert message.content == "hi" and message.tool_calls == []


def test_unclosed_call_is_dropped_but_header_was_streamed() -> None:
    raw = "ok</think><tool_call>get_weather<arg_key>city</arg_key><arg_value>Par"
    events = parse_events([raw], thinking=True, tools=TOOLS)
    assert events[1] == ToolCallStart(0, "get_weather")
    assert not any(isinstance(e, ToolCallEnd) for e in events)
    assert fold(events).tool_calls == []


@pytest.mark.parametrize(
    ("raw", "reasoning", "content"),
    [
        ("<think>abc</think>xyz", "abc", "xyz"),
        (" \n <think>\nabc</think>xyz", "abc", "xyz"),
        ("a<think>bc</think>xyz", "a<think>bc", "xyz"),
        ("<think><think>bc</think>xyz", "<think>bc", "xyz"),
        ("<thin", "<thin", None),
        ("<thinking>x", "<thinking>x", None),
        ("  \n ", None, None),
        ("</think>", None, None),
        (" a \n b \n</think>\n c \n d \n", "a \n b", "c \n d"),
        ("ok</think>Answer with </think> inside", "ok", "Answer with </think> inside"),
    ],
)
def test_reasoning_and_content(raw: str, reasoning: str | None, content: str | None) -> None:
    for tools in (None, TOOLS):
        for chunks in [[raw], list(raw), *splits(raw, 2)]:
            message = parse(chunks, tools=tools)
            assert (message.reasoning_content, message.content) == (reasoning, content)


def test_lead_skips_stray_tool_tags_then_think() -> None:
    raw = " \n</arg_key> <think> abc</think>x"
    for chunks in [[raw], list(raw), *splits(raw, 2)]:
        message = parse(chunks)
        assert (message.reasoning_content, message.content) == ("abc", "x")
    message = parse([raw], tools=None)
    assert (message.reasoning_content, message.content) == ("</arg_key> <think> abc", "x")


def test_thinking_off_has_no_reasoning() -> None:
    for raw in ("abc</think>xyz", "<think>abc</think>xyz"):
        message = parse([raw], thinking=False)
        assert message.reasoning_content is None
        assert message.content == raw


def test_unicode_split_points() -> None:
    raw = "思考 🤔 é\u0301</think>  答案:北京 👍🏽 \U0001f600<tool_call>get_weather" + arg(
        "city", "北京🏙"
    )
    raw += "</tool_call>"
    for chunks in [list(raw), *splits(raw, 2)]:
        message = parse(chunks)
        assert message.reasoning_content == "思考 🤔 é\u0301"
        assert message.content == "答案:北京 👍🏽 \U0001f600"
        assert message.tool_calls[0].arguments == '{"city": "北京🏙"}'


def test_tools_none_keeps_markup_as_content() -> None:
    raw = "<tool_call>get_weather" + arg("city", "Oslo") + "</tool_call>"
    for thinking in (False, True):
        text = raw if not thinking else "r</think>" + raw
        for chunks in [[text], list(text)]:
            no_tools: tuple[list[dict[str, Any]] | None, ...] = (None, [])
            for tools in no_tools:
                message = parse(chunks, thinking=thinking, tools=tools)
                assert message.content == raw
                assert message.tool_calls == []


def test_call_inside_reasoning_ends_reasoning() -> None:
    raw = "plan <tool_call>list_files</tool_call> then text </think> more"
    message = parse([raw])
    assert message.reasoning_content == "plan"
    assert message.content == "then text </think> more"
    assert [c.name for c in message.tool_calls] == ["list_files"]


def test_text_between_and_after_calls_is_one_stripped_content() -> None:
    raw = "r</think> A " + tool_call("list_files", "") + "\n B \n" + tool_call("list_files", "")
    raw += "  C  "
    for chunks in [[raw], list(raw)]:
        message = parse(chunks)
        assert message.content == "A \n B \n  C"
        assert [c.arguments for c in message.tool_calls] == ["{}", "{}"]


def test_glm45_whitespace_and_name_stripping() -> None:
    raw = (
        "x</think><tool_call>\n get_weather \n<arg_key> city </arg_key>\n <arg_value>Paris"
        "</arg_value>\n <arg_key>days</arg_key>\n<arg_value>\n 3 \n</arg_value>\n</tool_call>"
    )
    message = parse([raw])
    assert [(c.name, c.arguments) for c in message.tool_calls] == [
        ("get_weather", '{"city": "Paris", "days": 3}')
    ]


def test_zero_arg_calls() -> None:
    raw = "x</think><tool_call>list_files</tool_call><tool_call> list_files\n</tool_call>"
    message = parse(list(raw))
    assert [(c.name, c.arguments) for c in message.tool_calls] == [("list_files", "{}")] * 2


# -- malformed output: never raises, always valid JSON ---------------------------------------------


def test_stray_tool_tags_are_dropped_when_tools_are_offered() -> None:
    raw = "r</arg_value></think>a</tool_call>b<arg_key>c</arg_value>d"
    message = parse([raw])
    assert message.reasoning_content == "r"
    assert message.content == "abcd"
    assert message.tool_calls == []


def test_missing_close_tags_are_implied() -> None:
    raw = (
        "x</think><tool_call>get_weather<arg_key>city<arg_value>Paris<arg_key>days</arg_key>"
        "<arg_value>3</tool_call>\n<tool_call>search<arg_key>q</arg_key><arg_value>hi</tool_call>"
    )
    for chunks in [[raw], list(raw)]:
        message = parse(chunks)
        assert [(c.name, json.loads(c.arguments)) for c in message.tool_calls] == [
            ("get_weather", {"city": "Paris", "days": 3}),
            ("search", {"q": "hi"}),
        ]


def test_call_open_inside_a_value_is_its_text() -> None:
    # Not a skipped </tool_call>: inside a value only position makes a tag structural.
    raw = (
        "x</think><tool_call>search<arg_key>q</arg_key><arg_value>3<tool_call>search"
        "<arg_key>q</arg_key><arg_value>hi</tool_call>"
    )
    for chunks in [[raw], list(raw)]:
        message = parse(chunks)
        assert [(c.name, json.loads(c.arguments)) for c in message.tool_calls] == [
            ("search", {"q": "3<tool_call>search"})
        ]


def test_key_without_value_is_dropped() -> None:
    raw = "x</think><tool_call>search<arg_key>q</arg_key></tool_call>"
    raw += "<tool_call>search" + arg("q", "v") + "<arg_key>flag</tool_call>"
    message = parse([raw])
    assert [c.arguments for c in message.tool_calls] == ["{}", '{"q": "v"}']


def test_feed_after_finish_is_ignored() -> None:
    parser = GLM47Parser(thinking=False, tools=None)
    assert parser.feed("hi ") == [ContentDelta("hi")]
    assert parser.finish() == []
    assert parser.feed("more") == []
    assert parser.finish() == []


def test_empty_chunks_and_empty_output() -> None:
    assert parse([]) == ParsedMessage()
    assert parse(["", "", ""]) == ParsedMessage()
    assert parse(["", "a", "", "</think>", "", "b"]).content == "b"


# -- schema typing ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("schema", "types", "string_only"),
    [
        ({"type": "string"}, {"string"}, True),
        ({"type": ["string", "null"]}, {"string", "null"}, True),
        ({"anyOf": [{"type": "string"}, {"type": "null"}]}, {"string", "null"}, True),
        ({"oneOf": [{"type": "string"}, {"anyOf": [{"type": "null"}]}]}, {"string", "null"}, True),
        ({"enum": ["a", "b"]}, {"string"}, True),
        ({"const": 3}, {"integer"}, False),
        ({"type": ["integer", "string"]}, {"integer", "string"}, False),
        ({"anyOf": [{"type": "string"}, {}]}, None, False),
        ({"allOf": [{"type": ["string", "integer"]}, {"type": "string"}]}, {"string"}, True),
        ({"type": "null"}, {"null"}, False),
        ({}, None, False),
        (True, None, False),
        ({"type": 5}, None, False),
        ({"anyOf": "nonsense"}, None, False),
    ],
)
def test_allowed_types(schema: Any, types: set[str] | None, string_only: bool) -> None:
    got = allowed_types(schema)
    assert got == (frozenset(types) if types is not None else None)
    assert is_string_only(got) is string_only


def test_deeply_nested_schema_does_not_raise() -> None:
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(5000):
        schema = {"anyOf": [schema]}
    assert allowed_types(schema) is None


def test_json_type_allowed_numbers() -> None:
    assert json_type_allowed(3, frozenset({"number"}))
    assert json_type_allowed(3.0, frozenset({"integer"}))
    assert not json_type_allowed(3.5, frozenset({"integer"}))
    assert not json_type_allowed(True, frozenset({"integer", "number"}))
    assert json_type_allowed({"a": 1}, None)


def test_encode_value() -> None:
    assert encode_value(" 3 ", frozenset({"integer"})) == "3"
    assert encode_value("3", frozenset({"boolean", "string"})) == '"3"'
    assert encode_value("3", frozenset({"boolean"})) == "3"  # string not allowed: decoded kept
    assert encode_value(" not json ", frozenset({"integer"})) == '"not json"'
    assert encode_value("None", None) == "null"


def test_tool_schemas_lookup_is_defensive() -> None:
    schemas = ToolSchemas(
        [
            {"type": "function", "function": {"name": "a", "parameters": {"properties": "x"}}},
            {"type": "function", "function": "nonsense"},
            {"name": "flat", "parameters": {"properties": {"s": {"type": "string"}}}},
            {"type": "function", "function": {"name": "a", "parameters": {}}},
        ]
    )
    assert schemas.param_types("a", "k") is None
    assert schemas.param_types("flat", "s") == frozenset({"string"})
    assert schemas.param_types("missing", "s") is None
