"""The host-RAM prompt cache on real engines: evicted states come back exact, and only to
prompts that continue them.

glm-tiny's greedy answers are its documented behaviour, used to tell conversations apart.
glm-arch-tiny (GLM-4.7-Flash's MLA cache layout, random weights) is compared by logits with a
tolerance, since its near-tied argmax can flip on kernel noise.
"""

from __future__ import annotations

import asyncio
import ctypes
from pathlib import Path
from typing import Any

import pytest

from backends.base import GenerationRequest, SamplingParams
from backends.llamacpp import LlamaCppOptions
from backends.llamacpp.model import LoadedModel
from gateway.glm47.tokens import STOP_TOKENS
from tests.backends.events import finish_of, started_of, text_of
from tests.backends.test_llamacpp_batching import COUNTRIES, capital_prompt, collect, load

pytestmark = [pytest.mark.engine, pytest.mark.asyncio(loop_scope="module")]

GREEDY = SamplingParams(temperature=0.0, max_tokens=32)
OTHER_SYSTEM = "[gMASK]<sop><|system|>You translate everything into French, word by word."


def capital(country: str) -> GenerationRequest:
    return GenerationRequest(capital_prompt(country), GREEDY, stop_tokens=STOP_TOKENS)


async def test_a_restored_state_continues_like_one_never_evicted(glm_tiny_path: Path) -> None:
    turn1 = capital("France")
    unrelated = GenerationRequest(
        f"{OTHER_SYSTEM}<|user|>What is the capital of Peru?<|assistant|><think>",
        GREEDY,
        stop_tokens=STOP_TOKENS,
    )
    results = []
    for evict in (False, True):
        backend = await load(glm_tiny_path, parallel=1)
        try:
            first = await collect(backend, turn1)
            n1 = started_of(first).prompt_tokens
            if evict:  # one sequence: the unrelated prompt takes it, France goes to RAM
                await collect(backend, unrelated)
                assert backend.stats.ram_cache_states == 1
            prompt = f"{turn1.prompt}{text_of(first)}<|user|>What is the capital of Italy?"
            prompt += "<|assistant|><think>"
            evaluated = backend.stats.prompt_tokens_evaluated
            events = await collect(
                backend, GenerationRequest(prompt, GREEDY, stop_tokens=STOP_TOKENS)
            )
            started = started_of(events)
            read = backend.stats.prompt_tokens_evaluated - evaluated
            results.append((text_of(events), started.cached_tokens, read, backend.stats, n1))
        finally:
            await backend.aclose()
    (kept, kept_cached, kept_read, _, _), (restored, cached, read, stats, n1) = results
    assert stats.ram_cache_hits == 1
    assert stats.prompt_tokens_restored == cached
    # Everything of turn one, its answer included, came back: only the new turn was read.
    assert cached == kept_cached and read == kept_read
    assert cached > n1
    assert restored == kept


async def test_conversations_stay_apart_through_ram_evictions_and_restores(
    glm_tiny_path: Path,
) -> None:
    # Two sequences for eight conversations: every admission pushes one out to host RAM, and
    # 1 MiB holds only five of them (glm-tiny: about 180 KiB per conversation).
    backend = await load(glm_tiny_path, parallel=2, cache_ram_mib=1)

    async def all_at_once() -> None:
        batched = await asyncio.gather(*(collect(backend, capital(c)) for c in COUNTRIES))
        for country, events in zip(COUNTRIES, batched, strict=True):
            text = text_of(events)
            assert f"capital of {country}" in text, text
            others = [c for c in COUNTRIES if c != country and c in text]
            assert not others, f"{country}'s answer mentions {others}: {text}"
            assert finish_of(events).reason == "stop"

    try:
        await all_at_once()
        assert backend.stats.ram_cache_evictions > 0
        # The latest conversations first: those still saved come back from RAM.
        for country in reversed(COUNTRIES):
            events = await collect(backend, capital(country))
            assert f"capital of {country}" in text_of(events)
        assert backend.stats.ram_cache_hits > 0
        hits = backend.stats.ram_cache_hits
        await all_at_once()
        stats = backend.stats
        assert 0 < stats.ram_cache_bytes <= 1 << 20
        assert stats.ram_cache_hits >= hits
    finally:
        await backend.aclose()


async def test_without_ram_cache_nothing_is_saved(glm_tiny_path: Path) -> None:
    backend = await load(glm_tiny_path, parallel=1, cache_ram_mib=0)
    try:
        for country in ("France", "Germany", "France"):
            await collect(backend, capital(country))
        assert backend.stats.ram_cache_states == 0
        assert backend.stats.ram_cache_hits == backend.stats.ram_cache_misses == 0
        assert backend.info.extra["cache_ram_mib"] == 0
    finally:
        await backend.aclose()


LONG_SYSTEM = "[gMASK]<sop><|system|>" + " ".join(f"Rule {i}: answer briefly." for i in range(60))


