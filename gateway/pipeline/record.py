"""A run's accounting: what it writes into its request's log record, and its token split."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..glm47.events import ParseEvent, ReasoningDelta
from ..glm47.tokens import THINK_CLOSE
from ..observability import RequestRecord

if TYPE_CHECKING:
    from .run import Run


def fill_record(record: RequestRecord, run: Run) -> None:
    record.prompt_tokens = run.prompt_tokens
    record.completion_tokens = run.completion_tokens
    record.reasoning_tokens = run.reasoning_tokens
    record.tool_calls = run.tool_calls_ended
    if run.budget_reached:
        record.budget_reached = True
    record.loop_stop = run.loop_stop
    record.repairs = list(run.repairs)
    if run.backend_finish is not None:
        record.finish_reason = run.finish_reason
    else:
        record.cancelled = True
    if run.first_text_at is not None:
        record.ttft_ms = round((run.first_text_at - run.arrived) * 1000, 3)
    if run.logged_output is not None:
        record.output = "".join(run.logged_output)


def reasoning_share(parsed: list[ParseEvent], count: int, text: str) -> int:
    """The reasoning tokens of a chunk that holds the end of the reasoning and the start of
    what follows. How many tokens an engine puts in one chunk depends on how fast the consumer
    reads, so they are shared out by the text on each side of the boundary."""
    reasoning = sum(len(e.text) for e in parsed if isinstance(e, ReasoningDelta))
    end = text.find(THINK_CLOSE)
    if end != -1:
        reasoning = max(reasoning, end + len(THINK_CLOSE))
    if not text or not count:
        return 0
    return min(count, round(count * reasoning / len(text)))
