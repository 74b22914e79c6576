"""Which served model a requested name runs on.

A served model or alias is used as it is. Otherwise the operator's ``model_map`` patterns
are tried in order, then any Claude id (``claude-...``) goes to ``default_model`` (or the
first configured model). Other names are a 404, as for every API.
"""

from __future__ import annotations

from fnmatch import fnmatchcase

from ...errors import ModelNotFoundError
from ...models import ModelRegistry
from .settings import AnthropicSettings


def served_name(registry: ModelRegistry, settings: AnthropicSettings, requested: str) -> str:
    try:
        registry.resolve(requested)
        return requested
    except ModelNotFoundError as exc:
        unknown = exc
    lowered = requested.lower()
    target: str | None = None
    for pattern, mapped in settings.model_map.items():
        if fnmatchcase(lowered, pattern.lower()):
            target = mapped
            break
    if target is None and lowered.startswith("claude"):
        target = settings.default_model or next((m.id for m in registry), None)
    if target is None:
        raise unknown
    try:
        registry.resolve(target)
    except ModelNotFoundError:
        raise ModelNotFoundError(
            f"The model {requested!r} maps to {target!r}, which is not served; check the "
            "anthropic settings (default_model, model_map).",
            param="model",
        ) from None
    return target
