"""Sampling routes and the one merge that resolves a request's sampling.

Precedence, lowest first: backend defaults < route defaults < what the client set. Each layer
is a mapping of field name to value; a layer only speaks for the fields it holds, so ``None``
from a client means "not set", never "reset to the engine default".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import fields
from types import MappingProxyType
from typing import Any

from backends.base import SamplingParams

from .protocol import ChatCompletionRequest

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


def select_route(request: ChatCompletionRequest) -> str:
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
