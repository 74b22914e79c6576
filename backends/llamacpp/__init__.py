"""The in-process llama.cpp engine (llama-cpp-python), the embedded default."""

from __future__ import annotations

from ..registry import BackendType
from .backend import LlamaCppBackend
from .model_source import ModelSourceError, resolve_model
from .options import LlamaCppOptions, LlamaCppStats
from .settings import LlamaCppBackendSettings

__all__ = [
    "BACKEND",
    "LlamaCppBackend",
    "LlamaCppBackendSettings",
    "LlamaCppOptions",
    "LlamaCppStats",
    "ModelSourceError",
    "resolve_model",
]


def _build(settings: LlamaCppBackendSettings) -> LlamaCppBackend:
    # A Hugging Face spec downloads here, once, with a progress bar, before serving.
    return LlamaCppBackend(
        LlamaCppOptions(
            model_path=str(resolve_model(settings.model)),
            n_ctx=settings.n_ctx,
            fit_target_mib=settings.fit_target_mib,
            n_gpu_layers=settings.n_gpu_layers,
            n_threads=settings.threads,
            n_threads_batch=settings.threads_batch or settings.threads,
            parallel=settings.parallel,
            n_batch=settings.n_batch,
            n_ubatch=settings.n_ubatch,
            prefill_budget=settings.prefill_budget,
            flash_attn=settings.flash_attn,
            repack=settings.repack,
            cache_type_k=settings.cache_type_k,
            cache_ram_mib=settings.cache_ram_mib,
            cache_idle=settings.cache_idle,
            stream_interval_ms=settings.stream_interval_ms,
            verbose=settings.verbose,
        )
    )


BACKEND = BackendType(
    name="llamacpp",
    settings=LlamaCppBackendSettings,
    build=_build,
    model_flag="model",
    suffixes=(".gguf",),
)
