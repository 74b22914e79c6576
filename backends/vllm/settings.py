"""Settings of the vLLM backend (HTTP to one or more ``vllm serve``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ..settings_base import BackendSettingsBase, StrictSettings


class VllmReplicaSettings(StrictSettings):
    url: str = Field(description="Base URL of a vLLM OpenAI server, e.g. http://vllm:8000")
    api_key: str | None = Field(None, description="Sent as a bearer token to this replica")
    connect_timeout: float | None = Field(None, gt=0, description="Overrides the backend's")
    read_timeout: float | None = Field(None, gt=0, description="Overrides the backend's")


class VllmBackendSettings(BackendSettingsBase):
    type: Literal["vllm"] = "vllm"
    replicas: list[VllmReplicaSettings] = Field(min_length=1)
    model: str = Field(description="The model name the vLLM servers serve (--served-model-name)")
    connect_timeout: float = Field(10.0, gt=0)
    # Between two chunks of a stream, or for a whole non-streamed upstream answer.
    read_timeout: float = Field(600.0, gt=0)
    health_interval: float = Field(5.0, gt=0, description="Seconds between /health checks")
    # None: read max_model_len from the replicas' /v1/models.
    context_length: int | None = Field(None, ge=1)
