"""Tool calls checked against their schemas: what fails is repaired under a grammar where the
backend has one, and never returned as a call where it cannot be."""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest

from backends.base import GenerationRequest
from tests.gateway.agent.conftest import MODEL, RecordingBackend, gateway, scripted
from tests.gateway.glm47.parsing import checked_parse

WRITE = {
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
            },
            "required": ["path", "content"],
        },
    },
}
TOOLS = [WRITE]
HEAD = "ok</think><tool_call>write_file"
PATH = "<arg_key>path</arg_key><arg_value>a.txt</arg_value>"
CONTENT = "<arg_key>content</arg_key><arg_value>hello</arg_value>"
BAD = {
    "missing_argument": HEAD + PATH + "</tool_call>",
    "wrong_type": HEAD + PATH + CONTENT + "<arg_key>lines</arg_key><arg_value>many</arg_value>"
    "</tool_call>",
    "not_in_enum": HEAD + PATH + CONTENT + "<arg_key>mode</arg_key><arg_value>x</arg_value>"
    "</tool_call>",
    "unknown_tool": "ok</think><tool_call>delete_all" + PATH + "</tool_call>",
    "unclosed_call": HEAD + PATH + "<arg_key>content</arg_key><arg_value>hel",
}


class GrammarBackend(RecordingBackend):
    """Scripted, but claims grammar support: the continuation is scripted too (the grammar is
    checked by the real engine's test below)."""

    supports_grammar = True


def _chat(client: Any, stream: bool, **kwargs: Any) -> tuple[Any, ...]:
    kwargs = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], **kwargs}
    if not stream:
        raw = client.chat.completions.with_raw_response.create(**kwargs)
        done = raw.parse()
        message = done.choices[0].message
        calls = [(c.function.name, c.function.arguments) for c in message.tool_calls or ()]
        return (message.content, calls, done.choices[0].finish_reason), raw.headers
    content, finish = "", None
    calls: dict[int, list[str]] = {}
    for chunk in client.chat.completions.create(stream=True, **kwargs):
        for choice in chunk.choices:
            content += choice.delta.content or ""
            finish = choice.finish_reason or finish
            for call in choice.delta.tool_calls or ():
                entry = calls.setdefault(call.index, ["", ""])
                entry[0] += (call.function and call.function.name) or ""
                entry[1] += (call.function and call.function.arguments) or ""
    return (content or None, [tuple(c) for c in calls.values()], finish), None


@pytest.mark.parametrize("problem", sorted(BAD))
def test_without_grammar_a_failed_call_is_content(problem: str) -> None:
    backend = RecordingBackend(scripted(BAD[problem], BAD[problem], chunk=3))
    with gateway(backend) as (url, client):
        (content, calls, finish), headers = _chat(client, False, tools=TOOLS)
        if problem == "unknown_tool":
            # Found before the call's header: streamed, it is the same content.
            assert _chat(client, True, tools=TOOLS)[0] == (content, calls, finish)
        else:
            # Found after the header went out (string arguments stream as generated): the
            # stream ends with an explicit error, never with a call that fails its schema.
            with pytest.raises(openai.APIError, match="failed its schema"):
                _chat(client, True, tools=TOOLS)
        metrics = httpx.get(f"{url}/metrics").text
    assert calls == [] and finish == "stop"
    assert content is not None and content.startswith("<tool_call>")
    assert headers["x-glm-repairs"] == f"{problem}=content"
    counts = {"content": 2} if problem == "unknown_tool" else {"content": 1, "error": 1}
    for outcome, count in counts.items():
        assert (
            f'glm_gateway_tool_call_repairs_total{{model="glm",outcome="{outcome}",'
            f'problem="{problem}"}} {count}.0'
        ) in metrics


def test_valid_calls_are_untouched() -> None:
    good = HEAD + PATH + CONTENT + "</tool_call>"
    backend = RecordingBackend(scripted(good, good, chunk=2))
    with gateway(backend) as (_, client):
        (content, calls, finish), headers = _chat(client, False, tools=TOOLS)
        streamed, _ = _chat(client, True, tools=TOOLS)
    assert calls == [("write_file", '{"path": "a.txt", "content": "hello"}')]
    assert "x-glm-repairs" not in headers
    assert streamed == (content, calls, finish)


