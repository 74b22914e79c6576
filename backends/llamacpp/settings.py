"""Settings of the in-process llama.cpp backend."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from ..settings_base import BackendSettingsBase
from .options import CacheType, FlashAttn


class LlamaCppBackendSettings(BackendSettingsBase):
    type: Literal["llamacpp"] = "llamacpp"
    model: str = Field(
        description="A .gguf path, owner/repo/file.gguf or owner/repo:QUANT (Hugging Face)"
    )
    n_ctx: int | None = Field(
        None,
        ge=0,
        description="Context size; 0 uses the model's trained context; unset fits it to the "
        "memory left after the weights, capped by the trained context",
    )
    fit_target_mib: int = Field(
        1024, ge=0, description="MiB left free when the context is fitted (n_ctx unset)"
    )
    n_gpu_layers: int = Field(-1, description="Layers offloaded to the GPU; -1 offloads all")
    threads: int | None = Field(None, ge=1, description="Generation threads")
    # Prompt-processing threads; defaults to ``threads`` as llama-server's -tb does. Left to
    # llama-cpp-python, it takes every core, which on a shared machine is much slower.
    threads_batch: int | None = Field(None, ge=1)
    parallel: int = Field(
        4, ge=1, le=64, description="Sequences decoded together in one unified KV cache"
    )
    n_batch: int = Field(2048, ge=1, description="Most tokens one engine step decodes")
    n_ubatch: int = Field(512, ge=1)
    prefill_budget: int | None = Field(
        None,
        ge=1,
        description="Prompt tokens one step reads while other sequences decode (unset: "
        "n_ubatch); bounds the pause a long prompt puts into running streams",
    )
    flash_attn: FlashAttn = "auto"
    repack: bool | None = Field(
        None,
        description="Repack weights for llama.cpp's faster CPU kernels (llama-server's "
        "--no-repack turns it off); unset: on, but off for a llama.cpp built with its AMX "
        "kernels, which crash on some machines (llama.cpp #20824)",
    )
    # V follows K (GLM's MLA cache holds K only); a quantized cache needs flash attention.
    cache_type_k: CacheType = "f16"
    cache_ram_mib: int = Field(
        8192,
        ge=0,
        description="Host RAM (MiB) for evicted sequences' KV states, restored for their next "
        "turn; 0 turns it off",
    )
    cache_idle: bool = Field(
        True,
        description="When a request starts, move idle sequences' caches to the RAM cache "
        "(restored with their next turn): idle cells in the KV cache slow every decoding step",
    )
    stream_interval_ms: int = Field(
        40,
        ge=0,
        le=1000,
        description="Streamed text younger than this (ms) goes out with the next tokens, "
        "fewer and larger events; a stream's first tokens go at once; 0 sends every token alone",
    )
    verbose: bool = False
