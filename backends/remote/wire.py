"""The completions wire: the request body, SSE reading, error bodies (vLLM's words below;
the other engines' differences are in ``engines``).

What is sent, and why:

- ``add_special_tokens: false``: the rendered prompt already starts with ``[gMASK]<sop>``; a
  tokenizer-added prefix would double it.
- ``skip_special_tokens: false`` and ``spaces_between_special_tokens: false``: GLM's role and
  tag tokens must come back as their exact text, with nothing inserted around them.
- The GLM stop tokens as ``stop`` strings, beside the client's: they are plain text in the
  output (special tokens are not skipped), vLLM cuts the text before a stop string and reports
  ``finish_reason: "stop"``. (vLLM also stops on the ids that the model's
  ``generation_config.json`` lists as ``eos_token_id``; the strings make the stop independent
  of that file.) Engines that do not name the matched stop string get only the stop tokens.
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
import json
from collections.abc import AsyncIterator
from typing import Any

from ..base import GenerationRequest
from ..errors import BadRequest, PromptTooLong
from .engines import ENGINES, Engine
from .http import Reply, Stream

# Phrases in vLLM's 400 messages when the prompt (or prompt + max_tokens) does not fit.
_CONTEXT_PHRASES = ("maximum context length", "max_model_len", "context length", "context size")


def completion_body(
    request: GenerationRequest,
    model: str,
    engine: Engine = ENGINES["vllm"],
    *,
    context_limit: int | None = None,
) -> dict[str, Any]:
    """The streamed ``/v1/completions`` body for ``request``: the rendered prompt as is, special
    tokens kept in the output (GLM's tags are special tokens), the engine's own fields."""
    s = request.sampling
    body: dict[str, Any] = {
        "model": model,
        "prompt": request.prompt,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    engine.extend(body, request)
    # An engine that does not name the matched stop string gets only the stop tokens: the
    # client's stop strings are matched by the backend, which must see them to name them.
    client_stops = s.stop if engine.reports_stop else ()
    stops = list(dict.fromkeys(x for x in (*client_stops, *request.stop_tokens) if x))
    if stops:
        body["stop"] = stops
    if s.max_tokens is not None:
        limit = context_limit
        body["max_tokens"] = max(s.max_tokens, 1) if limit is None else min(s.max_tokens, limit)
    elif context_limit is not None:
        body["max_tokens"] = context_limit
    return body


async def sse_data(response: Stream) -> AsyncIterator[list[str]]:
    """The ``data`` of the server-sent events each network read completed (multi-line data
    joined, comments and other fields skipped; CRLF line ends read as LF). Events that came
    together are handed on together: an engine that sends a whole answer at once costs one
    pass through the pipeline, not one per token."""
    buffer = b""
    async for chunk in response.chunks():
        buffer += chunk
        if b"\r" in buffer:
            # A CR at the very end stays: its LF may come with the next chunk.
            buffer = buffer.replace(b"\r\n", b"\n")
        *events, buffer = buffer.split(b"\n\n")
        batch = [data for data in map(_data_of, events) if data is not None]
        if batch:
            yield batch
    data = _data_of(buffer)
    if data is not None:
        yield [data]


def _data_of(raw: bytes) -> str | None:
    if raw.startswith(b"data: ") and b"\n" not in raw:  # what engines send: one data line
        return raw[6:].decode("utf-8")
    lines = [line[5:].removeprefix(b" ") for line in raw.split(b"\n") if line.startswith(b"data:")]
    return b"\n".join(lines).decode("utf-8") if lines else None


#: Stands in ``parse_events``' answer for an event whose data is not JSON.
MALFORMED = object()


def parse_events(batch: list[str]) -> list[Any]:
    """The JSON of each event's data (``[DONE]`` kept as the string, ``MALFORMED`` for data
    that is not JSON), with one ``json.loads`` for the whole batch: per-call overhead is
    most of what a one-token event costs."""
    if "[DONE]" in batch:
        i = batch.index("[DONE]")
        return [*parse_events(batch[:i]), "[DONE]", *parse_events(batch[i + 1 :])]
    if not batch:
        return []
    try:
        events = json.loads("[" + ",".join(batch) + "]")
    except ValueError:
        events = None
    if isinstance(events, list) and len(events) == len(batch):
        return events
    # A malformed event, or data that joined into something else: one by one, to be exact.
    return [_loads(data) for data in batch]


def _loads(data: str) -> Any:
    try:
        return json.loads(data)
    except ValueError:
        return MALFORMED


def upstream_message(response: Reply) -> str:
    """vLLM's error message: ``{"error": {"message": ...}}``, older shapes, or the raw body."""
    try:
        data = response.json()
    except ValueError:
        return response.text.strip()[:1000] or response.reason
    if isinstance(data, dict):
        error = data.get("error")
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return str(error["message"])
        for value in (error, data.get("message"), data.get("detail")):
            if isinstance(value, str):
                return value
    return response.text.strip()[:1000]


def upstream_param(response: Reply) -> str | None:
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
