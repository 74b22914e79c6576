"""Admission control: a bounded, ordered waiting line in front of each model.

A request holds a slot from admission until its generation ends (stream finished or client
gone), so a running stream is never interrupted to serve another. Waiting requests are served
first come, first served. When the line is full a newcomer gets 429 at once, with Retry-After;
one that waited ``max_wait`` gets 503. A waiter that goes away (client disconnect) leaves the
line at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque

from .errors import BackendUnavailableError, RateLimitError


class Slot:
    """A granted place; ``release`` is idempotent."""

    __slots__ = ("_gate", "_released", "waited")

    def __init__(self, gate: AdmissionGate, waited: float) -> None:
        self._gate = gate
        self._released = False
        self.waited = waited

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._gate._release()


class AdmissionGate:
    def __init__(self, max_concurrent: int | None, max_queue: int, max_wait: float) -> None:
        self.max_concurrent = max_concurrent
        self.max_queue = max_queue
        self.max_wait = max_wait
        self.running = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        # Recent service times, for a Retry-After that means something.
        self._mean_service = 1.0

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def _has_room(self) -> bool:
        return self.max_concurrent is None or self.running < self.max_concurrent

    async def acquire(self) -> Slot:
        started = time.monotonic()
        if self._has_room() and not self._waiters:
            self.running += 1
            return Slot(self, 0.0)
        if len(self._waiters) >= self.max_queue:
            estimate = self._mean_service * (1 + len(self._waiters))
            retry_after = max(1, math.ceil(min(estimate, self.max_wait)))
            raise RateLimitError(
                f"The model is busy: {self.running} requests running and "
                f"{len(self._waiters)} waiting, the most this gateway queues. Retry later.",
                headers={"Retry-After": str(retry_after)},
            )
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await asyncio.wait_for(asyncio.shield(waiter), self.max_wait)
        except TimeoutError:
            self._leave(waiter)
            raise BackendUnavailableError(
                f"The request waited {self.max_wait:g} s for the model without being served.",
                code="queue_timeout",
            ) from None
        except asyncio.CancelledError:
            self._leave(waiter)
            raise
        return Slot(self, time.monotonic() - started)

    def _leave(self, waiter: asyncio.Future[None]) -> None:
        if waiter.done() and not waiter.cancelled():
            # Granted just as we gave up: pass the place on.
            self._release()
            return
        waiter.cancel()
        with contextlib.suppress(ValueError):
            self._waiters.remove(waiter)

    def _release(self) -> None:
        self.running -= 1
        while self._waiters and self._has_room():
            waiter = self._waiters.popleft()
            if waiter.done():
                continue
            self.running += 1
            waiter.set_result(None)

    def record_service_time(self, seconds: float) -> None:
        self._mean_service = 0.8 * self._mean_service + 0.2 * max(seconds, 0.0)
