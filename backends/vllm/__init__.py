"""HTTP to one or more ``vllm serve`` replicas: how the gateway scales past one machine."""

from __future__ import annotations

from ..registry import BackendType
from .backend import VllmBackend
from .replicas import ReplicaStatus, VllmReplica
from .settings import VllmBackendSettings, VllmReplicaSettings

__all__ = [
    "BACKEND",
    "ReplicaStatus",
    "VllmBackend",
    "VllmBackendSettings",
    "VllmReplica",
    "VllmReplicaSettings",
]


def _build(settings: VllmBackendSettings) -> VllmBackend:
    return VllmBackend.from_settings(settings)


BACKEND = BackendType(name="vllm", settings=VllmBackendSettings, build=_build)
