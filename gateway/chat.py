"""The chat pipeline: validate, render, generate, parse, and shape OpenAI responses.

One request flows through ``prepare`` (everything that can fail with a clean 4xx happens here),
then ``ChatRun``, which drives the backend's event stream through one GLM-4.7 parser. The
streaming and non-streaming paths share the same parser events, so their results agree.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from backends.base import (
    Backend,
    BackendEvent,
    Chunk,
    Finished,
    GenerationRequest,
    SamplingParams,
    Started,
)

from .errors import BackendError, InvalidRequestError, UnsupportedParameterError
from .glm47 import tokens
from .glm47.events import (
    ContentDelta,
    MessageAccumulator,
    ParseEvent,
    ReasoningDelta,
    ToolCallArguments,
    ToolCallEnd,
    ToolCallStart,
)
from .glm47.grammar import json_grammar, tool_call_grammar
from .glm47.parser import GLM47Parser
from .glm47.render import render_prompt
from .models import ModelRegistry, ServedModel
from .protocol import ChatCompletionRequest, NamedToolChoice, OtherPart
from .sampling import resolve_sampling, select_route
from .streaming import DONE, sse_data


def new_id(prefix: str) -> str:
    return prefix + secrets.token_hex(12)


@dataclass(slots=True)
class PreparedChat:
    request: ChatCompletionRequest
    model_name: str
    model: ServedModel
    prompt: str
    sampling: SamplingParams
    route: str
    thinking: bool
    parse_tools: Sequence[Mapping[str, Any]] | None
    grammar: str | None = None
    completion_id: str = field(default_factory=lambda: new_id("chatcmpl-"))
    created: int = field(default_factory=lambda: int(time.time()))

    def generation_request(self) -> GenerationRequest:
        return GenerationRequest(
            prompt=self.prompt,
            sampling=self.sampling,
            stop_tokens=tokens.STOP_TOKENS,
            grammar=self.grammar,
            request_id=self.completion_id,
        )


def _check_supported(request: ChatCompletionRequest) -> None:
    """Refuse, with a clear 400, what this gateway cannot honour yet."""
    if request.n is not None and request.n != 1:
        raise UnsupportedParameterError("Only n=1 is supported.", param="n")
    if request.logprobs:
        raise UnsupportedParameterError("logprobs are not supported.", param="logprobs")
    for i, message in enumerate(request.messages):
        if isinstance(message.content, list):
            for j, part in enumerate(message.content):
                if isinstance(part, OtherPart):
                    raise UnsupportedParameterError(
                        f"Content parts of type {part.type!r} are not supported: "
                        "GLM-4.7-Flash reads text only.",
                        param=f"messages[{i}].content[{j}].type",
                    )
    choice = request.tool_choice
    if choice not in (None, "none", "auto") and not request.tools:
        raise InvalidRequestError(
            "tool_choice requires tools, but no tools were given.", param="tool_choice"
        )
    if isinstance(choice, NamedToolChoice):
        names = [tool.function.name for tool in request.tools or ()]
        if choice.function.name not in names:
            raise InvalidRequestError(
                f"tool_choice names the function {choice.function.name!r}, which is not among "
                f"the tools: {', '.join(names)}.",
                param="tool_choice.function.name",
            )
    fmt = request.response_format
    if fmt is not None and fmt.type != "text" and request.tools and choice != "none":
        raise UnsupportedParameterError(
            "response_format cannot be combined with tools; send tool_choice 'none' or no tools.",
            param="response_format",
        )


def _constraint(
    request: ChatCompletionRequest,
    tools: Sequence[Mapping[str, Any]] | None,
    thinking: bool,
    backend: Backend,
) -> str | None:
    """The grammar for tool_choice required/named or a JSON response_format, if any."""
    choice, fmt = request.tool_choice, request.response_format
    grammar: str | None = None
    param = "tool_choice"
    if tools and (choice == "required" or isinstance(choice, NamedToolChoice)):
        if isinstance(choice, NamedToolChoice):
            tools = [t for t in tools if t["function"]["name"] == choice.function.name]
        grammar = tool_call_grammar(
            tools, thinking=thinking, parallel=request.parallel_tool_calls is not False
        )
    elif fmt is not None and fmt.type != "text":
        param = "response_format"
        schema = fmt.json_schema.schema_ if fmt.json_schema is not None else None
        grammar = json_grammar(schema, thinking=thinking)
    if grammar is not None and not backend.supports_grammar:
        raise UnsupportedParameterError(
            f"This model's backend cannot constrain output, so {param} "
            f"{'required or a named function' if param == 'tool_choice' else fmt and fmt.type!r}"
            " cannot be enforced.",
            param=param,
        )
    return grammar


def prepare(registry: ModelRegistry, body: Mapping[str, Any]) -> PreparedChat:
    """Validate and render. ``body`` is the raw JSON: tools render in the client's key order."""
    request = ChatCompletionRequest.model_validate(body)
    name = registry.resolve(request.model)
    model = name.model
    _check_supported(request)
    route = select_route(request, name.route)
    resolved = resolve_sampling(
        request, route, model.routes[route], model.backend.sampling_defaults
    )
    thinking = resolved.enable_thinking
    offer_tools = bool(request.tools) and request.tool_choice != "none"
    raw_tools: list[Mapping[str, Any]] | None = body.get("tools") if offer_tools else None
    prompt = render_prompt(
        body["messages"],
        tools=raw_tools,
        enable_thinking=thinking,
        clear_thinking=resolved.clear_thinking,
        add_generation_prompt=request.add_generation_prompt,
    )
    grammar = _constraint(request, raw_tools, thinking, model.backend)
    return PreparedChat(
        request=request,
        model_name=request.model,
        model=model,
        prompt=prompt,
        sampling=resolved.sampling,
        route=route,
        thinking=thinking,
        parse_tools=raw_tools,
        grammar=grammar,
    )


