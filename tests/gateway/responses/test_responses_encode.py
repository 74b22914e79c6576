"""The one fold behind both paths: every chunking streams events that add up to the same
response the non-streamed path returns."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any, cast

import pytest

from gateway.api.openai_responses.encode import OutputBuilder
from gateway.api.openai_responses.sealing import Sealer
from gateway.api.openai_responses.settings import ResponsesSettings
from gateway.api.openai_responses.store import ResponseStore
from gateway.api.openai_responses.translate import Translated, translate
from gateway.errors import BackendError
from gateway.glm47.parser import GLM47Parser

TOOLS = [
    {
        "type": "function",
        "name": "exec_command",
        "parameters": {"type": "object", "properties": {"cmd": {"type": "string"}}},
    },
    {
        "type": "namespace",
        "name": "agents",
        "tools": [
            {
                "type": "function",
                "name": "spawn",
                "parameters": {"type": "object", "properties": {}},
            }
        ],
    },
    {"type": "custom", "name": "apply_patch", "description": "Patch."},
]
RAW = (
    "Let me 想.</think>Running 🌤 now.<tool_call>exec_command<arg_key>cmd</arg_key><arg_value>ls -la"
    "</arg_value></tool_call><tool_call>agents__spawn</tool_call><tool_call>apply_patch<arg_key>input"
    '</arg_key><arg_value>*** Begin Patch\n+ "quoted" \\ tab\t</arg_value></tool_call>'
)


def translated(**extra: Any) -> Translated:
    body = {
        "model": "glm",
        "input": "go",
        "tools": TOOLS,
        "reasoning": {"summary": "auto"},
        "include": ["reasoning.encrypted_content"],
        **extra,
    }
    return translate(body, ResponseStore(ResponsesSettings()), Sealer())


def plan() -> Any:
    return SimpleNamespace(
        request_id="abc",
        created=1,
        model_name="glm",
        sampling=SimpleNamespace(temperature=0.7, top_p=1.0),
    )


def run(finish: str = "tool_calls") -> Any:
    return SimpleNamespace(
        prompt_tokens=5,
        cached_tokens=1,
        completion_tokens=9,
        reasoning_tokens=3,
        finish_reason=finish,
    )


def fold(
    t: Translated, raw: str, size: int, *, stream: bool, finish: str = "tool_calls"
) -> tuple[OutputBuilder, bytes]:
    tools = [dict(x) for x in t.chat.tools or []]
    parser = GLM47Parser(thinking=True, tools=tools)
    builder = OutputBuilder(t, cast(Any, plan()), Sealer(), stream=stream)
    out = [builder.open()] if stream else []
    for i in range(0, len(raw), size):
        out.append(builder.encode(parser.feed(raw[i : i + size])))
    out.append(builder.encode(parser.finish()))
    out.append(builder.close(cast(Any, run(finish))))
    return builder, b"".join(out)


def events(data: bytes) -> list[dict[str, Any]]:
    found = []
    for block in data.decode().split("\n\n"):
        if not block:
            continue
        name, payload = block.split("\n", 1)
        event = json.loads(payload.removeprefix("data: "))
        assert name == f"event: {event['type']}"
        found.append(event)
    return found


def without_secrets(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            k: without_secrets(v)
            for k, v in value.items()
            if k not in ("encrypted_content", "completed_at")
        }
    if isinstance(value, list):
        return [without_secrets(v) for v in value]
    return value


@pytest.mark.parametrize("size", [1, 3, 7, 1000])
def test_stream_adds_up_to_the_non_streamed_response(size: int) -> None:
    t = translated()
    plain, _ = fold(t, RAW, 1000, stream=False)
    _, data = fold(t, RAW, size, stream=True)
    evs = events(data)
    assert [e["sequence_number"] for e in evs] == list(range(len(evs)))
    assert evs[0]["type"] == "response.created" and evs[-1]["type"] == "response.completed"
    final = evs[-1]["response"]
    # Ids are the same across builders of one plan only by position: compare them apart.
    assert [i["type"] for i in final["output"]] == [
        "reasoning",
        "message",
        "function_call",
        "function_call",
        "custom_tool_call",
    ]
    for a, b in zip(final["output"], plain.final["output"] if plain.final else [], strict=True):
        a, b = dict(a), dict(b)
        assert a.pop("id") and b.pop("id")
        assert ("call_id" in a) == ("call_id" in b)
        a.pop("call_id", None), b.pop("call_id", None)
        assert without_secrets(a) == without_secrets(b)
    done = {e["item"]["id"]: e["item"] for e in evs if e["type"] == "response.output_item.done"}
    assert list(done.values()) == final["output"]
    reasoning, message, call, spawn, patch = final["output"]
    assert reasoning["content"] == [{"type": "reasoning_text", "text": "Let me 想."}]
    assert reasoning["summary"] == [{"type": "summary_text", "text": "Let me 想."}]
    assert Sealer is not None and reasoning["encrypted_content"].startswith("glmgw1.")
    assert message["content"][0]["text"] == "Running 🌤 now."
    assert (call["name"], json.loads(call["arguments"])) == ("exec_command", {"cmd": "ls -la"})
    assert (spawn["name"], spawn["namespace"], spawn["arguments"]) == ("spawn", "agents", "{}")
    assert patch["input"] == '*** Begin Patch\n+ "quoted" \\ tab\t'

    def joined(kind: str, item_id: str) -> str:
        return "".join(e["delta"] for e in evs if e["type"] == kind and e["item_id"] == item_id)

    assert joined("response.reasoning_text.delta", reasoning["id"]) == "Let me 想."
    assert joined("response.reasoning_summary_text.delta", reasoning["id"]) == "Let me 想."
    assert joined("response.output_text.delta", message["id"]) == "Running 🌤 now."
    assert joined("response.function_call_arguments.delta", call["id"]) == call["arguments"]
    assert joined("response.custom_tool_call_input.delta", patch["id"]) == patch["input"]
    assert final["usage"] == {
        "input_tokens": 5,
        "input_tokens_details": {"cached_tokens": 1},
        "output_tokens": 9,
        "output_tokens_details": {"reasoning_tokens": 3},
        "total_tokens": 14,
    }


def test_no_summary_no_encrypted_content_unless_asked() -> None:
    t = translate({"model": "glm", "input": "go"}, ResponseStore(ResponsesSettings()), Sealer())
    builder, data = fold(t, "think</think>answer", 2, stream=True, finish="stop")
    reasoning = builder.final["output"][0] if builder.final else {}
    assert reasoning["summary"] == [] and "encrypted_content" not in reasoning
    assert not any("summary" in e["type"] for e in events(data))


def test_length_is_incomplete_and_open_items_say_so() -> None:
    t = translated()
    _, data = fold(
        t,
        "x</think>partial answer<tool_call>exec_command<arg_key>cmd</arg_key><arg_value>ls",
        4,
        stream=True,
        finish="length",
    )
    final = events(data)[-1]
    assert final["type"] == "response.incomplete"
    body = final["response"]
    assert body["status"] == "incomplete"
    assert body["incomplete_details"] == {"reason": "max_output_tokens"}
    assert [i["status"] for i in body["output"]] == ["completed", "completed", "incomplete"]


def test_error_after_headers_ends_with_response_failed() -> None:
    builder = OutputBuilder(translated(), cast(Any, plan()), Sealer(), stream=True)
    data = builder.error(BackendError("engine died"))
    evs = events(data)
    assert [e["type"] for e in evs] == [
        "response.created",
        "response.in_progress",
        "error",
        "response.failed",
    ]
    assert evs[2]["code"] == "backend_error" and evs[2]["message"] == "engine died"
    assert evs[3]["response"]["error"] == {"code": "backend_error", "message": "engine died"}
    assert evs[3]["response"]["status"] == "failed"
