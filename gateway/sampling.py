"""Sampling routes and the one merge that resolves a request's sampling.

Precedence, lowest first: backend defaults < route defaults < what the client set < route
overrides. Each layer is a mapping of field name to value; a layer only speaks for the fields
it holds, so ``None`` from a client means "not set", never "reset to the engine default".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from backends.sampling import SAMPLING_FIELDS, SamplingParams

from .route_defaults import BUILTIN_ROUTES, GENERAL, TOOLS
from .settings import ModelSettings, RouteSettings

__all__ = [
    "BUILTIN_ROUTES",
    "GENERAL",
    "SAMPLING_FIELDS",
    "TOOLS",
    "ResolvedSampling",
    "merge_sampling",
    "model_routes",
    "resolve_sampling",
    "sampling_dict",
    "select_route",
]


def model_routes(model: ModelSettings) -> dict[str, RouteSettings]:
    """The model's routes: built-ins, with the configured fields laid over them."""
    routes = {
        name: RouteSettings.model_validate(dict(values)) for name, values in BUILTIN_ROUTES.items()
    }
    for name, configured in model.routes.items():
        base = routes.get(name)
        if base is None:
            routes[name] = configured
            continue
        merged = base.model_dump()
        merged.update(configured.model_dump(exclude_unset=True))
        routes[name] = RouteSettings.model_validate(merged)
    return routes


def select_route(offers_tools: bool, pinned: str | None = None) -> str:
    if pinned is not None:
        return pinned
    return TOOLS if offers_tools else GENERAL


def merge_sampling(layers: Sequence[Mapping[str, Any]]) -> SamplingParams:
    """Later layers win; ``None`` values never override."""
    merged: dict[str, Any] = {}
    for layer in layers:
        for name, value in layer.items():
            if name not in SAMPLING_FIELDS:
                raise KeyError(f"unknown sampling field {name!r}")
            if value is not None:
                merged[name] = value
    if "stop" in merged:
        merged["stop"] = tuple(merged["stop"])
    return SamplingParams(**merged)


@dataclass(frozen=True, slots=True)
class ResolvedSampling:
    route: str
    sampling: SamplingParams
    enable_thinking: bool
    clear_thinking: bool


def resolve_sampling(
    client: Mapping[str, Any],
    route_name: str,
    route: RouteSettings,
    backend_defaults: Mapping[str, Any],
    *,
    enable_thinking: bool | None = None,
    clear_thinking: bool | None = None,
) -> ResolvedSampling:
    """Sampling and template switches for one request, by the precedence above.

    ``client`` is the layer of sampling fields the client set; the template switches are the
    client's too (None: the route's default, else on for thinking and clearing).
    """
    sampling = merge_sampling(
        [backend_defaults, route.defaults_layer(), client, route.overrides.layer()]
    )
    if enable_thinking is None:
        enable_thinking = route.chat_template_kwargs.enable_thinking
    if clear_thinking is None:
        clear_thinking = route.chat_template_kwargs.clear_thinking
    return ResolvedSampling(
        route=route_name,
        sampling=sampling,
        enable_thinking=True if enable_thinking is None else enable_thinking,
        clear_thinking=True if clear_thinking is None else clear_thinking,
    )


def sampling_dict(params: SamplingParams) -> dict[str, Any]:
    out = {f: getattr(params, f) for f in SAMPLING_FIELDS if getattr(params, f) not in (None, ())}
    if "stop" in out:
        out["stop"] = list(out["stop"])
    return out
