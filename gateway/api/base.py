"""What a wire API plugs into the app: its routes and its error shape."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from fastapi import APIRouter
from starlette.responses import Response

from ..errors import GatewayError


@dataclass(frozen=True, slots=True)
class WireApi:
    #: Labels metrics and the access log ("openai_chat", "anthropic", ...).
    name: str
    router: APIRouter
    #: Path prefixes this API answers; their errors (also the middleware's 401 and 413, and
    #: unknown paths below them) take this API's shape.
    paths: tuple[str, ...]
    #: An error before headers: the API's JSON envelope and status.
    error_response: Callable[[GatewayError], Response]
    #: An error after headers: the stream's last event, in the API's framing.
    error_event: Callable[[GatewayError], bytes]

    def owns(self, path: str) -> bool:
        return any(path == p or path.startswith(p.rstrip("/") + "/") for p in self.paths)
