"""``POST /v1/messages`` and ``POST /v1/messages/count_tokens`` (``?beta=true`` accepted:
query parameters are not read)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from ...errors import UnsupportedParameterError
from ...models import ModelRegistry
from ...pipeline.plan import ChatInput
from ...pipeline.run import Run
from ...pipeline.stream import serve
from ...settings import Settings
from ..common import keepalive_interval, new_run, plan_request, read_json_object, run_headers
from .encode import MessagesStreamEncoder, complete
from .errors import error_event
from .names import served_name
from .openapi import COUNT_TOKENS_BODY, MESSAGES_BODY, responses
from .request import CountTokensRequest, MessagesRequest
from .translate import to_chat_input
from .validation import validate

API_NAME = "anthropic"

router = APIRouter()


def _chat_input(request: Request, parsed: CountTokensRequest) -> ChatInput:
    registry: ModelRegistry = request.app.state.registry
    settings: Settings = request.app.state.settings
    return to_chat_input(parsed, served_name(registry, settings.anthropic, parsed.model))


@router.post(
    "/v1/messages",
    openapi_extra=MESSAGES_BODY,
    responses=responses("A message, or with `stream: true` Anthropic's events", stream=True),
)
async def messages(request: Request) -> Response:
    parsed = validate(MessagesRequest, await read_json_object(request))
    plan = plan_request(request, _chat_input(request, parsed))
    run = new_run(request, plan, API_NAME, call_id_prefix="toolu_")
    # Responses name the model the client asked for, as Anthropic's API does.
    model = parsed.model

    async def _complete(r: Run) -> dict[str, Any]:
        return await complete(r, model)

    return await serve(
        request,
        run,
        encoder=MessagesStreamEncoder(model) if parsed.stream else None,
        complete=_complete,
        headers=lambda r: run_headers(plan, r),
        error_event=error_event,
        keepalive=keepalive_interval(request),
    )


@router.post(
    "/v1/messages/count_tokens",
    openapi_extra=COUNT_TOKENS_BODY,
    responses=responses('The prompt\'s length: `{"input_tokens": N}`', stream=False),
)
async def count_tokens(request: Request) -> Response:
    parsed = validate(CountTokensRequest, await read_json_object(request))
    chat = _chat_input(request, parsed)
    # The prompt does not depend on how a call is enforced or the answer's format (only
    # "none" hides the tools), so nothing that needs a grammar is asked for here.
    if chat.tool_choice.mode in ("required", "named"):
        chat.tool_choice = replace(chat.tool_choice, mode="auto", name=None)
    chat.output_format = None
    plan = plan_request(request, chat)
    counted = await plan.model.backend.count_tokens(plan.prompt)
    if counted is None:
        raise UnsupportedParameterError("This model's backend cannot count tokens.", param="model")
    return JSONResponse({"input_tokens": counted}, headers=run_headers(plan))
