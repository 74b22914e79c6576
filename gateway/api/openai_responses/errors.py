"""Errors: OpenAI's envelope before headers; ``error`` + ``response.failed`` events after."""

from __future__ import annotations

from fastapi.responses import JSONResponse
from starlette.responses import Response

from ...errors import GatewayError
from ...pipeline.sse import sse_event


def error_response(exc: GatewayError) -> Response:
    return JSONResponse(exc.to_dict(), status_code=exc.status_code, headers=exc.headers)


def error_event(exc: GatewayError) -> bytes:
    """An error after headers when no response has begun (a stream's own encoder frames the
    errors of a response it started)."""
    return sse_event(
        "error",
        {
            "type": "error",
            "sequence_number": 0,
            "code": exc.code or exc.error_type,
            "message": exc.message,
            "param": exc.param,
        },
    )
