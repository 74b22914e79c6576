"""The ``llamacpp`` backend: llama-cpp-python running a GGUF in this process.

The loaded model serves ``parallel`` generations at once, batched on one engine thread (see
``engine``); the gateway's admission gate, sized by ``max_concurrency``, is the one queue in
front of it. Tokens travel from the engine thread to the event loop through an
``asyncio.Queue`` fed by an ``Outbox`` (``loop.call_soon_threadsafe``, a few tokens at a time).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncGenerator
from typing import Any

from ..base import (
    Backend,
    BackendEvent,
    Chunk,
    EngineMetric,
    Finished,
    GenerationRequest,
    ModelInfo,
    Started,
)
from ..errors import BackendError, BackendNotReady, BadRequest, PromptTooLong
from .engine import Engine
from .jobs import Admitted, Job
from .model import LoadedModel
from .options import LlamaCppOptions, LlamaCppStats
from .outbox import Outbox
from .sampler import check_grammar, sampling_values

# llama.cpp reads this seed as "pick a random one", which would break reproducibility for the
# one client seed that maps onto it.
_LLAMA_RANDOM_SEED = 0xFFFFFFFF


class LlamaCppBackend(Backend):
    supports_grammar = True

    def __init__(self, options: LlamaCppOptions) -> None:
        self._options = options
        # Sequences batched together: the most generations the gate lets through at once.
        self._parallel = max(options.parallel, 1)
        self.max_concurrency = self._parallel
        self._engine: Engine | None = None
        self._model: LoadedModel | None = None
        self._closing = False

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        if self._engine is not None:
            return
        self._closing = False
        # Loading reads the whole GGUF: on a thread, not the event loop.
        future = asyncio.ensure_future(asyncio.to_thread(LoadedModel, self._options))
        try:
            model = await asyncio.shield(future)
        except asyncio.CancelledError:
            # The load goes on in its thread; free the model if it ever completes.
            future.add_done_callback(_close_loaded)
            raise
        except BackendError:
            raise
        except Exception as exc:
            raise BackendError(
                f"llama.cpp could not load {self._options.model_path}: {exc}"
            ) from exc
        self._model = model
        o = self._options
        self._engine = Engine(model, self._parallel, o.cache_ram_mib << 20, o.cache_idle)

    async def aclose(self) -> None:
        self._closing = True
        engine, self._engine = self._engine, None
        self._model = None
        if engine is not None:
            # Ends running jobs (their consumers get BackendUnavailable) and frees the model.
            await asyncio.to_thread(engine.stop)

    @property
    def ready(self) -> bool:
        return self._engine is not None and not self._closing

    @property
    def info(self) -> ModelInfo:
        o = self._options
        cache_ram = o.cache_ram_mib if o.cache_prompt else 0
        extra: dict[str, object] = {
            "backend": "llamacpp",
            "model_path": o.model_path,
            "parallel": self._parallel,
            "flash_attn": o.flash_attn,
            "cache_type_k": o.cache_type_k,
            "cache_prompt": o.cache_prompt,
            "cache_ram_mib": cache_ram,
            "cache_idle": o.cache_idle and cache_ram > 0,
            "n_ubatch": o.n_ubatch,
            "stream_interval_ms": o.stream_interval_ms,
        }
        model = self._model
        if model is None:
            return ModelInfo(context_length=o.n_ctx or None, extra=extra)
        extra.update(
            n_ctx_train=model.n_ctx_train,
            n_batch=model.n_batch,
            prefill_budget=model.prefill_budget,
            repack=model.repack,
        )
        if model.fit is not None:
            extra["n_ctx_fit"] = model.fit.describe()
        return ModelInfo(context_length=model.n_ctx, extra=extra)

    @property
    def stats(self) -> LlamaCppStats:
        engine = self._engine
        return engine.stats if engine is not None else LlamaCppStats()

    def engine_metrics(self) -> list[EngineMetric]:
        s = self.stats
        return [
            EngineMetric(
                "prompt_tokens_evaluated", "Prompt tokens read", s.prompt_tokens_evaluated, True
            ),
            EngineMetric(
                "prompt_tokens_reused",
                "Prompt tokens taken from the KV cache",
                s.prompt_tokens_reused,
                True,
            ),
            EngineMetric(
                "prompt_tokens_shared",
                "Reused prompt tokens shared from another sequence",
                s.prompt_tokens_shared,
                True,
            ),
            EngineMetric(
                "prompt_tokens_restored",
                "Reused prompt tokens restored from a state saved in host RAM",
                s.prompt_tokens_restored,
                True,
            ),
            EngineMetric("tokens_generated", "Tokens sampled", s.tokens_generated, True),
            EngineMetric("kv_cells_used", "KV cells the sequences hold", s.kv_cells_used),
            EngineMetric("kv_cells_total", "KV cells in the context", s.kv_cells_total),
            EngineMetric("sequences_busy", "Sequences generating", s.sequences_busy),
            EngineMetric("sequences_total", "Sequences (parallel)", self._parallel),
            EngineMetric(
                "ram_cache_bytes",
                "Bytes of evicted sequences' KV states in host RAM",
                s.ram_cache_bytes,
            ),
            EngineMetric("ram_cache_states", "Sequence states in host RAM", s.ram_cache_states),
            EngineMetric(
                "ram_cache_hits",
                "Admissions that restored a state from host RAM",
                s.ram_cache_hits,
                True,
            ),
            EngineMetric(
                "ram_cache_misses",
                "Admissions that restored no state from host RAM",
                s.ram_cache_misses,
                True,
            ),
            EngineMetric(
                "ram_cache_evictions",
                "States dropped from host RAM to stay within its budget",
                s.ram_cache_evictions,
                True,
            ),
        ]

    # -- generation -------------------------------------------------------------------------

    def _loaded(self) -> tuple[Engine, LoadedModel]:
        if self._engine is None or self._model is None or self._closing:
            raise BackendNotReady(f"model {self._options.model_path} is not loaded")
        return self._engine, self._model

    def _seed(self, seed: int | None) -> int:
        if seed is None:
            seed = self._options.seed
        if seed is None:
            return random.SystemRandom().randrange(_LLAMA_RANDOM_SEED)
        seed &= 0xFFFFFFFF  # OpenAI seeds are any int; llama.cpp takes a uint32
        return seed - 1 if seed == _LLAMA_RANDOM_SEED else seed

    async def count_tokens(self, prompt: str) -> int:
        # The tokenizer only reads the vocabulary: no place in line, and safe beside a running
        # generation.
        _, model = self._loaded()
        return len(await asyncio.to_thread(model.tokenize, prompt))

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[BackendEvent, None]:
        # An async generator: aclose() (or cancelling the task iterating it) frees the sequence.
        engine, model = self._loaded()
        prepared = await asyncio.to_thread(model.prepare, request.prompt, request.stop_tokens)
        if request.grammar is not None:
            await asyncio.to_thread(check_grammar, model.lib, model.vocab, request.grammar)
        n_prompt = len(prepared.prompt_tokens)
        if n_prompt == 0:
            raise BadRequest("The prompt is empty.", param="messages")
        if n_prompt >= engine.n_ctx:
            raise PromptTooLong(
                f"This model's maximum context length is {engine.n_ctx} tokens, but the "
                f"prompt has {n_prompt} tokens (at least one must be left for the "
                "completion). Please reduce the length of the messages.",
                param="messages",
            )
        engine, model = self._loaded()
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        released = asyncio.Event()

        def deliver(items: list[Any]) -> None:  # event loop
            for item in items:
                queue.put_nowait(item)

        outbox = Outbox(
            loop, deliver, self._options.stream_interval_ms / 1000, lambda: job.cancel.set()
        )

        def on_released() -> None:  # engine thread
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(released.set)

        sampling = request.sampling
        # The context bounds the completion too; reaching it ends with "length".
        limit = engine.n_ctx - n_prompt
        if sampling.max_tokens is not None:
            limit = min(limit, max(sampling.max_tokens, 0))
        job = Job(
            prompt_tokens=prepared.prompt_tokens,
            stop_ids=prepared.stop_ids,
            stop_strings=(*sampling.stop, *prepared.stop_texts),
            max_new_tokens=limit,
            seed=self._seed(sampling.seed),
            sampling=sampling_values(sampling),
            emit=outbox.put,
            flush=outbox.flush,
            released=on_released,
            grammar=request.grammar,
            conversation_key=request.conversation_key,
            deterministic=sampling.seed is not None or self._options.seed is not None,
            deadline=None
            if request.max_queue_wait is None
            else time.monotonic() + request.max_queue_wait,
        )
        engine.submit(job)
        finished: Finished | None = None
        try:
            first = await queue.get()
            if isinstance(first, BaseException):
                raise _as_backend_error(first)
            cached = first.cached_tokens if isinstance(first, Admitted) else 0
            yield Started(prompt_tokens=n_prompt, cached_tokens=cached)
            held: Any = None
            while True:
                item = held if held is not None else await queue.get()
                held = None
                if isinstance(item, Chunk):
                    # Coalesce only what is already waiting: never wait for more.
                    texts, tokens = [item.text], item.tokens
                    while not queue.empty():
                        nxt = queue.get_nowait()
                        if not isinstance(nxt, Chunk):
                            held = nxt
                            break
                        texts.append(nxt.text)
                        tokens += nxt.tokens
                    yield Chunk("".join(texts), tokens)
                elif isinstance(item, Finished):
                    finished = item
                    break
                elif isinstance(item, BaseException):
                    raise _as_backend_error(item)
        finally:
            # Reached on the end, an error, aclose() (GeneratorExit) or task cancellation.
            # Returns once the engine no longer uses the job's sequence.
            job.cancel.set()
            engine.wake()
            await _wait(released)
        if finished is not None:
            yield finished


def _as_backend_error(exc: BaseException) -> BackendError:
    if isinstance(exc, BackendError):
        return exc
    error = BackendError(f"llama.cpp failed: {exc!r}")
    error.__cause__ = exc
    return error


async def _wait(event: asyncio.Event) -> None:
    """Wait for the engine to release the job, even through repeated cancellation."""
    cancelled = False
    while not event.is_set():
        try:
            await asyncio.shield(event.wait())
        except asyncio.CancelledError:
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError


def _close_loaded(future: asyncio.Future[LoadedModel]) -> None:
    if not future.cancelled() and future.exception() is None:
        future.result().close()
