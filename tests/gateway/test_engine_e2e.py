"""End to end on a real engine: llama-cpp-python, a real uvicorn socket, the real ``openai`` SDK.

SmolLM2-135M does not speak GLM, but exercises the engine, streaming, stops, seeds, cancellation
and context limits for real. glm-tiny was trained on GLM-4.7's format, so it produces genuine
GLM output (reasoning closed by ``</think>``, role tokens as stops) through the whole stack.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from backends.llamacpp import LlamaCppBackend, LlamaCppBackendSettings, LlamaCppOptions
from gateway.app import create_app
from gateway.settings import ModelSettings, Settings
from tests.conftest import GLM_TINY_TOOLS, OpenAIClients, serve

pytestmark = pytest.mark.engine

THINKING_OFF: dict[str, Any] = {"chat_template_kwargs": {"enable_thinking": False}}


def _served(path: Path, n_ctx: int) -> tuple[Settings, LlamaCppBackend]:
    settings = Settings(
        models=[
            ModelSettings(
                id="glm-4.7-flash",
                backend=LlamaCppBackendSettings(model=str(path), n_ctx=n_ctx),
            )
        ]
    )
    backend = LlamaCppBackend(LlamaCppOptions(model_path=str(path), n_ctx=n_ctx))
    return settings, backend


@pytest.fixture(scope="module")
def smol(smollm_path: Path) -> Iterator[tuple[str, LlamaCppBackend]]:
    settings, backend = _served(smollm_path, 512)
    with serve(create_app(settings, backends={"glm-4.7-flash": backend})) as url:
        yield url, backend


@pytest.fixture(scope="module")
def tiny(glm_tiny_path: Path) -> Iterator[str]:
    settings, backend = _served(glm_tiny_path, 2048)
    with serve(create_app(settings, backends={"glm-4.7-flash": backend})) as url:
        yield url


sdk = OpenAIClients()
_close_sdk_clients = sdk.closed_after_module()


def ask(client: openai.OpenAI, content: str, **kwargs: Any) -> Any:
    return client.chat.completions.create(
        model="glm-4.7-flash", messages=[{"role": "user", "content": content}], **kwargs
    )


def collect_stream(stream: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"reasoning": "", "content": "", "finish": None, "usage": None}
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    for chunk in chunks:
        if chunk.usage is not None:
            out["usage"] = chunk.usage
        for choice in chunk.choices:
            extra = choice.delta.model_extra or {}
            out["reasoning"] += extra.get("reasoning_content") or ""
            out["content"] += choice.delta.content or ""
            out["finish"] = choice.finish_reason or out["finish"]
    return out


# -- SmolLM2 ---------------------------------------------------------------------------------


def test_smol_non_streaming(smol: tuple[str, LlamaCppBackend]) -> None:
    reply = ask(sdk(smol[0]), "Say hello.", max_tokens=24, seed=1, **{"extra_body": THINKING_OFF})
    choice = reply.choices[0]
    assert choice.message.content
    assert choice.finish_reason in ("stop", "length")
    assert reply.usage is not None
    assert reply.usage.prompt_tokens > 0
    assert 0 < reply.usage.completion_tokens <= 24
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


def test_smol_streaming_with_usage(smol: tuple[str, LlamaCppBackend]) -> None:
    stream = ask(
        sdk(smol[0]),
        "Say hello.",
        max_tokens=24,
        seed=1,
        stream=True,
        stream_options={"include_usage": True},
        extra_body=THINKING_OFF,
    )
    out = collect_stream(stream)
    assert out["content"]
    assert out["usage"] is not None and 0 < out["usage"].completion_tokens <= 24


def test_smol_max_tokens_gives_length(smol: tuple[str, LlamaCppBackend]) -> None:
    reply = ask(sdk(smol[0]), "Count from one to one hundred.", max_tokens=5, seed=3)
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage is not None and reply.usage.completion_tokens == 5


def test_smol_stop_string_never_appears(smol: tuple[str, LlamaCppBackend]) -> None:
    client = sdk(smol[0])
    kwargs: dict[str, Any] = {"max_tokens": 40, "seed": 7, "temperature": 0.0}
    free = ask(client, "Count from one to twenty.", extra_body=THINKING_OFF, **kwargs)
    text = free.choices[0].message.content or ""
    # Stop on a piece of what the model says anyway, past its first characters.
    stop = text[len(text) // 2 : len(text) // 2 + 3]
    assert stop.strip(), text
    cut = ask(client, "Count from one to twenty.", extra_body=THINKING_OFF, stop=[stop], **kwargs)
    assert cut.choices[0].finish_reason == "stop"
    cut_text = cut.choices[0].message.content or ""
    assert stop not in cut_text
    assert text.startswith(cut_text)


def test_smol_same_seed_same_text_and_stream_equals_non_stream(
    smol: tuple[str, LlamaCppBackend],
) -> None:
    client = sdk(smol[0])
    kwargs: dict[str, Any] = {"max_tokens": 32, "seed": 1234, "temperature": 0.9}
    first = ask(client, "Tell me about cats.", **kwargs)
    second = ask(client, "Tell me about cats.", **kwargs)
    extra1, extra2 = first.choices[0].message.model_extra, second.choices[0].message.model_extra
    assert extra1 is not None and extra2 is not None
    # Thinking is on and SmolLM2 never closes it: the whole text is reasoning.
    assert extra1["reasoning_content"]
    assert extra1["reasoning_content"] == extra2["reasoning_content"]
    streamed = collect_stream(ask(client, "Tell me about cats.", stream=True, **kwargs))
    assert streamed["reasoning"] == extra1["reasoning_content"]
    assert streamed["content"] == (first.choices[0].message.content or "")


def test_smol_thinking_off_puts_text_in_content(smol: tuple[str, LlamaCppBackend]) -> None:
    reply = ask(sdk(smol[0]), "Say hi.", max_tokens=16, seed=5, extra_body=THINKING_OFF)
    assert reply.choices[0].message.content
    assert (reply.choices[0].message.model_extra or {}).get("reasoning_content") is None
    assert reply.usage is not None
    assert reply.usage.completion_tokens_details is not None
    assert reply.usage.completion_tokens_details.reasoning_tokens == 0


def test_smol_context_overflow_is_400(smol: tuple[str, LlamaCppBackend]) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        ask(sdk(smol[0]), "word " * 2000, max_tokens=4)
    assert err.value.code == "context_length_exceeded"
    assert "512" in err.value.message


def test_smol_disconnect_mid_stream_frees_engine(smol: tuple[str, LlamaCppBackend]) -> None:
    url, backend = smol
    body = {
        "model": "glm-4.7-flash",
        "messages": [{"role": "user", "content": "Write a very long story about a dragon."}],
        "max_tokens": 400,
        "stream": True,
        "seed": 11,
    }
    with httpx.Client(timeout=60) as client:
        with client.stream("POST", f"{url}/v1/chat/completions", json=body) as response:
            assert response.status_code == 200
            lines = 0
            for line in response.iter_lines():
                if line.startswith("data: "):
                    lines += 1
                if lines >= 5:
                    break
        # The response is closed here: the client has gone away mid-stream.
        stopped_at = backend.stats.tokens_generated
        time.sleep(1.0)
        drift = backend.stats.tokens_generated - stopped_at
        assert drift <= 8, f"the engine generated {drift} tokens after the client left"
        started = time.monotonic()
        quick = client.post(
            f"{url}/v1/chat/completions",
            json={**body, "stream": False, "max_tokens": 2},
        )
        assert quick.status_code == 200
        assert time.monotonic() - started < 10


def test_smol_disconnect_non_streaming_frees_engine(smol: tuple[str, LlamaCppBackend]) -> None:
    url, backend = smol
    body = {
        "model": "glm-4.7-flash",
        "messages": [{"role": "user", "content": "Write a very long story about a dragon."}],
        "max_tokens": 400,
        "seed": 11,
    }
    before = backend.stats.tokens_generated
    with httpx.Client(timeout=0.7) as client, pytest.raises(httpx.ReadTimeout):
        client.post(f"{url}/v1/chat/completions", json=body)
    time.sleep(1.0)
    settled = backend.stats.tokens_generated
    time.sleep(1.0)
    assert backend.stats.tokens_generated == settled
    assert settled - before < 400


# -- glm-tiny: genuine GLM-4.7 output ---------------------------------------------------------


def test_tiny_reasoning_and_content_split(tiny: str) -> None:
    reply = ask(sdk(tiny), "What is the capital of France?", temperature=0, max_tokens=64)
    message = reply.choices[0].message
    assert (message.model_extra or {})["reasoning_content"] == (
        "The user asks for the capital of France."
    )
    assert message.content == "The capital of France is Paris."
    assert reply.choices[0].finish_reason == "stop"
    # The stop token <|user|> ended generation well before max_tokens and is not in the text.
    assert reply.usage is not None and reply.usage.completion_tokens < 64
    assert reply.usage.completion_tokens_details is not None
    assert (
        0 < reply.usage.completion_tokens_details.reasoning_tokens < reply.usage.completion_tokens
    )


def test_tiny_streaming_equals_non_streaming(tiny: str) -> None:
    client = sdk(tiny)
    for question in ("What is the capital of France?", "What is the capital of Italy?"):
        whole = ask(client, question, temperature=0, max_tokens=64)
        streamed = collect_stream(ask(client, question, temperature=0, max_tokens=64, stream=True))
        extra = whole.choices[0].message.model_extra or {}
        assert streamed["reasoning"] == extra["reasoning_content"]
        assert streamed["content"] == whole.choices[0].message.content
        assert streamed["finish"] == whole.choices[0].finish_reason


def test_tiny_thinking_off(tiny: str) -> None:
    reply = ask(sdk(tiny), "Add 2 and 3.", temperature=0, max_tokens=32, extra_body=THINKING_OFF)
    message = reply.choices[0].message
    assert message.content == "2 + 3 = 13."
    assert (message.model_extra or {}).get("reasoning_content") is None


# The tools glm-tiny was trained with: its README outputs come back with these.
TOOLS: list[dict[str, Any]] = GLM_TINY_TOOLS


def test_tiny_auto_tool_call_ends_at_observation(tiny: str) -> None:
    client = sdk(tiny)
    messages: list[Any] = [{"role": "user", "content": "What's the weather in Paris?"}]
    kwargs: dict[str, Any] = {"temperature": 0, "max_tokens": 96, "tools": TOOLS}
    reply = client.chat.completions.create(model="glm-4.7-flash", messages=messages, **kwargs)
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    calls = choice.message.tool_calls or []
    assert [(c.function.name, c.function.arguments) for c in calls] == [
        ("get_weather", '{"city": "Paris"}')
    ]
    assert calls[0].id.startswith("call_")

    # Streamed, assembled by the SDK's own stream helper: the same call.
    with client.chat.completions.stream(
        model="glm-4.7-flash", messages=messages, **kwargs
    ) as stream:
        final = stream.get_final_completion()
    streamed = final.choices[0].message.tool_calls or []
    assert [(c.function.name, c.function.arguments) for c in streamed] == [
        ("get_weather", '{"city": "Paris"}')
    ]
    assert final.choices[0].finish_reason == "tool_calls"


def test_tiny_zero_argument_call(tiny: str) -> None:
    reply = sdk(tiny).chat.completions.create(
        model="glm-4.7-flash",
        messages=[{"role": "user", "content": "List the files."}],
        tools=TOOLS,  # type: ignore[arg-type]
        temperature=0,
        max_tokens=64,
    )
    calls = reply.choices[0].message.tool_calls or []
    assert [(c.function.name, c.function.arguments) for c in calls] == [("list_files", "{}")]


def test_tiny_agent_loop(tiny: str) -> None:
    client = sdk(tiny)
    messages: list[Any] = [{"role": "user", "content": "What's the weather in Oslo?"}]
    first = client.chat.completions.create(
        model="glm-4.7-flash", messages=messages, tools=TOOLS, temperature=0, max_tokens=96
    )
    call = (first.choices[0].message.tool_calls or [])[0]
    assert call.function.name == "get_weather"
    messages.append(first.choices[0].message.model_dump(exclude_none=True))
    messages.append({"role": "tool", "tool_call_id": call.id, "content": "Sunny, 21C"})
    final = client.chat.completions.create(
        model="glm-4.7-flash", messages=messages, tools=TOOLS, temperature=0, max_tokens=96
    )
    assert final.choices[0].finish_reason == "stop"
    assert final.choices[0].message.content == "The weather in Oslo is Sunny, 21C."


# -- the batched engine through the gateway ------------------------------------------------------


def test_tiny_follow_up_turn_reports_cached_tokens(tiny: str) -> None:
    client = sdk(tiny)
    question = [{"role": "user", "content": "What is the capital of France?"}]
    first = client.chat.completions.create(
        model="glm-4.7-flash", messages=question, temperature=0, max_tokens=48
    )
    # A short unrelated request in between, as agents send for titles.
    ask(client, "Add 2 and 3.", temperature=0, max_tokens=16)
    answer = first.choices[0].message
    follow_up = [
        *question,
        {
            "role": "assistant",
            "content": answer.content,
            "reasoning_content": (answer.model_extra or {}).get("reasoning_content"),
        },
        {"role": "user", "content": "What is the capital of Germany?"},
    ]
    second = client.chat.completions.create(
        model="glm-4.7-flash", messages=follow_up, temperature=0, max_tokens=48
    )
    assert first.usage is not None and second.usage is not None
    details = second.usage.prompt_tokens_details
    assert details is not None and details.cached_tokens is not None
    # At least the first turn's prompt came from the cache, not read again.
    assert details.cached_tokens >= first.usage.prompt_tokens - 1
    assert details.cached_tokens < second.usage.prompt_tokens
    models = httpx.get(f"{tiny}/v1/models", timeout=10).json()["data"][0]
    assert models["engine"]["parallel"] == 4
    assert models["engine"]["cache_ram_mib"] == 8192
    assert "model_path" not in models["engine"]
    metrics = httpx.get(f"{tiny}/metrics", timeout=10).text
    assert 'glm_gateway_engine_prompt_tokens_reused_total{model="glm-4.7-flash"}' in metrics
    assert 'glm_gateway_engine_sequences_total{model="glm-4.7-flash"} 4.0' in metrics
    for name in ("ram_cache_hits_total", "ram_cache_misses_total", "ram_cache_bytes"):
        assert f'glm_gateway_engine_{name}{{model="glm-4.7-flash"}}' in metrics
