"""One llama.cpp sampler chain per sequence, with llama-cpp-python's ``generate`` semantics.

The chain is penalties -> grammar -> (greedy | top_k -> typical -> top_p -> min_p -> temp ->
dist(seed)), the order llama-cpp-python builds it in, so a request samples as it did when the
engine ran one sequence through ``Llama.generate``.
"""

from __future__ import annotations

import importlib
from typing import Any

from ..base import SamplingParams
from ..errors import BadRequest

# llama.cpp's own sampling defaults (common_params_sampling), used where a request leaves a
# field unset. llama-cpp-python's ``generate`` has the same defaults.
DEFAULT_TEMPERATURE = 0.8
DEFAULT_TOP_P = 0.95
DEFAULT_TOP_K = 40
DEFAULT_MIN_P = 0.05
DEFAULT_REPEAT_PENALTY = 1.0
# llama-cpp-python's last_n_tokens_size: the window the penalties look at.
PENALTY_LAST_N = 64


def sampling_values(s: SamplingParams) -> dict[str, float]:
    """The request's sampling with unset fields at llama.cpp's defaults."""
    temperature = DEFAULT_TEMPERATURE if s.temperature is None else s.temperature
    return {
        # Greedy at exactly 0; below it would mean "no scaling".
        "temp": max(temperature, 0.0),
        "top_p": DEFAULT_TOP_P if s.top_p is None else s.top_p,
        "top_k": DEFAULT_TOP_K if s.top_k is None else s.top_k,
        "min_p": DEFAULT_MIN_P if s.min_p is None else s.min_p,
        "repeat_penalty": DEFAULT_REPEAT_PENALTY if s.repeat_penalty is None else s.repeat_penalty,
        "presence_penalty": s.presence_penalty or 0.0,
        "frequency_penalty": s.frequency_penalty or 0.0,
    }


def check_grammar(lib: Any, vocab: Any, gbnf: str) -> None:
    """Raise BadRequest where llama.cpp cannot parse the grammar (before the request starts)."""
    sampler = lib.llama_sampler_init_grammar(vocab, gbnf.encode("utf-8"), b"root")
    if not sampler:
        # A grammar that does not compile is the gateway's bug, but the client's schema
        # produced it: report it as a 400 naming nothing secret.
        raise BadRequest("The output constraint could not be compiled into a grammar.")
    lib.llama_sampler_free(sampler)


class SamplerChain:
    """Owns a ``llama_sampler`` chain; ``close`` frees it (and every sampler in it)."""

    def __init__(
        self, lib: Any, vocab: Any, values: dict[str, float], seed: int, grammar: str | None
    ) -> None:
        self._lib = lib
        # Greedy with no grammar and neutral penalties picks the first highest logit: read
        # straight from the logits (about 10 us) instead of through the chain, which first
        # copies every one of n_vocab candidates (about 65 us a token with SmolLM2's 49k).
        # (numpy comes with llama-cpp-python.)
        neutral = values["repeat_penalty"] == 1.0
        neutral &= not (values["frequency_penalty"] or values["presence_penalty"])
        self._argmax_of = 0
        if values["temp"] == 0.0 and grammar is None and neutral:
            self._np: Any = importlib.import_module("numpy")
            self._argmax_of = int(lib.llama_vocab_n_tokens(vocab))
        self._chain: Any = lib.llama_sampler_chain_init(lib.llama_sampler_chain_default_params())
        try:
            self._build(vocab, values, seed, grammar)
        except BaseException:
            self.close()
            raise

    def _build(self, vocab: Any, v: dict[str, float], seed: int, grammar: str | None) -> None:
        lib = self._lib
        add = self._add
        n_vocab = int(lib.llama_vocab_n_tokens(vocab))
        # The same arguments as llama-cpp-python's add_penalties, whatever its binding maps
        # them onto, so penalties behave exactly as they did through Llama.generate.
        add(
            lib.llama_sampler_init_penalties(
                n_vocab,
                PENALTY_LAST_N,
                float(v["repeat_penalty"]),
                float(v["frequency_penalty"]),
                float(v["presence_penalty"]),
            )
        )
        if grammar is not None:
            sampler = lib.llama_sampler_init_grammar(vocab, grammar.encode("utf-8"), b"root")
            if not sampler:
                raise BadRequest("The output constraint could not be compiled into a grammar.")
            add(sampler)
        if v["temp"] == 0.0:
            add(lib.llama_sampler_init_greedy())
            return
        add(lib.llama_sampler_init_top_k(int(v["top_k"])))
        add(lib.llama_sampler_init_typical(1.0, 1))
        add(lib.llama_sampler_init_top_p(float(v["top_p"]), 1))
        add(lib.llama_sampler_init_min_p(float(v["min_p"]), 1))
        add(lib.llama_sampler_init_temp(float(v["temp"])))
        add(lib.llama_sampler_init_dist(seed))

    def _add(self, sampler: Any) -> None:
        self._lib.llama_sampler_chain_add(self._chain, sampler)

    def sample(self, ctx: Any, index: int) -> int:
        """Sample from the logits of batch row ``index`` and accept the token."""
        if self._argmax_of:
            logits = self._lib.llama_get_logits_ith(ctx, index)
            if not logits:
                raise RuntimeError(f"no logits for batch row {index}")
            return int(self._np.ctypeslib.as_array(logits, shape=(self._argmax_of,)).argmax())
        return int(self._lib.llama_sampler_sample(self._chain, ctx, index))

    def close(self) -> None:
        if self._chain is not None:
            self._lib.llama_sampler_free(self._chain)
            self._chain = None
