"""Responses requests -> ChatInput: items, tools, choices, reasoning, refusals."""

from __future__ import annotations

import json
from typing import Any

import pytest

from gateway.api.openai_responses.sealing import Sealer
from gateway.api.openai_responses.settings import ResponsesSettings
from gateway.api.openai_responses.store import ResponseStore
from gateway.api.openai_responses.translate import Translated, translate
from gateway.errors import InvalidRequestError, NotFoundError, UnsupportedParameterError

FUNCTION = {
    "type": "function",
    "name": "exec_command",
    "description": "Run a command.",
    "strict": False,
    "parameters": {"type": "object", "properties": {"cmd": {"type": "string"}}},
}
NAMESPACE = {
    "type": "namespace",
    "name": "agents",
    "description": "Sub-agents.",
    "tools": [{"type": "function", "name": "spawn", "parameters": {"type": "object"}}],
}
CUSTOM = {
    "type": "custom",
    "name": "apply_patch",
    "description": "Apply a patch.",
    "format": {"type": "grammar", "syntax": "lark", "definition": "start: /.+/"},
}


def run(
    body: dict[str, Any], store: ResponseStore | None = None, sealer: Sealer | None = None
) -> Translated:
    return translate(
        {"model": "glm", **body},
        store if store is not None else ResponseStore(ResponsesSettings()),
        sealer or Sealer(),
    )


def test_string_input_and_instructions() -> None:
    chat = run({"input": "hi", "instructions": "Be brief."}).chat
    assert chat.messages == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "hi"}]},
    ]


def test_a_tool_loop_becomes_assistant_turns_with_reasoning() -> None:
    sealer = Sealer()
    items = [
        {
            "type": "message",
            "role": "developer",
            "content": [{"type": "input_text", "text": "sys"}],
        },
        {"type": "message", "role": "user", "content": "list"},
        {
            "type": "reasoning",
            "id": "rs_1",
            "summary": [],
            "encrypted_content": sealer.seal("think"),
        },
        {
            "type": "function_call",
            "call_id": "c1",
            "name": "exec_command",
            "arguments": '{"cmd": "ls"}',
        },
        {
            "type": "function_call",
            "call_id": "c2",
            "name": "spawn",
            "namespace": "agents",
            "arguments": "{}",
        },
        {"type": "function_call_output", "call_id": "c1", "output": "a.txt"},
        {
            "type": "function_call_output",
            "call_id": "c2",
            "output": [{"type": "input_text", "text": "ok"}],
        },
        {
            "type": "reasoning",
            "summary": [{"type": "summary_text", "text": "again"}],
            "encrypted_content": None,
        },
        {"type": "custom_tool_call", "call_id": "c3", "name": "apply_patch", "input": "*** Begin"},
        {"type": "custom_tool_call_output", "call_id": "c3", "output": "done"},
        {
            "type": "message",
            "role": "assistant",
            "content": [{"type": "output_text", "text": "Done."}],
        },
    ]
    chat = run({"input": items, "tools": [FUNCTION, NAMESPACE, CUSTOM]}, sealer=sealer).chat
    roles = [m["role"] for m in chat.messages]
    assert roles == [
        "developer",
        "user",
        "assistant",
        "tool",
        "tool",
        "assistant",
        "tool",
        "assistant",
    ]
    first = chat.messages[2]
    assert first["reasoning_content"] == "think"
    assert [c["function"]["name"] for c in first["tool_calls"]] == ["exec_command", "agents__spawn"]
    assert chat.messages[4] == {"role": "tool", "tool_call_id": "c2", "content": "ok"}
    second = chat.messages[5]
    assert second["reasoning_content"] == "again"
    assert json.loads(second["tool_calls"][0]["function"]["arguments"]) == {"input": "*** Begin"}
    assert chat.messages[7]["content"] == "Done."


def test_reasoning_text_from_content_and_tampered_seal() -> None:
    item = {
        "type": "reasoning",
        "summary": [{"type": "summary_text", "text": "short"}],
        "content": [{"type": "reasoning_text", "text": "full"}],
    }
    chat = run({"input": [item]}).chat
    assert chat.messages[0]["reasoning_content"] == "full"
    sealed = Sealer().seal("other gateway")
    with pytest.raises(InvalidRequestError) as err:
        run({"input": [{"type": "reasoning", "summary": [], "encrypted_content": sealed}]})
    assert err.value.code == "invalid_encrypted_content"
    assert err.value.param == "input[0].encrypted_content"


@pytest.mark.parametrize(
    ("items", "param"),
    [
        (
            [
                {
                    "type": "message",
                    "role": "user",
                    "content": [{"type": "input_image", "image_url": "x"}],
                }
            ],
            "input[0].content[0].type",
        ),
        (
            [
                {
                    "type": "message",
                    "role": "user",
                    "content": [{"type": "input_file", "file_id": "f"}],
                }
            ],
            "input[0].content[0].type",
        ),
        ([{"type": "web_search_call", "id": "ws"}], "input[0].type"),
    ],
)
def test_unsupported_input_is_refused(items: list[Any], param: str) -> None:
    with pytest.raises(UnsupportedParameterError) as err:
        run({"input": items})
    assert err.value.param == param


