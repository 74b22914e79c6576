"""The Responses API's per-app state: its store and its sealing key (built in create_app)."""

from __future__ import annotations

from dataclasses import dataclass

from .sealing import Sealer
from .settings import ResponsesSettings
from .store import ResponseStore


@dataclass(slots=True)
class ResponsesState:
    store: ResponseStore
    sealer: Sealer

    @classmethod
    def from_settings(cls, settings: ResponsesSettings) -> ResponsesState:
        key = settings.encryption_key
        return cls(
            store=ResponseStore(settings),
            sealer=Sealer(key.get_secret_value() if key is not None else None),
        )
