"""The llamacpp backend on real engines: SmolLM2-135M (a real chat model, not GLM) and glm-tiny
(a 4M-parameter model trained on GLM-4.7's format; its exact greedy outputs are in its README).

Both models load once per module and every test shares the module's event loop, as the
gateway shares one loop for a backend's lifetime.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import cast

import pytest
import pytest_asyncio

from backends.base import (
    BackendEvent,
    Chunk,
    Finished,
    GenerationRequest,
    SamplingParams,
    Started,
)
from backends.errors import (
    BackendError,
    BackendNotReady,
    BackendUnavailable,
    PromptTooLong,
)
from backends.llamacpp import LlamaCppBackend, LlamaCppOptions
from gateway.admission import AdmissionGate
from gateway.errors import from_backend
from gateway.glm47.tokens import STOP_TOKENS
from tests.backends.events import finish_of, text_of

pytestmark = [pytest.mark.engine, pytest.mark.asyncio(loop_scope="module")]

N_CTX = 2048
GREEDY = SamplingParams(temperature=0.0, max_tokens=64)


def smol_prompt(user: str) -> str:
    """SmolLM2's ChatML; it ends its turn with <|im_end|>, one of its end-of-generation tokens."""
    return f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"


def glm_prompt(user: str, *, thinking: bool = True) -> str:
    return f"[gMASK]<sop><|user|>{user}<|assistant|>" + ("<think>" if thinking else "</think>")


# GLM-4.7's chat template output for glm-tiny's two training tools (as gateway.glm47.render
# produces it; spelled out so these tests depend on the backend alone).
GLM_TOOLS = (
    "[gMASK]<sop><|system|>\n# Tools\n\nYou may call one or more functions to assist with the "
    "user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n"
    "<tools>\n"
    '{"type": "function", "function": {"name": "get_weather", "description": "Get the current '
    'weather for a city.", "parameters": {"type": "object", "properties": {"city": {"type": '
    '"string"}}, "required": ["city"]}}}\n'
    '{"type": "function", "function": {"name": "list_files", "description": "List the files in '
    'the workspace.", "parameters": {"type": "object", "properties": {}}}}\n'
    "</tools>\n\nFor each function call, output the function name and arguments within the "
    "following XML format:\n<tool_call>{function-name}<arg_key>{arg-key-1}</arg_key><arg_value>"
    "{arg-value-1}</arg_value><arg_key>{arg-key-2}</arg_key><arg_value>{arg-value-2}</arg_value>"
    "...</tool_call>"
)
OSLO_CALL = (
    "The user wants the weather in Oslo. I will call get_weather.</think><tool_call>get_weather"
    "<arg_key>city</arg_key><arg_value>Oslo</arg_value></tool_call>"
)


async def load(path: Path, *, n_batch: int = 512) -> LlamaCppBackend:
    options = LlamaCppOptions(model_path=str(path), n_ctx=N_CTX, n_batch=n_batch, n_ubatch=n_batch)
    backend = LlamaCppBackend(options)
    await backend.start()
    return backend


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def smol(smollm_path: Path) -> AsyncIterator[LlamaCppBackend]:
    backend = await load(smollm_path)
    yield backend
    await backend.aclose()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def glm(glm_tiny_path: Path) -> AsyncIterator[LlamaCppBackend]:
    backend = await load(glm_tiny_path)
    yield backend
    await backend.aclose()


async def collect(
    backend: LlamaCppBackend,
    prompt: str,
    sampling: SamplingParams = GREEDY,
    stop_tokens: tuple[str, ...] = (),
) -> list[BackendEvent]:
    request = GenerationRequest(prompt=prompt, sampling=sampling, stop_tokens=stop_tokens)
    return [event async for event in backend.generate(request)]


# -- the stream --------------------------------------------------------------------------------


async def test_stream_is_started_chunks_finished(smol: LlamaCppBackend) -> None:
    assert smol.ready
    assert smol.info.context_length == N_CTX
    events = await collect(smol, smol_prompt("What is the capital of France?"))
    started, *chunks, finished = events
    assert isinstance(started, Started)
    assert started.prompt_tokens > 5
    assert chunks and all(isinstance(c, Chunk) and c.text for c in chunks)
    assert isinstance(finished, Finished)
    assert finished.prompt_tokens == started.prompt_tokens
    assert "Paris" in text_of(events)
    # Ended by <|im_end|>, which is counted but never shown.
    assert finished.reason == "stop"
    assert "<|im_end|>" not in text_of(events)
    shown = sum(c.tokens for c in chunks if isinstance(c, Chunk))
    assert 0 < shown <= finished.completion_tokens <= shown + 1


