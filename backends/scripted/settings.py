"""Settings of the scripted backend (canned outputs, for client tests)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ..settings_base import BackendSettingsBase


class ScriptedBackendSettings(BackendSettingsBase):
    type: Literal["scripted"] = "scripted"
    path: str = Field(description="JSONL file of canned raw outputs, one per request, cycling")
    context_length: int = Field(202_752, ge=1)
