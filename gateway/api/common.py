"""What every wire API's routes share: the body, the app's limits and run options, headers."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse

from ..errors import InvalidRequestError
from ..models import ModelRegistry
from ..pipeline.options import RunOptions
from ..pipeline.plan import ChatInput, Limits, Plan, build_plan
from ..pipeline.run import Run
from ..pipeline.thinking_memory import ThinkingMemory, turn_key
from ..sampling import sampling_dict
from ..settings import Settings

# Headers a client may use to name its conversation for the engine's caches, when its API
# has no field for it.
CONVERSATION_HEADERS = ("x-conversation-id", "x-session-id", "x-claude-code-session-id")


def sse_event_schema(*, named: bool) -> dict[str, Any]:
    """One server-sent event of a ``text/event-stream`` response, as OpenAPI tools check it
    (each event on its own): its data, and its name where the API names its events."""
    required = ["event", "data"] if named else ["data"]
    return {
        "type": "object",
        "properties": {"event": {"type": "string"}, "data": {"type": "string"}},
        "required": required,
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
    memory: ThinkingMemory = request.app.state.thinking_memory
    plan = build_plan(registry, chat, limits, memory=memory, scope=key_scope(request))
    if plan.restored_thinking:
        request.app.state.metrics.thinking_restored.labels(plan.model.id).inc(
            plan.restored_thinking
        )
    return plan


def key_scope(request: Request) -> str:
    """Whose memory a request may read: a hash of its API key (set by the key middleware)."""
    return str(request.scope.get("state", {}).get("api_key_hash", ""))


def _remember(memory: ThinkingMemory, scope: str) -> Callable[[Run], None]:
    def remember(run: Run) -> None:
        if not run.plan.route_settings.preserve_thinking:
            return
        message = run.message
        if not message.reasoning_content or not message.tool_calls:
            return
        calls = [
            (run.call_id(i), call.name, call.arguments) for i, call in enumerate(message.tool_calls)
        ]
        key = turn_key(scope, message.content, calls)
        if key is not None:
            memory.remember(key, message.reasoning_content)

    return remember


def new_run(
    request: Request, plan: Plan, api: str, call_id_prefix: str = "call_", preserve: bool = True
) -> Run:
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
            call_id_prefix=call_id_prefix,
            on_complete=(
                _remember(request.app.state.thinking_memory, key_scope(request))
                if preserve
                else None
            ),
        ),
    )


def run_headers(plan: Plan, run: Run | None = None) -> dict[str, str]:
    """The gateway's own response headers: the sampling route and its overhead, and what the
    gateway did to the generation (known before a stream's headers only for the prompt)."""
    headers = {"x-sampling-route": plan.route}
    if plan.restored_thinking:
        headers["x-glm-restored-thinking"] = str(plan.restored_thinking)
    if run is not None:
        headers.update(intervention_headers(run))
        overhead = run.overhead_ms()
        headers["x-gateway-overhead-ms"] = f"{overhead:.3f}"
        if run.options.record is not None:
            run.options.record.overhead_ms = overhead
    return headers


def rendered(plan: Plan) -> JSONResponse:
    """What the ``/render`` debugging routes answer: the prompt and the choices made for it."""
    return JSONResponse(
        {
            "prompt": plan.prompt,
            "route": plan.route,
            "sampling": sampling_dict(plan.sampling),
            "enable_thinking": plan.thinking,
        },
        headers=run_headers(plan),
    )


def keepalive_interval(request: Request) -> float:
    settings: Settings = request.app.state.settings
    return settings.keepalive_interval


def intervention_headers(run: Run) -> dict[str, str]:
    """The gateway's changes to a finished generation (non-streamed responses)."""
    headers: dict[str, str] = {}
    if run.budget_reached:
        headers["x-glm-thinking-budget"] = f"reached; {run.reasoning_tokens} reasoning tokens"
    if run.loop_stop is not None:
        headers["x-glm-loop-guard"] = run.loop_stop
    if run.repairs:
        # (what failed in a tool call, then how it ended: repaired, failed or content)
        headers["x-glm-repairs"] = ", ".join(f"{p}={o}" for p, o in run.repairs)
    return headers
