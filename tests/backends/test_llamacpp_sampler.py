"""The sampler chain on a real engine (SmolLM2): greedy requests that need nothing but the
highest logit read it straight from the logits; that must be the token llama.cpp's own
greedy chain picks, row by row."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from backends.base import SamplingParams
from backends.llamacpp import LlamaCppOptions
from backends.llamacpp.model import LoadedModel
from backends.llamacpp.sampler import SamplerChain, sampling_values
from tests.backends.lowlevel import decode_all

pytestmark = pytest.mark.engine

TEXT = "The capital of France is Paris. The capital of Norway is Oslo. One, two, three,"


@pytest.fixture(scope="module")
def model(smollm_path: Path) -> Iterator[LoadedModel]:
    loaded = LoadedModel(LlamaCppOptions(model_path=str(smollm_path), n_ctx=512, parallel=1))
    yield loaded
    loaded.close()


@pytest.fixture(scope="module")
def rows(model: LoadedModel) -> int:
    return decode_all(model, TEXT)


def _through_llama(model: LoadedModel, row: int) -> int:
    lib: Any = model.lib
    chain = lib.llama_sampler_chain_init(lib.llama_sampler_chain_default_params())
    lib.llama_sampler_chain_add(chain, lib.llama_sampler_init_greedy())
    try:
        return int(lib.llama_sampler_sample(chain, model.ctx, row))
    finally:
        lib.llama_sampler_free(chain)


def test_plain_greedy_picks_llama_cpps_token_on_every_row(model: LoadedModel, rows: int) -> None:
    values = sampling_values(SamplingParams(temperature=0.0))
    chain = SamplerChain(model.lib, model.vocab, values, 1, None)
    try:
        got = [chain.sample(model.ctx, row) for row in range(rows)]
    finally:
        chain.close()
    expected = [_through_llama(model, row) for row in range(rows)]
    assert got == expected
    assert len(set(expected)) > rows // 2  # the rows do differ: the comparison means something


def test_greedy_with_a_penalty_still_goes_through_the_chain(model: LoadedModel, rows: int) -> None:
    # A strong repeat penalty over the tokens sampled so far: after a token is picked, it is
    # penalised, so the chain must not answer from the raw logits.
    values = sampling_values(SamplingParams(temperature=0.0, repeat_penalty=50.0))
    chain = SamplerChain(model.lib, model.vocab, values, 1, None)
    try:
        first = chain.sample(model.ctx, rows - 1)
        again = chain.sample(model.ctx, rows - 1)
    finally:
        chain.close()
    assert first == _through_llama(model, rows - 1)
    assert again != first