async def test_max_tokens_finishes_with_length(smol: LlamaCppBackend) -> None:
    sampling = SamplingParams(temperature=0.0, max_tokens=7)
    events = await collect(smol, smol_prompt("Write a long story about a dragon."), sampling)
    finished = finish_of(events)
    assert finished.reason == "length"
    assert finished.completion_tokens == 7
    assert sum(e.tokens for e in events if isinstance(e, Chunk)) == 7


async def test_stop_string_is_cut_and_finishes_with_stop(smol: LlamaCppBackend) -> None:
    prompt = smol_prompt("Write a long story about a dragon.")
    full = text_of(await collect(smol, prompt, SamplingParams(temperature=0.0, max_tokens=32)))
    words = full.split()
    assert len(words) > 6, full
    stop = f" {words[4]}"
    events = await collect(
        smol, prompt, SamplingParams(temperature=0.0, max_tokens=64, stop=(stop,))
    )
    text = text_of(events)
    assert stop not in text
    assert text == full[: full.index(stop)]
    assert finish_of(events).reason == "stop"


async def test_same_seed_same_text(smol: LlamaCppBackend) -> None:
    prompt = smol_prompt("Tell me something about cats.")
    sampling = SamplingParams(temperature=0.8, seed=1234, max_tokens=16)
    first = text_of(await collect(smol, prompt, sampling))
    # Something else in between: the cached context must not change the draw.
    other = SamplingParams(temperature=0.8, max_tokens=8)
    await collect(smol, smol_prompt("Name three colours."), other)
    second = text_of(await collect(smol, prompt, sampling))
    assert first and first == second


async def test_multibyte_utf8_comes_out_whole(smol: LlamaCppBackend) -> None:
    # Byte-level BPE splits each of these characters over two or three tokens; the limit cuts
    # the reply inside the emoji, whose incomplete bytes are dropped.
    prompt = smol_prompt("Repeat exactly: 你好世界 🙂🎉 café")
    events = await collect(smol, prompt, SamplingParams(temperature=0.0, max_tokens=16))
    text = text_of(events)
    assert "\ufffd" not in text
    assert "你好世界" in text, text
    assert finish_of(events).completion_tokens == 16
    for event in events:
        if isinstance(event, Chunk):
            event.text.encode("utf-8")  # no lone surrogates either


async def test_prompt_longer_than_context_is_refused_before_started(
    smol: LlamaCppBackend,
) -> None:
    request = GenerationRequest(prompt=smol_prompt("hello " * 3000), sampling=GREEDY)
    stream = aiter(smol.generate(request))
    with pytest.raises(PromptTooLong) as caught:
        await anext(stream)
    assert str(N_CTX) in caught.value.message
    assert caught.value.param == "messages"
    assert from_backend(caught.value).code == "context_length_exceeded"
    # The engine is free for the next one.
    assert finish_of(await collect(smol, smol_prompt("Hi"), SamplingParams(max_tokens=2)))


# -- glm-tiny: GLM-4.7's format, exact greedy outputs (see its README) -----------------------


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        (
            glm_prompt("What is the capital of France?"),
            "The user asks for the capital of France.</think>The capital of France is Paris.",
        ),
        (glm_prompt("Add 2 and 3.", thinking=False), "2 + 3 = 13."),
        (f"{GLM_TOOLS}<|user|>What's the weather in Oslo?<|assistant|><think>", OSLO_CALL),
        (
            f"{GLM_TOOLS}<|user|>List the files.<|assistant|><think>",
            "The user wants to see the files. I will call list_files.</think>"
            "<tool_call>list_files</tool_call>",
        ),
        (
            f"{GLM_TOOLS}<|user|>What's the weather in Oslo?<|assistant|><think>{OSLO_CALL}"
            "<|observation|><tool_response>Sunny, 21C</tool_response><|assistant|><think>",
            "The weather tool returned Sunny, 21C for Oslo.</think>"
            "The weather in Oslo is Sunny, 21C.",
        ),
    ],
    ids=["capital", "thinking-off", "tool-call", "zero-arg-call", "after-tool-result"],
)
async def test_glm_tiny_greedy_output(glm: LlamaCppBackend, prompt: str, expected: str) -> None:
    events = await collect(glm, prompt, stop_tokens=STOP_TOKENS)
    # Tag tokens (</think>, <tool_call>, ...) come back as text; the <|user|> or <|observation|>
    # that ends the turn does not.
    assert text_of(events) == expected
    finished = finish_of(events)
    assert finished.reason == "stop"
    # The text's tokens plus the <|user|> that ended it.
    assert finished.completion_tokens == sum(e.tokens for e in events if isinstance(e, Chunk)) + 1


