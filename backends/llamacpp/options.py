"""How the in-process engine loads and runs a GGUF, and the counters it keeps."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

FlashAttn = Literal["auto", "on", "off"]
CacheType = Literal["f16", "bf16", "f32", "q8_0", "q4_0"]


@dataclass(frozen=True, slots=True)
class LlamaCppOptions:
    """How to load the GGUF; names and meanings follow llama.cpp's own flags."""

    model_path: str
    # Context size in tokens, shared by all sequences (one unified KV cache, so one
    # conversation may use all of it); 0 takes the model's trained context; None fits it to
    # the memory left after the weights (``fit``), keeping ``fit_target_mib`` free.
    n_ctx: int | None = None
    fit_target_mib: int = 1024
    # Sequences decoded together (llama-server's --parallel): the backend's capacity.
    parallel: int = 4
    # Layers offloaded to the GPU; -1 = all. No effect on a CPU-only build.
    n_gpu_layers: int = -1
    # Threads for generation / for prompt processing; None = llama-cpp-python's choice.
    n_threads: int | None = None
    n_threads_batch: int | None = None
    # Logical batch: the most tokens one engine step decodes (one token per decoding
    # sequence plus prompt chunks up to the rest).
    n_batch: int = 2048
    # Physical batch; capped at n_batch.
    n_ubatch: int = 512
    # Prompt tokens one step reads while other sequences are decoding (None: n_ubatch). A
    # step's tokens come out only when the whole step is done, so this bounds the pause a
    # long prompt puts into running streams; alone, a prompt is read n_batch at a time.
    prefill_budget: int | None = None
    flash_attn: FlashAttn = "auto"
    # KV cache type; quantized types need flash attention, and llama.cpp wants V like K.
    cache_type_k: CacheType = "f16"
    use_mmap: bool = True
    use_mlock: bool = False
    # Weights in llama.cpp's extra CPU buffer types (repacked for its faster kernels;
    # llama-server's --no-repack turns it off). None: on, unless this llama.cpp was built
    # with its AMX kernels, which those buffers route weights to and which crash on some
    # machines (llama.cpp #20824).
    repack: bool | None = None
    # Reuse the KV cache of a sequence's common prefix with the new prompt.
    cache_prompt: bool = True
    # Host RAM (MiB) for the KV states of evicted sequences, restored for their next turn;
    # 0 turns it off (llama-server's --cache-ram).
    cache_ram_mib: int = 8192
    # When a request starts, idle sequences' caches move to that RAM cache (llama-server's
    # --cache-idle-slots): a step attends over every used cell up to the highest, so idle
    # conversations left in the KV cache slow the running ones. Needs cache_ram_mib.
    cache_idle: bool = True
    # Text younger than this is held back and streamed with the next tokens (a stream's
    # first few chunks go at once, and a step that reads a prompt hands over what is held):
    # each hand-over costs the event loop and the client CPU that a CPU engine's threads
    # need. 0 streams every token alone.
    stream_interval_ms: int = 40
    # Seed for requests that set none; None = a fresh random seed per request.
    seed: int | None = None
    # llama.cpp's own logging to stderr.
    verbose: bool = False


@dataclass(frozen=True, slots=True)
class LlamaCppStats:
    """Counters since the model loaded (for metrics and tests)."""

    tokens_generated: int = 0
    prompt_tokens_evaluated: int = 0
    prompt_tokens_reused: int = 0
    # Of the reused ones, those shared from another sequence (a common system prompt).
    prompt_tokens_shared: int = 0
    # Of the reused ones, those restored from a state saved in host RAM.
    prompt_tokens_restored: int = 0
    ram_cache_bytes: int = 0
    ram_cache_states: int = 0
    # Admissions that restored a saved state / that did not (with the RAM cache on).
    ram_cache_hits: int = 0
    ram_cache_misses: int = 0
    # States dropped to stay within the budget.
    ram_cache_evictions: int = 0
    # KV cells the sequences hold (a cell shared by two sequences counts twice) / total.
    kv_cells_used: int = 0
    kv_cells_total: int = 0
    sequences_busy: int = 0
    # Engine steps (llama_decode calls) and the largest number of sequences in one.
    steps: int = 0
    max_sequences_per_step: int = 0
