"""Model listing, liveness and readiness."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from ..models import ModelName, ModelRegistry, ServedModel

router = APIRouter()


def _card(entry: ModelName) -> dict[str, Any]:
    model = entry.model
    info = model.backend.info
    card: dict[str, Any] = {
        "id": entry.name,
        "object": "model",
        "created": 0,
        "owned_by": info.owned_by,
        "root": model.id,
        "context_length": info.context_length,
        "ready": model.backend.ready,
        "capabilities": {
            "reasoning": True,
            "tools": True,
            "constrained_output": model.backend.supports_grammar,
        },
        # What each route injects when the client sends nothing, so clients can configure
        # themselves; ``overrides`` are pinned and win even over the client.
        "sampling": {
            name: {
                **route.defaults_layer(),
                **({"overrides": route.overrides.layer()} if route.overrides.layer() else {}),
            }
            for name, route in model.routes.items()
        },
    }
    # The engine's settings (llamacpp: parallel sequences, cache and batch settings); the
    # model's path on this host stays private.
    engine = {k: v for k, v in info.extra.items() if k != "model_path"}
    if engine:
        card["engine"] = engine
    if entry.route is not None:
        card["route"] = entry.route
    return card


@router.get("/v1/models")
async def list_models(request: Request) -> dict[str, Any]:
    registry: ModelRegistry = request.app.state.registry
    return {"object": "list", "data": [_card(entry) for entry in registry.names()]}


@router.get("/v1/models/{model_id:path}")
async def get_model(model_id: str, request: Request) -> dict[str, Any]:
    registry: ModelRegistry = request.app.state.registry
    return _card(registry.resolve(model_id))


@router.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


def _state(model: ServedModel) -> str:
    if model.backend.ready:
        return "ready"
    return f"failed: {model.load_error}" if model.load_error else "loading"


@router.get("/ready")
async def ready(request: Request) -> JSONResponse:
    registry: ModelRegistry = request.app.state.registry
    models = {m.id: _state(m) for m in registry}
    ok = registry.ready
    return JSONResponse(
        {"status": "ready" if ok else "not ready", "models": models},
        status_code=200 if ok else 503,
    )
