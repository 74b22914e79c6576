"""``/v1/chat/completions`` and its ``/render`` twin."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from ...pipeline.run import Run
from ...pipeline.stream import serve
from ..common import (
    keepalive_interval,
    new_run,
    plan_request,
    read_json_object,
    rendered,
    run_headers,
    sse_event_schema,
)
from .encode import ChatStreamEncoder, completion
from .errors import error_event
from .translate import to_chat_input

API_NAME = "openai_chat"

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
            "text/event-stream": {"schema": sse_event_schema(named=False)},
        },
    }
}


async def _complete(run: Run) -> dict[str, Any]:
    return completion(run, await run.collect())


@router.post("/v1/chat/completions", openapi_extra=_BODY_SCHEMA, responses=_CHAT_RESPONSES)
async def chat_completions(request: Request) -> Response:
    body = await read_json_object(request)
    plan = plan_request(request, to_chat_input(body))
    run = new_run(request, plan, API_NAME)
    options = body.get("stream_options")
    include_usage = isinstance(options, dict) and options.get("include_usage") is True
    return await serve(
        request,
        run,
        encoder=ChatStreamEncoder(run, include_usage) if plan.input.stream else None,
        complete=_complete,
        headers=lambda r: run_headers(plan, r),
        error_event=error_event,
        keepalive=keepalive_interval(request),
    )


@router.post("/v1/chat/completions/render", openapi_extra=_BODY_SCHEMA)
async def render(request: Request) -> Response:
    plan = plan_request(request, to_chat_input(await read_json_object(request)))
    return rendered(plan)
