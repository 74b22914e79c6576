"""The Responses API as the app plugs it in."""

from __future__ import annotations

from ..base import WireApi
from .errors import error_event, error_response
from .routes import API_NAME, router

API = WireApi(
    name=API_NAME,
    router=router,
    paths=("/v1/responses",),
    error_response=error_response,
    error_event=error_event,
)
