"""vLLM's wire: the request body, sampling field names, SSE reading, its error bodies.

What is sent, and why:

- ``add_special_tokens: false``: the rendered prompt already starts with ``[gMASK]<sop>``; a
  tokenizer-added prefix would double it.
- ``skip_special_tokens: false`` and ``spaces_between_special_tokens: false``: GLM's role and
  tag tokens must come back as their exact text, with nothing inserted around them.
- The GLM stop tokens as ``stop`` strings, beside the client's: they are plain text in the
  output (special tokens are not skipped), vLLM cuts the text before a stop string and reports
  ``finish_reason: "stop"``. (vLLM also stops on the ids that the model's
  ``generation_config.json`` lists as ``eos_token_id``; the strings make the stop independent
  of that file.)
- ``stream_options.include_usage``: the final event carries vLLM's own token counts, which go
  into ``Finished``; ``return_token_ids``: each event lists the tokens it stands for, so
  ``Chunk.tokens`` is exact even when one event carries several tokens (speculative decoding,
  ``--stream-interval``).
- A GBNF grammar as ``structured_outputs: {"grammar": ...}`` (vLLM >= 0.10's name; older
  servers read ``guided_grammar``). vLLM's default ``auto`` structured-output backend compiles
  it with xgrammar, which reads llama.cpp's GBNF.
- ``max_tokens`` always: vLLM's completions endpoint defaults to 16 tokens, not to the rest of
  the context. Unset, it is the replica's ``max_model_len`` (vLLM clamps it to what the prompt
  leaves); a larger client value is clamped the same way, as llama.cpp's backend does, because
  vLLM refuses a ``max_tokens`` above ``max_model_len`` outright.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx

from ..base import GenerationRequest, SamplingParams
from ..errors import BadRequest, PromptTooLong

# vLLM takes a signed 64-bit seed; OpenAI clients may send any integer.
_SEED_MASK = 0x7FFF_FFFF_FFFF_FFFF
# Phrases in vLLM's 400 messages when the prompt (or prompt + max_tokens) does not fit.
_CONTEXT_PHRASES = ("maximum context length", "max_model_len", "context length")


def completion_body(
    request: GenerationRequest, model: str, *, context_limit: int | None = None
) -> dict[str, Any]:
    """The streamed ``/v1/completions`` body for ``request``: the rendered prompt as is, special
    tokens kept in the output (GLM's tags are special tokens), token ids for exact counts."""
    s = request.sampling
    body: dict[str, Any] = {
        "model": model,
        "prompt": request.prompt,
        "stream": True,
        "stream_options": {"include_usage": True},
        "return_token_ids": True,
        "add_special_tokens": False,
        "skip_special_tokens": False,
        "spaces_between_special_tokens": False,
    }
    body.update(sampling_fields(s))
    stops = list(dict.fromkeys(x for x in (*s.stop, *request.stop_tokens) if x))
    if stops:
        body["stop"] = stops
    if s.max_tokens is not None:
        limit = context_limit
        body["max_tokens"] = max(s.max_tokens, 1) if limit is None else min(s.max_tokens, limit)
    elif context_limit is not None:
        body["max_tokens"] = context_limit
    if request.grammar is not None:
        body["structured_outputs"] = {"grammar": request.grammar}
    if request.request_id:
        # Shows in vLLM's logs under the gateway's id; vLLM adds its own suffix.
        body["request_id"] = request.request_id
    return body


def sampling_fields(s: SamplingParams) -> dict[str, Any]:
    """vLLM's names for the sampling fields that are set; unset ones keep vLLM's defaults."""
    fields: dict[str, Any] = {
        "temperature": s.temperature,
        "top_p": s.top_p,
        "top_k": s.top_k,
        "min_p": s.min_p,
        "repetition_penalty": s.repeat_penalty,
        "presence_penalty": s.presence_penalty,
        "frequency_penalty": s.frequency_penalty,
        "seed": None if s.seed is None else s.seed & _SEED_MASK,
    }
    if s.top_p is not None and s.top_p <= 0.0:
        # top_p 0 keeps only the most likely token (as llama.cpp reads it); vLLM refuses 0,
        # and top_k 1 says the same.
        fields["top_p"] = None
        fields["top_k"] = 1
    return {k: v for k, v in fields.items() if v is not None}


async def sse_data(response: httpx.Response) -> AsyncIterator[str]:
    """The ``data`` of each server-sent event (multi-line data joined, comments skipped)."""
    lines: list[str] = []
    async for line in response.aiter_lines():
        if not line:
            if lines:
                yield "\n".join(lines)
                lines = []
        elif line.startswith("data:"):
            lines.append(line[5:].removeprefix(" "))
    if lines:
        yield "\n".join(lines)


def upstream_message(response: httpx.Response) -> str:
    """vLLM's error message: ``{"error": {"message": ...}}``, older shapes, or the raw body."""
    try:
        data = response.json()
    except ValueError:
        return response.text.strip()[:1000] or response.reason_phrase
    if isinstance(data, dict):
        error = data.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return str(error["message"])
        for value in (error, data.get("message"), data.get("detail")):
            if isinstance(value, str):
                return value
    return response.text.strip()[:1000]


def upstream_param(response: httpx.Response) -> str | None:
    with contextlib.suppress(ValueError):
        data = response.json()
        error = data.get("error") if isinstance(data, dict) else None
        param = error.get("param") if isinstance(error, dict) else None
        if isinstance(param, str):
            return param
    return None


def client_error(message: str, upstream_param: str | None) -> BadRequest:
    # vLLM names its own fields; the client sent messages, not a prompt.
    param = {"input_tokens": "messages", "prompt": "messages"}.get(
        upstream_param or "", upstream_param
    )
    if any(p in message.lower() for p in _CONTEXT_PHRASES):
        return PromptTooLong(message, param=param or "messages")
    return BadRequest(message, param=param)


def int_field(data: dict[str, Any] | None, key: str) -> int | None:
    value = (data or {}).get(key)
    return value if isinstance(value, int) else None
