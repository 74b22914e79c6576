"""The llamacpp engine serving several sequences at once, on real engines.

What is asserted is what the engine guarantees: every request honours its own limits, stop
strings and grammar whatever runs beside it; no request sees another's conversation; a cached
prefix is reused token for token and only the new suffix is read; a cancelled sequence is
freed without stalling the rest. glm-tiny's greedy answers are its documented behaviour, used
only to tell conversations apart. glm-arch-tiny (GLM-4.7-Flash's llama.cpp architecture, random
weights) is checked for running batched under flash attention and a q8_0 cache, not for text.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from backends.base import BackendEvent, Chunk, GenerationRequest, SamplingParams, Started
from backends.errors import BackendUnavailable
from backends.llamacpp import LlamaCppBackend, LlamaCppOptions
from backends.llamacpp.options import CacheType, FlashAttn
from gateway.glm47.tokens import STOP_TOKENS
from tests.backends.events import finish_of, started_of, text_of

pytestmark = [pytest.mark.engine, pytest.mark.asyncio(loop_scope="module")]

GREEDY = SamplingParams(temperature=0.0, max_tokens=48)
SYSTEM = "[gMASK]<sop><|system|>You are a helpful assistant. Answer briefly and precisely."
COUNTRIES = ("France", "Germany", "Italy", "Spain", "Japan", "Norway", "Egypt", "Peru")


def smol_prompt(user: str) -> str:
    return f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"


def endless(max_tokens: int | None = None) -> GenerationRequest:
    """Greedy "a"s under a grammar without an accepting state: it runs to its token limit
    (none: the rest of the context) or until it is closed, whatever the machine's speed."""
    return GenerationRequest(
        smol_prompt("Say a."),
        SamplingParams(temperature=0.0, max_tokens=max_tokens),
        grammar='root ::= "a" root',
    )


def capital_prompt(country: str) -> str:
    return f"{SYSTEM}<|user|>What is the capital of {country}?<|assistant|><think>"


async def load(path: Path, **kw: object) -> LlamaCppBackend:
    options = LlamaCppOptions(model_path=str(path), n_ctx=4096, **kw)  # type: ignore[arg-type]
    backend = LlamaCppBackend(options)
    await backend.start()
    return backend


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def smol(smollm_path: Path) -> AsyncIterator[LlamaCppBackend]:
    backend = await load(smollm_path, parallel=4, n_batch=256)
    yield backend
    await backend.aclose()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def glm(glm_tiny_path: Path) -> AsyncIterator[LlamaCppBackend]:
    backend = await load(glm_tiny_path, parallel=4)
    yield backend
    await backend.aclose()


async def collect(backend: LlamaCppBackend, request: GenerationRequest) -> list[BackendEvent]:
    return [event async for event in backend.generate(request)]


async def test_concurrent_streams_each_honour_their_own_request(smol: LlamaCppBackend) -> None:
    story = smol_prompt("Write a long story about a dragon.")
    full = text_of(await collect(smol, GenerationRequest(story, GREEDY)))
    stop = f" {full.split()[5]}"
    requests = {
        "len5": GenerationRequest(story, SamplingParams(temperature=0.0, max_tokens=5)),
        "len13": GenerationRequest(
            smol_prompt("Name some colours."), SamplingParams(temperature=0.9, max_tokens=13)
        ),
        "stop": GenerationRequest(
            story, SamplingParams(temperature=0.0, max_tokens=64, stop=(stop,))
        ),
        "grammar": GenerationRequest(
            smol_prompt("Is the sky blue? Answer yes or no."),
            SamplingParams(temperature=1.0, max_tokens=20),
            grammar='root ::= ("yes" | "no") " because " [a-z ]{1,8}',
        ),
    }
    before = smol.stats.max_sequences_per_step
    results = dict(
        zip(
            requests,
            await asyncio.gather(*(collect(smol, r) for r in requests.values())),
            strict=True,
        )
    )
    for name in ("len5", "len13"):
        finished = finish_of(results[name])
        assert finished.reason == "length", name
        assert finished.completion_tokens == int(name[3:]), name
    stopped = results["stop"]
    assert stop not in text_of(stopped)
    assert finish_of(stopped).reason == "stop"
    assert finish_of(stopped).stop_sequence == stop
    assert re.fullmatch(r"(yes|no) because [a-z ]{1,8}", text_of(results["grammar"]))
    assert smol.stats.max_sequences_per_step >= max(before, 2)


async def test_concurrent_conversations_do_not_contaminate_each_other(
    glm: LlamaCppBackend,
) -> None:
    def request(country: str) -> GenerationRequest:
        return GenerationRequest(capital_prompt(country), GREEDY, stop_tokens=STOP_TOKENS)

    alone = {c: text_of(await collect(glm, request(c))) for c in COUNTRIES}
    for country, text in alone.items():
        assert f"capital of {country}" in text, text  # the fixture's trained format
    batched = await asyncio.gather(*(collect(glm, request(c)) for c in COUNTRIES))
    for country, events in zip(COUNTRIES, batched, strict=True):
        text = text_of(events)
        assert f"capital of {country}" in text, text
        others = [c for c in COUNTRIES if c != country and c in text]
        assert not others, f"{country}'s answer mentions {others}: {text}"
        assert finish_of(events).reason == "stop"
        # The shared system prompt came from the cache, not read again.
        assert started_of(events).cached_tokens > 0


