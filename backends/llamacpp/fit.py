"""The default context size: what the KV cache can hold in the memory left after the weights.

Like llama-server's ``--fit`` (its ``--fit-target`` margin of 1024 MiB, ``--fit-ctx`` floor of
4096): once the weights are loaded, the context is as many tokens as fit in the free memory of
where the cache lives (the GPUs when layers are offloaded, else host RAM less the RAM prompt
cache and the mmap'd weights), less the margin, capped by the trained context. The KV bytes per
token are measured, not derived from the GGUF: a probe context reads a few tokens and the
growth of its saved state is the cache row of one token in every layer, whatever the attention
(GLM-4.7-Flash's MLA cache holds K only, which an estimate from the K and V head sizes would
overcount by 89%).
"""

from __future__ import annotations

import ctypes
import importlib
import os
from dataclasses import dataclass
from typing import Any

FIT_TARGET_MIB = 1024
FIT_MIN_CTX = 4096
# Contexts are cut to a multiple of this (llama.cpp pads the cache to 256 cells anyway).
FIT_ALIGN = 256
_PROBE = 16
_GPU_TYPES = (1, 2)  # GGML_BACKEND_DEVICE_TYPE_GPU, _IGPU


@dataclass(frozen=True, slots=True)
class ContextFit:
    n_ctx: int
    kv_bytes_per_token: int
    free_bytes: int
    where: str  # "gpu" | "host"

    def describe(self) -> dict[str, object]:
        return {
            "kv_bytes_per_token": self.kv_bytes_per_token,
            "free_bytes": self.free_bytes,
            "memory": self.where,
        }


def fit_context(
    per_token: int, free: int, *, margin: int, n_ctx_train: int, floor: int = FIT_MIN_CTX
) -> int:
    """The largest aligned context whose cache fits ``free - margin`` bytes, within bounds."""
    n = max(free - margin, 0) // max(per_token, 1) // FIT_ALIGN * FIT_ALIGN
    cap = n_ctx_train if n_ctx_train > 0 else None
    if cap is not None:
        n = min(n, cap)
        floor = min(floor, cap)
    return max(n, floor)


def kv_bytes_per_token(lib: Any, model: Any, cparams: Any) -> int:
    """The cache bytes one token takes, measured on a small context with the same settings."""
    probe = lib.llama_context_default_params()
    for name in ("flash_attn_type", "type_k", "type_v", "n_threads", "n_threads_batch"):
        setattr(probe, name, getattr(cparams, name))
    probe.n_ctx = 256
    probe.n_batch = probe.n_ubatch = _PROBE
    probe.n_seq_max = 1
    probe.kv_unified = True
    probe.no_perf = True
    ctx = lib.llama_init_from_model(model, probe)
    if not ctx:
        raise RuntimeError("llama.cpp could not create a probe context")
    batch = lib.llama_batch_init(_PROBE, 0, 1)
    try:
        sizes = []
        for start in (0, _PROBE):
            for i in range(_PROBE):
                batch.token[i] = i
                batch.pos[i] = start + i
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = 0
                batch.logits[i] = i == _PROBE - 1
            batch.n_tokens = _PROBE
            if int(lib.llama_decode(ctx, batch)) != 0:
                raise RuntimeError("llama.cpp could not decode the probe batch")
            sizes.append(int(lib.llama_state_seq_get_size(ctx, 0)))
        return max((sizes[1] - sizes[0]) // _PROBE, 1)
    finally:
        lib.llama_batch_free(batch)
        lib.llama_free(ctx)


def free_memory(
    model_bytes: int, *, offloaded: bool, use_mmap: bool, host_reserved: int
) -> tuple[int, str]:
    """Free bytes where the KV cache will live, and which memory that is."""
    if offloaded:
        gpu = _gpu_free()
        if gpu is not None:
            return gpu, "gpu"
    free = _host_available()
    if use_mmap:
        # Mapped weights sit in the page cache, which MemAvailable counts as free.
        free -= model_bytes
    return max(free - host_reserved, 0), "host"


def _gpu_free() -> int | None:
    try:
        ggml: Any = importlib.import_module("llama_cpp._ggml").libggml
        count = ggml.ggml_backend_dev_count
        get = ggml.ggml_backend_dev_get
        dev_type = ggml.ggml_backend_dev_type
        memory = ggml.ggml_backend_dev_memory
    except (ImportError, AttributeError, OSError):
        return None
    count.restype = ctypes.c_size_t
    get.argtypes, get.restype = [ctypes.c_size_t], ctypes.c_void_p
    dev_type.argtypes, dev_type.restype = [ctypes.c_void_p], ctypes.c_int
    size_p = ctypes.POINTER(ctypes.c_size_t)
    memory.argtypes, memory.restype = [ctypes.c_void_p, size_p, size_p], None
    total_free, found = 0, False
    for i in range(int(count())):
        dev = get(i)
        if dev and int(dev_type(dev)) in _GPU_TYPES:
            free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
            memory(dev, ctypes.byref(free), ctypes.byref(total))
            total_free += int(free.value)
            found = True
    return total_free if found else None


def _host_available() -> int:
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
