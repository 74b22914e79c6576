"""Parser events -> Responses output items and stream events, one fold for both paths.

``OutputBuilder`` turns each group of parser events into output items and, when streaming,
their SSE events (``sequence_number`` counts every event). The non-streamed response runs the
same fold without the bytes, so a stream's final ``response.completed`` and the non-streamed
response are the same object by construction.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ...errors import GatewayError
from ...glm47.events import (
    ContentDelta,
    ParseEvent,
    ReasoningDelta,
    ToolCallArguments,
    ToolCallEnd,
    ToolCallStart,
)
from ...pipeline.plan import Plan, new_id
from ...pipeline.run import Run
from ...pipeline.sse import sse_event
from .sealing import Sealer
from .tools import ToolSet, custom_input
from .translate import Translated


@dataclass(slots=True)
class _Text:
    """An open reasoning or message item."""

    kind: str  # "reasoning" | "message"
    item: dict[str, Any]
    index: int
    parts: list[str] = field(default_factory=list)


@dataclass(slots=True)
class _Call:
    item: dict[str, Any]
    index: int
    custom: bool
    fragments: list[str] = field(default_factory=list)
    # Custom tools: inside the raw string value, and the raw text streamed so far.
    in_input: bool = False
    streamed: list[str] = field(default_factory=list)


def _usage(run: Run) -> dict[str, Any]:
    return {
        "input_tokens": run.prompt_tokens,
        "input_tokens_details": {"cached_tokens": run.cached_tokens},
        "output_tokens": run.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": run.reasoning_tokens},
        "total_tokens": run.prompt_tokens + run.completion_tokens,
    }


class OutputBuilder:
    def __init__(
        self,
        translated: Translated,
        plan: Plan,
        sealer: Sealer,
        *,
        stream: bool,
        on_done: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self._t = translated
        self._plan = plan
        self._sealer = sealer
        self._tools: ToolSet = translated.tools
        self._stream = stream
        self._on_done = on_done
        self.id = "resp_" + plan.request_id
        self.output: list[dict[str, Any]] = []
        self._seq = 0
        self._opened = False
        self._text: _Text | None = None
        self._calls: dict[int, _Call] = {}
        self._out: list[bytes] = []
        #: The finished response object, once ``close`` ran.
        self.final: dict[str, Any] | None = None

    # -- the response object ------------------------------------------------------------------

    def response(self, status: str, run: Run | None = None) -> dict[str, Any]:
        request = self._t.request
        plan = self._plan
        reasoning = request.reasoning
        text: dict[str, Any] = {"format": {"type": "text"}}
        if request.text is not None:
            if request.text.format is not None:
                text["format"] = request.text.format
            if request.text.verbosity is not None:
                text["verbosity"] = request.text.verbosity
        body: dict[str, Any] = {
            "id": self.id,
            "object": "response",
            "created_at": plan.created,
            "status": status,
            "background": False,
            "error": None,
            "incomplete_details": None,
            "instructions": request.instructions,
            "max_output_tokens": request.max_output_tokens,
            "max_tool_calls": request.max_tool_calls,
            "model": plan.model_name,
            "output": list(self.output) if status != "in_progress" else [],
            "parallel_tool_calls": request.parallel_tool_calls is not False,
            "previous_response_id": request.previous_response_id,
            "prompt_cache_key": request.prompt_cache_key,
            "reasoning": {
                "effort": reasoning.effort if reasoning else None,
                "summary": request.summary,
            },
            "safety_identifier": request.safety_identifier,
            "service_tier": request.service_tier or "default",
            "store": self._t.store,
            "temperature": plan.sampling.temperature,
            "text": text,
            "tool_choice": request.tool_choice if request.tool_choice is not None else "auto",
            "tools": list(request.tools or []),
            "top_p": plan.sampling.top_p,
            "truncation": request.truncation or "disabled",
            "usage": _usage(run) if run is not None else None,
            "user": request.user,
            "metadata": request.metadata or {},
        }
        if status in ("completed", "incomplete"):
            body["completed_at"] = int(time.time())
        return body

    # -- events -------------------------------------------------------------------------------

    def _event(self, kind: str, **fields: Any) -> None:
        if self._stream:
            self._out.append(
                sse_event(kind, {"type": kind, "sequence_number": self._seq, **fields})
            )
        self._seq += 1

    def _item_event(self, kind: str, item_id: str, output_index: int, **fields: Any) -> None:
        """An event about one output item: its id and place lead, as in OpenAI's stream."""
        self._event(kind, item_id=item_id, output_index=output_index, **fields)

    def _flush(self) -> bytes:
        data = b"".join(self._out)
        self._out.clear()
        return data

    def open(self, run: Run | None = None) -> bytes:
        self._begin()
        return self._flush()

    def _begin(self) -> None:
        if not self._opened:
            self._opened = True
            self._event("response.created", response=self.response("in_progress"))
            self._event("response.in_progress", response=self.response("in_progress"))

    def encode(self, group: list[ParseEvent]) -> bytes:
        for event in group:
            match event:
                case ReasoningDelta(text):
                    self._text_delta("reasoning", text)
                case ContentDelta(text):
                    self._text_delta("message", text)
                case ToolCallStart(index, name):
                    self._call_start(index, name)
                case ToolCallArguments(index, fragment):
                    self._call_arguments(index, fragment)
                case ToolCallEnd(index):
                    self._call_end(index, "completed")
        return self._flush()

    def close(self, run: Run) -> bytes:
        incomplete = run.finish_reason == "length"
        self._close_text("incomplete" if incomplete else "completed")
        for index in sorted(self._calls):
            self._call_end(index, "incomplete")
        status = "incomplete" if incomplete else "completed"
        body = self.response(status, run)
        if incomplete:
            body["incomplete_details"] = {"reason": "max_output_tokens"}
        self.final = body
        if self._on_done is not None:
            self._on_done(body)
        self._event(f"response.{status}", response=body)
        return self._flush()

    def error(self, exc: GatewayError) -> bytes:
        """An error after the headers: ``error``, then ``response.failed``, as OpenAI ends."""
        self._begin()
        code = exc.code or exc.error_type
        self._event("error", code=code, message=exc.message, param=exc.param)
        body = self.response("failed")
        body["output"] = list(self.output)
        body["error"] = {"code": code, "message": exc.message}
        self._event("response.failed", response=body)
        return self._flush()

    # -- reasoning and message items ----------------------------------------------------------

    def _text_delta(self, kind: str, text: str) -> None:
        current = self._text
        if current is None or current.kind != kind:
            self._close_text("completed")
            current = self._open_text(kind)
        current.parts.append(text)
        item_id = current.item["id"]
        if kind == "reasoning":
            self._item_event(
                "response.reasoning_text.delta", item_id, current.index, content_index=0, delta=text
            )
            if self._t.summary:
                self._item_event(
                    "response.reasoning_summary_text.delta",
                    item_id,
                    current.index,
                    summary_index=0,
                    delta=text,
                )
        else:
            self._item_event(
                "response.output_text.delta",
                item_id,
                current.index,
                content_index=0,
                delta=text,
                logprobs=[],
            )

    def _open_text(self, kind: str) -> _Text:
        index = len(self.output)
        if kind == "reasoning":
            item: dict[str, Any] = {
                "id": new_id("rs_"),
                "type": "reasoning",
                "summary": [],
                "content": [],
                "status": "in_progress",
            }
        else:
            item = {
                "id": new_id("msg_"),
                "type": "message",
                "role": "assistant",
                "status": "in_progress",
                "content": [],
            }
        self.output.append(item)
        current = self._text = _Text(kind, item, index)
        self._event("response.output_item.added", output_index=index, item=dict(item))
        if kind == "reasoning":
            part: dict[str, Any] = {"type": "reasoning_text", "text": ""}
            self._item_event(
                "response.content_part.added", item["id"], index, content_index=0, part=part
            )
            if self._t.summary:
                self._item_event(
                    "response.reasoning_summary_part.added",
                    item["id"],
                    index,
                    summary_index=0,
                    part={"type": "summary_text", "text": ""},
                )
        else:
            self._item_event(
                "response.content_part.added",
                item["id"],
                index,
                content_index=0,
                part={"type": "output_text", "text": "", "annotations": [], "logprobs": []},
            )
        return current

    def _close_text(self, status: str) -> None:
        current = self._text
        if current is None:
            return
        self._text = None
        text = "".join(current.parts)
        item, index, item_id = current.item, current.index, current.item["id"]
        if current.kind == "reasoning":
            part: dict[str, Any] = {"type": "reasoning_text", "text": text}
            item["content"] = [part]
            self._item_event(
                "response.reasoning_text.done", item_id, index, content_index=0, text=text
            )
            self._item_event(
                "response.content_part.done", item_id, index, content_index=0, part=part
            )
            if self._t.summary:
                summary = {"type": "summary_text", "text": text}
                item["summary"] = [summary]
                self._item_event(
                    "response.reasoning_summary_text.done",
                    item_id,
                    index,
                    summary_index=0,
                    text=text,
                )
                self._item_event(
                    "response.reasoning_summary_part.done",
                    item_id,
                    index,
                    summary_index=0,
                    part=summary,
                )
            if self._t.encrypted_reasoning:
                item["encrypted_content"] = self._sealer.seal(text)
        else:
            part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
            item["content"] = [part]
            self._item_event(
                "response.output_text.done", item_id, index, content_index=0, text=text, logprobs=[]
            )
            self._item_event(
                "response.content_part.done", item_id, index, content_index=0, part=part
            )
        item["status"] = status
        self._event("response.output_item.done", output_index=index, item=item)

    # -- tool calls -----------------------------------------------------------------------------

    def _call_start(self, parser_index: int, name: str) -> None:
        self._close_text("completed")
        target = self._tools.target(name)
        index = len(self.output)
        call_id = new_id("call_")
        custom = target.kind == "custom"
        if custom:
            item: dict[str, Any] = {
                "id": new_id("ctc_"),
                "type": "custom_tool_call",
                "status": "in_progress",
                "call_id": call_id,
                "name": target.name,
                "input": "",
            }
        else:
            item = {
                "id": new_id("fc_"),
                "type": "function_call",
                "status": "in_progress",
                "arguments": "",
                "call_id": call_id,
                "name": target.name,
            }
            if target.namespace is not None:
                item["namespace"] = target.namespace
        self.output.append(item)
        self._calls[parser_index] = _Call(item, index, custom)
        self._event("response.output_item.added", output_index=index, item=dict(item))

    def _call_arguments(self, parser_index: int, fragment: str) -> None:
        call = self._calls.get(parser_index)
        if call is None:
            return
        call.fragments.append(fragment)
        if not call.custom:
            self._item_event(
                "response.function_call_arguments.delta",
                call.item["id"],
                call.index,
                delta=fragment,
            )
            return
        # A raw string value streams as JSON-escaped pieces between its quotes (the parser
        # never splits an escape); each piece decodes on its own.
        if call.in_input:
            if fragment.startswith('"'):
                call.in_input = False
            else:
                self._custom_delta(call, json.loads(f'"{fragment}"'))
        elif fragment.endswith('"input": "'):
            call.in_input = True

    def _custom_delta(self, call: _Call, text: str) -> None:
        if not text:
            return
        call.streamed.append(text)
        self._item_event(
            "response.custom_tool_call_input.delta", call.item["id"], call.index, delta=text
        )

    def _call_end(self, parser_index: int, status: str) -> None:
        call = self._calls.pop(parser_index, None)
        if call is None:
            return
        item, arguments = call.item, "".join(call.fragments)
        if call.custom:
            value = custom_input(arguments) if status == "completed" else "".join(call.streamed)
            streamed = "".join(call.streamed)
            if value.startswith(streamed):
                self._custom_delta(call, value[len(streamed) :])
            item["input"] = value
            self._item_event(
                "response.custom_tool_call_input.done", item["id"], call.index, input=value
            )
        else:
            item["arguments"] = arguments
            self._item_event(
                "response.function_call_arguments.done",
                item["id"],
                call.index,
                name=item["name"],
                arguments=arguments,
            )
        item["status"] = status
        self._event("response.output_item.done", output_index=call.index, item=item)
