"""Anthropic Messages requests -> ChatInput: the unit tests of the translation."""

from __future__ import annotations

import json
from typing import Any

import pytest

from gateway.api.anthropic.request import CountTokensRequest, MessagesRequest
from gateway.api.anthropic.translate import to_chat_input, to_messages
from gateway.errors import InvalidRequestError, UnsupportedParameterError
from gateway.glm47.render import render_prompt

BILLING = "x-anthropic-billing-header: cc_version=2.1.197.123; cc_entrypoint=sdk-cli;"


def request(**fields: Any) -> MessagesRequest:
    body: dict[str, Any] = {
        "model": "claude-sonnet-5-5",
        "max_tokens": 32000,
        "messages": [{"role": "user", "content": "hi"}],
    }
    body.update(fields)
    return MessagesRequest.model_validate(body)


def test_system_blocks_drop_the_billing_header_and_keep_the_rest() -> None:
    req = request(
        system=[
            {"type": "text", "text": BILLING},
            {"type": "text", "text": "You are an agent.", "cache_control": {"type": "ephemeral"}},
            {"type": "text", "text": "\nBe brief."},
        ]
    )
    messages = to_messages(req)
    assert messages[0] == {"role": "system", "content": "You are an agent.\nBe brief."}
    # The header varies per request; the prompt must not.
    other = request(system=[{"type": "text", "text": BILLING.replace("123", "999")}])
    assert to_messages(other) == [{"role": "user", "content": "hi"}]


def test_system_string_and_system_messages_where_they_stand() -> None:
    req = request(
        system="Top.",
        messages=[
            {"role": "user", "content": "a"},
            {"role": "system", "content": [{"type": "text", "text": "Env: linux"}]},
            {"role": "user", "content": "b"},
        ],
    )
    assert to_messages(req) == [
        {"role": "system", "content": "Top."},
        {"role": "user", "content": "a"},
        {"role": "system", "content": "Env: linux"},
        {"role": "user", "content": "b"},
    ]


def agent_history() -> list[dict[str, Any]]:
    return [
        {"role": "user", "content": [{"type": "text", "text": "Weather in Oslo and Rome?"}]},
        {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "Two cities.", "signature": ""},
                {"type": "text", "text": "Checking."},
                {
                    "type": "tool_use",
                    "id": "toolu_1",
                    "name": "get_weather",
                    "input": {"city": "Oslo"},
                },
                {
                    "type": "tool_use",
                    "id": "toolu_2",
                    "name": "get_weather",
                    "input": {"city": "Rome"},
                },
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "Sunny"},
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_2",
                    "content": [{"type": "text", "text": "Rain"}],
                    "is_error": True,
                },
                {"type": "text", "text": "<system-reminder>ok</system-reminder>"},
            ],
        },
    ]


def test_tool_loop_becomes_reasoning_calls_and_tool_messages() -> None:
    messages = to_messages(request(messages=agent_history()))
    assert messages == [
        {"role": "user", "content": "Weather in Oslo and Rome?"},
        {
            "role": "assistant",
            "content": "Checking.",
            "reasoning_content": "Two cities.",
            "tool_calls": [
                {
                    "id": "toolu_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": {"city": "Oslo"}},
                },
                {
                    "id": "toolu_2",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": {"city": "Rome"}},
                },
            ],
        },
        {"role": "tool", "tool_call_id": "toolu_1", "content": "Sunny"},
        {"role": "tool", "tool_call_id": "toolu_2", "content": "Error: Rain"},
        {"role": "user", "content": "<system-reminder>ok</system-reminder>"},
    ]


