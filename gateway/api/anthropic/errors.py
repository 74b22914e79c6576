"""Anthropic's error envelope, ``{"type": "error", "error": {"type", "message"}}``, and its
statuses.

The gateway's statuses map onto the ones Anthropic's clients know (the SDKs retry 429, 5xx
and 529; Claude Code shows "overloaded" for 529):

- 400, 401, 403, 404, 413 and 429 keep their status, with Anthropic's type names; a full
  queue's 429 keeps its ``retry-after``.
- 503 (a model still loading, a backend that is down, a wait in line past ``max_wait``, a
  shutdown) is ``overloaded_error`` 529: a temporary lack of capacity that is worth retrying,
  which is what 529 means to Anthropic's clients.
- 504 (the request's deadline) is ``timeout_error`` 504.
- Any other server-side failure (500, a backend's 502) is ``api_error`` 500.

Anthropic's messages carry no ``param``: a field's location prefixes the message instead
(``messages.0.content.1: ...``), as Anthropic writes its own validation errors.
"""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse
from starlette.responses import Response

from ...errors import GatewayError
from ...pipeline.sse import sse_event

_BY_STATUS: dict[int, tuple[int, str]] = {
    400: (400, "invalid_request_error"),
    401: (401, "authentication_error"),
    403: (403, "permission_error"),
    404: (404, "not_found_error"),
    413: (413, "request_too_large"),
    429: (429, "rate_limit_error"),
    503: (529, "overloaded_error"),
    504: (504, "timeout_error"),
}


def status_and_type(exc: GatewayError) -> tuple[int, str]:
    if exc.status_code in _BY_STATUS:
        return _BY_STATUS[exc.status_code]
    if 400 <= exc.status_code < 500:
        # Anthropic uses invalid_request_error for 4xx statuses it has no name for.
        return exc.status_code, "invalid_request_error"
    return 500, "api_error"


def envelope(exc: GatewayError) -> dict[str, Any]:
    _, kind = status_and_type(exc)
    text = f"{exc.param}: {exc.message}" if exc.param else exc.message
    return {"type": "error", "error": {"type": kind, "message": text}}


def error_response(exc: GatewayError) -> Response:
    status, _ = status_and_type(exc)
    return JSONResponse(envelope(exc), status_code=status, headers=exc.headers)


def error_event(exc: GatewayError) -> bytes:
    return sse_event("error", envelope(exc))
