"""One deadline over a whole run: queueing, prompt, every leg of the generation."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from typing import TypeVar

from ..errors import BackendTimeoutError

T = TypeVar("T")


class Deadline:
    """Awaits under ``perf_counter() <= at``; past it, a 504 ``request_timeout``.

    One timer for the whole run (a timeout context per awaited event costs a timer handle each:
    measurable on an instant upstream). It cancels the task that is waiting when it fires.
    """

    def __init__(self, at: float | None, timeout: float | None) -> None:
        self.at = at
        self._timeout = timeout
        self._timer: asyncio.TimerHandle | None = None
        self._waiting: asyncio.Task[object] | None = None
        self._expired = False

    async def run(self, awaitable: Awaitable[T]) -> T:
        if self.at is None:
            return await awaitable
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_at(_loop_time(self.at), self._expire)
        if self._expired:
            # It fired while nobody waited (the consumer was busy between two events).
            if asyncio.iscoroutine(awaitable):
                awaitable.close()
            raise self._error()
        task = asyncio.current_task()
        self._waiting = task
        try:
            return await awaitable
        except asyncio.CancelledError:
            # Ours only if the timer fired and nothing else also cancelled the task.
            if self._expired and task is not None and task.uncancel() == 0:
                raise self._error() from None
            raise
        finally:
            self._waiting = None

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()

    def _expire(self) -> None:
        self._expired = True
        if self._waiting is not None:
            self._waiting.cancel()

    def _error(self) -> BackendTimeoutError:
        return BackendTimeoutError(
            f"The request took longer than the gateway's limit of {self._timeout:g} s.",
            code="request_timeout",
        )


def _loop_time(perf_deadline: float) -> float:
    """A perf_counter() deadline on the event loop's clock."""
    return asyncio.get_running_loop().time() + (perf_deadline - time.perf_counter())
