"""Backends register themselves: each package under ``backends/`` that exposes ``BACKEND``.

A ``BackendType`` names the engine (the ``type`` in settings), its settings model and its
factory. The gateway builds its settings union and the CLI's ``--backend`` choices from
``backend_types()``, so a new engine touches its own package only.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from .base import Backend
from .settings_base import BackendSettingsBase


@dataclass(frozen=True, slots=True)
class BackendType:
    name: str
    # A pydantic model with ``type: Literal[name]``; extra keys are errors.
    settings: type[BackendSettingsBase]
    # Builds the (not yet started) backend; may resolve or download model files.
    build: Callable[[Any], Backend]
    # Other ``type`` values accepted for this engine (old names kept working).
    aliases: tuple[str, ...] = field(default=())
    # What ``--model PATH`` on the command line means for this engine, if anything: the
    # settings key the path goes to, and the file suffixes that select it by default.
    model_flag: str | None = None
    suffixes: tuple[str, ...] = ()


@cache
def backend_types() -> tuple[BackendType, ...]:
    """Every registered engine, in a stable order (cached: the set of packages is fixed)."""
    import backends

    found: list[BackendType] = []
    for module in sorted(pkgutil.iter_modules(backends.__path__), key=lambda m: m.name):
        if not module.ispkg:
            continue
        package = importlib.import_module(f"backends.{module.name}")
        spec = getattr(package, "BACKEND", None)
        if isinstance(spec, BackendType):
            found.append(spec)
    return tuple(found)


def backend_type(name: str) -> BackendType:
    for spec in backend_types():
        if name == spec.name or name in spec.aliases:
            return spec
    raise KeyError(name)


def build_backend(settings: BackendSettingsBase) -> Backend:
    """The backend for one model's ``backend`` settings."""
    return backend_type(settings.type).build(settings)
