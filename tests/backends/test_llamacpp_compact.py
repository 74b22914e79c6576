"""Short sequences move down into the cells a dropped long prompt leaves (real SmolLM2).

Where a step's cells end is read from llama.cpp itself: with LLAMA_KV_CACHE_DEBUG set, every
slot search logs the cache's highest used cell + 1 (``n``) and its used cells (``used``). A
step attends over cells up to ``n``, so a gap between the two is work done for nothing.
"""

from __future__ import annotations

import asyncio
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
from backends.llamacpp.engine import IDLE_KEPT_BELOW
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


def stream(i: int, max_tokens: int) -> GenerationRequest:
    # Greedy "a"s under a grammar without an accepting state: exactly max_tokens of them.
    return GenerationRequest(
        smol_prompt(f"({i}) Say a."),
        SamplingParams(temperature=0.0, max_tokens=max_tokens),
        grammar='root ::= "a" root',
    )


async def run_streams_beside_a_long_prompt(backend: LlamaCppBackend) -> list[int]:
    """Three short streams decode while a long prompt is read: their cells end up above
    the prompt's. Returns the streams' cached lengths (prompt + completion)."""
    got = [0, 0, 0]

    async def run(i: int) -> int:
        events = []
        async for event in backend.generate(stream(i, 150)):
            events.append(event)
            if isinstance(event, Chunk):
                got[i] += event.tokens
        return started_of(events).prompt_tokens + finish_of(events).completion_tokens

    runs = [asyncio.ensure_future(run(i)) for i in range(3)]
    while min(got) < 3:
        await asyncio.sleep(0.01)
    notes = "The build failed in module parser because of a missing import. " * 100
    long = GenerationRequest(
        smol_prompt(f"Summarise: {notes}"), SamplingParams(temperature=0.0, max_tokens=4)
    )
    n_long = started_of(await collect(backend, long)).prompt_tokens
    assert n_long > 1000
    assert max(got) < 150  # the streams were still running while it was read
    return list(await asyncio.wait_for(asyncio.gather(*runs), 120))


async def test_short_sequences_move_down_once_a_long_prompt_is_dropped(
    smollm_path: Path, kv_layout: list[tuple[int, int]]
) -> None:
    backend = await load(smollm_path, parallel=4, n_batch=256)
    try:
        held = await run_streams_beside_a_long_prompt(backend)
        assert max(held) < IDLE_KEPT_BELOW  # short: they stay resident
        kv_layout.clear()
        # A side request: the long prompt's sequence goes to RAM, the streams stay.
        title = GenerationRequest(
            smol_prompt("Write a title for: cats"), SamplingParams(temperature=0.0, max_tokens=8)
        )
        await collect(backend, title)
        assert backend.stats.ram_cache_states >= 1
        assert kv_layout, "llama.cpp logged no slot search"
        top, used = kv_layout[-1]
        assert used <= sum(held) + 40
        # Without moving, the streams' last cells stay above the dropped prompt's (> 1000).
        assert top <= used + 16, kv_layout[-1]

        # Moved, not lost: asked again, a stream reuses its prompt in place.
        restored = backend.stats.prompt_tokens_restored
        again = await collect(backend, stream(2, 8))
        assert started_of(again).cached_tokens == started_of(again).prompt_tokens - 1
        assert backend.stats.prompt_tokens_restored == restored
    finally:
        await backend.aclose()


async def test_a_state_that_does_not_go_back_leaves_its_sequence_empty(
    smollm_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = await load(smollm_path, parallel=4, n_batch=256)
    try:
        await run_streams_beside_a_long_prompt(backend)
        monkeypatch.setattr(LoadedModel, "state_load", lambda *args: False)
        title = GenerationRequest(
            smol_prompt("Write a title for: cats"), SamplingParams(temperature=0.0, max_tokens=8)
        )
        events = await collect(backend, title)
        # The side request's own few reused tokens were lost too: it read its whole prompt.
        assert started_of(events).cached_tokens == 0
        assert finish_of(events).completion_tokens == 8
        # Only the side request's tokens are left (its last one sampled, never decoded).
        assert backend.stats.kv_cells_used == started_of(events).prompt_tokens + 7
        again = await collect(backend, stream(2, 8))
        assert started_of(again).cached_tokens < 16
        assert finish_of(again).completion_tokens == 8
        assert re.fullmatch("a+", text_of(again))
    finally:
        await backend.aclose()
