"""The tools route keeps earlier turns' reasoning in the prompt by default (preserved thinking,
chosen by measurement: docs/BENCHMARKS.md); the general route clears it, and a client's
``clear_thinking`` wins over either."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.gateway.agent.conftest import MODEL, RecordingBackend, gateway, scripted

TOOLS = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
MESSAGES: list[dict[str, Any]] = [
    {"role": "user", "content": "one"},
    {"role": "assistant", "content": "a", "reasoning_content": "EARLIER-REASONING"},
    {"role": "user", "content": "two"},
]


@pytest.mark.parametrize(
    ("tools", "kwargs", "kept"),
    [
        (True, {}, True),
        (False, {}, False),
        (True, {"clear_thinking": True}, False),
        (False, {"clear_thinking": False}, True),
    ],
)
def test_which_route_keeps_earlier_reasoning(
    tools: bool, kwargs: dict[str, Any], kept: bool
) -> None:
    body: dict[str, Any] = {"model": MODEL, "messages": MESSAGES}
    if tools:
        body["tools"] = TOOLS
    if kwargs:
        body["chat_template_kwargs"] = kwargs
    with gateway(RecordingBackend(scripted("x"))) as (url, _):
        reply = httpx.post(f"{url}/v1/chat/completions/render", json=body)
    reply.raise_for_status()
    assert ("EARLIER-REASONING" in reply.json()["prompt"]) is kept
