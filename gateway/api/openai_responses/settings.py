"""Settings of the Responses API: the response store's bounds and the reasoning sealing key."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, SecretStr


class ResponsesSettings(BaseModel):
    # A typo in a config key must be an error, not a silently ignored setting.
    model_config = ConfigDict(extra="forbid")

    # The in-memory store behind previous_response_id, GET and item_reference. The oldest
    # responses go first when any bound is reached; 0 responses turns storing off.
    store_max_responses: int = Field(1000, ge=0)
    store_max_bytes: int = Field(256 * 1024 * 1024, ge=0)
    store_max_age: float = Field(6 * 3600.0, gt=0, description="Seconds a response is kept")
    # Seals reasoning into ``encrypted_content``. Unset: a random key per process, so sealed
    # reasoning from before a restart is refused; set it to keep agent sessions across restarts.
    encryption_key: SecretStr | None = None
