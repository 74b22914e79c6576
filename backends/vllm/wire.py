"""vLLM's wire: sampling field names, SSE reading, and its error bodies read back."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx

from ..base import SamplingParams
from ..errors import BadRequest, PromptTooLong

# vLLM takes a signed 64-bit seed; OpenAI clients may send any integer.
_SEED_MASK = 0x7FFF_FFFF_FFFF_FFFF
# Phrases in vLLM's 400 messages when the prompt (or prompt + max_tokens) does not fit.
_CONTEXT_PHRASES = ("maximum context length", "max_model_len", "context length")


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