def test_renders_like_the_same_conversation_through_chat_completions() -> None:
    openai_messages = [
        {"role": "user", "content": "Weather in Oslo and Rome?"},
        {
            "role": "assistant",
            "content": "Checking.",
            "reasoning_content": "Two cities.",
            "tool_calls": [
                {
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
                },
                {
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'},
                },
            ],
        },
        {"role": "tool", "content": "Sunny"},
        {"role": "tool", "content": "Error: Rain"},
        {"role": "user", "content": "<system-reminder>ok</system-reminder>"},
    ]
    ours = to_messages(request(messages=agent_history()))
    for clear in (True, False):
        assert render_prompt(ours, clear_thinking=clear) == render_prompt(
            openai_messages, clear_thinking=clear
        )


def test_redacted_thinking_is_accepted_and_adds_nothing() -> None:
    req = request(
        messages=[
            {"role": "user", "content": "q"},
            {
                "role": "assistant",
                "content": [
                    {"type": "redacted_thinking", "data": "opaque"},
                    {"type": "text", "text": "a"},
                ],
            },
            {"role": "user", "content": "q2"},
        ]
    )
    assert to_messages(req)[1] == {"role": "assistant", "content": "a", "reasoning_content": ""}


@pytest.mark.parametrize(
    ("messages", "param"),
    [
        (
            [{"role": "user", "content": [{"type": "image", "source": {"type": "base64"}}]}],
            "messages.0.content.0",
        ),
        (
            [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "see"},
                        {"type": "document", "source": {"type": "text", "data": "x"}},
                    ],
                }
            ],
            "messages.0.content.1",
        ),
        (
            [
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "tool_result",
                            "tool_use_id": "t",
                            "content": [{"type": "image", "source": {}}],
                        }
                    ],
                }
            ],
            "messages.0.content.0.content.0",
        ),
    ],
)
def test_images_and_documents_are_refused(messages: list[Any], param: str) -> None:
    with pytest.raises(UnsupportedParameterError, match="reads text only") as info:
        to_messages(request(messages=messages))
    assert info.value.param == param
    assert info.value.status_code == 400


def test_blocks_in_the_wrong_role_are_refused() -> None:
    bad = [{"role": "user", "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {}}]}]
    with pytest.raises(InvalidRequestError, match="not allowed in a user message"):
        to_messages(request(messages=bad))


def test_prefill_is_refused() -> None:
    messages = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "The answer"}]
    with pytest.raises(UnsupportedParameterError, match="prefill") as info:
        to_messages(request(messages=messages))
    assert info.value.param == "messages.1.role"


TOOLS: list[dict[str, Any]] = [
    {
        "name": "Write",
        "description": "Write a file",
        "input_schema": {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "type": "object",
            "properties": {"file_path": {"type": "string"}, "content": {"type": "string"}},
            "required": ["file_path", "content"],
            "additionalProperties": False,
        },
        "cache_control": {"type": "ephemeral"},
    },
    {"name": "ToolSearch", "input_schema": {"type": "object"}, "defer_loading": True},
]


def test_tools_become_function_tools_and_deferred_ones_are_hidden() -> None:
    chat = to_chat_input(request(tools=TOOLS), "glm")
    assert chat.tools == [
        {
            "type": "function",
            "function": {
                "name": "Write",
                "description": "Write a file",
                "parameters": TOOLS[0]["input_schema"],
            },
        }
    ]
    # The schema keeps the client's key order: it renders verbatim.
    assert list(chat.tools[0]["function"]["parameters"]) == list(TOOLS[0]["input_schema"])
    assert chat.hidden_tools == [
        {"type": "function", "function": {"name": "ToolSearch", "parameters": {"type": "object"}}}
    ]


def test_server_tools_are_refused() -> None:
    tools = [{"type": "web_search_20250305", "name": "web_search", "max_uses": 3}]
    with pytest.raises(UnsupportedParameterError, match="only custom tools") as info:
        to_chat_input(request(tools=tools), "glm")
    assert info.value.param == "tools.0"


