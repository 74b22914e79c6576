"""The wire APIs, each a thin layer over the one pipeline (``gateway.pipeline``)."""

from __future__ import annotations

from .base import WireApi


def wire_apis() -> tuple[WireApi, ...]:
    """Every wire API the app serves; the first is the default shape for other paths."""
    from .anthropic.wire import API as ANTHROPIC
    from .openai_chat import API as OPENAI_CHAT
    from .openai_responses.api import API as OPENAI_RESPONSES

    return (OPENAI_CHAT, ANTHROPIC, OPENAI_RESPONSES)


def api_for_path(apis: tuple[WireApi, ...], path: str) -> WireApi:
    for api in apis:
        if api.owns(path):
            return api
    return apis[0]
