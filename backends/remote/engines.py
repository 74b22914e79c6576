"""What differs between the engines behind ``/v1/completions``: request fields, how each tells
its context length, its tokenizer endpoint, and whether it names the stop string that matched.

Every engine gets the rendered prompt as is and must send special tokens back as text (GLM's
reasoning and tool-call tags are special tokens):

- **vLLM**: ``skip_special_tokens: false`` per request; see ``wire.completion_body``.
- **llama-server** (llama.cpp): start it with ``--special`` (``-sp``): without it the server
  drops every special token's text from completions, and there is no per-request switch. The
  prompt is tokenized with special tokens parsed (its ``[gMASK]<sop>`` become those tokens);
  GLM's GGUF adds no BOS of its own. Its OpenAI completions do not say which stop string
  matched, so the client's stop strings are matched here (``backends.stops``) and the stream
  closed on a match; only GLM's stop tokens go upstream. ``timings_per_token`` makes every
  event carry the prompt's counts, which an early close would otherwise lose.
- **SGLang**: ``python -m sglang.launch_server --model-path ... --served-model-name NAME
  --grammar-backend xgrammar`` (the grammar arrives as ``ebnf``). Special tokens are kept with
  the same ``skip_special_tokens: false`` / ``spaces_between_special_tokens: false`` as vLLM.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..base import GenerationRequest, SamplingParams
from .settings import EngineName

# vLLM and SGLang take a signed 64-bit seed; llama.cpp an unsigned 32-bit one whose top value
# means "random". OpenAI clients may send any integer.
_SEED64 = 0x7FFF_FFFF_FFFF_FFFF
_SEED32 = 0x7FFF_FFFF


@dataclass(frozen=True, slots=True)
class Engine:
    name: EngineName
    # How replicas are named to clients and in logs.
    label: str
    # Adds the engine's own fields to the common body (sampling names, grammar, flags).
    extend: Callable[[dict[str, Any], GenerationRequest], None]
    # Whether the engine's last event names the stop string that matched (``stop_reason``).
    reports_stop: bool = True
    # ``/tokenize`` body field for the text, or None: no tokenizer endpoint.
    tokenize_field: str | None = "prompt"


def _vllm(body: dict[str, Any], request: GenerationRequest) -> None:
    body.update(
        return_token_ids=True,
        add_special_tokens=False,
        skip_special_tokens=False,
        spaces_between_special_tokens=False,
    )
    body.update(_openai_sampling(request.sampling, _SEED64))
    if request.grammar is not None:
        body["structured_outputs"] = {"grammar": request.grammar}
    if request.request_id:
        # Shows in vLLM's logs under the gateway's id; vLLM adds its own suffix.
        body["request_id"] = request.request_id


def _sglang(body: dict[str, Any], request: GenerationRequest) -> None:
    body.update(skip_special_tokens=False, spaces_between_special_tokens=False)
    body.update(_openai_sampling(request.sampling, _SEED64))
    if request.grammar is not None:
        body["ebnf"] = request.grammar
    if request.request_id:
        body["rid"] = request.request_id


def _llama_server(body: dict[str, Any], request: GenerationRequest) -> None:
    s = request.sampling
    fields: dict[str, Any] = {
        "temperature": s.temperature,
        "top_p": s.top_p,
        "top_k": s.top_k,
        "min_p": s.min_p,
        "repeat_penalty": s.repeat_penalty,
        "presence_penalty": s.presence_penalty,
        "frequency_penalty": s.frequency_penalty,
        "seed": None if s.seed is None else s.seed & _SEED32,
    }
    body.update({k: v for k, v in fields.items() if v is not None})
    body.update(cache_prompt=True, timings_per_token=True)
    if request.grammar is not None:
        body["grammar"] = request.grammar


def _openai_sampling(s: SamplingParams, seed_mask: int) -> dict[str, Any]:
    """vLLM's and SGLang's names for the sampling fields that are set."""
    fields: dict[str, Any] = {
        "temperature": s.temperature,
        "top_p": s.top_p,
        "top_k": s.top_k,
        "min_p": s.min_p,
        "repetition_penalty": s.repeat_penalty,
        "presence_penalty": s.presence_penalty,
        "frequency_penalty": s.frequency_penalty,
        "seed": None if s.seed is None else s.seed & seed_mask,
    }
    if s.top_p is not None and s.top_p <= 0.0:
        # top_p 0 keeps only the most likely token (as llama.cpp reads it); vLLM refuses 0,
        # and top_k 1 says the same.
        fields["top_p"] = None
        fields["top_k"] = 1
    return {k: v for k, v in fields.items() if v is not None}


ENGINES: dict[EngineName, Engine] = {
    "vllm": Engine("vllm", "vLLM", _vllm),
    "llama-server": Engine(
        "llama-server", "llama-server", _llama_server, reports_stop=False, tokenize_field="content"
    ),
    "sglang": Engine("sglang", "SGLang", _sglang, tokenize_field=None),
}


def context_length(engine: Engine, entry: dict[str, Any]) -> int | None:
    """The context length in one ``/v1/models`` entry: vLLM's and SGLang's ``max_model_len``,
    llama-server's ``meta.n_ctx`` (per slot: what one request can use)."""
    value = entry.get("max_model_len")
    if value is None and engine.name == "llama-server":
        meta = entry.get("meta")
        value = meta.get("n_ctx") if isinstance(meta, dict) else None
    return value if isinstance(value, int) and value > 0 else None


def served_ids(engine: Engine, entry: dict[str, Any]) -> tuple[str, ...]:
    """The names a ``/v1/models`` entry answers to (llama-server lists aliases)."""
    names = [entry.get("id")]
    aliases = entry.get("aliases")
    if isinstance(aliases, list):
        names += aliases
    return tuple(n for n in names if isinstance(n, str))


def token_count(data: Any) -> int | None:
    """vLLM's ``{"count": n}``, llama-server's ``{"tokens": [...]}``."""
    if not isinstance(data, dict):
        return None
    count = data.get("count")
    if isinstance(count, int):
        return count
    tokens = data.get("tokens")
    return len(tokens) if isinstance(tokens, list) else None
