"""The loaded GGUF and its context, through llama-cpp-python's low-level API.

llama-cpp-python is an optional, untyped dependency: it is imported when the model loads, and
the calls into it live here and in the engine and sampler modules, so ``Any`` stays there.
``tokenize``/``prepare`` may run on any thread (they only read the vocabulary, which llama.cpp
allows concurrently, as llama-server does in its HTTP threads); everything else runs on the
engine thread.
"""

from __future__ import annotations

import codecs
import ctypes
import importlib
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import BackendError
from ..stops import StopMatcher
from .fit import ContextFit, fit_context, free_memory, kv_bytes_per_token
from .options import LlamaCppOptions

logger = logging.getLogger("glm_gateway.llamacpp")

_FLASH_ATTN = {"auto": -1, "off": 0, "on": 1}
_CACHE_TYPES = {"f32": 0, "f16": 1, "q4_0": 2, "q8_0": 8, "bf16": 30}


def use_repack(lib: Any, wanted: bool | None) -> bool:
    """Whether weights go to llama.cpp's extra buffer types (repacked for its faster kernels).

    A llama.cpp built for an AMX CPU with -march=native (plain ``pip install``) routes them to
    its AMX kernels, which in this version die with SIGSEGV on the first matrix product on
    some AMX machines (llama.cpp #20824): a crash of the whole server, so unless asked for,
    such a build runs without them, and says so."""
    if wanted is not None:
        return wanted
    info = bytes(lib.llama_print_system_info()).decode(errors="replace")
    if "AMX_INT8 = 1" not in info:
        return True
    logger.warning(
        "this llama.cpp was built with its AMX kernels, which crash on some machines "
        "(llama.cpp #20824): weight repacking is off, which keeps the weights away from "
        "them. Install the wheel scripts/build-llama-cpp-python.sh builds (for this CPU, "
        "without AMX) to have repacking, or set repack: true (--repack) where AMX works."
    )
    return False


@dataclass(frozen=True, slots=True)
class Prepared:
    prompt_tokens: list[int]
    stop_ids: frozenset[int]
    # Stop tokens that are not one token in this vocabulary; matched as text instead.
    stop_texts: tuple[str, ...]