@pytest.mark.parametrize(
    ("items", "param"),
    [
        ([{"type": "message", "role": "robot", "content": "x"}], "input[0].role"),
        ([{"type": "function_call", "name": "f", "arguments": "{}"}], "input[0].call_id"),
        (["text"], "input[0]"),
    ],
)
def test_malformed_input_is_refused(items: list[Any], param: str) -> None:
    with pytest.raises(InvalidRequestError) as err:
        run({"input": items})
    assert err.value.param == param


def test_tools_are_flattened_hosted_ones_left_out() -> None:
    t = run({"input": "x", "tools": [FUNCTION, NAMESPACE, CUSTOM, {"type": "web_search"}]})
    names = [tool["function"]["name"] for tool in t.chat.tools or []]
    assert names == ["exec_command", "agents__spawn", "apply_patch"]
    assert t.tools.target("agents__spawn").namespace == "agents"
    custom = (t.chat.tools or [])[2]["function"]
    assert custom["parameters"]["required"] == ["input"]
    assert "start: /.+/" in custom["parameters"]["properties"]["input"]["description"]
    assert t.tools.target("apply_patch").kind == "custom"


def test_bad_tools_are_refused() -> None:
    with pytest.raises(UnsupportedParameterError):
        run({"input": "x", "tools": [{"type": "teleport"}]})
    with pytest.raises(InvalidRequestError, match="Two tools"):
        run({"input": "x", "tools": [FUNCTION, FUNCTION]})


def test_tool_choices() -> None:
    tools = [FUNCTION, NAMESPACE, CUSTOM]
    assert (
        run({"input": "x", "tools": tools, "tool_choice": "required"}).chat.tool_choice.mode
        == "required"
    )
    named = run(
        {"input": "x", "tools": tools, "tool_choice": {"type": "function", "name": "exec_command"}}
    )
    assert (named.chat.tool_choice.mode, named.chat.tool_choice.name) == ("named", "exec_command")
    custom = run(
        {"input": "x", "tools": tools, "tool_choice": {"type": "custom", "name": "apply_patch"}}
    )
    assert custom.chat.tool_choice.name == "apply_patch"
    allowed = run(
        {
            "input": "x",
            "tools": tools,
            "tool_choice": {
                "type": "allowed_tools",
                "mode": "required",
                "tools": [{"type": "function", "name": "exec_command"}, {"type": "web_search"}],
            },
        }
    )
    assert allowed.chat.tool_choice.mode == "required"
    assert [t["function"]["name"] for t in allowed.chat.tools or []] == ["exec_command"]
    with pytest.raises(UnsupportedParameterError):
        run({"input": "x", "tools": tools, "tool_choice": {"type": "web_search_preview"}})


def test_reasoning_sampling_and_format() -> None:
    assert run({"input": "x", "reasoning": {"effort": "minimal"}}).chat.enable_thinking is False
    assert run({"input": "x", "reasoning": {"effort": "high"}}).chat.enable_thinking is True
    plain = run(
        {"input": "x", "reasoning": {"summary": "auto"}, "include": ["reasoning.encrypted_content"]}
    )
    assert plain.chat.enable_thinking is None and plain.summary and plain.encrypted_reasoning
    t = run(
        {
            "input": "x",
            "max_output_tokens": 10,
            "temperature": 0.5,
            "top_p": 0.9,
            "prompt_cache_key": "thread-1",
            "text": {
                "format": {"type": "json_schema", "name": "s", "schema": {"type": "object"}},
                "verbosity": "low",
            },
            "metadata": {"a": "b"},
            "service_tier": "auto",
            "truncation": "auto",
            "client_metadata": {"x": 1},
        }
    )
    assert t.chat.sampling == {"temperature": 0.5, "top_p": 0.9, "max_tokens": 10}
    assert t.chat.max_tokens_param == "max_output_tokens"
    assert t.chat.conversation_key == "thread-1"
    assert t.chat.output_format is not None and t.chat.output_format.kind == "json_schema"
    assert t.chat.output_format.param == "text.format"


@pytest.mark.parametrize(
    "extra",
    [
        {"background": True},
        {"conversation": "conv_1"},
        {"top_logprobs": 2},
        {"include": ["message.output_text.logprobs"]},
    ],
)
def test_what_cannot_be_honoured_is_refused(extra: dict[str, Any]) -> None:
    with pytest.raises(UnsupportedParameterError):
        run({"input": "x", **extra})


def test_previous_response_and_item_reference() -> None:
    store = ResponseStore(ResponsesSettings())
    with pytest.raises(NotFoundError):
        run({"input": "x", "previous_response_id": "resp_nope"}, store)
    earlier = [{"id": "msg_1", "type": "message", "role": "user", "content": "first"}]
    store.put({"id": "resp_1", "output": []}, earlier)
    t = run(
        {"input": [{"type": "item_reference", "id": "msg_1"}], "previous_response_id": "resp_1"},
        store,
    )
    assert [m["content"] for m in t.chat.messages] == [[{"type": "text", "text": "first"}]] * 2
    with pytest.raises(NotFoundError):
        run({"input": [{"type": "item_reference", "id": "msg_gone"}]}, store)
