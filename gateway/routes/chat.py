"""``/v1/chat/completions`` and its ``/render`` twin."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from ..chat import ChatRun, Limits, PreparedChat, RunOptions, keepalive_until, prepare
from ..errors import InvalidRequestError
from ..models import ModelRegistry
from ..sampling import sampling_dict
from ..settings import Settings
from ..streaming import ClientDisconnected, EventStreamResponse, run_until_disconnect

router = APIRouter()

# The body is read by hand (tools must keep the client's key order), so FastAPI does not see
# the model: declare it. The schema itself goes to components in ``gateway.app``.
_BODY_SCHEMA: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/ChatCompletionRequest"}}
        },
    }
}
_CHAT_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "A chat completion, or with `stream: true` a stream of chunks",
        "content": {
            "application/json": {"schema": {"type": "object"}},
            "text/event-stream": {"schema": {"type": "string"}},
        },
    }
}


async def read_json_object(request: Request) -> dict[str, Any]:
    raw = await request.body()
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidRequestError(f"The request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise InvalidRequestError("The request body must be a JSON object.")
    return body


async def _prepare(request: Request) -> PreparedChat:
    registry: ModelRegistry = request.app.state.registry
    settings: Settings = request.app.state.settings
    limits = Limits(max_messages=settings.max_messages, max_tools=settings.max_tools)
    return prepare(registry, await read_json_object(request), limits)


def _headers(prepared: PreparedChat, run: ChatRun | None = None) -> dict[str, str]:
    headers = {"x-sampling-route": prepared.route}
    if run is not None:
        overhead = run.overhead_ms()
        headers["x-gateway-overhead-ms"] = f"{overhead:.3f}"
        if run.options.record is not None:
            run.options.record.overhead_ms = overhead
    return headers


def _run_options(request: Request) -> RunOptions:
    settings: Settings = request.app.state.settings
    state = request.scope.get("state", {})
    return RunOptions(
        metrics=request.app.state.metrics,
        record=state.get("record"),
        arrived=state.get("started"),
        timeout=settings.request_timeout,
        log_prompts=settings.log_prompts,
    )


@router.post("/v1/chat/completions", openapi_extra=_BODY_SCHEMA, responses=_CHAT_RESPONSES)
async def chat_completions(request: Request) -> Response:
    prepared = await _prepare(request)
    run = ChatRun(prepared, _run_options(request))
    keepalive: float = request.app.state.settings.keepalive_interval
    start: asyncio.Task[None] | None = None
    try:
        if prepared.request.stream:
            start = asyncio.ensure_future(run.start())
            # Admission errors within the first interval still get a real status; a request
            # that waits longer gets its headers and keep-alive comments meanwhile.
            await run_until_disconnect(
                request.receive, asyncio.wait({start}, timeout=keepalive or None)
            )
            if start.done():
                start.result()
                body = run.stream(keepalive)
            else:
                body = _keepalive_until_started(start, run, keepalive)
            return EventStreamResponse(
                body, headers=_headers(prepared, run), on_close=_closer(run, start)
            )

        async def start_and_complete() -> dict[str, Any]:
            await run.start()
            return await run.complete()

        result = await run_until_disconnect(request.receive, start_and_complete())
    except ClientDisconnected:
        await _abandon(run, start)
        # Nobody reads this; 499 is the conventional "client closed request" for logs.
        return Response(status_code=499)
    except BaseException:
        await _abandon(run, start)
        raise
    return JSONResponse(result, headers=_headers(prepared, run))


async def _keepalive_until_started(
    start: asyncio.Task[None], run: ChatRun, interval: float
) -> AsyncIterator[bytes]:
    async for comment in keepalive_until(start, interval):
        yield comment
    start.result()  # an error here becomes the stream's error event
    async for data in run.stream(interval):
        yield data


def _closer(run: ChatRun, start: asyncio.Task[None]) -> Callable[[], Awaitable[None]]:
    async def close() -> None:
        # The response is over (finished, failed or the client left): make sure the run
        # gives its place back even if its body never started iterating.
        await _abandon(run, start)

    return close


async def _abandon(run: ChatRun, start: asyncio.Task[None] | None) -> None:
    if start is not None and not start.done():
        start.cancel()
        await asyncio.gather(start, return_exceptions=True)
    await run.aclose()


@router.post("/v1/chat/completions/render", openapi_extra=_BODY_SCHEMA)
async def render(request: Request) -> Response:
    prepared = await _prepare(request)
    return JSONResponse(
        {
            "prompt": prepared.prompt,
            "route": prepared.route,
            "sampling": sampling_dict(prepared.sampling),
            "enable_thinking": prepared.thinking,
        },
        headers=_headers(prepared),
    )
