"""The built-in sampling routes (FORMAT.md section 4: Z.ai's recommendations)."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

GENERAL = "general"
TOOLS = "tools"

# min_p 0.01 replaces llama.cpp's own 0.05 and the repeat penalty is off; both are harmless on
# engines that already default to them.
BUILTIN_ROUTES: Mapping[str, Mapping[str, Any]] = MappingProxyType(
    {
        GENERAL: MappingProxyType(
            {"temperature": 1.0, "top_p": 0.95, "min_p": 0.01, "repeat_penalty": 1.0}
        ),
        TOOLS: MappingProxyType(
            {
                "temperature": 0.7,
                "top_p": 1.0,
                "min_p": 0.01,
                "repeat_penalty": 1.0,
                # Agents' clients drop reasoning_content; the tool loop needs it back.
                "preserve_thinking": True,
                # Earlier turns' reasoning stays in the prompt (preserved thinking): the next
                # turn's prompt then extends the last one and the engine reuses its cache
                # (docs/BENCHMARKS.md, "Agent features": 8 tokens to prefill instead of 41).
                "chat_template_kwargs": {"clear_thinking": False},
            }
        ),
    }
)
