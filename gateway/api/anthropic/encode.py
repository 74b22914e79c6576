"""Parser events -> Anthropic content blocks: the SSE stream and the non-streamed message.

One ``BlockBuilder`` turns the parser's events into Anthropic's block events (start, deltas,
stop) in model order; the stream sends them as they come and the non-streamed message is the
fold of the very same events, so the two agree by construction. Every block that starts is
stopped, also when the generation ends inside it: Claude Code treats a block that is never
closed as no output, and asks again.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Callable
from typing import Any

from ...glm47.events import (
    ContentDelta,
    ParseEvent,
    ReasoningDelta,
    ToolCallArguments,
    ToolCallEnd,
    ToolCallStart,
)
from ...pipeline.run import Run
from ...pipeline.sse import sse_event
from ..openai_chat.encode import coalesce

BlockEvent = dict[str, Any]


def message_id(run: Run) -> str:
    return "msg_" + run.plan.request_id


def tool_use_id() -> str:
    return "toolu_" + secrets.token_hex(12)


def signature(thinking: str) -> str:
    """A thinking block's signature. Anthropic's is an encrypted copy of the thinking; ours
    only has to come back with the block (clients echo it; any value is accepted), so it is
    a digest that is the same for a streamed and a non-streamed answer."""
    return "glm-" + hashlib.sha256(thinking.encode()).hexdigest()[:32]


def stop_reason(run: Run) -> tuple[str, str | None]:
    if run.finish_reason == "length":
        return "max_tokens", None
    if run.finish_reason == "tool_calls":
        return "tool_use", None
    if run.stop_sequence is not None:
        return "stop_sequence", run.stop_sequence
    return "end_turn", None


def usage(run: Run) -> dict[str, int]:
    """Anthropic counts cached prompt tokens apart: the prompt is input + cache_read."""
    cached = min(run.cached_tokens, run.prompt_tokens)
    return {
        "input_tokens": run.prompt_tokens - cached,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": cached,
        "output_tokens": run.completion_tokens,
    }


class BlockBuilder:
    """Parser events in, Anthropic block events out; ``blocks`` is what they fold to."""

    def __init__(self, ids: Callable[[int], str] | None = None) -> None:
        # Tool-use ids by call index: the run's, so preserved thinking can key the turn.
        self._ids = ids or (lambda _: tool_use_id())
        self.blocks: list[dict[str, Any]] = []
        self._open: dict[str, Any] | None = None
        self._parts: list[str] = []

    def feed(self, events: list[ParseEvent]) -> list[BlockEvent]:
        out: list[BlockEvent] = []
        for event in coalesce(events):
            match event:
                case ReasoningDelta(text) if text:
                    self._ensure(out, "thinking")
                    out.append(self._delta({"type": "thinking_delta", "thinking": text}, text))
                case ContentDelta(text) if text:
                    self._ensure(out, "text")
                    out.append(self._delta({"type": "text_delta", "text": text}, text))
                case ToolCallStart(index, name):
                    self._close(out)
                    self._start(
                        out,
                        {"type": "tool_use", "id": self._ids(index), "name": name, "input": {}},
                    )
                case ToolCallArguments(_, fragment) if fragment and self._kind == "tool_use":
                    delta = {"type": "input_json_delta", "partial_json": fragment}
                    out.append(self._delta(delta, fragment))
                case ToolCallEnd():
                    if self._kind == "tool_use":
                        self._close(out)
        return out

    def finish(self) -> list[BlockEvent]:
        """Close what is open; a message with no block at all gets an empty text block, so
        every answer has one (a stream without ``content_block_start`` is malformed to
        Claude Code)."""
        out: list[BlockEvent] = []
        if not self.blocks:
            self._ensure(out, "text")
        self._close(out)
        return out

    # -- internals ------------------------------------------------------------------------

    @property
    def _kind(self) -> str | None:
        return None if self._open is None else str(self._open["type"])

    def _ensure(self, out: list[BlockEvent], kind: str) -> None:
        if self._kind == kind:
            return
        self._close(out)
        if kind == "thinking":
            self._start(out, {"type": "thinking", "thinking": "", "signature": ""})
        else:
            self._start(out, {"type": "text", "text": ""})

    def _start(self, out: list[BlockEvent], block: dict[str, Any]) -> None:
        self._open = block
        self._parts = []
        self.blocks.append(block)
        out.append(
            {
                "type": "content_block_start",
                "index": len(self.blocks) - 1,
                "content_block": dict(block),
            }
        )

    def _delta(self, delta: dict[str, Any], text: str) -> BlockEvent:
        self._parts.append(text)
        return {"type": "content_block_delta", "index": len(self.blocks) - 1, "delta": delta}

    def _close(self, out: list[BlockEvent]) -> None:
        block = self._open
        if block is None:
            return
        index = len(self.blocks) - 1
        whole = "".join(self._parts)
        match block["type"]:
            case "thinking":
                block["thinking"] = whole
                block["signature"] = signature(whole)
                out.append(
                    {
                        "type": "content_block_delta",
                        "index": index,
                        "delta": {"type": "signature_delta", "signature": block["signature"]},
                    }
                )
            case "text":
                block["text"] = whole
            case "tool_use":
                block["input"] = _arguments(whole)
        out.append({"type": "content_block_stop", "index": index})
        self._open = None
        self._parts = []


def _arguments(text: str) -> Any:
    if not text.strip():
        return {}
    try:
        return json.loads(text)
    except ValueError:
        # Cut off by max_tokens inside the call: the arguments so far are not JSON yet.
        return {}


def message(run: Run, model: str, content: list[dict[str, Any]]) -> dict[str, Any]:
    reason, sequence = stop_reason(run)
    return {
        "id": message_id(run),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": reason,
        "stop_sequence": sequence,
        "usage": usage(run),
    }


async def complete(run: Run, model: str) -> dict[str, Any]:
    """The non-streamed message: the stream's block events, folded."""
    builder = BlockBuilder(run.call_id)
    try:
        async for group in run.events():
            builder.feed(group)
    finally:
        await run.aclose()
    builder.finish()
    return message(run, model, builder.blocks)


class MessagesStreamEncoder:
    """message_start, ping, the block events, message_delta, message_stop."""

    def __init__(self, model: str) -> None:
        self._model = model
        self._builder = BlockBuilder()

    def open(self, run: Run) -> bytes:
        self._builder = BlockBuilder(run.call_id)
        start: dict[str, Any] = {
            "id": message_id(run),
            "type": "message",
            "role": "assistant",
            "model": self._model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {**usage(run), "output_tokens": 0},
        }
        return sse_event("message_start", {"type": "message_start", "message": start}) + (
            sse_event("ping", {"type": "ping"})
        )

    def encode(self, group: list[ParseEvent]) -> bytes:
        return _frame(self._builder.feed(group))

    def close(self, run: Run) -> bytes:
        reason, sequence = stop_reason(run)
        delta = {
            "type": "message_delta",
            "delta": {"stop_reason": reason, "stop_sequence": sequence},
            "usage": usage(run),
        }
        return (
            _frame(self._builder.finish())
            + sse_event("message_delta", delta)
            + sse_event("message_stop", {"type": "message_stop"})
        )


def _frame(events: list[BlockEvent]) -> bytes:
    return b"".join(sse_event(str(event["type"]), event) for event in events)
