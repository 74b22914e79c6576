"""Settings of the Anthropic Messages API: which served model a Claude model id runs on.

Claude Code asks for Claude ids (``claude-opus-...``, ``claude-haiku-4-5-20251001``) unless
told otherwise, and sends its background and subagent work to the haiku tier. An operator maps
those ids onto served models here, so Claude Code works with no ``--model`` and its small
requests can go to a smaller model or a differently-routed alias.

Imports nothing of the gateway: ``gateway.settings`` embeds this model.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator


class AnthropicSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Where a Claude model id (a name starting with "claude") goes when no pattern below
    # matches; None: the first configured model.
    default_model: str | None = Field(
        None, description="Served model or alias for Claude model ids; default: the first model"
    )
    # Glob patterns (fnmatch, case-insensitive) over the requested name, tried in order, the
    # first match wins: {"claude-haiku-*": "glm-4.7-flash:general", "*opus*": "big"}. A name
    # that is itself a served model or alias is never mapped.
    model_map: dict[str, str] = Field(default_factory=dict)

    @field_validator("model_map")
    @classmethod
    def _no_blank(cls, value: dict[str, str]) -> dict[str, str]:
        for pattern, target in value.items():
            if not pattern.strip() or not target.strip():
                raise ValueError("model_map patterns and targets must not be empty")
        return value
