"""The loop guard on glm-tiny's real loops (its README: about 3% of unfamiliar prompts loop
until the token limit; off-topic questions loop far more often). Greedy decoding, so a prompt
that loops loops on every machine's llama.cpp; what is asserted is the guard's guarantee: a loop
ends well before max_tokens with the loop-guard header, and output that does not loop is the
same with the guard on and off."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from backends.llamacpp import LlamaCppBackend, LlamaCppBackendSettings, LlamaCppOptions
from gateway.app import create_app
from gateway.settings import LoopGuardSettings, ModelSettings, RouteSettings, Settings
from tests.conftest import GLM_TINY_TOOLS, serve

pytestmark = pytest.mark.engine

MAX_TOKENS = 1200
# (prompt, with tools): each loops under greedy decoding (a short segment, a repeated phrase,
# a repeated word).
LOOPING = [
    ("Describe a sunset over the ocean.", False),
    ("List the files in the docs folder.", False),
    ("Name a famous painter from Spain.", True),
]
NORMAL = [("What is the capital of France?", False), ("What's the weather in Oslo?", True)]


def _routes(enabled: bool) -> dict[str, RouteSettings]:
    guard = LoopGuardSettings(enabled=enabled)
    return {name: RouteSettings(loop_guard=guard) for name in ("general", "tools")}


@pytest.fixture(scope="module")
def client(glm_tiny_path: Path) -> Iterator[openai.OpenAI]:
    path = str(glm_tiny_path)
    models = {"guarded": True, "unguarded": False}
    settings = Settings(
        models=[
            ModelSettings(
                id=name,
                backend=LlamaCppBackendSettings(model=path, n_ctx=2048),
                routes=_routes(enabled),
            )
            for name, enabled in models.items()
        ]
    )
    backends = {
        name: LlamaCppBackend(LlamaCppOptions(model_path=path, n_ctx=2048)) for name in models
    }
    with (
        serve(create_app(settings, backends=backends)) as url,  # type: ignore[arg-type]
        openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0, timeout=300) as client,
    ):
        yield client


def _ask(client: openai.OpenAI, model: str, prompt: str, tools: bool) -> tuple[Any, ...]:
    extra: dict[str, Any] = {"tools": GLM_TINY_TOOLS} if tools else {}
    raw = client.chat.completions.with_raw_response.create(
        model=model,
        messages=[{"role": "user", "content": prompt}],
        temperature=0,
        max_tokens=MAX_TOKENS,
        **extra,
    )
    done = raw.parse()
    message = done.choices[0].message
    assert done.usage is not None
    output = (
        (message.model_extra or {}).get("reasoning_content"),
        message.content,
        [(c.function.name, c.function.arguments) for c in message.tool_calls or ()],
        done.choices[0].finish_reason,
    )
    return output, done.usage.completion_tokens, raw.headers.get("x-glm-loop-guard")


@pytest.mark.parametrize(("prompt", "tools"), LOOPING)
def test_a_real_loop_is_stopped_early(client: openai.OpenAI, prompt: str, tools: bool) -> None:
    output, tokens, guard = _ask(client, "guarded", prompt, tools)
    assert guard == "repetition"
    assert output[-1] == "length"
    assert tokens < MAX_TOKENS // 2
    # Without the guard the same prompt runs to the limit (it is a real loop).
    _, unguarded_tokens, unguarded = _ask(client, "unguarded", prompt, tools)
    assert unguarded is None and unguarded_tokens == MAX_TOKENS


@pytest.mark.parametrize(("prompt", "tools"), NORMAL)
def test_output_that_does_not_loop_is_untouched(
    client: openai.OpenAI, prompt: str, tools: bool
) -> None:
    guarded = _ask(client, "guarded", prompt, tools)
    unguarded = _ask(client, "unguarded", prompt, tools)
    assert guarded[2] is None
    assert guarded == unguarded
    assert guarded[0][-1] != "length"
