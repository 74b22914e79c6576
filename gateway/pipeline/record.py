"""What a finished (or abandoned) run writes into its request's log record."""

from __future__ import annotations

from typing import TYPE_CHECKING

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
