"""Pure ASGI middleware: request ids and the access log, API keys, and the body size limit.

Pure ASGI (not BaseHTTPMiddleware) so that the receive channel reaches the routes untouched:
disconnect detection in ``gateway.pipeline.sse`` depends on it. Errors answered here take
the shape of the wire API that owns the path (``ErrorShaper``).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
import secrets
import time
from collections.abc import Callable, Sequence

from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import AuthenticationError, GatewayError, PayloadTooLargeError
from .observability import Metrics, RequestRecord

access_log = logging.getLogger("glm_gateway.access")

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


#: The error response for a path, in the shape of the wire API that owns it.
ErrorShaper = Callable[[str, GatewayError], Response]


async def send_error(
    scope: Scope, receive: Receive, send: Send, exc: GatewayError, shape: ErrorShaper
) -> None:
    record = scope.get("state", {}).get("record")
    if record is not None:
        record.error = exc.code or exc.error_type
    await shape(scope["path"], exc)(scope, receive, send)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return bytes(value).decode("latin-1")
    return None


class RequestContextMiddleware:
    """Gives each request an id (``X-Request-Id`` is honoured), logs one line at its end."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        metrics: Metrics,
        log_format: str = "json",
        api_of: Callable[[str], str | None] = lambda _: None,
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.log_format = log_format
        self.api_of = api_of

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        given = _header(scope, b"x-request-id")
        request_id = given if given and _REQUEST_ID.match(given) else secrets.token_hex(12)
        record = RequestRecord(
            request_id, method=scope["method"], path=scope["path"], api=self.api_of(scope["path"])
        )
        state = scope.setdefault("state", {})
        state["record"] = record
        state["started"] = started

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                record.status = message["status"]
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            record.status = record.status or 500
            raise
        finally:
            record.duration_ms = round((time.perf_counter() - started) * 1000, 3)
            if record.status == 0:
                # The response never started: the client left before it could.
                record.status = 499
                record.cancelled = True
            self.metrics.observe_request(record)
            self._log(record)

    def _log(self, record: RequestRecord) -> None:
        if not access_log.isEnabledFor(logging.INFO):
            return
        if self.log_format == "json":
            access_log.info(json.dumps(record.as_log(), ensure_ascii=False))
        else:
            access_log.info(
                "%s %s %s %.1fms id=%s model=%s",
                record.method,
                record.path,
                record.status,
                record.duration_ms or 0.0,
                record.request_id,
                record.model or "-",
            )


class ApiKeyMiddleware:
    """Requires one of the configured keys on every path but the public ones."""

    PUBLIC = frozenset({"/health", "/ready"})

    def __init__(self, app: ASGIApp, *, keys: Sequence[str], shape: ErrorShaper) -> None:
        self.app = app
        self.shape = shape
        # Compared as bytes with hmac.compare_digest: the time taken does not depend on how
        # much of a key matched. Every key is compared, so neither does it say which matched.
        self._keys = [k.encode() for k in keys]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.PUBLIC or scope["method"] == "OPTIONS":
            await self.app(scope, receive, send)
            return
        presented = self._presented(scope)
        if self._valid(presented):
            assert presented is not None
            # Per-key state (preserved thinking) is scoped by this hash, never the key itself.
            scope.setdefault("state", {})["api_key_hash"] = hashlib.sha256(presented).hexdigest()
            await self.app(scope, receive, send)
            return
        error = AuthenticationError(
            "Missing or invalid API key. Send it as 'Authorization: Bearer KEY' or "
            "'x-api-key: KEY'.",
            headers={"WWW-Authenticate": "Bearer"},
        )
        await send_error(scope, receive, send, error, self.shape)

    @staticmethod
    def _presented(scope: Scope) -> bytes | None:
        auth = _header(scope, b"authorization")
        if auth is not None:
            scheme, _, token = auth.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip().encode("latin-1")
        key = _header(scope, b"x-api-key")
        return key.strip().encode("latin-1") if key else None

    def _valid(self, presented: bytes | None) -> bool:
        if presented is None:
            return False
        matched = False
        for key in self._keys:
            matched |= hmac.compare_digest(presented, key)
        return matched


class BodyLimitMiddleware:
    """413 for request bodies over the limit, declared or streamed."""

    def __init__(self, app: ASGIApp, *, max_bytes: int, shape: ErrorShaper) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.shape = shape

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await send_error(scope, receive, send, self._error(), self.shape)
            return
        received = 0

        async def counting_receive() -> Message:
            # Raised inside the app, so its error handler answers 413 like any GatewayError.
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise self._error()
            return message

        await self.app(scope, counting_receive, send)

    def _error(self) -> PayloadTooLargeError:
        return PayloadTooLargeError(
            f"The request body is larger than the {self.max_bytes} bytes this gateway accepts."
        )
