"""One generation, in no wire format: admission, backend events in, parser events out.

A ``Run`` takes a place in the model's line (the one queue per model), starts the backend,
feeds its raw text through one GLM-4.7 parser and keeps the accounting (tokens, reasoning
tokens, finish, timings, the request's log record). Wire APIs turn its parser events into
their own deltas; streaming and non-streaming consume the same events.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable
from dataclasses import replace
from typing import Literal, TypeVar

from backends.base import BackendEvent, Chunk, Finished, GenerationRequest, Started
from backends.errors import BackendError as EngineError

from ..admission import Slot
from ..errors import BackendError, from_backend
from ..glm47.events import (
    MessageAccumulator,
    ParsedMessage,
    ParseEvent,
    ToolCallEnd,
    ToolCallStart,
)
from .checked_parser import CheckedParser
from .deadline import Deadline
from .legs import check_room, continuation, first_leg, remaining_tokens
from .loop_guard import RepeatedCallGuard, RepetitionDetector
from .options import RunOptions, through_first_call
from .plan import Plan
from .record import fill_record, reasoning_share

T = TypeVar("T")

FinishReason = Literal["stop", "length", "tool_calls"]


class Run:
    """One generation. ``start``, then ``events`` (or ``collect``), then ``aclose``."""

    def __init__(self, plan: Plan, options: RunOptions | None = None) -> None:
        self.plan = plan
        self.options = options or RunOptions()
        check = plan.route_settings.repair_tool_calls and bool(plan.parse_tools)
        can_repair = check and plan.model.backend.supports_grammar
        # Streamed, a call goes out as it passes its checks (string arguments as generated);
        # one that fails after its header went out and cannot be repaired ends the stream with
        # an error. Not streamed, a call waits whole, so a failed one can become content.
        self._parser = CheckedParser(
            plan, check=check, incremental=plan.input.stream, repairable=can_repair
        )
        # (what failed, how it ended) for each call the checks found wanting.
        self.repairs: list[tuple[str, str]] = []
        self._ended: set[int] = set()
        self._events: AsyncIterator[BackendEvent] | None = None
        self._slot: Slot | None = None
        self.prompt_tokens = 0
        self.cached_tokens = 0
        self.completion_tokens = 0
        self.reasoning_tokens = 0
        self.tool_calls_ended = 0
        self.backend_finish: str | None = None
        # The stop string that ended the generation, when one did.
        self.stop_sequence: str | None = None
        self._left_reasoning = not plan.thinking
        # Tool-call ids, made when a call starts, so every API and the memory agree on them.
        self.call_ids: list[str] = []
        # What the model generated, every leg: a continuation's prompt extends it.
        self._raw: list[str] = []
        self._message = MessageAccumulator()
        # Legs: the first ends at the thinking budget; a continuation goes on from there.
        self.legs = 1
        self._tokens_before_leg = 0
        self._budget_leg = plan.thinking_budget is not None
        # Prompt tokens the engine reused for each continuation (prefix reuse).
        self.continuation_cached_tokens: list[int] = []
        self.continuation_prompt_tokens: list[int] = []
        # Set when the gateway closed the reasoning at the budget.
        self.budget_reached = False
        # Why the loop guard stopped the generation ("repetition", "repeated_tool_call").
        self.loop_stop: str | None = None
        guard = plan.route_settings.loop_guard
        self._repetition = RepetitionDetector.for_settings(guard) if guard.enabled else None
        self._call_guard = RepeatedCallGuard(plan.repeated_calls) if plan.repeated_calls else None
        self._pending: list[ParseEvent] = []
        self._stopped_early = False
        now = time.perf_counter()
        self.arrived = self.options.arrived if self.options.arrived is not None else now
        timeout = self.options.timeout
        self._deadline = Deadline(None if timeout is None else self.arrived + timeout, timeout)
        self._handed_off: float | None = None
        # When the first text arrived (perf_counter), for the time to first token.
        self.first_text_at: float | None = None
        self._last_text: float | None = None
        self._finished_at: float | None = None
        self._closed = False
        # The raw output, kept only when prompts and outputs are logged.
        self.logged_output: list[str] | None = [] if self.options.log_prompts else None
        record = self.options.record
        if record is not None:
            record.model = plan.model.id
            record.route = plan.route
            record.stream = plan.input.stream
            record.api = self.options.api
            if self.options.log_prompts:
                record.prompt = plan.prompt

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Wait for a place in line and for the backend to admit the request.

        Errors raised here still get a real HTTP status.
        """
        self._handed_off = time.perf_counter()
        model = self.plan.model
        self._slot = await self._before_deadline(model.gate.acquire())
        if self.options.record is not None:
            self.options.record.queue_wait_ms = round(self._slot.waited * 1000, 3)
        # Waiting inside the engine (llama.cpp: for room in the KV cache) counts against the
        # same max_wait as waiting at the gate, and ends the same way: 503 queue_timeout.
        left = max(model.gate.max_wait - self._slot.waited, 0.0)
        request = replace(self._first_request(), max_queue_wait=left)
        self._events = model.backend.generate(request)
        first = await self._next_event()
        if not isinstance(first, Started):
            raise BackendError("the backend did not start the generation")
        self.prompt_tokens = first.prompt_tokens
        self.cached_tokens = first.cached_tokens
        check_room(self.plan, first.prompt_tokens, self.plan.model.backend.info.context_length)

    def _first_request(self) -> GenerationRequest:
        request, self._budget_leg = first_leg(self.plan)
        return request

    def _continuation(self) -> GenerationRequest | None:
        """The request that goes on after the budget leg ended at its limit, or None."""
        if not self._budget_leg or self.backend_finish != "length" or self.loop_stop:
            return None
        self._budget_leg = False
        remaining = remaining_tokens(self.plan, self.completion_tokens)
        if remaining is not None and remaining <= 0:
            return None
        generated = "".join(self._raw)
        if not self._left_reasoning:
            # The budget is spent in the reasoning: close it, the answer follows.
            self.budget_reached = True
            self._left_reasoning = True
            self._pending = self._parser.feed("</think>")
            grammar = self.plan.answer_grammar
            return continuation(self.plan, generated, remaining, suffix="</think>", grammar=grammar)
        if self.plan.grammar is not None:
            # Mid-answer under a grammar that covers the whole output: a continuation could
            # not be held to it, so the answer ends here.
            return None
        return continuation(self.plan, generated, remaining, grammar=None)

    async def _next_leg(self, request: GenerationRequest) -> None:
        await self._close_leg()
        self.legs += 1
        self._tokens_before_leg = self.completion_tokens
        self.backend_finish = None
        self._events = self.plan.model.backend.generate(request)
        first = await self._next_event()
        if not isinstance(first, Started):
            raise BackendError("the backend did not start the continuation")
        self.continuation_prompt_tokens.append(first.prompt_tokens)
        self.continuation_cached_tokens.append(first.cached_tokens)

    async def _close_leg(self) -> None:
        aclose = getattr(self._events, "aclose", None)
        if aclose is not None:
            await aclose()

    def call_id(self, index: int) -> str:
        while len(self.call_ids) <= index:
            self.call_ids.append(self.options.call_id_prefix + secrets.token_hex(12))
        return self.call_ids[index]

    async def aclose(self) -> None:
        """End the generation (idempotent): close the backend stream, give the slot back."""
        if self._closed:
            return
        self._closed = True
        try:
            await self._close_leg()
        finally:
            self._deadline.cancel()
            if self._slot is not None:
                self._slot.release()
                if self._handed_off is not None:
                    self.plan.model.gate.record_service_time(time.perf_counter() - self._handed_off)
            self._fill_record()

    async def _next_event(self) -> BackendEvent | None:
        assert self._events is not None
        try:
            return await self._before_deadline(anext(self._events, None))
        except EngineError as exc:
            raise from_backend(exc) from exc

    async def _before_deadline(self, awaitable: Awaitable[T]) -> T:
        return await self._deadline.run(awaitable)

    # -- events -------------------------------------------------------------------------------

    async def events(self) -> AsyncGenerator[list[ParseEvent], None]:
        """Parser events, grouped per backend chunk."""
        if self._events is None:
            raise RuntimeError("start() first")
        while True:
            async for group in self._leg_events():
                yield self._note(group)
            if self._stopped_early:
                break
            request = self._repair() if self._parser.failure else self._continuation()
            if request is None and self._parser.failure is None:
                self._finished_at = time.perf_counter()
                if self.backend_finish is None:
                    raise BackendError("the backend ended without finishing the generation")
                # A generation cut by the token limit may end inside a tag or a call (2b).
                tail = self._parser.finish(truncated=self.backend_finish == "length")
                if self._parser.failure:  # a call left open at a stop
                    request = self._repair()
                if request is None:
                    tail += self._parser.give_up() if self._parser.failure else []
                    self._count_tokens(tail, 0)
                    tail = self._release(tail, end=True)
                    if tail:
                        yield self._note(tail)
                    break
                if tail:
                    yield self._note(self._release(tail))
            elif request is None:  # a failure that no repair can follow
                yield self._note(self._release(self._parser.give_up()))
                continue
            await self._next_leg(request)
            # What the parser held back before the closing tag it was fed.
            pending = self._release(self._pending)
            self._pending = []
            if pending:
                yield self._note(pending)
        self._note_repairs()
        if self.options.on_complete is not None:
            self.options.on_complete(self)

    def _repair(self) -> GenerationRequest | None:
        """The continuation that repairs a failed call (once per generation), or None."""
        failure = self._parser.failure
        if failure is None or self._parser.repaired is not None:
            return None
        request = self._parser.repair(remaining_tokens(self.plan, self.completion_tokens))
        if request is not None:
            self._budget_leg = False
            self._left_reasoning = True
        return request

    def _note_repairs(self) -> None:
        repairs: list[tuple[str, str]] = []
        repaired = self._parser.repaired
        if repaired is not None:
            outcome = "repaired" if repaired.index in self._ended else "failed"
            repairs.append((repaired.problem, outcome))
        repairs += [(problem, "content") for problem in self._parser.problems]
        repairs += [(problem, "error") for problem in self._parser.rejected]
        self.repairs = repairs
        if self.options.record is not None:
            self.options.record.repairs = list(self.repairs)

    async def _leg_events(self) -> AsyncGenerator[list[ParseEvent], None]:
        inter_token = None
        if self.options.metrics is not None:
            inter_token = self.options.metrics.inter_token.labels(self.plan.model.id)
        single_call = self.plan.single_call
        while True:
            event = await self._next_event()
            match event:
                case None:
                    break
                case Chunk(text, count):
                    now = time.perf_counter()
                    if self.first_text_at is None:
                        self.first_text_at = now
                    elif inter_token is not None and self._last_text is not None:
                        # A chunk may stand for several tokens (engines stream in groups):
                        # each of them took its share of the gap.
                        tokens = max(count, 1)
                        gap = (now - self._last_text) / tokens
                        for _ in range(tokens):
                            inter_token.observe(gap)
                    self._last_text = now
                    self._raw.append(text)
                    if self.logged_output is not None:
                        self.logged_output.append(text)
                    self.completion_tokens += count
                    parsed = self._parser.feed(text)
                    self._count_tokens(parsed, count, text)
                    if self._parser.failure is not None:
                        # A repair goes on from the failure: this leg is done.
                        yield self._release(parsed)
                        return
                    if single_call and self.tool_calls_ended:
                        yield self._release(through_first_call(parsed), end=True)
                        self.backend_finish = "stop"
                        await self._stop_early()
                        return
                    parsed = self._release(parsed)
                    if parsed:
                        yield parsed
                    if self._repetition is not None and self._repetition.feed(text):
                        self.loop_stop = "repetition"
                        self.backend_finish = "length"
                        tail = self._release(self._parser.finish(truncated=True), end=True)
                        if tail:
                            yield tail
                        await self._stop_early()
                        return
                case Finished():
                    self.backend_finish = event.reason
                    if self.legs == 1:
                        self.prompt_tokens = event.prompt_tokens
                        self.cached_tokens = event.cached_tokens or self.cached_tokens
                    self.completion_tokens = self._tokens_before_leg + event.completion_tokens
                    # Only the client's own stop strings are reported (not GLM's role tokens).
                    if event.stop_sequence in self.plan.sampling.stop:
                        self.stop_sequence = event.stop_sequence
                case Started():
                    raise BackendError("the backend started the generation twice")

    async def _stop_early(self) -> None:
        self._stopped_early = True
        self._finished_at = time.perf_counter()
        await self.aclose()

    def _release(self, parsed: list[ParseEvent], *, end: bool = False) -> list[ParseEvent]:
        if self._call_guard is None:
            return parsed
        out, repeat = self._call_guard.release(parsed, end=end)
        if repeat:
            self.loop_stop = "repeated_tool_call"
            self.backend_finish = "length"
            self.tool_calls_ended = 0
        return out

    def _note(self, group: list[ParseEvent]) -> list[ParseEvent]:
        for event in group:
            if isinstance(event, ToolCallStart):
                self.call_id(event.index)
            elif isinstance(event, ToolCallEnd):
                self._ended.add(event.index)
            self._message.add(event)
        return group

    @property
    def message(self) -> ParsedMessage:
        """What went out so far, folded."""
        return self._message.result()

    async def collect(self) -> ParsedMessage:
        """The whole message (non-streaming): the same events, folded as they went out."""
        try:
            async for _ in self.events():
                pass
        finally:
            await self.aclose()
        return self.message

    def _count_tokens(self, parsed: list[ParseEvent], count: int, text: str = "") -> None:
        # Tokens count as reasoning until the reasoning ends; the </think> token itself emits
        # nothing and is counted with the reasoning, as engines count it.
        self.tool_calls_ended += sum(isinstance(e, ToolCallEnd) for e in parsed)
        if self._left_reasoning:
            return
        if not self._parser.left_reasoning:
            self.reasoning_tokens += count
            return
        self._left_reasoning = True
        self.reasoning_tokens += reasoning_share(parsed, count, text)

    # -- results ------------------------------------------------------------------------------

    @property
    def finish_reason(self) -> FinishReason:
        if self.backend_finish == "length" or self.loop_stop is not None:
            return "length"
        return "tool_calls" if self.tool_calls_ended else "stop"

    def overhead_ms(self) -> float:
        """Time spent in the gateway itself: before the hand-off to the model and after it."""
        before = (self._handed_off or time.perf_counter()) - self.arrived
        after = 0.0
        if self._finished_at is not None:
            after = time.perf_counter() - self._finished_at
        return round((before + after) * 1000, 3)

    def _fill_record(self) -> None:
        if self.options.record is not None:
            self._note_repairs()
            fill_record(self.options.record, self)
