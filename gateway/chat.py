"""The chat pipeline: validate, render, generate, parse, and shape OpenAI responses.

One request flows through ``prepare`` (everything that can fail with a clean 4xx happens here),
then ``ChatRun``, which drives the backend's event stream through one GLM-4.7 parser. The
streaming and non-streaming paths share the same parser events, so their results agree.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Iterator,
    Mapping,
    Sequence,
)
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from backends.base import (
    Backend,
    BackendEvent,
    Chunk,
    Finished,
    GenerationRequest,
    SamplingParams,
    Started,
)

from .admission import Slot
from .errors import (
    BackendError,
    BackendTimeoutError,
    ContextLengthExceededError,
    InvalidRequestError,
    UnsupportedParameterError,
)
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
from .observability import Metrics, RequestRecord
from .protocol import ChatCompletionRequest, NamedToolChoice, OtherPart
from .sampling import resolve_sampling, select_route
from .streaming import DONE, sse_data

T = TypeVar("T")


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


@dataclass(frozen=True, slots=True)
class Limits:
    max_messages: int = 4096
    max_tools: int = 512


def _check_limits(request: ChatCompletionRequest, limits: Limits, model: ServedModel) -> None:
    if len(request.messages) > limits.max_messages:
        raise InvalidRequestError(
            f"Too many messages: {len(request.messages)}; the limit is {limits.max_messages}.",
            param="messages",
        )
    if request.tools and len(request.tools) > limits.max_tools:
        raise InvalidRequestError(
            f"Too many tools: {len(request.tools)}; the limit is {limits.max_tools}.",
            param="tools",
        )
    cap = model.settings.max_tokens_limit
    asked = request.max_completion_tokens or request.max_tokens
    if cap is not None and asked is not None and asked > cap:
        param = "max_completion_tokens" if request.max_completion_tokens else "max_tokens"
        raise InvalidRequestError(
            f"{param} is {asked}, more than this model allows per request ({cap}).",
            param=param,
            code="max_tokens_exceeded",
        )


def prepare(
    registry: ModelRegistry, body: Mapping[str, Any], limits: Limits | None = None
) -> PreparedChat:
    """Validate and render. ``body`` is the raw JSON: tools render in the client's key order."""
    request = ChatCompletionRequest.model_validate(body)
    name = registry.resolve(request.model)
    model = name.model
    _check_limits(request, limits or Limits(), model)
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
    sampling = resolved.sampling
    cap = model.settings.max_tokens_limit
    if cap is not None and (sampling.max_tokens is None or sampling.max_tokens > cap):
        sampling = replace(sampling, max_tokens=cap)
    return PreparedChat(
        request=request,
        model_name=request.model,
        model=model,
        prompt=prompt,
        sampling=sampling,
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


def _coalesce(events: list[ParseEvent]) -> list[ParseEvent]:
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


@dataclass(slots=True)
class RunOptions:
    """Per-app knobs a run needs; all optional so a bare ``ChatRun(prepared)`` works."""

    metrics: Metrics | None = None
    record: RequestRecord | None = None
    # perf_counter() when the request arrived (the middleware's clock).
    arrived: float | None = None
    timeout: float | None = None
    log_prompts: bool = False


class ChatRun:
    """One generation: admission, backend events in, parser events out, accounting."""

    def __init__(self, prepared: PreparedChat, options: RunOptions | None = None) -> None:
        self.prepared = prepared
        self.options = options or RunOptions()
        self._parser = GLM47Parser(thinking=prepared.thinking, tools=prepared.parse_tools)
        self._events: AsyncIterator[BackendEvent] | None = None
        self._slot: Slot | None = None
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
        now = time.perf_counter()
        self.arrived = self.options.arrived if self.options.arrived is not None else now
        self.deadline = (
            None if self.options.timeout is None else self.arrived + self.options.timeout
        )
        self._handed_off: float | None = None
        self._first_text: float | None = None
        self._last_text: float | None = None
        self._finished_at: float | None = None
        self._closed = False
        self._output: list[str] | None = [] if self.options.log_prompts else None
        record = self.options.record
        if record is not None:
            record.model = prepared.model.id
            record.route = prepared.route
            record.stream = prepared.request.stream
            if self.options.log_prompts:
                record.prompt = prepared.prompt

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Wait for a place in line and for the backend to admit the request.

        Errors raised here still get a real HTTP status.
        """
        self._handed_off = time.perf_counter()
        model = self.prepared.model
        self._slot = await self._before_deadline(model.gate.acquire())
        if self.options.record is not None:
            self.options.record.queue_wait_ms = round(self._slot.waited * 1000, 3)
        self._events = model.backend.generate(self.prepared.generation_request())
        first = await self._before_deadline(anext(self._events, None))
        if not isinstance(first, Started):
            raise BackendError("the backend did not start the generation")
        self.prompt_tokens = first.prompt_tokens
        self._check_room(first.prompt_tokens)

    def _check_room(self, prompt_tokens: int) -> None:
        """A client that asked for more tokens than the context leaves gets a clear 400."""
        request = self.prepared.request
        asked = request.max_completion_tokens or request.max_tokens
        context = self.prepared.model.backend.info.context_length
        if asked is None or context is None or prompt_tokens <= 0:
            return
        if prompt_tokens + asked > context:
            param = "max_completion_tokens" if request.max_completion_tokens else "max_tokens"
            raise ContextLengthExceededError(
                f"This model's maximum context length is {context} tokens. The prompt has "
                f"{prompt_tokens} tokens and {param} asks for {asked} more "
                f"({prompt_tokens + asked} in all). Reduce the messages or {param}.",
                param=param,
            )

    async def aclose(self) -> None:
        """End the generation (idempotent): close the backend stream, give the slot back."""
        if self._closed:
            return
        self._closed = True
        try:
            aclose = getattr(self._events, "aclose", None)
            if aclose is not None:
                await aclose()
        finally:
            if self._slot is not None:
                self._slot.release()
                if self._handed_off is not None:
                    self.prepared.model.gate.record_service_time(
                        time.perf_counter() - self._handed_off
                    )
            self._fill_record()

    async def _before_deadline(self, awaitable: Awaitable[T]) -> T:
        if self.deadline is None:
            return await awaitable
        try:
            async with asyncio.timeout_at(_loop_time(self.deadline)):
                return await awaitable
        except TimeoutError:
            raise BackendTimeoutError(
                f"The request took longer than the gateway's limit of {self.options.timeout:g} s.",
                code="request_timeout",
            ) from None

    # -- events -------------------------------------------------------------------------------

    async def parse_events(self) -> AsyncGenerator[list[ParseEvent], None]:
        """Parser events, grouped per backend chunk."""
        events = self._events
        if events is None:
            raise RuntimeError("start() first")
        inter_token = None
        if self.options.metrics is not None:
            inter_token = self.options.metrics.inter_token.labels(self.prepared.model.id)
        while True:
            event = await self._before_deadline(anext(events, None))
            match event:
                case None:
                    break
                case Chunk(text, count):
                    now = time.perf_counter()
                    if self._first_text is None:
                        self._first_text = now
                    elif inter_token is not None and self._last_text is not None:
                        inter_token.observe(now - self._last_text)
                    self._last_text = now
                    if self._output is not None:
                        self._output.append(text)
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
        self._finished_at = time.perf_counter()
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

    def overhead_ms(self) -> float:
        """Time spent in the gateway itself: before the hand-off to the model and after it."""
        before = (self._handed_off or time.perf_counter()) - self.arrived
        after = 0.0
        if self._finished_at is not None:
            after = time.perf_counter() - self._finished_at
        return round((before + after) * 1000, 3)

    def _fill_record(self) -> None:
        record = self.options.record
        if record is None:
            return
        record.prompt_tokens = self.prompt_tokens
        record.completion_tokens = self.completion_tokens
        record.reasoning_tokens = self.reasoning_tokens
        record.tool_calls = self.tool_calls_ended
        if self.backend_finish is not None:
            record.finish_reason = self.finish_reason
        else:
            record.cancelled = True
        if self._first_text is not None:
            record.ttft_ms = round((self._first_text - self.arrived) * 1000, 3)
        if self._output is not None:
            record.output = "".join(self._output)

    # -- responses ----------------------------------------------------------------------------

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

    async def stream(self, keepalive: float = 0.0) -> AsyncIterator[bytes]:
        """SSE bytes: a role chunk, one chunk per delta, the finish chunk, usage, [DONE].

        With ``keepalive`` > 0, SSE comments go out while the model has produced nothing yet
        (prompt processing), so proxies and clients do not time out.
        """
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

        def deltas(group: list[ParseEvent]) -> Iterator[bytes]:
            for event in _coalesce(group):
                delta = _delta_for(event, call_ids)
                if delta is not None:
                    yield chunk(delta)

        groups = self.parse_events()
        try:
            # content null, not "": the SDK's stream helpers then assemble the same message as
            # the non-streaming response when the model only calls tools.
            yield chunk({"role": "assistant", "content": None})
            # One write per backend chunk: a socket write costs about as much as parsing.
            if keepalive > 0:
                async for item in _first_with_keepalive(groups, keepalive):
                    data = item if isinstance(item, bytes) else b"".join(deltas(item))
                    if data:
                        yield data
            async for group in groups:
                data = b"".join(deltas(group))
                if data:
                    yield data
            yield chunk({}, self.finish_reason)
            options = prepared.request.stream_options
            if options is not None and options.include_usage:
                yield sse_data({**base, "choices": [], "usage": self.usage()})
            yield DONE
        finally:
            await groups.aclose()
            await self.aclose()


KEEPALIVE = b": keep-alive\n\n"


async def keepalive_until(task: asyncio.Future[Any], interval: float) -> AsyncIterator[bytes]:
    """An SSE keep-alive comment every ``interval`` seconds until ``task`` is done."""
    while not task.done():
        await asyncio.wait({task}, timeout=interval)
        if not task.done():
            yield KEEPALIVE


async def _first_with_keepalive(
    groups: AsyncGenerator[list[ParseEvent], None], interval: float
) -> AsyncIterator[bytes | list[ParseEvent]]:
    """Keep-alive comments every ``interval`` until the first group of events, then it."""
    pending = asyncio.ensure_future(anext(groups, None))
    try:
        async for comment in keepalive_until(pending, interval):
            yield comment
        group = pending.result()
        if group is not None:
            yield group
    finally:
        if not pending.done():
            pending.cancel()
            await asyncio.gather(pending, return_exceptions=True)


def _loop_time(perf_deadline: float) -> float:
    """A perf_counter() deadline on the event loop's clock."""
    return asyncio.get_running_loop().time() + (perf_deadline - time.perf_counter())
