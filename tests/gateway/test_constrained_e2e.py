"""Constrained output on the real engine: the grammar makes even SmolLM2-135M, which has never
seen GLM's format, emit well-formed GLM tool calls and schema-valid JSON."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import openai
import pytest

from backends.llamacpp import LlamaCppBackendSettings
from gateway.app import create_app
from gateway.settings import ModelSettings, Settings
from tests.conftest import FIXTURES, serve

pytestmark = pytest.mark.engine

THINKING_OFF = {"chat_template_kwargs": {"enable_thinking": False}}
TOOLS: list[dict[str, Any]] = json.loads(
    (FIXTURES / "glm47" / "parse_cases.json").read_text(encoding="utf-8")
)[6]["tools"]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer"},
        "member": {"type": "boolean"},
        "color": {"enum": ["red", "green", 1]},
    },
    "required": ["name", "age", "member", "color"],
}
# Schemas whose grammar admits only outputs of bounded length (no free strings, integers of at
# most 16 digits, enums): under them a long enough max_tokens must end the output by the grammar, on
# any machine and under any seed, so these tests need no luck from the model.
BOUNDED_PERSON = {
    "type": "object",
    "properties": {
        "name": {"enum": ["Ada", "Alan", "Grace"]},
        "age": {"type": "integer"},
        "member": {"type": "boolean"},
        "color": {"enum": ["red", "green", 1]},
    },
    "required": ["name", "age", "member", "color"],
}
SET_MODE = {
    "type": "function",
    "function": {
        "name": "set_mode",
        "description": "Set the device mode.",
        "parameters": {
            "type": "object",
            "properties": {
                # Not a string enum: a string-typed GLM argument is raw text, unbounded.
                "mode": {"type": "integer", "enum": [1, 2], "description": "1 fast, 2 slow"},
                "level": {"type": "integer"},
                "on": {"type": "boolean"},
            },
            "required": ["mode", "level", "on"],
        },
    },
}


@pytest.fixture(scope="module")
def client(smollm_path: Path) -> Iterator[openai.OpenAI]:
    settings = Settings(
        models=[
            ModelSettings(
                id="glm-4.7-flash",
                backend=LlamaCppBackendSettings(model=str(smollm_path), n_ctx=1024),
            )
        ]
    )
    with (
        serve(create_app(settings)) as url,
        openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0, timeout=120) as c,
    ):
        yield c


def calls_of(message: Any) -> list[tuple[str, dict[str, Any]]]:
    return [(c.function.name, json.loads(c.function.arguments)) for c in message.tool_calls or []]


def assert_valid_calls(calls: list[tuple[str, dict[str, Any]]], allowed: set[str]) -> None:
    for name, args in calls:
        assert name in allowed
        jsonschema.validate(args, SCHEMAS[name])


@pytest.mark.parametrize(
    "choice",
    ["required", {"type": "function", "function": {"name": "get_weather"}}],
    ids=["required", "named"],
)
def test_constrained_tool_call_parses_and_validates(client: openai.OpenAI, choice: Any) -> None:
    allowed = set(SCHEMAS) if choice == "required" else {"get_weather"}
    produced = 0
    for seed in range(3):
        reply = client.chat.completions.create(
            model="glm-4.7-flash",
            messages=[{"role": "user", "content": "What is the weather in Paris?"}],
            tools=TOOLS,  # type: ignore[arg-type]
            tool_choice=choice,
            parallel_tool_calls=False,
            max_tokens=200,
            seed=seed,
            extra_body=THINKING_OFF,
        )
        finish = reply.choices[0].finish_reason
        # The only way out of a call is to finish it (or to run out of tokens inside a value:
        # free-text values are unbounded, so which of the two happens is the model's choice).
        assert reply.choices[0].message.content is None
        calls = calls_of(reply.choices[0].message)
        if finish == "tool_calls":
            assert len(calls) == 1
            assert_valid_calls(calls, allowed)
            produced += 1
        else:
            assert finish == "length" and calls == []


@pytest.mark.parametrize("seed", range(3))
def test_bounded_constrained_call_always_completes(client: openai.OpenAI, seed: int) -> None:
    # Every argument is an enum, an integer or a boolean: the grammar admits only short calls,
    # so the call must complete well within max_tokens, whatever the model prefers.
    reply = client.chat.completions.create(
        model="glm-4.7-flash",
        messages=[{"role": "user", "content": "Set the mode to fast."}],
        tools=[SET_MODE],  # type: ignore[list-item]
        tool_choice={"type": "function", "function": {"name": "set_mode"}},
        parallel_tool_calls=False,
        max_tokens=200,
        seed=seed,
        extra_body=THINKING_OFF,
    )
    assert reply.choices[0].finish_reason == "tool_calls"
    assert reply.choices[0].message.content is None
    calls = calls_of(reply.choices[0].message)
    assert len(calls) == 1
    name, args = calls[0]
    assert name == "set_mode"
    jsonschema.validate(args, SET_MODE["function"]["parameters"])  # type: ignore[index]


def test_parallel_required_calls_all_validate(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model="glm-4.7-flash",
        messages=[{"role": "user", "content": "Weather in Paris and Rome?"}],
        tools=TOOLS,  # type: ignore[arg-type]
        tool_choice="required",
        max_tokens=150,
        seed=0,
        extra_body=THINKING_OFF,
    )
    calls = calls_of(reply.choices[0].message)
    if reply.choices[0].finish_reason == "tool_calls":
        assert calls
    else:
        # Out of tokens inside a free-text value: the unfinished call is not returned.
        assert reply.choices[0].finish_reason == "length"
    assert_valid_calls(calls, set(SCHEMAS))


def describe_person(client: openai.OpenAI, schema: dict[str, Any], seed: int) -> Any:
    return client.chat.completions.create(
        model="glm-4.7-flash",
        messages=[{"role": "user", "content": "Describe a person as JSON."}],
        response_format={"type": "json_schema", "json_schema": {"name": "p", "schema": schema}},
        max_tokens=200,
        seed=seed,
        extra_body=THINKING_OFF,
    )


@pytest.mark.parametrize("seed", range(3))
def test_json_schema_output_validates(client: openai.OpenAI, seed: int) -> None:
    # A bounded schema: the output must end by the grammar, and validate.
    reply = describe_person(client, BOUNDED_PERSON, seed)
    assert reply.choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(reply.choices[0].message.content or ""), BOUNDED_PERSON)


@pytest.mark.parametrize("seed", range(3))
def test_json_schema_with_free_string_validates_or_is_cut(client: openai.OpenAI, seed: int) -> None:
    # A free string may run to the token limit (the model's choice, which depends on the CPU and
    # build); what the grammar guarantees is a valid object when it ends, else a JSON prefix.
    reply = describe_person(client, PERSON, seed)
    content = reply.choices[0].message.content or ""
    if reply.choices[0].finish_reason == "stop":
        jsonschema.validate(json.loads(content), PERSON)
    else:
        assert reply.choices[0].finish_reason == "length"
        assert reply.usage is not None and reply.usage.completion_tokens == 200
        assert content.startswith("{")
        with pytest.raises(json.JSONDecodeError):
            json.loads(content)


def test_json_object_output_parses(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model="glm-4.7-flash",
        messages=[{"role": "user", "content": "Reply in JSON."}],
        response_format={"type": "json_object"},
        max_tokens=200,
        seed=2,
        extra_body=THINKING_OFF,
    )
    if reply.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(reply.choices[0].message.content or ""), dict)
    else:
        assert (reply.choices[0].message.content or "").startswith("{")


def test_streaming_equals_non_streaming_for_same_seed(client: openai.OpenAI) -> None:
    kwargs: dict[str, Any] = {
        "model": "glm-4.7-flash",
        "messages": [{"role": "user", "content": "What is the weather in Paris?"}],
        "tools": TOOLS,
        "tool_choice": "required",
        "parallel_tool_calls": False,
        "max_tokens": 120,
        "seed": 0,
        "extra_body": THINKING_OFF,
    }
    whole = client.chat.completions.create(**kwargs)
    with client.chat.completions.stream(**kwargs) as stream:
        final = stream.get_final_completion()
    assert calls_of(final.choices[0].message) == calls_of(whole.choices[0].message)
    assert final.choices[0].finish_reason == whole.choices[0].finish_reason
    assert final.choices[0].message.content == whole.choices[0].message.content


def test_scripted_backend_refuses_constraints_clearly(tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from backends.scripted import ScriptedBackend, ScriptedBackendSettings, ScriptedResponse

    settings = Settings(
        models=[ModelSettings(id="m", backend=ScriptedBackendSettings(path="unused"))]
    )
    app = create_app(settings, backends={"m": ScriptedBackend([ScriptedResponse(("x",))])})
    with TestClient(app) as c:
        body = {
            "model": "m",
            "messages": [{"role": "user", "content": "x"}],
            "response_format": {"type": "json_object"},
        }
        r = c.post("/v1/chat/completions", json=body)
        assert r.status_code == 400
        assert r.json()["error"]["param"] == "response_format"
        body = {**body, "response_format": None, "tools": TOOLS, "tool_choice": "required"}
        r = c.post("/v1/chat/completions", json=body)
        assert r.status_code == 400
        assert r.json()["error"]["param"] == "tool_choice"