async def test_glm_tiny_prompt_special_tokens_are_parsed(glm: LlamaCppBackend) -> None:
    events = await collect(
        glm, glm_prompt("What is the capital of France?"), stop_tokens=STOP_TOKENS
    )
    started = events[0]
    assert isinstance(started, Started)
    # [gMASK] <sop> <|user|> ... <|assistant|> <think>: five special tokens, no BOS added, and
    # the question in a handful of byte-level BPE tokens, not ~40 single characters.
    assert started.prompt_tokens < 25


async def test_glm_tiny_without_stop_tokens_shows_the_role_token(glm: LlamaCppBackend) -> None:
    # <|user|> is an end-of-generation token of the vocabulary itself, so it stops anyway.
    events = await collect(glm, glm_prompt("What is the capital of France?"))
    assert text_of(events).endswith("The capital of France is Paris.")
    assert finish_of(events).reason == "stop"


async def test_prefix_cache_keeps_seeded_output(glm_tiny_path: Path) -> None:
    # A tiny n_batch makes the prefix of a repeated prompt reusable.
    backend = await load(glm_tiny_path, n_batch=8)
    try:
        prompt = glm_prompt("What is the weather in Oslo for 3 days? Please answer.")
        sampling = SamplingParams(temperature=0.8, seed=7, max_tokens=30)
        first = text_of(await collect(backend, prompt, sampling, STOP_TOKENS))
        other = glm_prompt("What is the weather in Oslo? Please.")
        await collect(backend, other, sampling, STOP_TOKENS)
        assert backend.stats.prompt_tokens_reused > 0
        second = text_of(await collect(backend, prompt, sampling, STOP_TOKENS))
        assert first == second
        greedy = text_of(
            await collect(
                backend, glm_prompt("What is the capital of France?"), GREEDY, STOP_TOKENS
            )
        )
        assert greedy == (
            "The user asks for the capital of France.</think>The capital of France is Paris."
        )
    finally:
        await backend.aclose()


# -- cancellation and turns ------------------------------------------------------------------


LONG = SamplingParams(temperature=0.0, max_tokens=2000)


async def test_closing_the_stream_stops_the_worker(smol: LlamaCppBackend) -> None:
    stream = smol.generate(GenerationRequest(smol_prompt("Write a very long story."), LONG))
    chunks = 0
    async for event in stream:
        if isinstance(event, Chunk):
            chunks += 1
            if chunks == 3:
                break
    before = smol.stats.tokens_generated
    await stream.aclose()
    # aclose returns once the worker has stopped: at most the token it was on.
    assert smol.stats.tokens_generated - before <= 2
    started_at = time.monotonic()
    follow = smol.generate(GenerationRequest(smol_prompt("Hi"), SamplingParams(max_tokens=2)))
    assert isinstance(await anext(aiter(follow)), Started)
    assert time.monotonic() - started_at < 5
    await follow.aclose()


async def test_cancelling_the_task_stops_the_worker(smol: LlamaCppBackend) -> None:
    got_chunk = asyncio.Event()

    async def consume() -> None:
        request = GenerationRequest(smol_prompt("Write a very long story."), LONG)
        async for event in smol.generate(request):
            if isinstance(event, Chunk):
                got_chunk.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(got_chunk.wait(), 30)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # The task ends only after its worker has: the counter no longer moves.
    after = smol.stats.tokens_generated
    events = await asyncio.wait_for(
        collect(smol, smol_prompt("Hi"), SamplingParams(temperature=0.0, max_tokens=3)), 5
    )
    assert smol.stats.tokens_generated - after == finish_of(events).completion_tokens


