"""The real ``openai`` SDK against a real uvicorn socket, on the scripted backend."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from backends.scripted import ScriptedBackendSettings
from gateway.app import create_app
from gateway.settings import ModelSettings, Settings
from tests.conftest import serve

_GREETING = {"chunks": ["The user ", "greets.</th", "ink>Hello", " there!"]}
_UNICODE = {"text": "Short answer.</think>Bonjour, ça va? 你好 🙂", "chunk_size": 3}
# Each response twice: the test asks once without and once with streaming.
SCRIPT = [_GREETING, _GREETING, _UNICODE, _UNICODE]


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    script: Path = tmp_path_factory.mktemp("script") / "script.jsonl"
    script.write_text("\n".join(json.dumps(line) for line in SCRIPT) + "\n")
    settings = Settings(
        models=[
            ModelSettings(id="glm-4.7-flash", backend=ScriptedBackendSettings(path=str(script)))
        ]
    )
    with serve(create_app(settings)) as url:
        yield url


@pytest.fixture
def client(base_url: str) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0) as c:
        yield c


def test_sdk_non_streaming_and_streaming_agree(client: openai.OpenAI) -> None:
    messages = [{"role": "user", "content": "Hi"}]
    results = []
    for _ in range(2):
        done = client.chat.completions.create(model="glm-4.7-flash", messages=messages)
        message = done.choices[0].message
        extra = message.model_extra or {}
        results.append((extra["reasoning_content"], message.content))
        assert done.usage is not None and done.usage.completion_tokens > 0

        stream = client.chat.completions.create(
            model="glm-4.7-flash",
            messages=messages,
            stream=True,
            stream_options={"include_usage": True},
        )
        reasoning = content = ""
        usage = None
        finish = None
        for chunk in stream:
            if chunk.usage is not None:
                usage = chunk.usage
            for choice in chunk.choices:
                extra = choice.delta.model_extra or {}
                reasoning += extra.get("reasoning_content") or ""
                content += choice.delta.content or ""
                finish = choice.finish_reason or finish
        assert (reasoning, content) == results[-1]
        assert finish == "stop"
        assert (
            usage is not None
            and usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
        )
    assert results == [
        ("The user greets.", "Hello there!"),
        ("Short answer.", "Bonjour, ça va? 你好 🙂"),
    ]


def test_sdk_sees_openai_errors(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as not_found:
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    assert not_found.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(
            model="glm-4.7-flash", messages=[{"role": "user", "content": "x"}], n=3
        )
    assert bad.value.param == "n"


def test_sdk_lists_models(client: openai.OpenAI) -> None:
    assert next(m.id for m in client.models.list()) == "glm-4.7-flash"
