"""The backend interface.

A backend turns a rendered prompt into raw text chunks. It knows nothing of GLM syntax: the
gateway renders the prompt and parses the output. The stream a backend yields is

    Started, Chunk*, Finished

``Started`` comes once the request has been admitted and validated (prompt tokenized, context
checked, engine acquired), before any token is produced, so the HTTP layer can still answer a
proper status code for errors raised before it. Errors are ``backends.errors.BackendError``
subclasses; the gateway maps them to statuses. Closing the async iterator early (client gone)
must stop the generation promptly and free the engine.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

from .sampling import SamplingParams

__all__ = [
    "Backend",
    "BackendEvent",
    "Chunk",
    "EngineMetric",
    "FinishReason",
    "Finished",
    "GenerationRequest",
    "ModelInfo",
    "SamplingParams",
    "Started",
]

FinishReason = Literal["stop", "length"]


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    prompt: str
    sampling: SamplingParams
    # Special-token texts that end generation (e.g. GLM's ``<|user|>``) on top of the model's own
    # end-of-generation tokens. They never appear in the output.
    stop_tokens: tuple[str, ...] = ()
    # A GBNF grammar the whole output must match (constrained tool calls, JSON output). Only
    # sent to backends whose ``supports_grammar`` is true; the gateway refuses it otherwise.
    grammar: str | None = None
    request_id: str = ""
    # A stable id of the conversation (session id, prompt-cache key), from the API layer: a
    # placement hint for engines with several cached sequences or replicas, never a
    # substitute for matching the prompt itself.
    conversation_key: str | None = None
    # How many leading characters of ``prompt`` stay the same over the conversation's turns
    # (system prompt, tools, first user message); 0: unknown. Without a conversation key, a
    # hash of that part stands in for one (replica affinity).
    stable_prefix: int = 0
    # Seconds the engine may keep the request waiting for room (KV cache, sequences) before
    # refusing it with ``BackendUnavailable(code="queue_timeout")``; None waits as long as
    # it takes. The gateway passes what is left of its admission ``max_wait``.
    max_queue_wait: float | None = None


@dataclass(frozen=True, slots=True)
class Started:
    prompt_tokens: int
    # Prompt tokens whose cached state the engine reused rather than evaluating them.
    cached_tokens: int = 0


@dataclass(frozen=True, slots=True)
class Chunk:
    text: str
    # Tokens this chunk stands for, so the gateway can attribute tokens to reasoning.
    tokens: int = 1


@dataclass(frozen=True, slots=True)
class Finished:
    reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    # Prompt tokens reused from a cache, where only known once the prompt was read.
    cached_tokens: int = 0
    # The client's stop string that ended the generation, if one did.
    stop_sequence: str | None = None


BackendEvent = Started | Chunk | Finished


@dataclass(frozen=True, slots=True)
class EngineMetric:
    """One engine number for Prometheus (``glm_gateway_engine_<name>``, labelled by model)."""

    name: str
    help: str
    value: float
    # A total that only grows (exported as a counter, ``_total`` added), else a gauge.
    counter: bool = False


@dataclass(frozen=True, slots=True)
class ModelInfo:
    context_length: int | None = None
    owned_by: str = "glm-gateway"
    extra: dict[str, object] = field(default_factory=dict)


class Backend(abc.ABC):
    """One loaded model. ``start`` loads it; ``ready`` says whether it can serve."""

    #: Whether ``GenerationRequest.grammar`` is enforced.
    supports_grammar: bool = False
    #: Generations it runs at once (its capacity); the gateway's admission gate, the one
    #: queue per model, holds the rest. None: no limit of its own.
    max_concurrency: int | None = None
    #: The lowest sampling layer: what this engine needs unless a route or client says else.
    sampling_defaults: Mapping[str, Any] = MappingProxyType({})

    @abc.abstractmethod
    async def start(self) -> None: ...

    @abc.abstractmethod
    async def aclose(self) -> None: ...

    @property
    @abc.abstractmethod
    def ready(self) -> bool: ...

    @property
    @abc.abstractmethod
    def info(self) -> ModelInfo: ...

    def engine_metrics(self) -> list[EngineMetric]:
        """The engine's own numbers (cache use, tokens read); none by default."""
        return []

    @abc.abstractmethod
    def generate(self, request: GenerationRequest) -> AsyncIterator[BackendEvent]:
        """Yield ``Started``, then ``Chunk``s, then exactly one ``Finished``."""

    async def count_tokens(self, prompt: str) -> int | None:
        """The prompt's length in tokens, as ``Started.prompt_tokens`` would report it, without
        generating (and without a place in line); None: this backend cannot tell."""
        return None