async def test_cancel_during_prompt_evaluation(smol: LlamaCppBackend) -> None:
    # ~1900 prompt tokens take seconds on a small CPU; closing right after Started interrupts
    # the evaluation instead of waiting for it.
    prompt = smol_prompt("Summarise: " + "the quick brown fox jumps over the lazy dog " * 190)
    before = smol.stats.prompt_tokens_evaluated
    stream = smol.generate(GenerationRequest(prompt, LONG))
    started = await anext(aiter(stream))
    assert isinstance(started, Started)
    assert started.prompt_tokens > 1500
    await stream.aclose()
    assert smol.stats.prompt_tokens_evaluated - before < started.prompt_tokens
    events = await collect(smol, smol_prompt("Hi"), SamplingParams(temperature=0.0, max_tokens=3))
    assert finish_of(events).completion_tokens > 0


async def test_requests_are_admitted_in_arrival_order(glm: LlamaCppBackend) -> None:
    # The model's one queue is the gateway's admission gate, sized by the backend's capacity
    # (its parallel sequences): it admits in arrival order, the engine batches what it admits.
    capacity = glm.max_concurrency
    assert capacity is not None and capacity >= 2
    gate = AdmissionGate(capacity, max_queue=8, max_wait=60)
    admitted: list[int] = []
    logs: dict[int, list[str]] = {}
    running = 0
    most = 0
    steps_before = glm.stats.max_sequences_per_step

    async def run(i: int) -> None:
        nonlocal running, most
        request = GenerationRequest(
            glm_prompt("What is the capital of France?"), GREEDY, stop_tokens=STOP_TOKENS
        )
        slot = await gate.acquire()
        admitted.append(i)
        running += 1
        most = max(most, running)
        try:
            logs[i] = [type(event).__name__ async for event in glm.generate(request)]
        finally:
            running -= 1
            slot.release()

    tasks = []
    for i in range(capacity + 2):
        tasks.append(asyncio.create_task(run(i)))
        await asyncio.sleep(0)  # arrival order = creation order
    await asyncio.gather(*tasks)
    assert admitted == list(range(capacity + 2))
    assert most == capacity
    for kinds in logs.values():
        assert kinds[0] == "Started" and kinds[-1] == "Finished"
        assert set(kinds[1:-1]) == {"Chunk"}
    # The engine decoded several of them in one step.
    assert glm.stats.max_sequences_per_step >= max(steps_before, 2)


async def test_engine_error_reaches_the_consumer(glm: LlamaCppBackend) -> None:
    # A value llama.cpp's bindings reject: the error is raised on the engine thread.
    bad = SamplingParams(top_k=cast(int, "many"), max_tokens=4)
    stream = glm.generate(GenerationRequest(glm_prompt("Hi"), bad))
    assert isinstance(await anext(stream), Started)
    with pytest.raises(BackendError):
        await asyncio.wait_for(anext(stream), 10)
    # The engine serves the next request as if nothing happened.
    events = await collect(glm, glm_prompt("What is the capital of France?"), GREEDY, STOP_TOKENS)
    assert text_of(events).endswith("The capital of France is Paris.")


# -- lifecycle ---------------------------------------------------------------------------------


async def test_not_ready_before_start_and_after_close(glm_tiny_path: Path) -> None:
    backend = LlamaCppBackend(LlamaCppOptions(model_path=str(glm_tiny_path), n_ctx=N_CTX))
    assert not backend.ready
    assert backend.info.context_length == N_CTX
    with pytest.raises(BackendNotReady):
        await anext(aiter(backend.generate(GenerationRequest("x", GREEDY))))
    await backend.start()
    assert backend.ready
    await backend.aclose()
    assert not backend.ready
    with pytest.raises(BackendNotReady):
        await anext(aiter(backend.generate(GenerationRequest("x", GREEDY))))


async def test_missing_model_fails_to_start(tmp_path: Path) -> None:
    backend = LlamaCppBackend(LlamaCppOptions(model_path=str(tmp_path / "nope.gguf")))
    with pytest.raises(BackendError):
        await backend.start()
    assert not backend.ready
    await backend.aclose()


async def test_closing_the_backend_ends_a_running_generation(smollm_path: Path) -> None:
    backend = await load(smollm_path)
    stream = backend.generate(GenerationRequest(smol_prompt("Write a very long story."), LONG))
    async for event in stream:
        if isinstance(event, Chunk):
            break
    # The consumer is not reading: aclose must not wait for it, only for the engine thread.
    await asyncio.wait_for(backend.aclose(), 10)
    assert not backend.ready
    with pytest.raises(BackendUnavailable):
        async for _ in stream:
            pass
