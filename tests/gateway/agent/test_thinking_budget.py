"""Thinking budgets on the scripted backend: the reasoning closes at the budget, the answer
follows in a continuation whose prompt extends the first leg's, on every wire API."""

from __future__ import annotations

from typing import Any

import anthropic
import httpx

from backends.scripted.backend import ScriptedResponse
from gateway.settings import RouteSettings
from tests.gateway.agent.conftest import MODEL, RecordingBackend, gateway, scripted

ROUTES = {"general": RouteSettings(thinking_budgets={"low": 5, "high": None})}
USER = [{"role": "user", "content": "hi"}]


def _chat(client: Any, stream: bool, **kwargs: Any) -> dict[str, Any]:
    if not stream:
        raw = client.chat.completions.with_raw_response.create(
            model=MODEL, messages=USER, max_tokens=50, **kwargs
        )
        done = raw.parse()
        message = done.choices[0].message
        return {
            "reasoning": (message.model_extra or {}).get("reasoning_content") or "",
            "content": message.content or "",
            "finish": done.choices[0].finish_reason,
            "usage": done.usage,
            "headers": raw.headers,
        }
    out: dict[str, Any] = {"reasoning": "", "content": "", "finish": None, "usage": None}
    for chunk in client.chat.completions.create(
        model=MODEL,
        messages=USER,
        max_tokens=50,
        stream=True,
        stream_options={"include_usage": True},
        **kwargs,
    ):
        if chunk.usage is not None:
            out["usage"] = chunk.usage
        for choice in chunk.choices:
            out["reasoning"] += (choice.delta.model_extra or {}).get("reasoning_content") or ""
            out["content"] += choice.delta.content or ""
            out["finish"] = choice.finish_reason or out["finish"]
    return out


def test_budget_closes_the_reasoning_and_the_answer_follows() -> None:
    thinking = "one two three four five six seven"
    backend = RecordingBackend(scripted(thinking, "Answer.", thinking, "Answer."))
    with gateway(backend, ROUTES) as (_, client):
        results = [_chat(client, stream, reasoning_effort="low") for stream in (False, True)]
    for result in results:
        assert result["reasoning"] == "one t"
        assert result["content"] == "Answer."
        assert result["finish"] == "stop"
        assert result["usage"].completion_tokens_details.reasoning_tokens == 5
        assert result["usage"].completion_tokens == 5 + len("Answer.")
    assert results[0]["headers"]["x-glm-thinking-budget"].startswith("reached")
    first, second = backend.requests[:2]
    assert first.sampling.max_tokens == 5
    # The continuation extends the first prompt: an engine with prefix reuse reads only "</think>".
    assert second.prompt == first.prompt + "one t</think>"
    assert second.sampling.max_tokens == 45
    assert {k: v for k, v in results[0].items() if k != "headers"} == {
        k: v for k, v in results[1].items()
    } | {"usage": results[0]["usage"]}


def test_reasoning_closed_within_the_budget_goes_on_without_a_tag() -> None:
    leg = ScriptedResponse(("ab", "</think>", "He", "l", "l", "never"))
    backend = RecordingBackend([leg, *scripted("o")])
    with gateway(backend, ROUTES) as (_, client):
        result = _chat(client, False, reasoning_effort="low")
    assert (result["reasoning"], result["content"]) == ("ab", "Hello")
    assert result["usage"].completion_tokens_details.reasoning_tokens == 2
    assert "x-glm-thinking-budget" not in result["headers"]
    assert backend.requests[1].prompt == backend.requests[0].prompt + "ab</think>Hell"


def test_no_budget_one_leg() -> None:
    backend = RecordingBackend(scripted("one two three</think>Answer."))
    with gateway(backend, ROUTES) as (_, client):
        result = _chat(client, False, reasoning_effort="high")
    assert result["reasoning"] == "one two three"
    assert len(backend.requests) == 1
    assert backend.requests[0].sampling.max_tokens == 50


def test_max_tokens_below_the_budget_wins() -> None:
    backend = RecordingBackend(scripted("one two three"))
    with gateway(backend, ROUTES) as (_, client):
        done = client.chat.completions.create(
            model=MODEL, messages=USER, max_tokens=3, reasoning_effort="low"
        )
    assert done.choices[0].finish_reason == "length"
    assert len(backend.requests) == 1


def test_anthropic_budget_tokens() -> None:
    backend = RecordingBackend(scripted("one two three four", "Answer."))
    with (
        gateway(backend) as (url, _),
        anthropic.Anthropic(base_url=url, api_key="unused", max_retries=0) as client,
    ):
        message = client.messages.create(
            model=MODEL,
            max_tokens=100,
            thinking={"type": "enabled", "budget_tokens": 6},
            messages=[{"role": "user", "content": "hi"}],
        )
    blocks = [
        (b.type, getattr(b, "thinking", None) or getattr(b, "text", None)) for b in message.content
    ]
    assert blocks == [("thinking", "one tw"), ("text", "Answer.")]
    assert backend.requests[1].prompt.endswith("one tw</think>")


def test_responses_reasoning_effort() -> None:
    backend = RecordingBackend(scripted("one two three four", "Answer."))
    with gateway(backend, ROUTES) as (_, client):
        response = client.responses.create(
            model=MODEL, input="hi", reasoning={"effort": "low"}, max_output_tokens=40
        )
    assert response.output_text == "Answer."
    assert response.usage is not None
    assert response.usage.output_tokens_details.reasoning_tokens == 5


def test_effort_values_are_per_route_settings() -> None:
    backend = RecordingBackend(scripted("abc</think>x"))
    routes = {"general": RouteSettings(thinking_budgets={"low": 2})}
    with gateway(backend, routes) as (url, _):
        body = {"model": MODEL, "messages": USER, "reasoning_effort": "low", "max_tokens": 9}
        assert httpx.post(f"{url}/v1/chat/completions", json=body, timeout=30).status_code == 200
    assert backend.requests[0].sampling.max_tokens == 2