@pytest.mark.parametrize(
    ("choice", "mode", "name", "parallel"),
    [
        (None, "auto", None, True),
        ({"type": "auto"}, "auto", None, True),
        ({"type": "auto", "disable_parallel_tool_use": True}, "auto", None, False),
        ({"type": "any"}, "required", None, True),
        (
            {"type": "tool", "name": "Write", "disable_parallel_tool_use": True},
            "named",
            "Write",
            False,
        ),
        ({"type": "none"}, "none", None, True),
    ],
)
def test_tool_choice(choice: Any, mode: str, name: str | None, parallel: bool) -> None:
    fields: dict[str, Any] = {"tools": TOOLS}
    if choice is not None:
        fields["tool_choice"] = choice
    chat = to_chat_input(request(**fields), "glm")
    assert (chat.tool_choice.mode, chat.tool_choice.name) == (mode, name)
    assert chat.parallel_tool_calls is parallel


@pytest.mark.parametrize(
    ("thinking", "enabled"),
    [
        (None, None),
        ({"type": "enabled", "budget_tokens": 4096}, True),
        ({"type": "adaptive", "display": "omitted"}, True),
        ({"type": "adaptive", "display": "updates"}, True),
        ({"type": "disabled"}, False),
    ],
)
def test_thinking(thinking: Any, enabled: bool | None) -> None:
    fields: dict[str, Any] = {} if thinking is None else {"thinking": thinking}
    assert to_chat_input(request(**fields), "glm").enable_thinking is enabled


def test_keep_all_thinking_is_preserved_thinking() -> None:
    keep_all = {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]}
    assert to_chat_input(request(context_management=keep_all), "glm").clear_thinking is False
    turns = {
        "edits": [
            {"type": "clear_thinking_20251015", "keep": {"type": "thinking_turns", "value": 2}}
        ]
    }
    assert to_chat_input(request(context_management=turns), "glm").clear_thinking is None
    assert to_chat_input(request(), "glm").clear_thinking is None


def test_sampling_fields() -> None:
    chat = to_chat_input(
        request(temperature=0.2, top_p=0.9, top_k=40, stop_sequences=["END"], stream=True), "glm"
    )
    assert chat.sampling == {
        "max_tokens": 32000,
        "temperature": 0.2,
        "top_p": 0.9,
        "top_k": 40,
        "stop": ["END"],
    }
    assert chat.stream is True
    # Nothing set: only the limit, so the route's defaults apply.
    assert to_chat_input(request(), "glm").sampling == {"max_tokens": 32000}


def test_session_id_from_metadata_is_the_conversation_key() -> None:
    user_id = json.dumps({"device_id": "d", "account_uuid": "", "session_id": "s-1"})
    chat = to_chat_input(request(metadata={"user_id": user_id}), "glm")
    assert chat.conversation_key == "s-1"
    assert to_chat_input(request(metadata={"user_id": "alice"}), "glm").conversation_key is None
    # ... and nothing of it reaches the prompt.
    assert "s-1" not in json.dumps(chat.messages)


def test_unknown_fields_and_betas_are_ignored() -> None:
    req = request(
        output_config={"effort": "high"},
        context_management={"edits": [{"type": "clear_tool_uses_20250919"}]},
        safeguards={"x": 1},
        container="c",
        mcp_servers=[],
        service_tier="auto",
        messages=[{"role": "user", "content": [{"type": "text", "text": "hi", "citations": None}]}],
    )
    chat = to_chat_input(req, "glm")
    assert chat.reasoning_effort == "high"
    assert chat.messages == [{"role": "user", "content": "hi"}]


def test_structured_output() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "string"}}}
    chat = to_chat_input(
        request(output_config={"format": {"type": "json_schema", "schema": schema}}), "glm"
    )
    assert chat.output_format is not None
    assert (chat.output_format.kind, chat.output_format.schema) == ("json_schema", schema)


def test_count_tokens_request_needs_no_max_tokens() -> None:
    req = CountTokensRequest.model_validate(
        {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    )
    chat = to_chat_input(req, "glm")
    assert chat.sampling == {} and chat.stream is False
