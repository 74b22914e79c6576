"""The parser a run feeds: GLM-4.7 parsing, the schema checks, and a repair's restart.

A repair goes on from the failing call's point with a fresh parser that is fed the call so far
in GLM's format (``CallFailure.markup``) and then the continuation. What that parser says again
about the call (its header, the arguments already out) is dropped, and its call indices are
shifted to the run's, so the client sees one call, continued.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from backends.base import GenerationRequest

from ..errors import BackendError
from ..glm47.events import (
    ContentDelta,
    ParseEvent,
    ReasoningDelta,
    ToolCallArguments,
    ToolCallEnd,
    ToolCallStart,
)
from ..glm47.parser import GLM47Parser
from ..glm47.repair_grammar import call_rest_grammar
from ..glm47.tokens import TOOL_CALL_OPEN
from .plan import Plan
from .tool_check import CallFailure, CallRejected, ToolCallChecker

__all__ = ["CheckedParser", "ToolCallRejectedError"]


class ToolCallRejectedError(BackendError):
    """A streamed call failed its schema and could not be repaired: the stream ends with this."""

    code = "invalid_tool_call"


class CheckedParser:
    """``feed``/``finish`` like ``GLM47Parser``; ``failure`` set when a repair should follow."""

    def __init__(self, plan: Plan, *, check: bool, incremental: bool, repairable: bool) -> None:
        self._plan = plan
        self._tools: Sequence[Mapping[str, Any]] | None = plan.parse_tools
        self._parser = GLM47Parser(thinking=plan.thinking, tools=self._tools)
        self._schemas = self._parser.schemas  # (one index of the tools, shared)
        self._checker = (
            ToolCallChecker(self._schemas, incremental=incremental, repairable=repairable)
            if check and self._tools
            else None
        )
        self._raw: list[str] = []
        self._raw_len = 0
        self._tail = ""  # the raw output's last characters: a tag the chunks cut
        self._open_at = -1  # where the last <tool_call> began in the raw output
        self._call_open: dict[int, int] = {}
        self._offset = 0
        self._skip_call = -1  # the repaired call: what its parser repeats is dropped
        self._skip_header = False
        self._skip_chars = 0
        self._held: list[ParseEvent] = []
        # Set once a non-reasoning event came out of the parser (token accounting).
        self.left_reasoning = not plan.thinking
        self.repaired: CallFailure | None = None
        self.problems: list[str] = []  # failures that went out as content
        self.rejected: list[str] = []  # failures that ended a stream with an error

    @property
    def failure(self) -> CallFailure | None:
        return None if self._checker is None else self._checker.failure

    # -- feeding ------------------------------------------------------------------------------

    def feed(self, text: str) -> list[ParseEvent]:
        if self._checker is None:
            return self._through(self._parse(text))
        # Fed in pieces that each begin at a <tool_call> (the parser's events are the same for
        # any chunking): a call's header comes in a piece after the start of its own tag.
        tail = self._tail
        window = tail + text
        base = self._raw_len - len(tail)
        events: list[ParseEvent] = []
        start = 0
        at = window.find(TOOL_CALL_OPEN)
        while at >= 0:
            cut = max(at - len(tail), 0)
            if cut > start:
                events += self._parse(text[start:cut])
                start = cut
            self._open_at = base + at
            at = window.find(TOOL_CALL_OPEN, at + 1)
        events += self._parse(text[start:])
        return self._through(events)

    def _parse(self, piece: str) -> list[ParseEvent]:
        self._raw.append(piece)
        self._tail = (self._tail + piece)[-(len(TOOL_CALL_OPEN) - 1) :]
        self._raw_len += len(piece)
        events = self._parser.feed(piece)
        for event in events:
            if isinstance(event, ToolCallStart):
                self._call_open[event.index] = self._open_at
        return events

    def finish(self, *, truncated: bool) -> list[ParseEvent]:
        events = self._through(self._parser.finish(truncated=truncated))
        if self._checker is not None and self._checker.failure is None:
            checker = self._checker
            events += self._shift(self._run_checker(lambda: checker.finish(truncated=truncated)))
        return events

    def _through(self, events: list[ParseEvent]) -> list[ParseEvent]:
        if not self.left_reasoning:
            self.left_reasoning = any(not isinstance(e, ReasoningDelta) for e in events)
        checker = self._checker
        if checker is not None:
            events = self._run_checker(lambda: checker.feed(events))
        return self._shift(events)

    def _run_checker(self, step: Callable[[], list[ParseEvent]]) -> list[ParseEvent]:
        assert self._checker is not None
        try:
            out = step()
        except CallRejected as exc:
            self.rejected.append(exc.failure.problem)
            raise ToolCallRejectedError(
                f"The model's tool call failed its schema ({exc.failure.problem.replace('_', ' ')})"
                " after it began to stream, and the repair did not produce a valid call.",
            ) from None
        if self._checker.problems:
            self.problems += self._checker.problems
            self._checker.problems.clear()
        return out

    def _shift(self, events: list[ParseEvent]) -> list[ParseEvent]:
        held, self._held = self._held, []
        if not self._offset and self._skip_call < 0:
            return held + events
        out: list[ParseEvent] = held
        for event in events:
            match event:
                case ToolCallStart(index, name):
                    index += self._offset
                    if index == self._skip_call and self._skip_header:
                        self._skip_header = False
                        continue
                    out.append(ToolCallStart(index, name))
                case ToolCallArguments(index, fragment):
                    index += self._offset
                    if index == self._skip_call and self._skip_chars:
                        cut = min(self._skip_chars, len(fragment))
                        self._skip_chars -= cut
                        fragment = fragment[cut:]
                        if not fragment:
                            continue
                    out.append(ToolCallArguments(index, fragment))
                case ToolCallEnd(index):
                    out.append(ToolCallEnd(index + self._offset))
                case _:
                    out.append(event)
        return out

    # -- repairs ------------------------------------------------------------------------------

    def give_up(self) -> list[ParseEvent]:
        """No repair can follow (no tokens left): the failed call goes out as content."""
        failure = self.failure
        assert failure is not None and self._checker is not None
        self._checker = None
        if failure.header_out:
            self.rejected.append(failure.problem)
            raise ToolCallRejectedError(
                f"The model's tool call failed its schema ({failure.problem.replace('_', ' ')}) "
                "and no tokens were left to repair it."
            )
        self.problems.append(failure.problem)
        return [ContentDelta(failure.markup())]

    def repair(self, remaining: int | None) -> GenerationRequest | None:
        """The continuation that finishes the failed call under its grammar, or None."""
        failure = self.failure
        assert failure is not None and self._checker is not None
        opened = self._call_open.get(failure.index, -1)
        if (remaining is not None and remaining <= 0) or opened < 0:
            return None
        plan = self._plan
        tools = list(self._tools or ())
        if plan.input.tool_choice.mode == "named":
            tools = [t for t in tools if _name(t) == plan.input.tool_choice.name]
        grammar = call_rest_grammar(
            tools,
            name=failure.name,
            given=failure.given,
            open_key=failure.open_key,
            open_string=failure.open_string,
            parallel=plan.input.parallel_tool_calls,
        )
        before = "".join(self._raw)[:opened]
        markup = failure.markup()
        self.repaired = failure
        incremental = self._checker.incremental
        self._offset += failure.index
        self._skip_call = self._offset
        self._skip_header = failure.header_out
        self._skip_chars = failure.args_out
        self._parser = GLM47Parser(thinking=False, tools=self._tools)
        self._checker = ToolCallChecker(self._schemas, incremental=incremental, repairable=False)
        self._raw = [before]
        self._raw_len = len(before)
        self._tail = before[-(len(TOOL_CALL_OPEN) - 1) :]
        self._call_open = {}
        self.left_reasoning = True
        self._held = self.feed(markup)
        return replace(
            plan.generation_request(),
            prompt=plan.prompt + before + markup,
            sampling=replace(plan.sampling, max_tokens=remaining),
            grammar=grammar,
        )


def _name(tool: Mapping[str, Any]) -> str:
    return str((tool.get("function") or {}).get("name", ""))
