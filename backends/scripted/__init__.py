"""Canned raw outputs replayed as a backend, for client and protocol tests."""

from __future__ import annotations

from ..registry import BackendType
from .backend import ScriptedBackend, ScriptedResponse, ScriptError, load_script
from .settings import ScriptedBackendSettings

__all__ = [
    "BACKEND",
    "ScriptError",
    "ScriptedBackend",
    "ScriptedBackendSettings",
    "ScriptedResponse",
    "load_script",
]


def _build(settings: ScriptedBackendSettings) -> ScriptedBackend:
    return ScriptedBackend(path=settings.path, context_length=settings.context_length)


BACKEND = BackendType(
    name="scripted",
    settings=ScriptedBackendSettings,
    build=_build,
    model_flag="path",
    suffixes=(".jsonl",),
)
