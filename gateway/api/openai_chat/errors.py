"""OpenAI's error envelope: ``{"error": {"message", "type", "param", "code"}}``."""

from __future__ import annotations

from fastapi.responses import JSONResponse
from starlette.responses import Response

from ...errors import GatewayError
from ...pipeline.sse import sse_data


def error_response(exc: GatewayError) -> Response:
    return JSONResponse(exc.to_dict(), status_code=exc.status_code, headers=exc.headers)


def error_event(exc: GatewayError) -> bytes:
    return sse_data(exc.to_dict())
