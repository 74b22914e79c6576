"""What the engine is asked to run, and how long it may wait for room."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from ..errors import BackendUnavailable


def timed_out() -> BackendUnavailable:
    return BackendUnavailable(
        "The request waited its time limit for room in the model's KV cache without being served.",
        code="queue_timeout",
    )


@dataclass(frozen=True, slots=True)
class Admitted:
    """The job has a sequence; ``cached_tokens`` of its prompt are reused."""

    cached_tokens: int


@dataclass(slots=True)
class Job:
    prompt_tokens: list[int]
    stop_ids: frozenset[int]
    stop_strings: tuple[str, ...]
    max_new_tokens: int
    seed: int
    sampling: dict[str, float]
    emit: Callable[[Any], None]
    # Hands over what ``emit`` holds back: called before a step that reads a prompt.
    flush: Callable[[], None]
    # Called once, on the engine thread, when the job no longer uses the engine.
    released: Callable[[], None]
    grammar: str | None = None
    conversation_key: str | None = None
    # Reproducible when run alone: reuse only exact entries, read in aligned chunks.
    deterministic: bool = False
    # time.monotonic() by which the job must have a sequence and room, else it is refused.
    deadline: float | None = None
    cancel: threading.Event = field(default_factory=threading.Event)

    def expired(self, now: float) -> bool:
        return self.deadline is not None and now >= self.deadline


def until_deadline(jobs: Iterable[Job]) -> float | None:
    """Seconds until the first waiting job's deadline (None: no deadline)."""
    deadlines = [j.deadline for j in jobs if j.deadline is not None]
    return max(min(deadlines) - time.monotonic(), 0.0) if deadlines else None
