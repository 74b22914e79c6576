"""Parser events -> Anthropic blocks: stream events and the folded message agree."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import pytest

from gateway.api.anthropic.encode import (
    BlockBuilder,
    MessagesStreamEncoder,
    signature,
    stop_reason,
    usage,
)
from gateway.api.anthropic.errors import envelope, error_event, error_response
from gateway.errors import (
    AuthenticationError,
    BackendError,
    BackendTimeoutError,
    BackendUnavailableError,
    GatewayError,
    InvalidRequestError,
    ModelNotFoundError,
    PayloadTooLargeError,
    RateLimitError,
)
from gateway.glm47.events import (
    ContentDelta,
    ParseEvent,
    ReasoningDelta,
    ToolCallArguments,
    ToolCallEnd,
    ToolCallStart,
)

EVENTS: list[list[ParseEvent]] = [
    [ReasoningDelta("Need "), ReasoningDelta("weather.")],
    [ContentDelta("Checking "), ContentDelta("both.")],
    [ToolCallStart(0, "get_weather"), ToolCallArguments(0, '{"city": "')],
    [ToolCallArguments(0, 'Oslo"}'), ToolCallEnd(0)],
    [ToolCallStart(1, "list_files"), ToolCallArguments(1, "{}"), ToolCallEnd(1)],
]


def fold(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What a client assembles from the stream events (as the SDKs do)."""
    blocks: list[dict[str, Any]] = []
    buffers: dict[int, str] = {}
    for event in events:
        if event["type"] == "content_block_start":
            assert event["index"] == len(blocks)
            blocks.append(dict(event["content_block"]))
        elif event["type"] == "content_block_delta":
            block, delta = blocks[event["index"]], event["delta"]
            match delta["type"]:
                case "text_delta":
                    block["text"] += delta["text"]
                case "thinking_delta":
                    block["thinking"] += delta["thinking"]
                case "signature_delta":
                    block["signature"] = delta["signature"]
                case "input_json_delta":
                    buffers[event["index"]] = (
                        buffers.get(event["index"], "") + delta["partial_json"]
                    )
        elif event["type"] == "content_block_stop" and event["index"] in buffers:
            blocks[event["index"]]["input"] = json.loads(buffers[event["index"]])
    return blocks


def test_blocks_in_model_order_and_the_stream_folds_to_them() -> None:
    builder = BlockBuilder()
    events = [e for group in EVENTS for e in builder.feed(group)] + builder.finish()
    blocks = builder.blocks
    assert [b["type"] for b in blocks] == ["thinking", "text", "tool_use", "tool_use"]
    assert blocks[0] == {
        "type": "thinking",
        "thinking": "Need weather.",
        "signature": signature("Need weather."),
    }
    assert blocks[1] == {"type": "text", "text": "Checking both."}
    assert (blocks[2]["name"], blocks[2]["input"]) == ("get_weather", {"city": "Oslo"})
    assert (blocks[3]["name"], blocks[3]["input"]) == ("list_files", {})
    assert blocks[2]["id"].startswith("toolu_") and blocks[2]["id"] != blocks[3]["id"]
    assert fold(events) == blocks
    # Every block that starts stops, in order, before the next one starts.
    bounds = [(e["type"], e["index"]) for e in events if e["type"] != "content_block_delta"]
    assert bounds == [
        (kind, i) for i in range(4) for kind in ("content_block_start", "content_block_stop")
    ]


def test_arguments_stream_as_generated() -> None:
    builder = BlockBuilder()
    out = builder.feed([ToolCallStart(0, "write"), ToolCallArguments(0, '{"content": "ab')])
    out += builder.feed([ToolCallArguments(0, 'cd"}')])
    deltas = [e["delta"]["partial_json"] for e in out if e["type"] == "content_block_delta"]
    assert deltas == ['{"content": "ab', 'cd"}']


def test_a_block_cut_off_is_still_closed() -> None:
    builder = BlockBuilder()
    builder.feed([ReasoningDelta("thinking until the limit")])
    closing = builder.finish()
    assert [e["type"] for e in closing] == ["content_block_delta", "content_block_stop"]
    assert closing[0]["delta"]["type"] == "signature_delta"
    builder = BlockBuilder()
    builder.feed([ToolCallStart(0, "f"), ToolCallArguments(0, '{"a": "un')])
    assert builder.finish()[-1]["type"] == "content_block_stop"
    assert builder.blocks[0]["input"] == {}