def _through_first_call(events: list[ParseEvent]) -> list[ParseEvent]:
    for i, event in enumerate(events):
        if isinstance(event, ToolCallEnd):
            return events[: i + 1]
    return events


def _delta_for(event: ParseEvent, call_ids: list[str]) -> dict[str, Any] | None:
    match event:
        case ReasoningDelta(text):
            return {"reasoning_content": text, "reasoning": text}
        case ContentDelta(text):
            return {"content": text}
        case ToolCallStart(index, name):
            call_ids.append(new_id("call_"))
            return {
                "tool_calls": [
                    {
                        "index": index,
                        "id": call_ids[index],
                        "type": "function",
                        "function": {"name": name, "arguments": ""},
                    }
                ]
            }
        case ToolCallArguments(index, fragment):
            return {"tool_calls": [{"index": index, "function": {"arguments": fragment}}]}
        case ToolCallEnd():
            return None


class ChatRun:
    """One generation: backend events in, parser events out, with token accounting."""

    def __init__(self, prepared: PreparedChat) -> None:
        self.prepared = prepared
        self._events: AsyncIterator[BackendEvent] = prepared.model.backend.generate(
            prepared.generation_request()
        )
        self._parser = GLM47Parser(thinking=prepared.thinking, tools=prepared.parse_tools)
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.reasoning_tokens = 0
        self.tool_calls_ended = 0
        self.backend_finish: str | None = None
        self._left_reasoning = not prepared.thinking
        # parallel_tool_calls=false: the generation ends with the first complete call.
        self._single_call = (
            prepared.request.parallel_tool_calls is False and prepared.parse_tools is not None
        )

    async def start(self) -> None:
        """Wait until the backend admits the request; errors here still get a real status."""
        first = await anext(self._events, None)
        if not isinstance(first, Started):
            raise BackendError("the backend did not start the generation")
        self.prompt_tokens = first.prompt_tokens

    async def aclose(self) -> None:
        aclose = getattr(self._events, "aclose", None)
        if aclose is not None:
            await aclose()

    async def parse_events(self) -> AsyncIterator[list[ParseEvent]]:
        """Parser events, grouped per backend chunk."""
        async for event in self._events:
            match event:
                case Chunk(text, count):
                    self.completion_tokens += count
                    parsed = self._parser.feed(text)
                    self._count_tokens(parsed, count)
                    if self._single_call and self.tool_calls_ended:
                        yield _through_first_call(parsed)
                        self.backend_finish = "stop"
                        await self.aclose()
                        return
                    if parsed:
                        yield parsed
                case Finished(reason, prompt_tokens, completion_tokens):
                    self.backend_finish = reason
                    self.prompt_tokens = prompt_tokens
                    self.completion_tokens = completion_tokens
                case Started():
                    raise BackendError("the backend started the generation twice")
        if self.backend_finish is None:
            raise BackendError("the backend ended without finishing the generation")
        tail = self._parser.finish()
        self._count_tokens(tail, 0)
        if tail:
            yield tail

    def _count_tokens(self, parsed: list[ParseEvent], count: int) -> None:
        # A chunk counts as reasoning until the first non-reasoning event: the </think> token
        # itself emits nothing and is counted with the reasoning, as engines count it.
        for event in parsed:
            if isinstance(event, ToolCallEnd):
                self.tool_calls_ended += 1
            if not isinstance(event, ReasoningDelta):
                self._left_reasoning = True
        if not self._left_reasoning:
            self.reasoning_tokens += count

    @property
    def finish_reason(self) -> str:
        if self.backend_finish == "length":
            return "length"
        return "tool_calls" if self.tool_calls_ended else "stop"

    def usage(self) -> dict[str, Any]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "completion_tokens_details": {"reasoning_tokens": self.reasoning_tokens},
        }

    async def complete(self) -> dict[str, Any]:
        """The non-streaming response."""
        accumulator = MessageAccumulator()
        try:
            async for group in self.parse_events():
                for event in group:
                    accumulator.add(event)
        finally:
            await self.aclose()
        parsed = accumulator.result()
        message: dict[str, Any] = {
            "role": "assistant",
            "content": parsed.content,
            "reasoning_content": parsed.reasoning_content,
            "reasoning": parsed.reasoning_content,
        }
        if parsed.tool_calls:
            message["tool_calls"] = [
                {
                    "id": new_id("call_"),
                    "type": "function",
                    "function": {"name": call.name, "arguments": call.arguments},
                }
                for call in parsed.tool_calls
            ]
        prepared = self.prepared
        return {
            "id": prepared.completion_id,
            "object": "chat.completion",
            "created": prepared.created,
            "model": prepared.model_name,
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "finish_reason": self.finish_reason,
                    "logprobs": None,
                }
            ],
            "usage": self.usage(),
        }

    async def stream(self) -> AsyncIterator[bytes]:
        """SSE bytes: a role chunk, one chunk per delta, the finish chunk, usage, [DONE]."""
        prepared = self.prepared
        base = {
            "id": prepared.completion_id,
            "object": "chat.completion.chunk",
            "created": prepared.created,
            "model": prepared.model_name,
        }

        def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
            choice = {"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}
            return sse_data({**base, "choices": [choice]})

        call_ids: list[str] = []
        try:
            # content null, not "": the SDK's stream helpers then assemble the same message as
            # the non-streaming response when the model only calls tools.
            yield chunk({"role": "assistant", "content": None})
            async for group in self.parse_events():
                for event in group:
                    delta = _delta_for(event, call_ids)
                    if delta is not None:
                        yield chunk(delta)
            yield chunk({}, self.finish_reason)
            options = prepared.request.stream_options
            if options is not None and options.include_usage:
                yield sse_data({**base, "choices": [], "usage": self.usage()})
            yield DONE
        finally:
            await self.aclose()
