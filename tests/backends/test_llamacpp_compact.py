"""A short sequence moves down into the cells a dropped long prompt leaves (real SmolLM2).

Where a step's cells end is read from llama.cpp itself: with LLAMA_KV_CACHE_DEBUG set, every
slot search logs the cache's highest used cell + 1 (``n``) and its used cells (``used``). A
step attends over cells up to ``n``, so a gap between the two is work done for nothing.
"""

from __future__ import annotations

import ctypes
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import llama_cpp
import llama_cpp._logger
import pytest

from backends.base import Chunk, GenerationRequest, SamplingParams
from backends.llamacpp import LlamaCppBackend
from backends.llamacpp.compact import COMPACT_BELOW
from backends.llamacpp.model import LoadedModel
from tests.backends.events import finish_of, started_of, text_of
from tests.backends.test_llamacpp_batching import collect, load, smol_prompt

pytestmark = [pytest.mark.engine, pytest.mark.asyncio(loop_scope="module")]

SLOT_SEARCH = re.compile(r"find_slot: stream\[0\], n = +(\d+), used = +(\d+)")


@pytest.fixture
def kv_layout(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[int, int]]]:
    """(highest used cell + 1, used cells) at each slot search of contexts made meanwhile."""
    monkeypatch.setenv("LLAMA_KV_CACHE_DEBUG", "1")
    seen: list[tuple[int, int]] = []

    @llama_cpp.llama_log_callback  # type: ignore[untyped-decorator]
    def grab(level: int, text: bytes, user_data: Any) -> None:
        found = SLOT_SEARCH.search(text.decode("utf-8", "replace"))
        if found:
            seen.append((int(found[1]), int(found[2])))

    llama_cpp.llama_log_set(grab, ctypes.c_void_p(0))
    try:
        yield seen
    finally:
        llama_cpp.llama_log_set(llama_cpp._logger.llama_log_callback, ctypes.c_void_p(0))


def endless(user: str, max_tokens: int) -> GenerationRequest:
    # Greedy under a grammar without an accepting state: exactly max_tokens tokens.
    return GenerationRequest(
        smol_prompt(user),
        SamplingParams(temperature=0.0, max_tokens=max_tokens),
        grammar='root ::= "a" root',
    )


SIDE = endless("Say a.", 8)


async def read_a_short_prompt_above_a_long_one(backend: LlamaCppBackend) -> None:
    """A short request runs while a long one decodes: its cells are taken above the long
    prompt's. Then the long one ends (idle, to go to RAM when the next request starts)."""
    notes = "The build failed in module parser because of a missing import. " * 100
    long = backend.generate(endless(f"Summarise: {notes}", 120))
    got = 0
    async for event in long:
        if isinstance(event, Chunk):
            got += event.tokens
            break
    side = await collect(backend, SIDE)
    assert finish_of(side).completion_tokens == 8
    assert backend.stats.sequences_busy == 1  # the long one, still decoding
    async for event in long:
        if isinstance(event, Chunk):
            got += event.tokens
    assert got == 120


async def test_a_short_sequence_moves_down_once_a_long_prompt_is_dropped(
    smollm_path: Path, kv_layout: list[tuple[int, int]]
) -> None:
    backend = await load(smollm_path, parallel=4, n_batch=256)
    try:
        await read_a_short_prompt_above_a_long_one(backend)
        kv_layout.clear()
        # Asked again: it goes back to its sequence; the long one's goes to RAM.
        restored = backend.stats.prompt_tokens_restored
        again = await collect(backend, SIDE)
        assert backend.stats.ram_cache_states >= 1
        # Moved, not lost: all but the last prompt token come from the cache, in place.
        assert started_of(again).cached_tokens == started_of(again).prompt_tokens - 1
        assert backend.stats.prompt_tokens_restored == restored
        assert kv_layout, "llama.cpp logged no slot search"
        top, used = kv_layout[-1]
        assert used < COMPACT_BELOW
        # Without moving, its cells stay above the dropped prompt's (> 1000).
        assert top <= used + 16, kv_layout[-1]
    finally:
        await backend.aclose()


async def test_a_state_that_does_not_go_back_leaves_its_sequence_empty(
    smollm_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = await load(smollm_path, parallel=4, n_batch=256)
    try:
        await read_a_short_prompt_above_a_long_one(backend)
        monkeypatch.setattr(LoadedModel, "state_load", lambda *args: False)
        again = await collect(backend, SIDE)
        # Its cache was lost in the move: it read its whole prompt, and ran as asked.
        assert started_of(again).cached_tokens == 0
        assert finish_of(again).completion_tokens == 8
        assert re.fullmatch("a+", text_of(again))
        # Only its own tokens are left (the last one sampled, never decoded).
        assert backend.stats.kv_cells_used == started_of(again).prompt_tokens + 7
    finally:
        await backend.aclose()
