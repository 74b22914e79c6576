"""The base of every backend's settings model."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class StrictSettings(BaseModel):
    # A typo in a config key must be an error, not a silently ignored setting.
    model_config = ConfigDict(extra="forbid")


class BackendSettingsBase(StrictSettings):
    #: The engine's registered name; each subclass narrows it to a Literal (the discriminator).
    type: str
