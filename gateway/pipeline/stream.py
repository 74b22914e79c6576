"""Serving one run over HTTP: the streaming choreography every wire API shares.

- Wait for the backend's ``Started`` before sending headers, so queueing, context-length and
  load errors are real HTTP errors in the API's own shape.
- A stream that waits longer than ``keepalive`` gets its headers and keep-alive comments
  meanwhile, so proxies and clients do not time out.
- A client that goes away cancels the run at once (the ASGI receive channel is watched: a
  stream that waits for the engine sends nothing, so a send would never notice).
- The run is closed exactly once, whatever ends the response.
- An error after the headers is the stream's last event, framed by the API.

The SSE framing is the API's: a ``StreamEncoder`` turns parser events into bytes.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, Protocol

from fastapi.responses import JSONResponse
from starlette.requests import Request
from starlette.responses import Response

from ..glm47.events import ParseEvent
from .run import Run
from .sse import (
    KEEPALIVE,
    ClientDisconnected,
    ErrorFramer,
    EventStreamResponse,
    run_until_disconnect,
)


class StreamEncoder(Protocol):
    """One API's SSE framing of one run."""

    def open(self, run: Run) -> bytes:
        """What goes out once the run has started (a role chunk, ``message_start``, ...)."""
        ...

    def encode(self, group: list[ParseEvent]) -> bytes:
        """The events of one backend chunk: one socket write per chunk."""
        ...

    def close(self, run: Run) -> bytes:
        """The end of a finished run (finish reason, usage, terminator)."""
        ...


HeadersFor = Callable[[Run], Mapping[str, str]]


async def serve(
    request: Request,
    run: Run,
    *,
    encoder: StreamEncoder | None,
    complete: Callable[[Run], Awaitable[Any]],
    headers: HeadersFor,
    error_event: ErrorFramer,
    keepalive: float,
) -> Response:
    """Run ``run`` and answer: a stream when ``encoder`` is given, else ``complete(run)``'s JSON."""
    start: asyncio.Task[None] | None = None
    try:
        if encoder is not None:
            start = asyncio.ensure_future(run.start())
            # Admission errors within the first interval still get a real status; a request
            # that waits longer gets its headers and keep-alive comments meanwhile.
            await run_until_disconnect(
                request.receive, asyncio.wait({start}, timeout=keepalive or None)
            )
            if start.done():
                start.result()
            body = _stream(run, start, encoder, keepalive)
            return EventStreamResponse(
                body,
                headers=headers(run),
                on_close=_closer(run, start),
                error_event=error_event,
            )

        async def start_and_complete() -> Any:
            await run.start()
            try:
                return await complete(run)
            finally:
                await run.aclose()

        result = await run_until_disconnect(request.receive, start_and_complete())
    except ClientDisconnected:
        await _abandon(run, start)
        # Nobody reads this; 499 is the conventional "client closed request" for logs.
        return Response(status_code=499)
    except BaseException:
        await _abandon(run, start)
        raise
    return JSONResponse(result, headers=dict(headers(run)))


async def _stream(
    run: Run, start: asyncio.Task[None], encoder: StreamEncoder, keepalive: float
) -> AsyncIterator[bytes]:
    async for comment in keepalive_until(start, keepalive):
        yield comment
    start.result()  # an error here becomes the stream's error event
    groups = run.events()
    try:
        yield encoder.open(run)
        if keepalive > 0:
            # Prompt processing: comments until the first events.
            async for item in _first_with_keepalive(groups, keepalive):
                data = item if isinstance(item, bytes) else encoder.encode(item)
                if data:
                    yield data
        async for group in groups:
            data = encoder.encode(group)
            if data:
                yield data
        yield encoder.close(run)
    finally:
        await groups.aclose()
        await run.aclose()


async def keepalive_until(task: asyncio.Future[Any], interval: float) -> AsyncIterator[bytes]:
    """An SSE keep-alive comment every ``interval`` seconds until ``task`` is done."""
    while not task.done():
        await asyncio.wait({task}, timeout=interval or None)
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


def _closer(run: Run, start: asyncio.Task[None]) -> Callable[[], Awaitable[None]]:
    async def close() -> None:
        # The response is over (finished, failed or the client left): make sure the run
        # gives its place back even if its body never started iterating.
        await _abandon(run, start)

    return close


async def _abandon(run: Run, start: asyncio.Task[None] | None) -> None:
    if start is not None and not start.done():
        start.cancel()
        await asyncio.gather(start, return_exceptions=True)
    await run.aclose()
