"""``/v1/responses``: create (streamed or not), retrieve, delete, and a ``/render`` twin."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from ...errors import NotFoundError
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
from .encode import OutputBuilder
from .request import ResponsesRequest
from .state import ResponsesState
from .strict import constrain_strict_tools
from .translate import Translated, translate

API_NAME = "openai_responses"

router = APIRouter()


def _inlined(schema: dict[str, Any]) -> dict[str, Any]:
    """A model's JSON schema with its ``$defs`` inlined, to stand alone in the OpenAPI doc."""
    defs = schema.pop("$defs", {})

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return walk(defs[ref.removeprefix("#/$defs/")])
            return {key: walk(value) for key, value in node.items()}
        if isinstance(node, list):
            return [walk(value) for value in node]
        return node

    result: dict[str, Any] = walk(schema)
    return result


# The body is read by hand (items and tools keep the client's key order and get errors that
# name the exact item), so FastAPI does not see the model: declare it.
_BODY_SCHEMA: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": _inlined(ResponsesRequest.model_json_schema())}},
    }
}
_CREATE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "A response, or with `stream: true` a stream of response events",
        "content": {
            "application/json": {"schema": {"type": "object"}},
            "text/event-stream": {"schema": sse_event_schema(named=True)},
        },
    }
}


def _state(request: Request) -> ResponsesState:
    state: ResponsesState = request.app.state.responses
    return state


def _storer(state: ResponsesState, translated: Translated) -> Callable[[dict[str, Any]], None]:
    def on_done(response: dict[str, Any]) -> None:
        if translated.store:
            state.store.put(response, [*translated.items, *response["output"]])

    return on_done


@router.post("/v1/responses", openapi_extra=_BODY_SCHEMA, responses=_CREATE_RESPONSES)
async def create_response(request: Request) -> Response:
    state = _state(request)
    translated = translate(await read_json_object(request), state.store, state.sealer)
    plan = plan_request(request, translated.chat)
    constrain_strict_tools(plan, translated.tools)
    # Responses clients send reasoning back as items of their own (sealed): no memory.
    run = new_run(request, plan, API_NAME, preserve=False)
    stream = translated.chat.stream
    builder = OutputBuilder(
        translated, plan, state.sealer, stream=stream, on_done=_storer(state, translated)
    )

    async def complete(run: Run) -> dict[str, Any]:
        async for group in run.events():
            builder.encode(group)
        builder.close(run)
        assert builder.final is not None
        return builder.final

    return await serve(
        request,
        run,
        encoder=builder if stream else None,
        complete=complete,
        headers=lambda r: run_headers(plan, r),
        error_event=builder.error,
        keepalive=keepalive_interval(request),
    )


@router.post("/v1/responses/render", openapi_extra=_BODY_SCHEMA)
async def render_response(request: Request) -> Response:
    """The exact prompt a request renders to (previous_response_id resolved), for debugging."""
    state = _state(request)
    translated = translate(await read_json_object(request), state.store, state.sealer)
    plan = plan_request(request, translated.chat)
    return rendered(plan)


def _not_found(response_id: str) -> NotFoundError:
    return NotFoundError(
        f"No stored response with id {response_id!r}: it was never stored (store: false), or "
        "it has been evicted.",
        param="response_id",
        code="response_not_found",
    )


@router.get("/v1/responses/{response_id}")
async def get_response(request: Request, response_id: str) -> Response:
    stored = _state(request).store.get(response_id)
    if stored is None:
        raise _not_found(response_id)
    return JSONResponse(dict(stored.response))


@router.delete("/v1/responses/{response_id}")
async def delete_response(request: Request, response_id: str) -> Response:
    if not _state(request).store.delete(response_id):
        raise _not_found(response_id)
    return JSONResponse({"id": response_id, "object": "response", "deleted": True})
