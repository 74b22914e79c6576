"""A programmable backend for unit tests and fault injection.

Not a substitute for a real engine in tests of features (those use llama.cpp or vLLM): it exists
to make the failures that real engines rarely produce on demand: an error mid-stream, a hang, a
slow start, and to count what the gateway did with it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

from .base import Backend, BackendEvent, Chunk, Finished, GenerationRequest, ModelInfo, Started
from .errors import BackendError


class FakeBackend(Backend):
    def __init__(
        self,
        chunks: Sequence[str] = ("Thinking.</think>", "Hello", " there!"),
        *,
        chunk_delay: float = 0.0,
        start_delay: float = 0.0,
        fail_at_start: Exception | None = None,
        fail_after: int | None = None,
        hang_after: int | None = None,
        prompt_tokens: int = 10,
        max_concurrency: int | None = None,
        context_length: int = 4096,
        supports_grammar: bool = False,
    ) -> None:
        self.chunks = tuple(chunks)
        self.chunk_delay = chunk_delay
        self.start_delay = start_delay
        self.fail_at_start = fail_at_start
        self.fail_after = fail_after
        self.hang_after = hang_after
        self.prompt_tokens = prompt_tokens
        self.max_concurrency = max_concurrency
        self.supports_grammar = supports_grammar
        self._context_length = context_length
        self._ready = False
        # What the gateway did, for assertions.
        self.requests: list[GenerationRequest] = []
        self.active = 0
        self.peak_active = 0
        self.closed_early = 0

    async def start(self) -> None:
        self._ready = True

    async def aclose(self) -> None:
        self._ready = False

    @property
    def ready(self) -> bool:
        return self._ready

    @property
    def info(self) -> ModelInfo:
        return ModelInfo(context_length=self._context_length, owned_by="fake")

    async def generate(self, request: GenerationRequest) -> AsyncIterator[BackendEvent]:
        self.requests.append(request)
        self.active += 1
        self.peak_active = max(self.peak_active, self.active)
        finished = False
        try:
            if self.start_delay:
                await asyncio.sleep(self.start_delay)
            if self.fail_at_start is not None:
                raise self.fail_at_start
            yield Started(self.prompt_tokens)
            for i, text in enumerate(self.chunks):
                if self.fail_after is not None and i >= self.fail_after:
                    raise BackendError("the fake engine failed mid-stream")
                if self.hang_after is not None and i >= self.hang_after:
                    await asyncio.Event().wait()
                if self.chunk_delay:
                    await asyncio.sleep(self.chunk_delay)
                yield Chunk(text)
            finished = True
            yield Finished("stop", self.prompt_tokens, len(self.chunks))
        finally:
            self.active -= 1
            if not finished:
                self.closed_early += 1
