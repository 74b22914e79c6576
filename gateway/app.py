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
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from backends.base import Backend

from . import __version__
from .errors import GatewayError, InvalidRequestError
from .middleware import ApiKeyMiddleware, BodyLimitMiddleware, RequestContextMiddleware
from .models import ModelRegistry
from .observability import Metrics
from .protocol import ChatCompletionRequest, ErrorResponse
from .routes import chat, models
from .routes import metrics as metrics_route
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


def error_response(exc: GatewayError) -> JSONResponse:
    return JSONResponse(exc.to_dict(), status_code=exc.status_code, headers=exc.headers)


def _install_error_handlers(app: FastAPI) -> None:
    # The one place where errors become HTTP.
    async def on_gateway_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, GatewayError)
        record = request.scope.get("state", {}).get("record")
        if record is not None:
            record.error = exc.code or exc.error_type
        return error_response(exc)

    async def on_pydantic_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, pydantic.ValidationError | RequestValidationError)
        return error_response(validation_error(list(exc.errors())))

    async def on_http_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        err = GatewayError(str(exc.detail), code=None)
        err.status_code = exc.status_code
        err.error_type = "invalid_request_error" if exc.status_code < 500 else "server_error"
        return error_response(err)

    async def on_unexpected(_: Request, exc: Exception) -> Response:
        logger.exception("unhandled error", exc_info=exc)
        return error_response(GatewayError("Internal server error."))

    app.add_exception_handler(GatewayError, on_gateway_error)
    app.add_exception_handler(pydantic.ValidationError, on_pydantic_error)
    app.add_exception_handler(RequestValidationError, on_pydantic_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
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

    app = FastAPI(title="glm-gateway", version=__version__, lifespan=lifespan)
    app.state.settings = settings
    app.state.registry = registry
    app.state.metrics = metrics
    _install_error_handlers(app)
    _install_openapi(app)
    app.include_router(chat.router)
    app.include_router(models.router)
    app.include_router(metrics_route.router)

    # Added innermost first: the request context (ids, access log) wraps everything, so 401s
    # and 413s are logged and counted too.
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    if api_keys:
        app.add_middleware(ApiKeyMiddleware, keys=api_keys)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=["authorization", "content-type", "x-api-key", "x-request-id"],
            expose_headers=["x-request-id", "x-sampling-route", "x-gateway-overhead-ms"],
        )
    app.add_middleware(RequestContextMiddleware, metrics=metrics, log_format=settings.log_format)
    return app
