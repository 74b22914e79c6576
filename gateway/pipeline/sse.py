"""Server-sent events, with client disconnects taken from the ASGI receive channel.

Starlette's own StreamingResponse only notices a disconnect on its next send under ASGI 2.4;
a stream that is waiting for the engine sends nothing, so it would never notice. Here a
listener task watches ``receive`` for ``http.disconnect`` and cancels the producer at once,
which closes the backend's iterator and frees the engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, TypeVar

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from ..errors import BackendUnavailableError, GatewayError

T = TypeVar("T")

logger = logging.getLogger("glm_gateway.streaming")

# A comment: every SSE client ignores it, every proxy sees traffic.
KEEPALIVE = b": keep-alive\n\n"

#: An API's last event for an error after the headers went out.
ErrorFramer = Callable[[GatewayError], bytes]


def encode_json(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()


def sse_data(obj: Any) -> bytes:
    """A data-only event (OpenAI's framing)."""
    return b"data: " + encode_json(obj) + b"\n\n"


def sse_event(name: str, obj: Any) -> bytes:
    """A named event (Anthropic's and the Responses API's framing)."""
    return b"event: " + name.encode() + b"\ndata: " + encode_json(obj) + b"\n\n"


class ClientDisconnected(Exception):
    pass


async def _wait_for_disconnect(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


async def run_until_disconnect(receive: Receive, work: Awaitable[T]) -> T:
    """Await ``work``; cancel it and raise ClientDisconnected if the client goes away first."""
    work_task = asyncio.ensure_future(work)
    listener = asyncio.ensure_future(_wait_for_disconnect(receive))
    try:
        done, _ = await asyncio.wait({work_task, listener}, return_when=asyncio.FIRST_COMPLETED)
        if work_task in done:
            return work_task.result()
        work_task.cancel()
        # gather (not a bare await) so our own cancellation is not swallowed with the task's.
        await asyncio.gather(work_task, return_exceptions=True)
        raise ClientDisconnected
    finally:
        listener.cancel()
        if not work_task.done():
            # Wait for it: whoever cleans up after us must not find it still running.
            work_task.cancel()
            await asyncio.gather(work_task, return_exceptions=True)


class EventStreamResponse(Response):
    """An ASGI response that streams SSE bytes and stops the producer when the client leaves."""

    media_type = "text/event-stream"

    # Response.__init__ is skipped on purpose: it would render a body and set content-length.
    def __init__(
        self,
        body: AsyncIterator[bytes],
        *,
        headers: Mapping[str, str] | None = None,
        on_close: Callable[[], Awaitable[None]] | None = None,
        error_event: ErrorFramer,
    ) -> None:
        self._body = body
        self._extra_headers = dict(headers or {})
        self._on_close = on_close
        self._error_event = error_event
        self.status_code = 200
        self.background = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        raw_headers = [
            (b"content-type", b"text/event-stream; charset=utf-8"),
            (b"cache-control", b"no-cache"),
            (b"x-accel-buffering", b"no"),
        ]
        raw_headers += [(k.lower().encode(), v.encode()) for k, v in self._extra_headers.items()]
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": raw_headers}
        )
        try:
            await run_until_disconnect(receive, self._produce(send))
        except (ClientDisconnected, OSError):
            return
        except asyncio.CancelledError:
            # Only the server cancels a response task: its shutdown grace ran out. Tell the
            # client why its stream ends, and end quietly (the cleanup below has run).
            if self._on_close is not None:
                await self._on_close()
                self._on_close = None
            error = BackendUnavailableError(
                "The server is shutting down; the response was cut short.", code="shutting_down"
            )
            with contextlib.suppress(Exception):
                await send(
                    {
                        "type": "http.response.body",
                        "body": self._error_event(error),
                        "more_body": False,
                    }
                )
            return
        finally:
            if self._on_close is not None:
                await self._on_close()
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _produce(self, send: Send) -> None:
        body = self._body
        try:
            async for data in body:
                await send({"type": "http.response.body", "body": data, "more_body": True})
        except Exception as exc:
            # Headers are out: the status can no longer change, so the error is the last event.
            if not isinstance(exc, GatewayError):
                logger.exception("stream failed")
                exc = GatewayError("internal error while streaming the response")
            await send(
                {"type": "http.response.body", "body": self._error_event(exc), "more_body": True}
            )
        finally:
            aclose = getattr(body, "aclose", None)
            if aclose is not None:
                await aclose()
