"""Model listing, liveness and readiness."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from ..models import ModelRegistry, ServedModel

router = APIRouter()


def _card(name: str, model: ServedModel) -> dict[str, Any]:
    info = model.backend.info
    return {
        "id": name,
        "object": "model",
        "created": 0,
        "owned_by": info.owned_by,
        "root": model.id,
        "context_length": info.context_length,
        "ready": model.backend.ready,
    }


def _state(model: ServedModel) -> str:
    if model.backend.ready:
        return "ready"
    return f"failed: {model.load_error}" if model.load_error else "loading"


@router.get("/v1/models")
async def list_models(request: Request) -> dict[str, Any]:
    registry: ModelRegistry = request.app.state.registry
    return {"object": "list", "data": [_card(name, model) for name, model in registry.names()]}


@router.get("/v1/models/{model_id:path}")
async def get_model(model_id: str, request: Request) -> dict[str, Any]:
    registry: ModelRegistry = request.app.state.registry
    return _card(model_id, registry.resolve(model_id))


@router.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/ready")
async def ready(request: Request) -> JSONResponse:
    registry: ModelRegistry = request.app.state.registry
    models = {m.id: _state(m) for m in registry}
    ok = registry.ready
    return JSONResponse(
        {"status": "ready" if ok else "not ready", "models": models},
        status_code=200 if ok else 503,
    )
