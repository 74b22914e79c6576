"""What ``/openapi.json`` says about the Anthropic routes: their request bodies (read by
hand, so FastAPI cannot see them) and Anthropic's error envelope with its statuses."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel

from ..common import sse_event_schema
from .request import CountTokensRequest, MessagesRequest


class AnthropicErrorDetail(BaseModel):
    type: str
    message: str


class AnthropicError(BaseModel):
    type: Literal["error"]
    error: AnthropicErrorDetail


def _inline(node: Any, defs: dict[str, Any]) -> Any:
    """The schema with every ``#/$defs/...`` reference replaced by its definition (the
    request models are not recursive), so that it stands alone in an operation."""
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            return _inline(defs[ref.removeprefix("#/$defs/")], defs)
        return {key: _inline(value, defs) for key, value in node.items()}
    if isinstance(node, list):
        return [_inline(value, defs) for value in node]
    return node


def request_body(model: type[BaseModel]) -> dict[str, Any]:
    schema = model.model_json_schema()
    body = _inline(schema, schema.pop("$defs", {}))
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": body}}}}


_ERRORS = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error (the model's waiting line is full; see retry-after)",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error (the backend is unavailable, loading, or the wait was too long)",
}


def responses(success: str, *, stream: bool) -> dict[int | str, dict[str, Any]]:
    content: dict[str, Any] = {"application/json": {"schema": {"type": "object"}}}
    if stream:
        content["text/event-stream"] = {"schema": sse_event_schema(named=True)}
    out: dict[int | str, dict[str, Any]] = {200: {"description": success, "content": content}}
    for status, description in _ERRORS.items():
        out[status] = {"description": description, "model": AnthropicError}
    return out


MESSAGES_BODY = request_body(MessagesRequest)
COUNT_TOKENS_BODY = request_body(CountTokensRequest)