class LoadedModel:
    def __init__(self, options: LlamaCppOptions) -> None:
        try:
            lib: Any = importlib.import_module("llama_cpp")
        except ImportError as exc:
            raise BackendError(
                "the llamacpp backend needs llama-cpp-python: pip install 'glm-gateway[llamacpp]'"
            ) from exc
        self.lib = lib
        logger = getattr(importlib.import_module("llama_cpp._logger"), "set_verbose", None)
        if logger is not None:
            logger(options.verbose)
        lib.llama_backend_init()
        if not os.path.exists(options.model_path):
            raise BackendError(f"no model file at {options.model_path}")
        mparams = lib.llama_model_default_params()
        mparams.n_gpu_layers = options.n_gpu_layers
        mparams.use_mmap = options.use_mmap
        mparams.use_mlock = options.use_mlock
        self.repack = use_repack(lib, options.repack)
        mparams.use_extra_bufts = self.repack
        self.model: Any = lib.llama_model_load_from_file(options.model_path.encode(), mparams)
        if not self.model:
            raise BackendError(f"llama.cpp could not load {options.model_path}")
        cpus = os.cpu_count() or 1
        cparams = lib.llama_context_default_params()
        cparams.n_batch = options.n_batch
        cparams.n_ubatch = min(options.n_ubatch, options.n_batch)
        cparams.n_seq_max = options.parallel
        # One cache for all sequences: one conversation may still use the whole context,
        # and its saved states restore into any sequence.
        cparams.kv_unified = True
        # llama-cpp-python's defaults, so one stream runs as it did through Llama.
        cparams.n_threads = options.n_threads or max(cpus // 2, 1)
        cparams.n_threads_batch = options.n_threads_batch or cpus
        cparams.flash_attn_type = _FLASH_ATTN[options.flash_attn]
        cparams.type_k = _CACHE_TYPES[options.cache_type_k]
        # llama.cpp wants V like K (MLA caches hold K only); quantized V needs flash attention.
        cparams.type_v = _CACHE_TYPES[options.cache_type_k]
        cparams.no_perf = True
        self.fit: ContextFit | None = None
        if options.n_ctx is None:
            self.fit = self._fit(options, cparams)
        cparams.n_ctx = options.n_ctx if self.fit is None else self.fit.n_ctx
        self.ctx: Any = lib.llama_init_from_model(self.model, cparams)
        if not self.ctx:
            lib.llama_model_free(self.model)
            raise BackendError(
                f"llama.cpp could not create a context for {options.model_path} "
                f"(n_ctx {cparams.n_ctx}, cache type {options.cache_type_k}, "
                f"flash attention {options.flash_attn})"
            )
        self.vocab: Any = lib.llama_model_get_vocab(self.model)
        self.memory: Any = lib.llama_get_memory(self.ctx)
        self.n_ctx = int(lib.llama_n_ctx(self.ctx))
        self.n_batch = int(lib.llama_n_batch(self.ctx))
        n_ubatch = int(lib.llama_n_ubatch(self.ctx))
        self.prefill_budget = options.prefill_budget or n_ubatch
        self.n_ctx_train = int(lib.llama_model_n_ctx_train(self.model))
        self.cache_prompt = options.cache_prompt
        self._pieces: dict[int, bytes] = {}

    def _fit(self, options: LlamaCppOptions, cparams: Any) -> ContextFit:
        lib = self.lib
        try:
            per_token = kv_bytes_per_token(lib, self.model, cparams)
        except RuntimeError as exc:
            lib.llama_model_free(self.model)
            raise BackendError(
                f"could not size the context of {options.model_path} ({exc}): set n_ctx"
            ) from exc
        # Without flash attention the attention scores of a batch grow with the context too.
        scratch = (
            0
            if options.flash_attn != "off"
            else 4 * cparams.n_ubatch * int(lib.llama_model_n_head(self.model))
        )
        free, where = free_memory(
            int(lib.llama_model_size(self.model)),
            offloaded=options.n_gpu_layers != 0,
            use_mmap=options.use_mmap,
            host_reserved=(options.cache_ram_mib << 20) if options.cache_prompt else 0,
        )
        n_ctx = fit_context(
            per_token + scratch,
            free,
            margin=options.fit_target_mib << 20,
            n_ctx_train=int(lib.llama_model_n_ctx_train(self.model)),
        )
        logger.info(
            "context %d tokens: %d KV bytes per token, %d MiB free in %s memory, %d MiB margin",
            n_ctx,
            per_token,
            free >> 20,
            where,
            options.fit_target_mib,
        )
        return ContextFit(n_ctx, per_token, free, where)

    def close(self) -> None:
        if self.ctx:
            self.lib.llama_free(self.ctx)
            self.ctx = None
        if self.model:
            self.lib.llama_model_free(self.model)
            self.model = None

    # -- any thread -------------------------------------------------------------------------

    def tokenize(self, text: str) -> list[int]:
        # parse_special: GLM's role and tag tokens in the rendered prompt become their ids.
        # add_special=False: the prompt carries its own prefix (GLM: [gMASK]<sop>).
        data = text.encode("utf-8")
        size = len(data) + 8
        buf = (self.lib.llama_token * size)()
        n = int(self.lib.llama_tokenize(self.vocab, data, len(data), buf, size, False, True))
        if n < 0:
            size = -n
            buf = (self.lib.llama_token * size)()
            n = int(self.lib.llama_tokenize(self.vocab, data, len(data), buf, size, False, True))
        return [int(t) for t in buf[: max(n, 0)]]

    def prepare(self, prompt: str, stop_tokens: Sequence[str]) -> Prepared:
        stop_ids: set[int] = set()
        stop_texts: list[str] = []
        for stop in stop_tokens:
            ids = self.tokenize(stop)
            if len(ids) == 1:
                stop_ids.add(ids[0])
            elif stop:
                stop_texts.append(stop)
        return Prepared(self.tokenize(prompt), frozenset(stop_ids), tuple(stop_texts))

    def is_eog(self, token: int) -> bool:
        return bool(self.lib.llama_vocab_is_eog(self.vocab, token))

    def piece(self, token: int) -> bytes:
        """The token's bytes, special tokens included (GLM's tags and roles come back as text)."""
        piece = self._pieces.get(token)
        if piece is None:
            lib = self.lib
            buf = ctypes.create_string_buffer(64)
            n = int(lib.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, True))
            if n < 0:
                buf = ctypes.create_string_buffer(-n)
                n = int(lib.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, True))
            piece = buf.raw[: max(n, 0)]
            self._pieces[token] = piece
        return piece

    def text_output(self, stop_strings: tuple[str, ...]) -> TextOutput:
        return TextOutput(self, stop_strings)

    # -- engine thread: the KV cache ----------------------------------------------------------

    def seq_rm(self, seq: int, start: int) -> bool:
        """Drop ``seq``'s entries from position ``start`` on; False where the model cannot."""
        return bool(self.lib.llama_memory_seq_rm(self.memory, seq, start, -1))

    def seq_cp(self, src: int, dst: int, n: int) -> None:
        """Let ``dst`` share ``src``'s entries for positions [0, n) (no copy in a unified cache)."""
        self.lib.llama_memory_seq_cp(self.memory, src, dst, 0, n)

    def clear(self) -> None:
        self.lib.llama_memory_clear(self.memory, True)

    def state_size(self, seq: int) -> int:
        return int(self.lib.llama_state_seq_get_size(self.ctx, seq))

    def state_save(self, seq: int, size: int) -> tuple[Any, int] | None:
        """A host copy of ``seq``'s KV entries (a ctypes buffer and its length), or None."""
        buf = (ctypes.c_uint8 * size)()
        n = int(self.lib.llama_state_seq_get_data(self.ctx, buf, size, seq))
        return (buf, n) if 0 < n <= size else None

    def state_load(self, seq: int, data: Any, nbytes: int) -> bool:
        """Puts a saved state into ``seq`` (emptied first); False where llama.cpp refused it."""
        return int(self.lib.llama_state_seq_set_data(self.ctx, data, nbytes, seq)) > 0


class TextOutput:
    """Token bytes -> text, holding back partial UTF-8 and possible stop-string prefixes."""

    def __init__(self, model: LoadedModel, stop_strings: tuple[str, ...]) -> None:
        self._model = model
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._matcher = StopMatcher(stop_strings)
        self._unsent = 0  # tokens whose text is still held back

    def feed(self, token: int) -> str:
        self._unsent += 1
        return self._matcher.feed(self._decoder.decode(self._model.piece(token)))

    def take_unsent(self) -> int:
        n, self._unsent = self._unsent, 0
        return n

    @property
    def stopped(self) -> bool:
        return self._matcher.stopped

    @property
    def matched(self) -> str | None:
        return self._matcher.matched

    def flush(self) -> str:
        # Bytes of a character cut off by the token limit stay in the decoder: dropped, as
        # llama-server does, rather than sent as U+FFFD.
        return self._matcher.flush()
