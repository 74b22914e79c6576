"""Preserved thinking: a tool loop whose client drops ``reasoning_content`` renders exactly the
prompt of the same loop sent with it; memory is scoped to the API key; the client's wins."""

from __future__ import annotations

from typing import Any

import httpx
import openai

from gateway.settings import RouteSettings
from tests.gateway.agent.conftest import MODEL, RecordingBackend, gateway, scripted
from tests.gateway.agent.test_loop_guard import TOOLS

REASONING = "The user wants Paris. I will call get_weather."
CALL = (
    REASONING + "</think><tool_call>get_weather<arg_key>city</arg_key>"
    "<arg_value>Paris</arg_value></tool_call>"
)
KEYS = ["key-one", "key-two"]


def _loop(client: openai.OpenAI) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """One real tool-call turn through the SDK; the next request with and without reasoning."""
    user = {"role": "user", "content": "Weather in Paris?"}
    done = client.chat.completions.create(model=MODEL, messages=[user], tools=TOOLS)  # type: ignore[list-item]
    message = done.choices[0].message
    assert message.tool_calls
    dropped = message.model_dump(exclude_none=True, exclude={"reasoning_content", "reasoning"})
    kept = {**dropped, "reasoning_content": (message.model_extra or {})["reasoning_content"]}
    result = {"role": "tool", "tool_call_id": message.tool_calls[0].id, "content": "Sunny"}
    return [user, dropped, result], [user, kept, result]


def _render(url: str, key: str, messages: list[dict[str, Any]], **extra: Any) -> httpx.Response:
    return httpx.post(
        f"{url}/v1/chat/completions/render",
        json={"model": MODEL, "messages": messages, "tools": TOOLS, **extra},
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )


def test_dropped_reasoning_renders_as_if_it_was_sent() -> None:
    with gateway(RecordingBackend(scripted(CALL)), api_keys=KEYS) as (url, client):
        dropped, kept = _loop(client)
        with_it = _render(url, KEYS[0], kept)
        without = _render(url, KEYS[0], dropped)
        assert without.json()["prompt"] == with_it.json()["prompt"]
        assert REASONING in without.json()["prompt"]
        assert without.headers["x-glm-restored-thinking"] == "1"
        assert "x-glm-restored-thinking" not in with_it.headers
        # Another key's requests never see this key's reasoning.
        other = _render(url, KEYS[1], dropped)
        assert REASONING not in other.json()["prompt"]
        # A client that sends reasoning wins.
        own = [dropped[0], {**dropped[1], "reasoning_content": "Mine."}, dropped[2]]
        assert "Mine." in _render(url, KEYS[0], own).json()["prompt"]
        # A changed turn (other arguments) is not the turn that was generated.
        call = dict(dropped[1]["tool_calls"][0])
        call["function"] = {"name": "get_weather", "arguments": '{"city": "Rome"}'}
        edited = [dropped[0], {**dropped[1], "tool_calls": [call]}, dropped[2]]
        assert REASONING not in _render(url, KEYS[0], edited).json()["prompt"]
        metrics = httpx.get(f"{url}/metrics", headers={"x-api-key": KEYS[0]}).text
    assert 'glm_gateway_thinking_restored_total{model="glm"} 1.0' in metrics


def test_streamed_turns_are_remembered_too() -> None:
    with gateway(RecordingBackend(scripted(CALL)), api_keys=KEYS) as (url, client):
        user = {"role": "user", "content": "Weather in Paris?"}
        calls: dict[int, dict[str, Any]] = {}
        for chunk in client.chat.completions.create(
            model=MODEL,
            messages=[user],
            tools=TOOLS,
            stream=True,  # type: ignore[list-item]
        ):
            for delta in chunk.choices[0].delta.tool_calls or () if chunk.choices else ():
                entry = calls.setdefault(delta.index, {"id": None, "arguments": ""})
                entry["id"] = delta.id or entry["id"]
                entry["arguments"] += (delta.function.arguments or "") if delta.function else ""
        call = calls[0]
        turn = {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": call["id"],
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": call["arguments"]},
                }
            ],
        }
        result = {"role": "tool", "tool_call_id": call["id"], "content": "Sunny"}
        assert REASONING in _render(url, KEYS[0], [user, turn, result]).json()["prompt"]


def test_off_on_the_general_route_by_default_and_configurable() -> None:
    routes = {"tools": RouteSettings(preserve_thinking=False)}
    with gateway(RecordingBackend(scripted(CALL)), routes, api_keys=KEYS) as (url, client):
        dropped, _ = _loop(client)
        assert REASONING not in _render(url, KEYS[0], dropped).json()["prompt"]
