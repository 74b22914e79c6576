"""The Responses API request body: top-level fields typed, unknown fields ignored.

``input`` items and ``tools`` are read by hand in ``items`` and ``tools``: their variants are
many, and the errors there name the exact item (``input[3].content[0].type``).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from backends.sampling import MaxTokens, Temperature, TopP

Effort = Literal["none", "minimal", "low", "medium", "high", "xhigh"]


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


class Reasoning(_Lenient):
    effort: Effort | None = None
    summary: Literal["auto", "concise", "detailed"] | None = None
    # The older name of ``summary``.
    generate_summary: Literal["auto", "concise", "detailed"] | None = None


class TextConfig(_Lenient):
    format: dict[str, Any] | None = None
    verbosity: Literal["low", "medium", "high"] | None = None


class ResponsesRequest(_Lenient):
    model: str
    input: str | list[Any] = Field(default_factory=list)
    instructions: str | None = None
    previous_response_id: str | None = None
    store: bool | None = None
    stream: bool | None = False
    tools: list[Any] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    reasoning: Reasoning | None = None
    text: TextConfig | None = None
    max_output_tokens: MaxTokens | None = None
    temperature: Temperature | None = None
    top_p: TopP | None = None
    include: list[str] | None = None
    prompt_cache_key: str | None = None
    metadata: dict[str, str] | None = None
    user: str | None = None
    safety_identifier: str | None = None
    service_tier: str | None = None
    truncation: Literal["auto", "disabled"] | None = None
    client_metadata: dict[str, Any] | None = None
    max_tool_calls: int | None = Field(None, ge=1)
    # Refused when set: the gateway has no background jobs, conversations or prompt templates.
    background: bool | None = None
    conversation: str | dict[str, Any] | None = None
    prompt: dict[str, Any] | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)

    @property
    def summary(self) -> str | None:
        if self.reasoning is None:
            return None
        return self.reasoning.summary or self.reasoning.generate_summary
