"""Sampling routes and the one merge that resolves a request's sampling.

Precedence, lowest first: backend defaults < route defaults < what the client set < route
overrides. Each layer is a mapping of field name to value; a layer only speaks for the fields
it holds, so ``None`` from a client means "not set", never "reset to the engine default".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from backends.base import SamplingParams

from .protocol import ChatCompletionRequest

if TYPE_CHECKING:
    from .settings import ModelSettings, RouteSettings

SAMPLING_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(SamplingParams))

GENERAL = "general"
TOOLS = "tools"

# FORMAT.md section 4: Z.ai's recommendations. min_p 0.01 replaces llama.cpp's own 0.05 and
# the repeat penalty is off; both are harmless on engines that already default to them.
BUILTIN_ROUTES: Mapping[str, Mapping[str, Any]] = MappingProxyType(
    {
        GENERAL: MappingProxyType(
            {"temperature": 1.0, "top_p": 0.95, "min_p": 0.01, "repeat_penalty": 1.0}
        ),
        TOOLS: MappingProxyType(
            {"temperature": 0.7, "top_p": 1.0, "min_p": 0.01, "repeat_penalty": 1.0}
        ),
    }
)


def model_routes(model: ModelSettings) -> dict[str, RouteSettings]:
    """The model's routes: built-ins, with the configured fields laid over them."""
    from .settings import RouteSettings

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


def select_route(request: ChatCompletionRequest, pinned: str | None = None) -> str:
    if pinned is not None:
        return pinned
    if request.tools and request.tool_choice != "none":
        return TOOLS
    return GENERAL


def client_sampling(request: ChatCompletionRequest) -> dict[str, Any]:
    """The sampling fields the client actually set."""
    layer: dict[str, Any] = {
        name: getattr(request, name)
        for name in (
            "temperature",
            "top_p",
            "top_k",
            "min_p",
            "repeat_penalty",
            "presence_penalty",
            "frequency_penalty",
            "seed",
        )
        if getattr(request, name) is not None
    }
    max_tokens = request.max_completion_tokens or request.max_tokens
    if max_tokens is not None:
        layer["max_tokens"] = max_tokens
    if request.stop is not None:
        layer["stop"] = request.stop_list
    return layer


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
    request: ChatCompletionRequest,
    route_name: str,
    route: RouteSettings,
    backend_defaults: Mapping[str, Any],
) -> ResolvedSampling:
    """Sampling and template switches for one request, by the precedence above."""
    sampling = merge_sampling(
        [
            backend_defaults,
            route.defaults_layer(),
            client_sampling(request),
            route.overrides.layer(),
        ]
    )
    # Template switches: route default < client; reasoning_effort "none" is the client's too.
    enable_thinking = route.chat_template_kwargs.enable_thinking
    clear_thinking = route.chat_template_kwargs.clear_thinking
    if request.reasoning_effort is not None:
        enable_thinking = request.reasoning_effort != "none"
    kwargs = request.chat_template_kwargs
    if kwargs is not None:
        if kwargs.enable_thinking is not None:
            enable_thinking = kwargs.enable_thinking
        if kwargs.clear_thinking is not None:
            clear_thinking = kwargs.clear_thinking
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
