"""The application factory: ``create_app(settings)`` builds everything, nothing is global."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import pydantic
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.utils import get_openapi
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from backends.base import Backend
from backends.errors import BackendError as EngineError

from . import __version__
from .api import api_for_path, wire_apis
from .api.base import WireApi
from .api.openai_chat.request import ChatCompletionRequest, ErrorResponse
from .api.openai_responses.state import ResponsesState
from .errors import GatewayError, InvalidRequestError, from_backend
from .middleware import ApiKeyMiddleware, BodyLimitMiddleware, RequestContextMiddleware
from .models import ModelRegistry
from .observability import Metrics
from .pipeline.thinking_memory import ThinkingMemory
from .plain_routes import serve_plain
from .routes import metrics as metrics_route
from .routes import models
from .settings import Settings

logger = logging.getLogger("glm_gateway")


def _param_from_loc(loc: tuple[Any, ...]) -> str | None:
    """('body', 'messages', 0, 'role') -> 'messages[0].role'."""
    out = ""
    for part in loc:
        if part == "body" and not out:
            continue
        if isinstance(part, int):
            out += f"[{part}]"
        elif isinstance(part, str) and part.startswith(("function-after[", "function-before[")):
            continue
        else:
            out += ("." if out else "") + str(part)
    return out or None


def validation_error(errors: list[Any]) -> InvalidRequestError:
    first = errors[0]
    loc = tuple(first.get("loc", ()))
    # Union members (e.g. 'str', 'list[...]') appear in loc; they name no field.
    loc = tuple(p for p in loc if not (isinstance(p, str) and ("[" in p or p in {"str", "int"})))
    param = _param_from_loc(loc)
    where = f" at '{param}'" if param else ""
    return InvalidRequestError(
        f"Invalid request{where}: {first.get('msg', 'invalid value')}", param=param
    )


def _install_error_handlers(app: FastAPI, apis: tuple[WireApi, ...]) -> None:
    # The one place where errors become HTTP, in the shape of the API that owns the path.
    def respond(request: Request, exc: GatewayError) -> Response:
        record = request.scope.get("state", {}).get("record")
        if record is not None:
            record.error = exc.code or exc.error_type
        return api_for_path(apis, request.url.path).error_response(exc)

    async def on_gateway_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, GatewayError)
        return respond(request, exc)

    async def on_engine_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, EngineError)
        return respond(request, from_backend(exc))

    async def on_pydantic_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, pydantic.ValidationError | RequestValidationError)
        return respond(request, validation_error(list(exc.errors())))

    async def on_http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        err = GatewayError(str(exc.detail), code=None)
        err.status_code = exc.status_code
        err.error_type = "invalid_request_error" if exc.status_code < 500 else "server_error"
        return respond(request, err)

    async def on_client_gone(request: Request, exc: Exception) -> Response:
        # The client closed the connection while its body was being read: nobody reads this;
        # 499 is the conventional "client closed request" for the access log.
        record = request.scope.get("state", {}).get("record")
        if record is not None:
            record.cancelled = True
        return Response(status_code=499)

    async def on_unexpected(request: Request, exc: Exception) -> Response:
        logger.exception("unhandled error", exc_info=exc)
        return respond(request, GatewayError("Internal server error."))

    app.add_exception_handler(GatewayError, on_gateway_error)
    app.add_exception_handler(EngineError, on_engine_error)
    app.add_exception_handler(pydantic.ValidationError, on_pydantic_error)
    app.add_exception_handler(RequestValidationError, on_pydantic_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(ClientDisconnect, on_client_gone)
    app.add_exception_handler(Exception, on_unexpected)


_ERROR_STATUSES = {
    "400": "Invalid request",
    "401": "Missing or invalid API key",
    "404": "Unknown model or path",
    "413": "Request body too large",
    "429": "The model's waiting line is full",
    "502": "The backend failed",
    "503": "The backend is unavailable or the request waited too long",
    "504": "The request took too long",
}


def _install_openapi(app: FastAPI) -> None:
    """Complete the generated schema: the hand-read request body and OpenAI error responses."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        body = ChatCompletionRequest.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(body.pop("$defs", {}))
        components["ChatCompletionRequest"] = body
        error_schema = ErrorResponse.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(error_schema.pop("$defs", {}))
        components["Error"] = error_schema
        error = {
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
        }
        for path in schema.get("paths", {}).values():
            for operation in path.values():
                responses = operation.setdefault("responses", {})
                # Validation errors are answered 400 in OpenAI's shape, never 422.
                responses.pop("422", None)
                if any(status.startswith(("4", "5")) for status in responses):
                    continue  # an API with its own error shape declared its errors itself
                for status, description in _ERROR_STATUSES.items():
                    responses.setdefault(status, {"description": description, **error})
        components.pop("HTTPValidationError", None)
        components.pop("ValidationError", None)
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def create_app(settings: Settings, *, backends: Mapping[str, Backend] | None = None) -> FastAPI:
    """Build the app. ``backends`` (by model id) replaces backends built from settings."""
    registry = ModelRegistry.from_settings(settings.models, backends)
    metrics = Metrics(registry)
    api_keys = settings.load_api_keys()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Models load in the background so /health answers and /ready says 503 meanwhile.
        loading = asyncio.create_task(registry.start())
        try:
            yield
        finally:
            loading.cancel()
            await asyncio.gather(loading, return_exceptions=True)
            await registry.aclose()

    apis = wire_apis()
    app = FastAPI(title="glm-gateway", version=__version__, lifespan=lifespan)
    app.state.settings = settings
    app.state.registry = registry
    app.state.metrics = metrics
    app.state.responses = ResponsesState.from_settings(settings.responses)
    app.state.thinking_memory = ThinkingMemory(
        max_entries=settings.thinking_memory_entries,
        max_chars=settings.thinking_memory_chars,
    )
    _install_error_handlers(app, apis)
    _install_openapi(app)
    for api in apis:
        app.include_router(api.router)
    app.include_router(models.router)
    app.include_router(metrics_route.router)
    serve_plain(app, [*(api.router for api in apis), models.router, metrics_route.router])

    def shape(path: str, exc: GatewayError) -> Response:
        return api_for_path(apis, path).error_response(exc)

    def api_of(path: str) -> str | None:
        owner = next((api for api in apis if api.owns(path)), None)
        return owner.name if owner is not None else None

    # Added innermost first: the request context (ids, access log) wraps everything, so 401s
    # and 413s are logged and counted too.
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes, shape=shape)
    if api_keys:
        app.add_middleware(ApiKeyMiddleware, keys=api_keys, shape=shape)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "DELETE", "OPTIONS"],
            allow_headers=["authorization", "content-type", "x-api-key", "x-request-id"],
            expose_headers=[
                "x-request-id",
                "x-sampling-route",
                "x-gateway-overhead-ms",
                "x-glm-thinking-budget",
                "x-glm-loop-guard",
                "x-glm-repairs",
                "x-glm-restored-thinking",
            ],
        )
    app.add_middleware(
        RequestContextMiddleware, metrics=metrics, log_format=settings.log_format, api_of=api_of
    )
    return app
