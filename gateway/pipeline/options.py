"""What a run needs from its app, and a small helper of the run's event flow."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..glm47.events import ParseEvent, ToolCallEnd
from ..observability import Metrics, RequestRecord

if TYPE_CHECKING:
    from .run import Run


@dataclass(slots=True)
class RunOptions:
    """Per-app knobs a run needs; all optional so a bare ``Run(plan)`` works."""

    metrics: Metrics | None = None
    record: RequestRecord | None = None
    # perf_counter() when the request arrived (the middleware's clock).
    arrived: float | None = None
    timeout: float | None = None
    log_prompts: bool = False
    # The wire API, for metrics and the access log ("openai_chat", "anthropic", ...).
    api: str = "openai_chat"
    # How this API's tool-call ids begin ("call_", "toolu_").
    call_id_prefix: str = "call_"
    # Called with the run once its generation has ended normally (preserved thinking).
    on_complete: Callable[[Run], None] | None = None


def through_first_call(events: list[ParseEvent]) -> list[ParseEvent]:
    """The events up to the first call's end (parallel_tool_calls false)."""
    for i, event in enumerate(events):
        if isinstance(event, ToolCallEnd):
            return events[: i + 1]
    return events
