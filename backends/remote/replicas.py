"""The replicas: how each is reached, and what the backend knows of it."""

from __future__ import annotations

from dataclasses import dataclass

from .http import Timeouts


@dataclass(frozen=True, slots=True)
class RemoteReplica:
    """One OpenAI-completions server, with its timeouts already resolved (replica over
    backend)."""

    url: str
    api_key: str | None = None
    connect_timeout: float = 10.0
    read_timeout: float = 600.0


@dataclass(slots=True)
class ReplicaState:
    index: int
    replica: RemoteReplica
    # How the engine names itself to clients ("vLLM", "llama-server").
    label: str = "vLLM"
    healthy: bool = False
    in_flight: int = 0
    # From the replica's /v1/models; None until read.
    max_model_len: int | None = None
    # Requests sent here, and of those, how many the affinity rule sent (for info and tests).
    routed: int = 0
    affine: int = 0

    @property
    def name(self) -> str:
        # What clients may see: the replica's position, never its URL (an internal address).
        return f"{self.label} replica {self.index + 1}"

    @property
    def base(self) -> str:
        return self.replica.url.rstrip("/")

    def headers(self) -> dict[str, str]:
        key = self.replica.api_key
        return {"Authorization": f"Bearer {key}"} if key else {}

    def timeout(self) -> Timeouts:
        return Timeouts(connect=self.replica.connect_timeout, read=self.replica.read_timeout)


@dataclass(frozen=True, slots=True)
class ReplicaStatus:
    """A snapshot of one replica, for ``info``, metrics and tests."""

    url: str
    healthy: bool
    in_flight: int
    max_model_len: int | None
    routed: int = 0
    affine: int = 0
