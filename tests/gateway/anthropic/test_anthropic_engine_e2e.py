"""An agent loop through the real ``anthropic`` SDK on glm-tiny (llama.cpp, a real socket).

glm-tiny was trained on GLM-4.7's format, so the whole path is real: the Anthropic request is
rendered into a GLM prompt, the engine generates, the parser's events become Anthropic blocks.
What is asserted is what the gateway guarantees (a forced call is a well-formed call of that
tool, the tool result goes back into the prompt, stream == non-stream, token counts), plus the
final answer glm-tiny was trained to give after a tool result.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import pytest

from backends.llamacpp import LlamaCppBackend, LlamaCppBackendSettings, LlamaCppOptions
from gateway.app import create_app
from gateway.settings import ModelSettings, Settings
from tests.conftest import GLM_TINY_TOOLS, serve

pytestmark = pytest.mark.engine

MODEL = "glm-4.7-flash"
TOOLS: list[dict[str, Any]] = [
    {
        "name": t["function"]["name"],
        "description": t["function"]["description"],
        "input_schema": t["function"]["parameters"],
    }
    for t in GLM_TINY_TOOLS
]


@pytest.fixture(scope="module")
def client(glm_tiny_path: Path) -> Iterator[anthropic.Anthropic]:
    settings = Settings(
        models=[
            ModelSettings(
                id=MODEL, backend=LlamaCppBackendSettings(model=str(glm_tiny_path), n_ctx=2048)
            )
        ]
    )
    # The engine reuses cached prompt prefixes in whole batches: small ones, so that this short
    # conversation's second turn reuses its first.
    backend = LlamaCppBackend(
        LlamaCppOptions(model_path=str(glm_tiny_path), n_ctx=2048, n_batch=64)
    )
    with (
        serve(create_app(settings, backends={MODEL: backend})) as url,
        anthropic.Anthropic(base_url=url, api_key="unused", max_retries=0, timeout=120) as c,
    ):
        yield c


def test_weather_agent_loop(client: anthropic.Anthropic) -> None:
    messages: list[Any] = [{"role": "user", "content": "What's the weather in Oslo?"}]
    # Claude Code's max_tokens is far more than glm-tiny's context: a ceiling, not a 400.
    # (This SDK has no temperature parameter any more; the API still takes one.)
    kwargs: dict[str, Any] = {
        "model": MODEL,
        "max_tokens": 32000,
        "tools": TOOLS,
        "extra_body": {"temperature": 0},
    }
    first = client.messages.create(
        messages=messages, tool_choice={"type": "tool", "name": "get_weather"}, **kwargs
    )
    # Forced by grammar: a call to get_weather whose input matches its schema.
    assert first.stop_reason == "tool_use"
    calls = [b for b in first.content if b.type == "tool_use"]
    assert len(calls) >= 1 and all(c.name == "get_weather" for c in calls)
    assert all(isinstance(c.input, dict) and isinstance(c.input.get("city"), str) for c in calls)
    assert first.usage.input_tokens > 0 and first.usage.output_tokens > 0

    messages.append({"role": "assistant", "content": first.content})
    messages.append(
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": c.id, "content": "Sunny, 21C"} for c in calls
            ],
        }
    )
    counted = client.messages.count_tokens(model=MODEL, messages=messages, tools=TOOLS)
    final = client.messages.create(messages=messages, **kwargs)
    with client.messages.stream(messages=messages, **kwargs) as stream:
        streamed = stream.get_final_message()

    usage = final.usage
    # count_tokens is the exact length of the prompt the engine evaluated (the real
    # tokenizer), and the engine reused the first turn's prefix from its cache.
    assert counted.input_tokens == usage.input_tokens + (usage.cache_read_input_tokens or 0)
    assert (usage.cache_read_input_tokens or 0) > 0
    # The second, identical request finds more of itself in the cache: the split between
    # read and cached prompt tokens may differ, never the prompt's length or the answer.
    assert streamed.model_dump(exclude={"id", "usage"}) == final.model_dump(exclude={"id", "usage"})
    s_usage = streamed.usage
    assert s_usage.input_tokens + (s_usage.cache_read_input_tokens or 0) == counted.input_tokens
    assert s_usage.output_tokens == usage.output_tokens
    assert final.stop_reason == "end_turn"
    text = "".join(b.text for b in final.content if b.type == "text")
    assert "Sunny, 21C" in text, final.content


def test_structured_output_is_enforced(client: anthropic.Anthropic) -> None:
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
        "required": ["city", "days"],
        "additionalProperties": False,
    }
    reply = client.messages.create(
        model=MODEL,
        max_tokens=200,
        messages=[{"role": "user", "content": "What's the weather in Oslo?"}],
        extra_body={
            "temperature": 0,
            "output_config": {"format": {"type": "json_schema", "schema": schema}},
        },
    )
    # The grammar makes the answer JSON matching the schema, whatever glm-tiny would write.
    text = "".join(b.text for b in reply.content if b.type == "text")
    if reply.stop_reason == "end_turn":
        value = json.loads(text)
        assert set(value) == {"city", "days"} and isinstance(value["days"], int)
    else:
        assert reply.stop_reason == "max_tokens"
