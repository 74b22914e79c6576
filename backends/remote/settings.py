"""Settings of the remote backend (HTTP to one or more OpenAI-completions servers)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ..settings_base import BackendSettingsBase, StrictSettings

EngineName = Literal["vllm", "llama-server", "sglang"]
RoutingName = Literal["affinity", "least-loaded"]


class RemoteReplicaSettings(StrictSettings):
    url: str = Field(description="Base URL of the engine's OpenAI server, e.g. http://vllm:8000")
    api_key: str | None = Field(None, description="Sent as a bearer token to this replica")
    connect_timeout: float | None = Field(None, gt=0, description="Overrides the backend's")
    read_timeout: float | None = Field(None, gt=0, description="Overrides the backend's")


class RemoteBackendSettings(BackendSettingsBase):
    # "vllm" is this backend's old name, kept working; it means engine: vllm.
    type: Literal["remote", "vllm"] = "remote"
    engine: EngineName = Field("vllm", description="What serves /v1/completions upstream")
    replicas: list[RemoteReplicaSettings] = Field(min_length=1)
    model: str = Field(description="The model name the servers serve (e.g. --served-model-name)")
    connect_timeout: float = Field(10.0, gt=0)
    # Between two chunks of a stream, or for a whole non-streamed upstream answer.
    read_timeout: float = Field(600.0, gt=0)
    health_interval: float = Field(5.0, gt=0, description="Seconds between /health checks")
    # None: read the context length from the replicas (/v1/models).
    context_length: int | None = Field(None, ge=1)
    # None: affinity with more than one replica (one replica has nothing to choose).
    routing: RoutingName | None = Field(
        None, description="affinity: a conversation stays on its replica; least-loaded: not"
    )
    affinity_balance: float = Field(
        0.25,
        ge=0,
        description="e in the load bound: no replica above (1 + e) x the mean in flight",
    )
