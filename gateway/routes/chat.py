"""``/v1/chat/completions`` and its ``/render`` twin."""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from ..chat import ChatRun, PreparedChat, prepare
from ..errors import InvalidRequestError
from ..models import ModelRegistry
from ..protocol import ChatCompletionRequest
from ..sampling import sampling_dict
from ..streaming import ClientDisconnected, EventStreamResponse, run_until_disconnect

router = APIRouter()

_BODY_SCHEMA: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": ChatCompletionRequest.model_json_schema()}},
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
    return prepare(registry, await read_json_object(request))


def _headers(prepared: PreparedChat) -> dict[str, str]:
    return {"x-sampling-route": prepared.route}


@router.post("/v1/chat/completions", openapi_extra=_BODY_SCHEMA)
async def chat_completions(request: Request) -> Response:
    prepared = await _prepare(request)
    run = ChatRun(prepared)
    try:
        if prepared.request.stream:
            await run_until_disconnect(request.receive, run.start())
            return EventStreamResponse(run.stream(), headers=_headers(prepared))

        async def start_and_complete() -> dict[str, Any]:
            await run.start()
            return await run.complete()

        body = await run_until_disconnect(request.receive, start_and_complete())
    except ClientDisconnected:
        await run.aclose()
        # Nobody reads this; 499 is the conventional "client closed request" for logs.
        return Response(status_code=499)
    except BaseException:
        await run.aclose()
        raise
    return JSONResponse(body, headers=_headers(prepared))


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
