"""The gateway's one error hierarchy.

Every error a client can see is a ``GatewayError``; ``gateway.app`` maps them to HTTP in one
place, in the shape of the request's wire API, and a stream sends them as its last event once
headers are out. Backends raise their own family (``backends.errors``), which ``from_backend``
maps here, so an engine never decides an HTTP status itself.
"""

from __future__ import annotations

from typing import Any

from backends import errors as backend_errors


class GatewayError(Exception):
    status_code: int = 500
    error_type: str = "server_error"
    code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.headers = headers or {}

    def to_dict(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.error_type,
                "param": self.param,
                "code": self.code,
            }
        }


class InvalidRequestError(GatewayError):
    status_code = 400
    error_type = "invalid_request_error"


class ContextLengthExceededError(InvalidRequestError):
    code = "context_length_exceeded"


class UnsupportedParameterError(InvalidRequestError):
    code = "unsupported_parameter"


class AuthenticationError(GatewayError):
    status_code = 401
    error_type = "authentication_error"
    code = "invalid_api_key"


class NotFoundError(GatewayError):
    status_code = 404
    error_type = "invalid_request_error"
    code = "not_found"


class ModelNotFoundError(NotFoundError):
    code = "model_not_found"


class PayloadTooLargeError(GatewayError):
    status_code = 413
    error_type = "invalid_request_error"
    code = "request_too_large"


class RateLimitError(GatewayError):
    status_code = 429
    error_type = "rate_limit_error"
    code = "queue_full"


class BackendError(GatewayError):
    """The backend failed in a way that is not the client's fault."""

    status_code = 502
    error_type = "server_error"
    code = "backend_error"


class BackendUnavailableError(BackendError):
    status_code = 503
    code = "backend_unavailable"


class BackendTimeoutError(BackendError):
    status_code = 504
    code = "backend_timeout"


class ModelNotReadyError(BackendUnavailableError):
    code = "model_not_ready"


# The one table from the engines' errors to the gateway's: the most specific class first.
_FROM_BACKEND: tuple[tuple[type[backend_errors.BackendError], type[GatewayError]], ...] = (
    (backend_errors.PromptTooLong, ContextLengthExceededError),
    (backend_errors.BadRequest, InvalidRequestError),
    (backend_errors.BackendNotReady, ModelNotReadyError),
    (backend_errors.BackendUnavailable, BackendUnavailableError),
    (backend_errors.BackendTimeout, BackendTimeoutError),
    (backend_errors.BackendError, BackendError),
)


def from_backend(exc: backend_errors.BackendError) -> GatewayError:
    """The gateway error (and so the status) for an engine's error."""
    for engine_class, gateway_class in _FROM_BACKEND:
        if isinstance(exc, engine_class):
            param = exc.param if isinstance(exc, backend_errors.BadRequest) else None
            return gateway_class(exc.message, param=param, code=exc.code)
    return BackendError(str(exc))
