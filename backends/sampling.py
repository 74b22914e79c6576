"""The one definition of each sampling field and its bounds.

Request models of every wire API and the settings use these types, and ``SamplingParams``
carries the resolved values to the engine, so a bound is written once.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Annotated

from pydantic import Field

Temperature = Annotated[float, Field(ge=0.0, le=2.0)]
TopP = Annotated[float, Field(ge=0.0, le=1.0)]
# -1 and 0 both mean "off", as in llama.cpp and vLLM.
TopK = Annotated[int, Field(ge=-1)]
MinP = Annotated[float, Field(ge=0.0, le=1.0)]
RepeatPenalty = Annotated[float, Field(gt=0.0)]
Penalty = Annotated[float, Field(ge=-2.0, le=2.0)]
Seed = int
MaxTokens = Annotated[int, Field(ge=1)]
# OpenAI allows four stop sequences; engines take more, and some clients send a dozen.
StopList = Annotated[list[str], Field(max_length=16)]


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """Resolved sampling for one request; ``None`` leaves the engine's own default."""

    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    repeat_penalty: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    seed: int | None = None
    max_tokens: int | None = None
    stop: tuple[str, ...] = ()


SAMPLING_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(SamplingParams))
