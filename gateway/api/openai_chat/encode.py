"""Parser events -> OpenAI chat completion chunks, and the non-streamed completion."""

from __future__ import annotations

from typing import Any

from ...glm47.events import (
    ContentDelta,
    ParsedMessage,
    ParseEvent,
    ReasoningDelta,
    ToolCallArguments,
    ToolCallEnd,
    ToolCallStart,
)
from ...pipeline.run import Run
from ...pipeline.sse import sse_data

DONE = b"data: [DONE]\n\n"


def completion_id(run: Run) -> str:
    return "chatcmpl-" + run.plan.request_id


def usage(run: Run) -> dict[str, Any]:
    return {
        "prompt_tokens": run.prompt_tokens,
        "completion_tokens": run.completion_tokens,
        "total_tokens": run.prompt_tokens + run.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": run.cached_tokens},
        "completion_tokens_details": {"reasoning_tokens": run.reasoning_tokens},
    }


def coalesce(events: list[ParseEvent]) -> list[ParseEvent]:
    """Merge neighbouring events of one kind, so a multi-token chunk (speculative decoding, a
    slow reader) goes out as one delta per kind rather than one per parser step."""
    if len(events) < 2:
        return events
    out: list[ParseEvent] = [events[0]]
    for event in events[1:]:
        last = out[-1]
        match event, last:
            case ReasoningDelta(text), ReasoningDelta(before):
                out[-1] = ReasoningDelta(before + text)
            case ContentDelta(text), ContentDelta(before):
                out[-1] = ContentDelta(before + text)
            case ToolCallArguments(index, text), ToolCallArguments(last_index, before) if (
                index == last_index
            ):
                out[-1] = ToolCallArguments(index, before + text)
            case _:
                out.append(event)
    return out


class ChatStreamEncoder:
    """A role chunk, one chunk per delta, the finish chunk, usage if asked for, [DONE]."""

    def __init__(self, run: Run, include_usage: bool) -> None:
        plan = run.plan
        self._base = {
            "id": completion_id(run),
            "object": "chat.completion.chunk",
            "created": plan.created,
            "model": plan.model_name,
        }
        self._include_usage = include_usage
        self._run = run

    def _chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}
        return sse_data({**self._base, "choices": [choice]})

    def open(self, run: Run) -> bytes:
        # content null, not "": the SDK's stream helpers then assemble the same message as
        # the non-streaming response when the model only calls tools.
        return self._chunk({"role": "assistant", "content": None})

    def encode(self, group: list[ParseEvent]) -> bytes:
        return b"".join(
            self._chunk(delta) for delta in map(self._delta, coalesce(group)) if delta is not None
        )

    def close(self, run: Run) -> bytes:
        out = self._chunk({}, run.finish_reason)
        if self._include_usage:
            out += sse_data({**self._base, "choices": [], "usage": usage(run)})
        return out + DONE

    def _delta(self, event: ParseEvent) -> dict[str, Any] | None:
        match event:
            case ReasoningDelta(text):
                return {"reasoning_content": text, "reasoning": text}
            case ContentDelta(text):
                return {"content": text}
            case ToolCallStart(index, name):
                return {
                    "tool_calls": [
                        {
                            "index": index,
                            "id": self._run.call_id(index),
                            "type": "function",
                            "function": {"name": name, "arguments": ""},
                        }
                    ]
                }
            case ToolCallArguments(index, fragment):
                return {"tool_calls": [{"index": index, "function": {"arguments": fragment}}]}
            case ToolCallEnd():
                return None


def completion(run: Run, parsed: ParsedMessage) -> dict[str, Any]:
    """The non-streamed ``chat.completion``."""
    message: dict[str, Any] = {
        "role": "assistant",
        "content": parsed.content,
        "reasoning_content": parsed.reasoning_content,
        "reasoning": parsed.reasoning_content,
    }
    if parsed.tool_calls:
        message["tool_calls"] = [
            {
                "id": run.call_id(index),
                "type": "function",
                "function": {"name": call.name, "arguments": call.arguments},
            }
            for index, call in enumerate(parsed.tool_calls)
        ]
    return {
        "id": completion_id(run),
        "object": "chat.completion",
        "created": run.plan.created,
        "model": run.plan.model_name,
        "choices": [
            {
                "index": 0,
                "message": message,
                "finish_reason": run.finish_reason,
                "logprobs": None,
            }
        ],
        "usage": usage(run),
    }
