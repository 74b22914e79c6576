"""What every wire API's routes share: the body, the app's limits and run options, headers."""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request

from ..errors import InvalidRequestError
from ..models import ModelRegistry
from ..pipeline.plan import ChatInput, Limits, Plan, build_plan
from ..pipeline.run import Run, RunOptions
from ..settings import Settings

# Headers a client may use to name its conversation for the engine's caches, when its API
# has no field for it.
CONVERSATION_HEADERS = ("x-conversation-id", "x-session-id", "x-claude-code-session-id")


async def read_json_object(request: Request) -> dict[str, Any]:
    raw = await request.body()
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidRequestError(f"The request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise InvalidRequestError("The request body must be a JSON object.")
    return body


def plan_request(request: Request, chat: ChatInput) -> Plan:
    registry: ModelRegistry = request.app.state.registry
    settings: Settings = request.app.state.settings
    if chat.conversation_key is None:
        for name in CONVERSATION_HEADERS:
            value = request.headers.get(name)
            if value:
                chat.conversation_key = value
                break
    limits = Limits(max_messages=settings.max_messages, max_tools=settings.max_tools)
    return build_plan(registry, chat, limits)


def new_run(request: Request, plan: Plan, api: str) -> Run:
    settings: Settings = request.app.state.settings
    state = request.scope.get("state", {})
    return Run(
        plan,
        RunOptions(
            metrics=request.app.state.metrics,
            record=state.get("record"),
            arrived=state.get("started"),
            timeout=settings.request_timeout,
            log_prompts=settings.log_prompts,
            api=api,
        ),
    )


def run_headers(plan: Plan, run: Run | None = None) -> dict[str, str]:
    """The gateway's own response headers: the sampling route and its overhead."""
    headers = {"x-sampling-route": plan.route}
    if run is not None:
        overhead = run.overhead_ms()
        headers["x-gateway-overhead-ms"] = f"{overhead:.3f}"
        if run.options.record is not None:
            run.options.record.overhead_ms = overhead
    return headers


def keepalive_interval(request: Request) -> float:
    settings: Settings = request.app.state.settings
    return settings.keepalive_interval