async def test_side_requests_do_not_evict_the_main_conversation(smollm_path: Path) -> None:
    backend = await load(smollm_path, parallel=2, n_batch=256)
    try:
        notes = "The build failed in module parser because of a missing import. " * 30
        turn1 = smol_prompt(f"Here are my notes:\n{notes}\nSummarise them.")
        sampling = SamplingParams(temperature=0.0, max_tokens=24)
        first = await collect(backend, GenerationRequest(turn1, sampling))
        n1 = started_of(first).prompt_tokens
        for title in ("Write a title for: cats", "Write a title for: rain"):
            await collect(backend, GenerationRequest(smol_prompt(title), sampling))
        turn2 = f"{turn1}{text_of(first)}<|im_end|>\n<|im_start|>user\nAnd the fix?<|im_end|>\n"
        turn2 += "<|im_start|>assistant\n"
        evaluated = backend.stats.prompt_tokens_evaluated
        second = await collect(backend, GenerationRequest(turn2, sampling))
        started = started_of(second)
        # Everything up to the first turn's answer was reused, generated tokens included.
        assert started.cached_tokens >= n1
        assert finish_of(second).cached_tokens == started.cached_tokens
        read = backend.stats.prompt_tokens_evaluated - evaluated
        assert read == started.prompt_tokens - started.cached_tokens
        assert read < 40
    finally:
        await backend.aclose()


async def test_a_request_asked_again_goes_back_to_its_sequence(smollm_path: Path) -> None:
    # Each copy of an exchange left resident is attended over by every later step: asked
    # four times, one request must not spread over four sequences.
    backend = await load(smollm_path, parallel=4, n_batch=256)
    try:
        request = endless(max_tokens=40)
        runs = [await collect(backend, request) for _ in range(4)]
        assert [finish_of(events).completion_tokens for events in runs] == [40] * 4
        n_prompt = started_of(runs[0]).prompt_tokens
        # All but the last prompt token (read again for its logits) come from the cache.
        assert [started_of(events).cached_tokens for events in runs[1:]] == [n_prompt - 1] * 3
        assert backend.stats.kv_cells_used <= n_prompt + 40
    finally:
        await backend.aclose()


async def test_parallel_requests_share_a_common_prefix(smol: LlamaCppBackend) -> None:
    prefix = "Context: " + "the server logs show a timeout in the payment service. " * 40
    prompts = [
        smol_prompt(f"{prefix}\nQuestion {i}: what should we check first?") for i in range(4)
    ]
    sampling = SamplingParams(temperature=0.0, max_tokens=4)
    evaluated = smol.stats.prompt_tokens_evaluated
    shared = smol.stats.prompt_tokens_shared
    results = await asyncio.gather(
        *(collect(smol, GenerationRequest(p, sampling)) for p in prompts)
    )
    total = sum(started_of(r).prompt_tokens for r in results)
    read = smol.stats.prompt_tokens_evaluated - evaluated
    # About the prefix once plus four suffixes: far less than four prompts.
    assert read < total / 2
    assert smol.stats.prompt_tokens_shared > shared
    assert all(finish_of(r).completion_tokens == 4 for r in results)


async def test_cancelling_one_batched_stream_leaves_the_others_going(
    smol: LlamaCppBackend,
) -> None:
    long = SamplingParams(temperature=0.0, max_tokens=400)
    streams = [
        smol.generate(GenerationRequest(smol_prompt(f"Write a very long story number {i}."), long))
        for i in range(3)
    ]
    counts = [0, 0, 0]

    async def read(i: int, until: int) -> None:
        async for event in streams[i]:
            if isinstance(event, Chunk):
                counts[i] += event.tokens
                if counts[i] >= until:
                    return

    await asyncio.gather(*(read(i, 3) for i in range(3)))
    assert smol.stats.sequences_busy == 3
    await streams[0].aclose()  # returns once its sequence is free
    assert smol.stats.sequences_busy == 2
    await asyncio.wait_for(asyncio.gather(read(1, 20), read(2, 20)), 60)
    assert counts[1] >= 20 and counts[2] >= 20
    for stream in streams[1:]:
        await stream.aclose()
    assert smol.stats.sequences_busy == 0