REPAIRS = {
    # problem: (first output, continuation, the prompt's tail, the repaired arguments)
    "missing_argument": (
        BAD["missing_argument"],
        CONTENT + "</tool_call>",
        "<tool_call>write_file" + PATH,
        {"path": "a.txt", "content": "hello"},
    ),
    "wrong_type": (
        BAD["wrong_type"],
        "3</arg_value></tool_call>",
        "<tool_call>write_file" + PATH + CONTENT + "<arg_key>lines</arg_key><arg_value>",
        {"path": "a.txt", "content": "hello", "lines": 3},
    ),
    "unknown_tool": (
        BAD["unknown_tool"],
        "write_file" + PATH + CONTENT + "</tool_call>",
        "<tool_call>",
        {"path": "a.txt", "content": "hello"},
    ),
    "unclosed_call": (
        BAD["unclosed_call"],
        "lo</arg_value></tool_call>",
        "<tool_call>write_file" + PATH + "<arg_key>content</arg_key><arg_value>hel",
        {"path": "a.txt", "content": "hello"},
    ),
}


@pytest.mark.parametrize("problem", sorted(REPAIRS))
def test_a_failed_call_is_repaired_by_a_continuation(problem: str) -> None:
    first, rest, tail, arguments = REPAIRS[problem]
    backend = GrammarBackend(scripted(first, rest, first, rest, chunk=3))
    with gateway(backend) as (_, client):
        (content, calls, finish), headers = _chat(client, False, tools=TOOLS)
        streamed, _ = _chat(client, True, tools=TOOLS)
    assert [(name, json.loads(args)) for name, args in calls] == [("write_file", arguments)]
    assert finish == "tool_calls" and content is None
    assert headers["x-glm-repairs"] == f"{problem}=repaired"
    assert streamed == (content, calls, finish)
    continuation: GenerationRequest = backend.requests[1]
    assert continuation.prompt == backend.requests[0].prompt + "ok</think>" + tail
    assert continuation.grammar is not None and "root ::=" in continuation.grammar


def test_a_repair_that_fails_again_is_content_or_an_error() -> None:
    first = BAD["missing_argument"]
    backend = GrammarBackend(scripted(first, "</tool_call>", first, "</tool_call>", chunk=3))
    with gateway(backend) as (_, client):
        (content, calls, _), headers = _chat(client, False, tools=TOOLS)
        assert calls == [] and content is not None and content.startswith("<tool_call>")
        assert headers["x-glm-repairs"] == "missing_argument=failed, missing_argument=content"
        # Streamed, the call's header was out: the stream ends with an explicit error.
        with pytest.raises(openai.APIError, match="failed its schema"):
            _chat(client, True, tools=TOOLS)


def _check(raw: str, chunk: int, incremental: bool) -> tuple[Any, ...]:
    return checked_parse(TOOLS, raw, chunk, incremental=incremental)


@pytest.mark.parametrize("chunk", [1, 2, 5, 1000])
def test_checks_hold_only_what_is_checked(chunk: int) -> None:
    body = HEAD[10:] + PATH + "<arg_key>lines</arg_key><arg_value>[1]</arg_value>"
    _, failure = _check(body + "</tool_call>", chunk, incremental=True)
    assert failure is not None and failure.problem == "wrong_type" and failure.open_key == "lines"
    # Out already: the header and the path; the wrong value never went out.
    assert failure.header_out and failure.args_out == len('{"path": "a.txt", "lines": ')
    assert failure.markup() == "<tool_call>write_file" + PATH + (
        "<arg_key>lines</arg_key><arg_value>"
    )
    _, failure = _check(body + "</tool_call>", chunk, incremental=False)
    assert failure is not None and not failure.header_out and failure.args_out == 0


def test_a_repair_after_a_valid_call_continues_the_second_call() -> None:
    good = "<tool_call>write_file" + PATH + CONTENT + "</tool_call>"
    first = "ok</think>" + good + "<tool_call>write_file" + PATH + "</tool_call>"
    rest = CONTENT + "</tool_call>"
    backend = GrammarBackend(scripted(first, rest, first, rest, chunk=4))
    with gateway(backend) as (_, client):
        (content, calls, finish), headers = _chat(client, False, tools=TOOLS)
        streamed, _ = _chat(client, True, tools=TOOLS)
    arguments = {"path": "a.txt", "content": "hello"}
    assert [(n, json.loads(a)) for n, a in calls] == [("write_file", arguments)] * 2
    assert streamed == (content, calls, finish) and finish == "tool_calls"
    assert headers["x-glm-repairs"] == "missing_argument=repaired"
    assert backend.requests[1].prompt.endswith(good + "<tool_call>write_file" + PATH)