def long_capital(country: str) -> GenerationRequest:
    prompt = f"{LONG_SYSTEM}<|user|>What is the capital of {country}?<|assistant|><think>"
    return GenerationRequest(prompt, GREEDY, stop_tokens=STOP_TOKENS)


@pytest.mark.parametrize("cache_idle", [True, False])
async def test_idle_conversations_wait_in_ram_while_others_run(
    glm_tiny_path: Path, cache_idle: bool
) -> None:
    # Four sequences, room for all: with cache_idle, starting a request moves the idle ones
    # to RAM (a step attends over every used cell), like llama-server's idle slots; without,
    # all stay.
    backend = await load(glm_tiny_path, parallel=4, cache_idle=cache_idle)
    try:
        assert backend.info.extra["cache_idle"] is cache_idle
        first = await collect(backend, long_capital("France"))
        n1 = started_of(first).prompt_tokens + finish_of(first).completion_tokens
        await collect(backend, capital("Japan"))
        held = backend.stats.kv_cells_used
        last = await collect(backend, capital("Peru"))
        stats = backend.stats
        if cache_idle:
            assert stats.ram_cache_states == 2
            # Only Peru's sequence is left (its last token sampled, never decoded).
            n_last = started_of(last).prompt_tokens + finish_of(last).completion_tokens
            assert stats.kv_cells_used == n_last - 1
        else:
            assert stats.ram_cache_states == 0
            assert stats.kv_cells_used > held
        # France's next turn: everything of turn one is reused, from RAM or in place.
        prompt = f"{long_capital('France').prompt}{text_of(first)}<|user|>And Italy?"
        restored = stats.prompt_tokens_restored
        events = await collect(backend, GenerationRequest(prompt + "<|assistant|><think>", GREEDY))
        assert started_of(events).cached_tokens >= n1 - 1
        assert (backend.stats.prompt_tokens_restored > restored) is cache_idle
    finally:
        await backend.aclose()


class _Decoder:
    """One-token-at-a-time decoding on a LoadedModel's context, returning the last logits."""

    def __init__(self, model: LoadedModel) -> None:
        self.m = model
        self.batch: Any = model.lib.llama_batch_init(512, 0, 1)
        self.n_vocab = int(model.lib.llama_vocab_n_tokens(model.vocab))

    def decode(self, tokens: list[int], seq: int, pos: int) -> list[float]:
        b = self.batch
        for i, token in enumerate(tokens):
            b.token[i], b.pos[i], b.n_seq_id[i] = token, pos + i, 1
            b.seq_id[i][0] = seq
            b.logits[i] = i == len(tokens) - 1
        b.n_tokens = len(tokens)
        assert self.m.lib.llama_decode(self.m.ctx, b) == 0
        row = self.m.lib.llama_get_logits_ith(self.m.ctx, len(tokens) - 1)
        return [float(x) for x in ctypes.cast(row, ctypes.POINTER(ctypes.c_float))[: self.n_vocab]]

    def close(self) -> None:
        self.m.lib.llama_batch_free(self.batch)
        self.m.close()


@pytest.mark.parametrize(("flash_attn", "cache_type"), [("off", "f16"), ("on", "q8_0")])
async def test_glm_arch_tiny_states_restore_into_any_sequence_and_context(
    glm_arch_tiny_path: Path, flash_attn: Any, cache_type: Any
) -> None:
    def open_model(parallel: int) -> _Decoder:
        options = LlamaCppOptions(
            model_path=str(glm_arch_tiny_path),
            n_ctx=1024,
            parallel=parallel,
            flash_attn=flash_attn,
            cache_type_k=cache_type,
        )
        return _Decoder(LoadedModel(options))

    first = open_model(4)
    try:
        prompt = first.m.tokenize("[gMASK]<sop><|user|>Hello there, how are you?<|assistant|>")
        first.decode(prompt, seq=1, pos=0)
        size = first.m.state_size(1)
        saved = first.m.state_save(1, size)
        assert saved is not None
        data, nbytes = saved
        assert nbytes > 0
        nxt = 10  # <think>
        kept = first.decode([nxt], seq=1, pos=len(prompt))
        # Evicted, its cells taken by another sequence, restored elsewhere.
        assert first.m.seq_rm(1, 0)
        first.decode(first.m.tokenize("[gMASK]<sop><|user|>Something else entirely"), 0, 0)
        assert first.m.state_load(3, data, nbytes)
        moved = first.decode([nxt], seq=3, pos=len(prompt))
    finally:
        first.close()
    second = open_model(1)
    try:
        assert second.m.state_load(0, data, nbytes)
        fresh = second.decode([nxt], seq=0, pos=len(prompt))
    finally:
        second.close()
    for logits in (moved, fresh):
        assert max(abs(a - b) for a, b in zip(kept, logits, strict=True)) <= 1e-3