@pytest.mark.parametrize(
    ("flash_attn", "cache_type"),
    [("off", "f16"), ("on", "f16"), ("on", "q8_0")],
)
async def test_glm_arch_tiny_runs_batched(
    glm_arch_tiny_path: Path, flash_attn: FlashAttn, cache_type: CacheType
) -> None:
    backend = await load(
        glm_arch_tiny_path, parallel=4, flash_attn=flash_attn, cache_type_k=cache_type
    )
    try:
        assert backend.info.extra["cache_type_k"] == cache_type
        sampling = SamplingParams(temperature=0.0, max_tokens=12)
        prompts = [f"[gMASK]<sop><|user|>Hello {i}<|assistant|><think>" for i in range(4)]
        results = await asyncio.gather(
            *(collect(backend, GenerationRequest(p, sampling)) for p in prompts)
        )
        for events in results:
            finished = finish_of(events)
            # Random weights never pick an end token here: the limit ends every stream.
            assert finished.completion_tokens == 12 or finished.reason == "stop"
        assert backend.stats.max_sequences_per_step >= 2
    finally:
        await backend.aclose()


async def test_waiting_for_room_in_the_cache_ends_at_the_requests_limit(
    smol: LlamaCppBackend,
) -> None:
    # No token limit and a grammar without an accepting state: the first request reserves
    # the whole context and holds it until it is closed, whatever the machine's speed.
    hog = smol.generate(endless())
    assert isinstance(await anext(hog), Started)
    small = SamplingParams(temperature=0.0, max_tokens=4)
    try:
        waited = asyncio.get_running_loop().time()
        with pytest.raises(BackendUnavailable) as refused:
            request = GenerationRequest(smol_prompt("Hi"), small, max_queue_wait=0.3)
            await asyncio.wait_for(collect(smol, request), 30)
        assert refused.value.code == "queue_timeout"
        assert asyncio.get_running_loop().time() - waited >= 0.3
        assert smol.stats.sequences_busy == 1  # the running request was not touched
        # Without a limit the request waits, and runs once the room is free.
        patient = asyncio.ensure_future(collect(smol, GenerationRequest(smol_prompt("Hi"), small)))
        await asyncio.sleep(0.5)
        assert not patient.done()
    finally:
        await hog.aclose()
    events = await asyncio.wait_for(patient, 60)
    assert finish_of(events).completion_tokens == 4


async def test_a_long_prompt_is_read_in_budgeted_chunks_beside_running_streams(
    smollm_path: Path,
) -> None:
    # Steps of at most 64 prompt tokens while something decodes: a ~600-token prompt takes
    # about ten steps, each of which also gives the running stream a token (one 512-token
    # step, without the budget, would give it one or two). Every token is handed over alone.
    backend = await load(
        smollm_path, parallel=2, n_batch=512, prefill_budget=64, stream_interval_ms=0
    )
    assert backend.info.extra["prefill_budget"] == 64
    hog = backend.generate(endless(max_tokens=2000))
    got = 0
    marks: dict[str, int] = {}

    async def run_hog() -> None:
        nonlocal got
        async for event in hog:
            if isinstance(event, Chunk):
                got += event.tokens
                if "first" in marks:
                    return

    async def run_long() -> int:
        words = " ".join(f"word{i}" for i in range(300))
        request = GenerationRequest(
            smol_prompt(f"Repeat: {words}"), SamplingParams(temperature=0.0, max_tokens=1)
        )
        prompt = 0
        async for event in backend.generate(request):
            if isinstance(event, Started):
                marks["admitted"] = got
                prompt = event.prompt_tokens - event.cached_tokens
            elif "first" not in marks:
                marks["first"] = got
        return prompt

    try:
        hogging = asyncio.ensure_future(run_hog())
        while got < 3:
            await asyncio.sleep(0.01)
        prompt = await asyncio.wait_for(run_long(), 120)
        await asyncio.wait_for(hogging, 60)
        assert prompt > 500
        beside = marks["first"] - marks["admitted"]
        assert beside >= prompt // 64 - 2, (prompt, marks)
    finally:
        await hog.aclose()
        await backend.aclose()


async def test_held_back_text_goes_out_before_a_step_that_reads_a_prompt(
    smollm_path: Path,
) -> None:
    # Text is held back for a minute after the first few tokens: the stream gets more only
    # when another request's prompt step hands it over first (or when it ends).
    backend = await load(smollm_path, parallel=2, stream_interval_ms=60_000)
    assert backend.info.extra["stream_interval_ms"] == 60_000
    hog = backend.generate(endless(max_tokens=2000))
    got = 0

    async def run_hog() -> None:
        nonlocal got
        async for event in hog:
            if isinstance(event, Chunk):
                got += event.tokens

    hogging = asyncio.ensure_future(run_hog())
    try:
        while got < 1:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.5)
        before = got
        await asyncio.sleep(0.5)
        assert got == before  # its tokens since are held
        short = GenerationRequest(smol_prompt("Hi"), SamplingParams(temperature=0.0, max_tokens=1))
        await asyncio.wait_for(collect(backend, short), 60)
        for _ in range(500):
            if got > before:
                break
            await asyncio.sleep(0.01)
        assert got > before
    finally:
        hogging.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await hogging
        await hog.aclose()
        await backend.aclose()
