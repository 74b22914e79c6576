"""HTTP to one or more servers of an OpenAI-completions engine (vLLM, llama-server, SGLang):
how the gateway scales past one machine."""

from __future__ import annotations

from ..registry import BackendType
from .backend import RemoteBackend
from .replicas import RemoteReplica, ReplicaStatus
from .settings import RemoteBackendSettings, RemoteReplicaSettings

__all__ = [
    "BACKEND",
    "RemoteBackend",
    "RemoteBackendSettings",
    "RemoteReplica",
    "RemoteReplicaSettings",
    "ReplicaStatus",
]


def _build(settings: RemoteBackendSettings) -> RemoteBackend:
    return RemoteBackend.from_settings(settings)


BACKEND = BackendType(
    name="remote", settings=RemoteBackendSettings, build=_build, aliases=("vllm",)
)
