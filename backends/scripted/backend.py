"""Replays canned raw outputs from a JSONL file: client integration tests without a model.

Each line is one response, used in order and cycling::

    {"chunks": ["Let me think.</think>", "Hello!"], "finish_reason": "stop", "delay_ms": 5}
    {"text": "ok</think>Hi there", "chunk_size": 3}

The output goes through the same parser and SSE code as a real model's. Each chunk counts as one
token, so ``max_tokens`` truncates after that many chunks with finish reason ``length``; stop
strings and stop tokens cut the output as an engine would.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..base import (
    Backend,
    BackendEvent,
    Chunk,
    Finished,
    FinishReason,
    GenerationRequest,
    ModelInfo,
    Started,
)
from ..errors import BackendNotReady
from ..stops import StopMatcher


class ScriptError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class ScriptedResponse:
    chunks: tuple[str, ...]
    finish_reason: FinishReason = "stop"
    delay_ms: float = 0.0

    @classmethod
    def from_json(cls, data: Any, where: str) -> ScriptedResponse:
        if not isinstance(data, dict):
            raise ScriptError(f"{where}: expected a JSON object")
        if ("chunks" in data) == ("text" in data):
            raise ScriptError(f"{where}: give exactly one of 'chunks' or 'text'")
        if "chunks" in data:
            chunks = data["chunks"]
            if not isinstance(chunks, list) or not all(isinstance(c, str) for c in chunks):
                raise ScriptError(f"{where}: 'chunks' must be a list of strings")
        else:
            text, size = data["text"], data.get("chunk_size", 1)
            if not isinstance(text, str):
                raise ScriptError(f"{where}: 'text' must be a string")
            if not isinstance(size, int) or size < 1:
                raise ScriptError(f"{where}: 'chunk_size' must be a positive integer")
            chunks = [text[i : i + size] for i in range(0, len(text), size)]
        finish = data.get("finish_reason", "stop")
        if finish not in ("stop", "length"):
            raise ScriptError(f"{where}: 'finish_reason' must be 'stop' or 'length'")
        delay = data.get("delay_ms", 0)
        if not isinstance(delay, int | float) or delay < 0:
            raise ScriptError(f"{where}: 'delay_ms' must be a non-negative number")
        return cls(tuple(chunks), finish, float(delay))


def load_script(path: Path) -> list[ScriptedResponse]:
    responses = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                data = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ScriptError(f"{where}: invalid JSON: {exc}") from exc
            responses.append(ScriptedResponse.from_json(data, where))
    if not responses:
        raise ScriptError(f"{path}: no responses in the script")
    return responses


class ScriptedBackend(Backend):
    def __init__(
        self,
        responses: list[ScriptedResponse] | None = None,
        *,
        path: str | Path | None = None,
        context_length: int = 202_752,
    ) -> None:
        if (responses is None) == (path is None):
            raise ValueError("give either responses or path")
        self._responses = responses or []
        self._path = Path(path) if path is not None else None
        self._next = 0
        self._context_length = context_length
        self._ready = responses is not None

    async def start(self) -> None:
        if self._path is not None:
            self._responses = await asyncio.to_thread(load_script, self._path)
        self._ready = True

    async def aclose(self) -> None:
        self._ready = False

    @property
    def ready(self) -> bool:
        return self._ready

    @property
    def info(self) -> ModelInfo:
        return ModelInfo(context_length=self._context_length, owned_by="scripted")

    async def count_tokens(self, prompt: str) -> int:
        return _prompt_tokens(prompt)

    def _take(self) -> ScriptedResponse:
        response = self._responses[self._next % len(self._responses)]
        self._next += 1
        return response

    async def generate(self, request: GenerationRequest) -> AsyncIterator[BackendEvent]:
        if not self._ready:
            raise BackendNotReady("the scripted backend has not loaded its script yet")
        response = self._take()
        prompt_tokens = _prompt_tokens(request.prompt)
        yield Started(prompt_tokens)
        stops = StopMatcher((*request.stop_tokens, *request.sampling.stop))
        limit = request.sampling.max_tokens
        reason: FinishReason = response.finish_reason
        produced = 0
        for chunk in response.chunks:
            if limit is not None and produced >= limit:
                reason = "length"
                break
            if response.delay_ms:
                await asyncio.sleep(response.delay_ms / 1000)
            produced += 1
            text = stops.feed(chunk)
            if text:
                yield Chunk(text)
            if stops.stopped:
                reason = "stop"
                break
        tail = stops.flush()
        if tail:
            yield Chunk(tail, tokens=0)
        yield Finished(reason, prompt_tokens, produced, stop_sequence=stops.matched)


def _prompt_tokens(prompt: str) -> int:
    # A rough count (4 characters a token) keeps usage plausible without a tokenizer; usage and
    # count_tokens use the same rule, so they agree.
    return max(1, len(prompt) // 4)
