"""Sampling precedence (one merge, as a table) and route selection seen from outside."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from backends.base import SamplingParams
from backends.scripted import ScriptedBackend, ScriptedBackendSettings, ScriptedResponse
from gateway.api.openai_chat.translate import to_chat_input
from gateway.app import create_app
from gateway.pipeline.plan import ChatInput
from gateway.sampling import ResolvedSampling, merge_sampling, model_routes, resolve_sampling
from gateway.settings import ModelSettings, RouteSettings, Settings

MODEL = "glm-4.7-flash"
TOOL = {
    "type": "function",
    "function": {"name": "f", "parameters": {"type": "object", "properties": {}}},
}


def request(**fields: Any) -> ChatInput:
    return to_chat_input({"model": MODEL, "messages": [{"role": "user", "content": "x"}], **fields})


def resolve(
    chat: ChatInput, name: str, route: RouteSettings, backend: dict[str, Any]
) -> ResolvedSampling:
    """The pipeline's merge for what an OpenAI chat request set."""
    return resolve_sampling(
        chat.sampling,
        name,
        route,
        backend,
        enable_thinking=chat.enable_thinking,
        clear_thinking=chat.clear_thinking,
    )


# backend defaults, route (defaults + overrides), client fields -> expected values
PRECEDENCE_TABLE: list[
    tuple[str, dict[str, Any], dict[str, Any], dict[str, Any], dict[str, Any]]
] = [
    ("route beats backend", {"temperature": 0.1}, {"temperature": 0.5}, {}, {"temperature": 0.5}),
    (
        "backend fills gaps",
        {"top_k": 40},
        {"temperature": 0.5},
        {},
        {"top_k": 40, "temperature": 0.5},
    ),
    ("client beats route", {}, {"temperature": 0.5}, {"temperature": 0.2}, {"temperature": 0.2}),
    (
        "client zero is a value",
        {},
        {"temperature": 0.5},
        {"temperature": 0.0},
        {"temperature": 0.0},
    ),
    ("client null is unset", {}, {"temperature": 0.5}, {"temperature": None}, {"temperature": 0.5}),
    (
        "override beats client",
        {},
        {"temperature": 0.5, "overrides": {"temperature": 0.3}},
        {"temperature": 1.5},
        {"temperature": 0.3},
    ),
    (
        "override only pins its field",
        {},
        {"top_p": 0.9, "overrides": {"temperature": 0.3}},
        {"top_p": 0.5, "seed": 7},
        {"temperature": 0.3, "top_p": 0.5, "seed": 7},
    ),
    ("route max_tokens when client sends none", {}, {"max_tokens": 64}, {}, {"max_tokens": 64}),
    ("client max_tokens wins", {}, {"max_tokens": 64}, {"max_tokens": 8}, {"max_tokens": 8}),
    (
        "max_completion_tokens wins over max_tokens",
        {},
        {},
        {"max_tokens": 8, "max_completion_tokens": 9},
        {"max_tokens": 9},
    ),
    (
        "repetition_penalty alias",
        {},
        {"repeat_penalty": 1.0},
        {"repetition_penalty": 1.1},
        {"repeat_penalty": 1.1},
    ),
    ("stop string becomes a tuple", {}, {}, {"stop": "END"}, {"stop": ("END",)}),
]


@pytest.mark.parametrize(
    ("backend", "route", "client", "expected"),
    [row[1:] for row in PRECEDENCE_TABLE],
    ids=[row[0] for row in PRECEDENCE_TABLE],
)
def test_precedence_merge(
    backend: dict[str, Any], route: dict[str, Any], client: dict[str, Any], expected: dict[str, Any]
) -> None:
    resolved = resolve(request(**client), "general", RouteSettings.model_validate(route), backend)
    assert resolved.sampling == SamplingParams(**expected)


def test_merge_rejects_unknown_fields() -> None:
    with pytest.raises(KeyError):
        merge_sampling([{"temprature": 1.0}])


def test_template_kwargs_route_default_and_client() -> None:
    route = RouteSettings.model_validate({"chat_template_kwargs": {"clear_thinking": False}})
    assert resolve(request(), "r", route, {}).clear_thinking is False
    client = request(chat_template_kwargs={"clear_thinking": True})
    assert resolve(client, "r", route, {}).clear_thinking is True
    off = RouteSettings.model_validate({"chat_template_kwargs": {"enable_thinking": False}})
    assert resolve(request(), "r", off, {}).enable_thinking is False
    assert resolve(request(reasoning_effort="high"), "r", off, {}).enable_thinking is True


def test_configured_routes_lay_over_builtins() -> None:
    model = ModelSettings(
        backend=ScriptedBackendSettings(path="x.jsonl"),
        routes={
            "tools": RouteSettings(temperature=0.6),
            "creative": RouteSettings(temperature=1.3),
        },
    )
    routes = model_routes(model)
    assert routes["tools"].defaults_layer() == {
        "temperature": 0.6,
        "top_p": 1.0,
        "min_p": 0.01,
        "repeat_penalty": 1.0,
    }
    assert routes["general"].temperature == 1.0
    assert routes["creative"].defaults_layer() == {"temperature": 1.3}


@pytest.fixture
def client() -> TestClient:
    settings = Settings(
        models=[
            ModelSettings(
                id=MODEL,
                aliases=["glm", {"name": "coder", "route": "tools"}],  # type: ignore[list-item]
                backend=ScriptedBackendSettings(path="unused.jsonl"),
                routes={"tools": RouteSettings(max_tokens=2048, overrides={"top_k": 20})},  # type: ignore[arg-type]
            )
        ]
    )
    backend = ScriptedBackend([ScriptedResponse(("ok</think>done",))])
    return TestClient(create_app(settings, backends={MODEL: backend}))


def render(client: TestClient, **fields: Any) -> tuple[str, dict[str, Any]]:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "x"}], **fields}
    r = client.post("/v1/chat/completions/render", json=body)
    assert r.status_code == 200, r.text
    assert r.headers["x-sampling-route"] == r.json()["route"]
    return r.json()["route"], r.json()["sampling"]


@pytest.mark.parametrize(
    ("fields", "route"),
    [
        ({}, "general"),
        ({"tools": [TOOL]}, "tools"),
        ({"tools": [TOOL], "tool_choice": "auto"}, "tools"),
        ({"tools": [TOOL], "tool_choice": "none"}, "general"),
        ({"tools": []}, "general"),
        ({"model": "glm"}, "general"),
        ({"model": "coder"}, "tools"),
        ({"model": f"{MODEL}:tools"}, "tools"),
        ({"model": f"{MODEL}:general", "tools": [TOOL]}, "general"),
    ],
)
def test_route_selection(client: TestClient, fields: dict[str, Any], route: str) -> None:
    assert render(client, **fields)[0] == route


def test_effective_sampling_is_reported(client: TestClient) -> None:
    _, general = render(client)
    assert general == {"temperature": 1.0, "top_p": 0.95, "min_p": 0.01, "repeat_penalty": 1.0}
    _, tools = render(client, model="coder", temperature=0.2, top_k=50)
    assert tools == {
        "temperature": 0.2,
        "top_p": 1.0,
        "top_k": 20,
        "min_p": 0.01,
        "repeat_penalty": 1.0,
        "max_tokens": 2048,
    }


def test_header_on_completions(client: TestClient) -> None:
    body = {"model": "coder", "messages": [{"role": "user", "content": "x"}]}
    with client:
        r = client.post("/v1/chat/completions", json=body)
    assert r.headers["x-sampling-route"] == "tools"
