"""FORMAT.md section 2b: where a value ends, and the repairs of what the real model gets wrong.

Each case is checked whole, one character at a time and under every 2-way split. The shapes are
the real model's: tags as single tokens, GLM-4.5-style newlines between tags, unicode, long
values, and values (file bodies) that mention every tag.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import pytest

from gateway.glm47.events import (
    ParsedMessage,
    ParseEvent,
    ReasoningDelta,
    ToolCallArguments,
    ToolCallEnd,
    ToolCallStart,
)
from gateway.glm47.parser import GLM47Parser
from tests.gateway.glm47 import parsing
from tests.gateway.glm47.parsing import ALL_TAGS, CASES

CASE_TOOLS: list[dict[str, Any]] = next(c["tools"] for c in CASES if c["id"].startswith("T30"))
TOOLS: list[dict[str, Any]] = [
    *CASE_TOOLS,
    {
        "type": "function",
        "function": {
            "name": "edit_file",
            "parameters": {
                "type": "object",
                "properties": {
                    "path": {"type": "string"},
                    "old": {"type": "string"},
                    "new": {"type": "string"},
                    "note": {"anyOf": [{"type": "string"}, {"type": "null"}]},
                },
                "required": ["path", "old", "new"],
            },
        },
    },
    {"type": "function", "function": {"name": "get", "parameters": {"type": "object"}}},
]
EVERY_TAG_TEXT = "".join(f"a {tag} b\n" for tag in ALL_TAGS)  # each tag followed by text


def run(chunks: Iterable[str], *, finish: str = "stop") -> tuple[list[ParseEvent], ParsedMessage]:
    return parsing.run(chunks, thinking=True, tools=TOOLS, truncated=finish == "length")


def chunkings(raw: str, *, exhaustive: bool = True) -> Iterable[list[str]]:
    yield [raw]
    if exhaustive:
        yield list(raw)
        for cut in range(len(raw) + 1):
            yield [raw[:cut], raw[cut:]]
    else:
        for size in (1, 3, 7, 64, 1000):
            yield [raw[i : i + size] for i in range(0, len(raw), size)]


def calls_of(message: ParsedMessage) -> list[tuple[str, dict[str, Any]]]:
    return [(c.name, json.loads(c.arguments)) for c in message.tool_calls]


def check(
    raw: str,
    calls: Sequence[tuple[str, Mapping[str, Any]]],
    content: str | None = None,
    *,
    finish: str = "stop",
    exhaustive: bool = True,
) -> None:
    expected = None
    for chunks in chunkings("ok</think>" + raw, exhaustive=exhaustive):
        _, message = run(chunks, finish=finish)
        if expected is None:
            assert calls_of(message) == [(name, dict(args)) for name, args in calls]
            assert message.content == content
            expected = message
        else:
            assert message == expected, [len(c) for c in chunks]


def call(name: str, *args: tuple[str, str], close: str = "</tool_call>", nl: str = "") -> str:
    body = "".join(f"<arg_key>{k}</arg_key>{nl}<arg_value>{v}</arg_value>{nl}" for k, v in args)
    return f"<tool_call>{name}{nl}{body}{close}"


# -- rule 1: </arg_value> ends a value only before <arg_key>, </tool_call> or the end --------------


@pytest.mark.parametrize(
    "body",
    [
        "Close a value with </arg_value> and go on.",
        "line 1</arg_value>\nline 2",  # newline, then text: still data
        "</arg_value>x",
        "x</arg_value>",  # the value ends with the tag's text: the next one closes it
        "x</arg_value>\n \t",
        "x</arg_value></arg_value>",
        "x</arg_value><arg_value>y",
        "x</arg_value></arg_key>",
        "x</arg_value><tool_call>y",
        "x</arg_value> <think></think>",
        "漢字 </arg_value> 😀\n</arg_value>é",
    ],
)
def test_arg_value_close_inside_a_string_is_data(body: str) -> None:
    raw = call("write_file", ("path", "a.md"), ("content", body))
    check(raw, [("write_file", {"path": "a.md", "content": body})])


@pytest.mark.parametrize("nl", ["", "\n", "\n\n  ", " \t\n"])
def test_arg_value_close_before_the_next_key_or_the_call_end_is_structural(nl: str) -> None:
    raw = call("get_weather", ("city", "Paris"), ("days", "3"), nl=nl) + nl
    check(raw, [("get_weather", {"city": "Paris", "days": 3})])


def test_arg_value_close_at_the_end_of_the_output_ends_the_value() -> None:
    raw = "<tool_call>write_file<arg_key>path</arg_key><arg_value>a</arg_value>"
    raw += "<arg_key>content</arg_key><arg_value>x </arg_value>"
    check(raw + "\n", [("write_file", {"path": "a", "content": "x "})])


def test_json_value_mentioning_tags() -> None:
    text = '{"unit": "</arg_value>, <arg_key>k</arg_key>: </tool_call>!", "n": [1]}'
    raw = call("search", ("opts", text), ("q", "x"))
    check(raw, [("search", {"opts": json.loads(text), "q": "x"})])


def test_long_file_body_mentioning_every_tag() -> None:
    body = ("# 北京 😀 tags: " + EVERY_TAG_TEXT + "<arg_key>k</arg_key>\n") * 400
    assert len(body) > 30_000
    raw = call("write_file", ("path", "docs/FORMAT.md"), ("content", body), nl="\n")
    check(raw, [("write_file", {"path": "docs/FORMAT.md", "content": body})], exhaustive=False)


def test_a_tag_mention_streams_once_decided() -> None:
    parser = GLM47Parser(thinking=True, tools=TOOLS)
    head = "ok</think><tool_call>write_file<arg_key>content</arg_key><arg_value>a"
    parser.feed(head)
    assert parser.feed("</arg_value>") == []  # a candidate: held
    assert parser.feed(" \n") == []  # whitespace after it: still undecided
    assert parser.feed("b") == [
        ToolCallArguments(0, "</arg_value> \\n"),
        ToolCallArguments(0, "b"),
    ]
    assert parser.feed("</arg_value>") == []
    assert parser.feed("</tool_call>") == [
        ToolCallArguments(0, '"'),
        ToolCallArguments(0, "}"),
        ToolCallEnd(0),
    ]
    assert parser.finish() == []


# -- rule 2: </tool_call> in a value ends it and the call before <tool_call> or the end ------------


@pytest.mark.parametrize(
    "body",
    [
        "a call ends with </tool_call>, then text",
        "x</tool_call>\ny",
        "x</tool_call><arg_value>",
        "x</tool_call></tool_call>",  # (the second is followed by </arg_value>)
        "x</tool_call>\n</arg_value>y",
    ],
)
def test_tool_call_close_inside_a_value_is_data(body: str) -> None:
    raw = call("write_file", ("path", "p"), ("content", body))
    check(raw, [("write_file", {"path": "p", "content": body})])


@pytest.mark.parametrize("between", ["", "\n", "\n\n"])
def test_skipped_arg_value_close_before_the_next_call(between: str) -> None:
    raw = "<tool_call>get_weather<arg_key>city</arg_key><arg_value>Paris</tool_call>" + between
    raw += call("get_weather", ("days", "2"))
    check(raw, [("get_weather", {"city": "Paris"}), ("get_weather", {"days": 2})])


def test_tool_call_close_before_text_is_data_up_to_the_next_structural_tag() -> None:
    raw = "<tool_call>get_weather<arg_key>city</arg_key><arg_value>Paris</tool_call> text "
    raw += call("get_weather", ("days", "2"))
    city = "Paris</tool_call> text <tool_call>get_weather"  # up to <arg_key>K</arg_key><arg_value>
    check(raw, [("get_weather", {"city": city, "days": 2})])


def test_tool_call_close_at_the_end_of_the_output() -> None:
    for finish in ("stop", "length"):  # the call is closed: kept even at the limit
        raw = "<tool_call>get_weather<arg_key>city</arg_key><arg_value>Rome</tool_call>\n"
        check(raw, [("get_weather", {"city": "Rome"})], finish=finish)
    raw = "<tool_call>write_file<arg_key>content</arg_key><arg_value>x</tool_call></tool_call>"
    check(raw, [("write_file", {"content": "x</tool_call>"})])


# -- rule 3: <arg_key>K</arg_key><arg_value> in a value starts the next argument -------------------


@pytest.mark.parametrize("nl", ["", "\n", " \n "])
def test_skipped_arg_value_close_before_the_next_key(nl: str) -> None:
    raw = f"<tool_call>get_weather{nl}<arg_key>city</arg_key>{nl}<arg_value>Oslo"
    raw += f"<arg_key>days</arg_key>{nl}<arg_value>2</arg_value>{nl}</tool_call>"
    check(raw, [("get_weather", {"city": "Oslo", "days": 2})])


def test_skipped_close_keeps_the_value_verbatim_and_types_the_next() -> None:
    raw = "<tool_call>edit_file<arg_key>path</arg_key><arg_value>a.py\n"
    raw += "<arg_key> old </arg_key><arg_value>x = 1\n<arg_key>new</arg_key><arg_value>x = 2"
    raw += "</arg_value></tool_call>"
    check(raw, [("edit_file", {"path": "a.py\n", "old": "x = 1\n", "new": "x = 2"})])


@pytest.mark.parametrize(
    "mention",
    [
        "<arg_key>" + "k" * 129 + "</arg_key><arg_value>",  # too long to be a key
        "<arg_key>a<b</arg_key><arg_value>",  # a '<' in it
        "<arg_key>k</arg_key> then text <arg_value>",
        "<arg_key>k</arg_key></arg_key><arg_value>",
        "<arg_key>k<arg_value>",
        "<arg_key><arg_key>",
    ],
)
def test_key_mentions_inside_a_value_are_data(mention: str) -> None:
    body = f"see {mention} here"
    raw = call("write_file", ("path", "p"), ("content", body))
    check(raw, [("write_file", {"path": "p", "content": body})])


def test_key_of_128_characters_is_a_key() -> None:
    key = "k" * 128
    raw = f"<tool_call>get<arg_key>a</arg_key><arg_value>1<arg_key>{key}</arg_key><arg_value>2"
    check(raw + "</arg_value></tool_call>", [("get", {"a": 1, key: 2})])


def test_key_inside_a_value_at_the_end_of_the_output() -> None:
    raw = "<tool_call>get_weather<arg_key>city</arg_key><arg_value>Oslo<arg_key>days</arg_key>"
    check(raw, [])  # no <arg_value> followed: the value (still open) holds it; the call drops


# -- rule 4: every other tag inside a value is data ------------------------------------------------


def test_other_tags_inside_values_are_data() -> None:
    body = "<tool_call>x <arg_value>y </arg_key>z <think>t</think>\n"
    raw = call("write_file", ("path", body), ("content", EVERY_TAG_TEXT))
    check(raw, [("write_file", {"path": body, "content": EVERY_TAG_TEXT})])


def test_no_structural_tag_reaches_a_delta() -> None:
    raw = "ok</think>" + call("write_file", ("path", "a"), ("content", "b"), nl="\n")
    for chunks in chunkings(raw):
        events, _ = run(chunks)
        for event in events:
            if isinstance(event, ToolCallArguments):
                assert not any(tag in event.fragment for tag in ALL_TAGS), event


# -- rule 5: skipped opening tags ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "typed"), [("\nLima", "Lima"), ("Lima", "Lima"), ("  Li ma ", "Li ma ")]
)
def test_skipped_arg_value_open(value: str, typed: str) -> None:
    raw = f"<tool_call>get_weather<arg_key>city</arg_key>{value}</arg_value>"
    raw += "<arg_key>days</arg_key>\n 4 </arg_value></tool_call>"
    check(raw, [("get_weather", {"city": typed, "days": 4})])


def test_skipped_arg_value_open_of_an_empty_value_and_of_tag_text() -> None:
    raw = "<tool_call>write_file<arg_key>path</arg_key></arg_value><arg_key>content</arg_key>"
    raw += "</arg_key>x</arg_value></tool_call>"
    check(raw, [("write_file", {"path": "", "content": "</arg_key>x"})])


def test_skipped_arg_key_close() -> None:
    raw = "<tool_call>get_weather\n<arg_key>city\n<arg_value>Lima</arg_value>\n"
    raw += "<arg_key>days<arg_value>4</arg_value></tool_call>"
    check(raw, [("get_weather", {"city": "Lima", "days": 4})])


@pytest.mark.parametrize(
    ("name_and_key", "name", "key"),
    [
        ("get_weather city", "get_weather", "city"),
        ("\nget_weather\ncity\n", "get_weather", "city"),
        ("get_weathercity", "get_weather", "city"),  # the longest offered name wins over "get"
        ("get_weather", "get_weather", ""),  # no key: its value is dropped
        ("mystery  k", "mystery", "k"),  # not offered: split at the first whitespace
    ],
)
def test_skipped_arg_key_open_after_the_name(name_and_key: str, name: str, key: str) -> None:
    raw = f"<tool_call>{name_and_key}</arg_key><arg_value>Kyiv</arg_value></tool_call>"
    check(raw, [(name, {key: "Kyiv"} if key else {})])


# -- rule 6: a call the output leaves open ---------------------------------------------------------

KEPT_ENDINGS = ["</arg_value>", "</arg_value>\n", "</arg_value></tool_", "</arg_value></tool_call"]


@pytest.mark.parametrize("ending", KEPT_ENDINGS)
def test_open_call_kept_after_a_stop(ending: str) -> None:
    raw = "<tool_call>get_weather\n<arg_key>city</arg_key>\n<arg_value>Quito" + ending
    check(raw, [("get_weather", {"city": "Quito"})])
    check(raw, [], finish="length")


def test_open_call_kept_streams_its_end_at_finish() -> None:
    parser = GLM47Parser(thinking=True, tools=TOOLS)
    assert parser.feed("ok</think><tool_call>list_files</tool_") == [ReasoningDelta("ok")]
    assert parser.finish() == [
        ToolCallStart(0, "list_files"),
        ToolCallArguments(0, "{}"),
        ToolCallEnd(0),
    ]


@pytest.mark.parametrize(
    "raw",
    [
        "<tool_call>get_weather<arg_key>days</arg_key><arg_value>5</arg_value>",  # city missing
        "<tool_call>nope<arg_key>city</arg_key><arg_value>x</arg_value>",  # not offered
        "<tool_call>get_weather<arg_key>city</arg_key><arg_value>Quito",  # the value is open
        "<tool_call>get_weather<arg_key>city</arg_key><arg_value>Quito</tool_",
        "<tool_call>get_weather<arg_key>city</arg_key><arg_value>Q</arg_value><arg_key>da",
        "<tool_call>list_files",  # the name may still go on
        "<tool_call>list_files<",
    ],
)
def test_open_call_dropped(raw: str) -> None:
    check(raw, [])


def test_dropped_open_call_was_announced_but_never_ends() -> None:
    events, message = run(["ok</think><tool_call>get_weather<arg_key>days</arg_key><arg_value>5"])
    assert ToolCallStart(0, "get_weather") in events
    assert not any(isinstance(e, ToolCallEnd) for e in events)
    assert message.tool_calls == []


# -- rule 7: held text at the end of the output ----------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "stop", "length"),
    [
        ("ok</think>Checking now.<tool_", "Checking now.<tool_", "Checking now."),
        ("ok</think>a </arg_v", "a </arg_v", "a"),
        ("ok</think>x<tool_call>list_files</tool_call>y<", "xy<", "xy"),
    ],
)
def test_held_text_at_the_end(raw: str, stop: str, length: str) -> None:
    for finish, content in (("stop", stop), ("length", length)):
        for chunks in chunkings(raw):
            assert run(chunks, finish=finish)[1].content == content


def test_held_reasoning_at_the_end() -> None:
    for finish, reasoning in (("stop", "let me see </thi"), ("length", "let me see")):
        for chunks in chunkings("let me see </thi"):
            assert run(chunks, finish=finish)[1].reasoning_content == reasoning


# -- section 2, rules 5 and 6: names and keys ------------------------------------------------------


def test_nameless_calls_are_dropped_and_indices_stay_dense() -> None:
    raw = "<tool_call> \n</tool_call><tool_call><arg_key>q</arg_key><arg_value>x</arg_value>"
    raw += "</tool_call>" + call("list_files") + "<tool_call>\n<arg_key>q</arg_key>"
    raw += "<arg_value>1</tool_call>" + call("search", ("q", "y"))
    check(raw, [("list_files", {}), ("search", {"q": "y"})])
    events, _ = run(["ok</think>" + raw])
    assert [e for e in events if isinstance(e, ToolCallStart)] == [
        ToolCallStart(0, "list_files"),
        ToolCallStart(1, "search"),
    ]


def test_stray_call_opens_start_the_call_again() -> None:
    raw = "x <tool_call>\n<tool_call>list_files</tool_call>"
    raw += "<tool_call>search<tool_call>get_weather" + call("", ("city", "A"))[11:]
    check(raw, [("list_files", {}), ("get_weather", {"city": "A"})], content="x")


@pytest.mark.parametrize(
    ("key", "values"),
    [
        ("city", ["Oslo", "Bergen"]),
        ("days", ["1", "2"]),
        ("note", ["null", "later"]),
        ("content", ["short", "x" * 5000 + "</arg_value>y"]),
    ],
)
def test_a_repeated_key_keeps_the_first_value(key: str, values: list[str]) -> None:
    tools = {"city": "get_weather", "days": "get_weather", "note": "edit_file"}
    tool = tools.get(key, "write_file")
    raw = call(tool, (key, values[0]), ("x", "1"), (f" {key}\n", values[1]))
    first = {"days": 1, "note": None}.get(key, values[0])
    check(raw, [(tool, {key: first, "x": 1})], exhaustive=len(raw) < 300)


def test_an_empty_key_is_dropped() -> None:
    check(call("get", ("", "1"), (" ", "2"), ("k", "3")), [("get", {"k": 3})])
