"""An agent loop through ``responses.create`` on a real engine: glm-tiny on llama.cpp."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import openai
import pytest

from backends.llamacpp import LlamaCppBackend, LlamaCppBackendSettings, LlamaCppOptions
from gateway.app import create_app
from gateway.settings import ModelSettings, Settings
from tests.conftest import GLM_TINY_TOOLS, OpenAIClients, serve

pytestmark = pytest.mark.engine

# glm-tiny's training tools, as Responses function tools.
TOOLS: list[dict[str, Any]] = [
    {"type": "function", "strict": False, **tool["function"]} for tool in GLM_TINY_TOOLS
]
SCHEMAS = {tool["name"]: tool["parameters"] for tool in TOOLS}


@pytest.fixture(scope="module")
def client(glm_tiny_path: Path) -> Iterator[openai.OpenAI]:
    settings = Settings(
        models=[
            ModelSettings(
                id="glm-4.7-flash",
                backend=LlamaCppBackendSettings(model=str(glm_tiny_path), n_ctx=2048),
            )
        ]
    )
    backend = LlamaCppBackend(LlamaCppOptions(model_path=str(glm_tiny_path), n_ctx=2048))
    clients = OpenAIClients()
    with serve(create_app(settings, backends={"glm-4.7-flash": backend})) as url:
        yield clients(url)
    clients.close()


def weather(arguments: dict[str, Any]) -> str:
    return f"Sunny, 21C in {arguments.get('city', 'the city')}"


def normalized(response: Any) -> list[dict[str, Any]]:
    items = []
    for item in response.output:
        body = item.model_dump(mode="json", exclude_none=True)
        body.pop("id", None)
        body.pop("call_id", None)
        items.append(body)
    return items


def test_agent_loop_with_a_function_tool(client: openai.OpenAI) -> None:
    kwargs: dict[str, Any] = {
        "model": "glm-4.7-flash",
        "tools": TOOLS,
        "temperature": 0,
        "max_output_tokens": 128,
    }
    # The first turn must call a tool: tool_choice "required" is a grammar on llama.cpp, so the
    # call is well-formed and its arguments match the tool's schema, whatever the model thinks.
    response = client.responses.create(
        input="What's the weather in Oslo?", tool_choice="required", **kwargs
    )
    turns = 1
    while True:
        calls = [item for item in response.output if item.type == "function_call"]
        if not calls:
            break
        assert turns <= 4, "the loop did not end"
        outputs = []
        for call in calls:
            assert call.name in SCHEMAS
            arguments = json.loads(call.arguments)
            jsonschema.validate(arguments, SCHEMAS[call.name])
            outputs.append(
                {
                    "type": "function_call_output",
                    "call_id": call.call_id,
                    "output": weather(arguments),
                }
            )
        follow_up: dict[str, Any] = {
            "previous_response_id": response.id,
            "input": outputs,
            **kwargs,
        }
        previous = response
        response = client.responses.create(**follow_up)
        assert response.previous_response_id == previous.id
        assert response.usage is not None and previous.usage is not None
        assert response.usage.input_tokens > previous.usage.input_tokens
        # The same turn streamed, through the SDK's stream helper, is the same (greedy).
        with client.responses.stream(**follow_up) as stream:
            streamed = stream.get_final_response()
        assert normalized(streamed) == normalized(response)
        assert streamed.status == response.status
        turns += 1
    assert turns >= 2
    assert response.status == "completed"
    assert response.output_text


def test_strict_function_tool_is_held_to_its_schema_under_auto(client: openai.OpenAI) -> None:
    # glm-tiny calls get_weather with a city alone; strict adds two required arguments it has
    # never seen, which only the grammar can make it write.
    schema = {
        "type": "object",
        "properties": {
            "city": {"type": "string"},
            "days": {"type": "integer"},
            "metric": {"type": "boolean"},
        },
        "required": ["city", "days", "metric"],
        "additionalProperties": False,
    }
    strict = {**TOOLS[0], "strict": True, "parameters": schema}
    assert strict["name"] == "get_weather"
    for stream in (False, True):
        kwargs: dict[str, Any] = {
            "model": "glm-4.7-flash",
            "input": "What's the weather in Oslo?",
            "tools": [strict, *TOOLS[1:]],
            "temperature": 0,
            "max_output_tokens": 128,
        }
        if stream:
            with client.responses.stream(**kwargs) as events:
                response = events.get_final_response()
        else:
            response = client.responses.create(**kwargs)
        calls = [item for item in response.output if item.type == "function_call"]
        assert calls, response.output
        for call in calls:
            arguments = json.loads(call.arguments)
            if call.name == "get_weather":
                jsonschema.validate(arguments, schema)
            else:
                jsonschema.validate(arguments, SCHEMAS[call.name])