def test_an_empty_answer_still_has_a_block() -> None:
    builder = BlockBuilder()
    events = builder.finish()
    assert [e["type"] for e in events] == ["content_block_start", "content_block_stop"]
    assert builder.blocks == [{"type": "text", "text": ""}]


def fake_run(**kwargs: Any) -> Any:
    fields: dict[str, Any] = {
        "finish_reason": "stop",
        "stop_sequence": None,
        "prompt_tokens": 100,
        "cached_tokens": 0,
        "completion_tokens": 7,
        "plan": SimpleNamespace(request_id="abc"),
        "call_id": lambda index: f"toolu_{index}",
    }
    fields.update(kwargs)
    return SimpleNamespace(**fields)


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({}, ("end_turn", None)),
        ({"finish_reason": "length"}, ("max_tokens", None)),
        ({"finish_reason": "tool_calls"}, ("tool_use", None)),
        ({"stop_sequence": "END"}, ("stop_sequence", "END")),
    ],
)
def test_stop_reason(fields: dict[str, Any], expected: tuple[str, str | None]) -> None:
    assert stop_reason(fake_run(**fields)) == expected


def test_usage_counts_cached_tokens_apart() -> None:
    assert usage(fake_run(cached_tokens=60)) == {
        "input_tokens": 40,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 60,
        "output_tokens": 7,
    }


def sse(data: bytes) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for frame in data.decode().split("\n\n"):
        if not frame:
            continue
        name_line, data_line = frame.split("\n")
        assert name_line.startswith("event: ") and data_line.startswith("data: ")
        payload = json.loads(data_line[6:])
        assert payload["type"] == name_line[7:]
        out.append((name_line[7:], payload))
    return out


def test_stream_framing() -> None:
    run = fake_run(finish_reason="tool_calls", cached_tokens=10)
    encoder = MessagesStreamEncoder("claude-sonnet-5-5")
    data = encoder.open(run) + b"".join(encoder.encode(g) for g in EVENTS) + encoder.close(run)
    events = sse(data)
    names = [name for name, _ in events]
    assert names[:2] == ["message_start", "ping"]
    assert names[-2:] == ["message_delta", "message_stop"]
    start = events[0][1]["message"]
    assert start["id"] == "msg_abc" and start["model"] == "claude-sonnet-5-5"
    assert start["content"] == [] and start["usage"]["input_tokens"] == 90
    delta = events[-2][1]
    assert delta["delta"] == {"stop_reason": "tool_use", "stop_sequence": None}
    assert delta["usage"]["output_tokens"] == 7
    assert [b["type"] for b in fold([p for _, p in events])] == [
        "thinking",
        "text",
        "tool_use",
        "tool_use",
    ]


@pytest.mark.parametrize(
    ("error", "status", "kind"),
    [
        (InvalidRequestError("bad", param="messages.0"), 400, "invalid_request_error"),
        (AuthenticationError("key"), 401, "authentication_error"),
        (ModelNotFoundError("nope", param="model"), 404, "not_found_error"),
        (PayloadTooLargeError("big"), 413, "request_too_large"),
        (RateLimitError("full", headers={"Retry-After": "3"}), 429, "rate_limit_error"),
        (GatewayError("oops"), 500, "api_error"),
        (BackendError("engine died"), 500, "api_error"),
        (BackendUnavailableError("loading"), 529, "overloaded_error"),
        (BackendTimeoutError("slow"), 504, "timeout_error"),
    ],
)
def test_error_envelope(error: GatewayError, status: int, kind: str) -> None:
    response = error_response(error)
    assert response.status_code == status
    body = json.loads(bytes(response.body))
    assert body == envelope(error)
    assert body["type"] == "error" and body["error"]["type"] == kind
    if error.param:
        assert body["error"]["message"].startswith(f"{error.param}: ")
    if isinstance(error, RateLimitError):
        assert response.headers["retry-after"] == "3"
    assert sse(error_event(error)) == [("error", body)]
