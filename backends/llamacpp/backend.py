"""The ``llamacpp`` backend: llama-cpp-python running a GGUF in this process.

One loaded model serves one generation at a time (a llama.cpp context holds one sequence's KV
cache); requests take turns in arrival order. The engine is only ever touched from one
dedicated thread, so the event loop never blocks on it and llama.cpp never sees two threads at
once. Tokens travel from that thread to the event loop through an ``asyncio.Queue`` fed with
``loop.call_soon_threadsafe``.

llama-cpp-python is an optional, untyped dependency: it is imported when the model loads, and
every call into it lives in ``_Engine``, so ``Any`` stays inside that class.
"""

from __future__ import annotations

import asyncio
import codecs
import concurrent.futures
import ctypes
import importlib
import random
import threading
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..base import (
    Backend,
    BackendEvent,
    Chunk,
    Finished,
    FinishReason,
    GenerationRequest,
    ModelInfo,
    SamplingParams,
    Started,
)
from ..errors import BackendError, BackendNotReady, BackendUnavailable, BadRequest, PromptTooLong
from ..stops import StopMatcher

# llama.cpp's own sampling defaults (common_params_sampling), used where a request leaves a
# field unset. llama-cpp-python's ``generate`` has the same defaults; spelling them out keeps
# the behaviour independent of its signature.
_DEFAULT_TEMPERATURE = 0.8
_DEFAULT_TOP_P = 0.95
_DEFAULT_TOP_K = 40
_DEFAULT_MIN_P = 0.05
_DEFAULT_REPEAT_PENALTY = 1.0

# llama.cpp reads this seed as "pick a random one", which would break reproducibility for the
# one client seed that maps onto it.
_LLAMA_RANDOM_SEED = 0xFFFFFFFF


@dataclass(frozen=True, slots=True)
class LlamaCppOptions:
    """How to load the GGUF; names and meanings follow llama.cpp's own flags."""

    model_path: str
    # Context size in tokens (prompt + completion); 0 takes the model's trained context.
    n_ctx: int = 8192
    # Layers offloaded to the GPU; -1 = all. No effect on a CPU-only build.
    n_gpu_layers: int = -1
    # Threads for generation / for prompt processing; None = llama-cpp-python's choice.
    n_threads: int | None = None
    n_threads_batch: int | None = None
    # Logical batch for prompt processing: also the granularity at which a prompt evaluation
    # can be cancelled and at which a cached prompt prefix is reused (see ``_Engine``).
    n_batch: int = 512
    # Physical batch; capped at n_batch by llama-cpp-python.
    n_ubatch: int = 512
    flash_attn: bool = False
    use_mmap: bool = True
    use_mlock: bool = False
    # Reuse the KV cache of the previous prompt's common prefix (llama-server's cache_prompt).
    cache_prompt: bool = True
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


# What the engine thread hands to the event loop: text, the end, or the error that ended it.
_Item = Chunk | Finished | BaseException


@dataclass(slots=True)
class _Job:
    prompt_tokens: list[int]
    stop_ids: frozenset[int]
    stop_strings: tuple[str, ...]
    max_new_tokens: int
    seed: int
    sampling: dict[str, float]
    emit: Callable[[_Item], None]
    # A compiled LlamaGrammar, or None.
    grammar: Any = None
    cancel: threading.Event = field(default_factory=threading.Event)


@dataclass(frozen=True, slots=True)
class _Prepared:
    prompt_tokens: list[int]
    stop_ids: frozenset[int]
    # Stop tokens that are not one token in this vocabulary; matched as text instead.
    stop_texts: tuple[str, ...]


class _Engine:
    """The loaded ``llama_cpp.Llama``.

    ``tokenize``/``prepare`` may run on any thread (they only read the vocabulary, which
    llama.cpp allows concurrently, as llama-server does in its HTTP threads); everything else
    runs on the backend's single engine thread.
    """

    def __init__(self, options: LlamaCppOptions) -> None:
        try:
            lib: Any = importlib.import_module("llama_cpp")
        except ImportError as exc:
            raise BackendError(
                "the llamacpp backend needs llama-cpp-python: pip install 'glm-gateway[llamacpp]'"
            ) from exc
        self._lib = lib
        self._cache_prompt = options.cache_prompt
        self._llm: Any = lib.Llama(
            model_path=options.model_path,
            n_ctx=options.n_ctx,
            n_gpu_layers=options.n_gpu_layers,
            n_threads=options.n_threads,
            n_threads_batch=options.n_threads_batch,
            n_batch=options.n_batch,
            n_ubatch=options.n_ubatch,
            flash_attn=options.flash_attn,
            use_mmap=options.use_mmap,
            use_mlock=options.use_mlock,
            verbose=options.verbose,
        )
        self._vocab: Any = lib.llama_model_get_vocab(self._llm.model)
        self.n_ctx = int(self._llm.n_ctx())
        self.n_batch = int(self._llm.n_batch)
        self.n_ctx_train = int(lib.llama_model_n_ctx_train(self._llm.model))
        # Prompt tokens whose KV entries sit in the cache, computed by prompt evaluation in
        # n_batch-aligned chunks (see ``_eval_prompt``).
        self._kv_prompt: list[int] = []
        # Prompt tokens the last _eval_prompt took from the cache rather than evaluating.
        self._reused = 0
        self._pieces: dict[int, bytes] = {}
        self.stats = LlamaCppStats()

    def close(self) -> None:
        self._llm.close()

    # -- any thread -------------------------------------------------------------------------

    def tokenize(self, text: str) -> list[int]:
        # special=True: GLM's role and tag tokens in the rendered prompt become their ids.
        # add_bos=False: the prompt carries its own prefix (GLM: [gMASK]<sop>).
        ids: list[Any] = self._llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)
        return [int(t) for t in ids]

    def compile_grammar(self, gbnf: str) -> Any:
        # A grammar that does not compile is the gateway's bug, not the client's, but it is
        # the client's schema that produced it: report it as a 400 naming nothing secret.
        try:
            return self._lib.LlamaGrammar.from_string(gbnf, verbose=False)
        except ValueError as exc:
            raise BadRequest(
                f"The output constraint could not be compiled into a grammar: {exc}"
            ) from exc

    def prepare(self, prompt: str, stop_tokens: Sequence[str]) -> _Prepared:
        stop_ids: set[int] = set()
        stop_texts: list[str] = []
        for stop in stop_tokens:
            ids = self.tokenize(stop)
            if len(ids) == 1:
                stop_ids.add(ids[0])
            elif stop:
                stop_texts.append(stop)
        return _Prepared(self.tokenize(prompt), frozenset(stop_ids), tuple(stop_texts))

    # -- engine thread ----------------------------------------------------------------------

    def run(self, job: _Job) -> None:
        """Run one job to its end, cancellation or error; always reports how it ended."""
        try:
            finished = self._run(job)
        except BaseException as exc:
            # The context may hold a half-written batch: start the next prompt from scratch.
            self._kv_prompt = []
            job.emit(exc)
            return
        # A job cancelled by its consumer reports to nobody; one cancelled by aclose() must
        # still end its consumer's wait.
        job.emit(finished or BackendUnavailable("the model is being unloaded; generation stopped"))

    def _run(self, job: _Job) -> Finished | None:
        tokens = job.prompt_tokens
        if not self._eval_prompt(tokens, job.cancel):
            return None
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        matcher = StopMatcher(job.stop_strings)
        reason: FinishReason = "length"
        completion = 0
        unsent = 0  # tokens whose text is still held back (partial UTF-8 or stop prefix)
        if job.max_new_tokens > 0:
            llm = self._llm
            # generate() builds a fresh sampler from this seed each call, so a seed always
            # gives the same draws. It finds the whole prompt already evaluated (by
            # _eval_prompt) and samples straight away; each next() decodes the previous
            # token, then samples.
            llm.set_seed(job.seed)
            gen = llm.generate(tokens, reset=True, grammar=job.grammar, **job.sampling)
            try:
                for raw in gen:
                    token = int(raw)
                    completion += 1
                    self._count(generated=1)
                    if token in job.stop_ids or self._lib.llama_vocab_is_eog(self._vocab, token):
                        reason = "stop"
                        break
                    unsent += 1
                    text = matcher.feed(decoder.decode(self._piece(token)))
                    if text:
                        job.emit(Chunk(text, unsent))
                        unsent = 0
                    if matcher.stopped:
                        reason = "stop"
                        break
                    if completion >= job.max_new_tokens:
                        break
                    # Checked between tokens: the consumer is gone, free the engine.
                    if job.cancel.is_set():
                        return None
            finally:
                gen.close()
        # Release what the stop matcher held back. Bytes of a character cut off by the token
        # limit stay in the decoder: dropped, as llama-server does, rather than sent as U+FFFD.
        tail = matcher.flush()
        if tail:
            job.emit(Chunk(tail, unsent))
        return Finished(
            reason,
            len(tokens),
            completion,
            cached_tokens=self._reused,
            stop_sequence=matcher.matched,
        )

    def _eval_prompt(self, tokens: list[int], cancel: threading.Event) -> bool:
        """Put ``tokens`` into the KV cache; False if cancelled on the way.

        The prompt is evaluated in chunks that start at multiples of n_batch, and only whole
        such chunks of the previous prompt are reused. A chunk's KV entries then depend only on
        the tokens, never on what ran before (a token decoded alone, or in a differently cut
        batch, gives slightly different floats), so a seed gives the same text whatever ran
        before, and the last chunk is always evaluated afresh, which yields the logits to
        sample from.

        Cancellation is checked between chunks and, through llama.cpp's abort callback, between
        the graph nodes of a chunk on the CPU backend: a long prompt stops within
        milliseconds. The callback is only installed here: during generation it would take the
        GIL hundreds of times per token.
        """
        llm = self._llm
        nb = self.n_batch
        reuse = 0
        if self._cache_prompt:
            common = _common_prefix(self._kv_prompt, tokens)
            reuse = min(common, len(tokens) - 1) // nb * nb
        if reuse > 0 and self._truncate_kv(reuse):
            llm.n_tokens = reuse
        else:
            reuse = 0
            llm.reset()  # eval() then clears the whole cache (recurrent models: reset does)
        self._kv_prompt = tokens[:reuse]
        self._reused = reuse
        self._count(reused=reuse)

        callback = self._lib.ggml_abort_callback(lambda _data: cancel.is_set())
        self._lib.llama_set_abort_callback(llm.ctx, callback, None)
        try:
            for start in range(reuse, len(tokens), nb):
                if cancel.is_set():
                    return False
                chunk = tokens[start : start + nb]
                try:
                    llm.eval(chunk)
                except RuntimeError:
                    # An aborted decode: llama.cpp dropped the chunk's entries, and n_tokens
                    # still counts only the chunks before it.
                    if cancel.is_set():
                        return False
                    raise
                self._kv_prompt = tokens[: start + len(chunk)]
                self._count(evaluated=len(chunk))
        finally:
            # A CFUNCTYPE called without arguments is the NULL function pointer: no callback.
            self._lib.llama_set_abort_callback(llm.ctx, self._lib.ggml_abort_callback(), None)
        return True

    def _truncate_kv(self, n: int) -> bool:
        """Drop KV entries from position ``n`` on; False where the model cannot (recurrent)."""
        memory = self._lib.llama_get_memory(self._llm.ctx)
        return bool(self._lib.llama_memory_seq_rm(memory, -1, n, -1))

    def _piece(self, token: int) -> bytes:
        """The token's bytes, special tokens included (GLM's tags and roles come back as text).

        Llama.detokenize would do the same per token, but with a fixed 32-byte buffer that
        silently garbles longer pieces; this asks again with the size llama.cpp reports.
        """
        piece = self._pieces.get(token)
        if piece is None:
            buf = ctypes.create_string_buffer(64)
            n = int(self._lib.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, True))
            if n < 0:
                buf = ctypes.create_string_buffer(-n)
                n = int(self._lib.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, True))
            piece = buf.raw[: max(n, 0)]
            self._pieces[token] = piece
        return piece

    def _count(self, *, generated: int = 0, evaluated: int = 0, reused: int = 0) -> None:
        # Replaced whole, so a reader on another thread always sees a consistent snapshot.
        s = self.stats
        self.stats = LlamaCppStats(
            s.tokens_generated + generated,
            s.prompt_tokens_evaluated + evaluated,
            s.prompt_tokens_reused + reused,
        )


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


class LlamaCppBackend(Backend):
    supports_grammar = True
    # One sequence on one engine thread: the gateway's admission gate is the only queue.
    max_concurrency = 1

    def __init__(self, options: LlamaCppOptions) -> None:
        self._options = options
        self._engine: _Engine | None = None
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._closing = False
        # Cancels the running job when the backend closes.
        self._active: _Job | None = None

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        if self._engine is not None:
            return
        self._closing = False
        if self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="llamacpp"
            )
        loop = asyncio.get_running_loop()
        # Loading reads the whole GGUF: on the engine thread, not the event loop.
        future = loop.run_in_executor(self._executor, _Engine, self._options)
        try:
            self._engine = await asyncio.shield(future)
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

    async def aclose(self) -> None:
        self._closing = True
        if self._active is not None:
            self._active.cancel.set()
        # The engine thread runs jobs in order: closing waits behind the one it cancelled.
        engine, self._engine = self._engine, None
        if engine is not None and self._executor is not None:
            await asyncio.get_running_loop().run_in_executor(self._executor, engine.close)
        if self._executor is not None:
            self._executor.shutdown(wait=False)
            self._executor = None

    @property
    def ready(self) -> bool:
        return self._engine is not None and not self._closing

    @property
    def info(self) -> ModelInfo:
        engine = self._engine
        extra: dict[str, object] = {"backend": "llamacpp", "model_path": self._options.model_path}
        if engine is None:
            return ModelInfo(context_length=self._options.n_ctx or None, extra=extra)
        extra.update(n_ctx_train=engine.n_ctx_train, n_batch=engine.n_batch)
        return ModelInfo(context_length=engine.n_ctx, extra=extra)

    @property
    def stats(self) -> LlamaCppStats:
        engine = self._engine
        return engine.stats if engine is not None else LlamaCppStats()

    # -- generation -------------------------------------------------------------------------

    def _engine_or_raise(self) -> _Engine:
        if self._engine is None or self._closing:
            raise BackendNotReady(f"model {self._options.model_path} is not loaded")
        return self._engine

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
        engine = self._engine_or_raise()
        return len(await asyncio.to_thread(engine.tokenize, prompt))

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[BackendEvent, None]:
        # An async generator: aclose() (or cancelling the task iterating it) stops the worker.
        engine = self._engine_or_raise()
        finished: Finished | None = None
        prepared = await asyncio.to_thread(engine.prepare, request.prompt, request.stop_tokens)
        grammar = (
            await asyncio.to_thread(engine.compile_grammar, request.grammar)
            if request.grammar is not None
            else None
        )
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
        engine = self._engine_or_raise()
        executor = self._executor
        if executor is None:
            raise BackendNotReady(f"model {self._options.model_path} is not loaded")

        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[_Item] = asyncio.Queue()
        cancel = threading.Event()

        def emit(item: _Item) -> None:  # engine thread
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the loop is closed: nobody is listening any more
                cancel.set()

        sampling = request.sampling
        # The context bounds the completion too; reaching it ends with "length".
        limit = engine.n_ctx - n_prompt
        if sampling.max_tokens is not None:
            limit = min(limit, max(sampling.max_tokens, 0))
        job = _Job(
            prompt_tokens=prepared.prompt_tokens,
            stop_ids=prepared.stop_ids,
            stop_strings=(*sampling.stop, *prepared.stop_texts),
            max_new_tokens=limit,
            seed=self._seed(sampling.seed),
            sampling=_sampling_kwargs(sampling),
            emit=emit,
            cancel=cancel,
            grammar=grammar,
        )
        self._active = job
        worker = loop.run_in_executor(executor, engine.run, job)
        try:
            yield Started(prompt_tokens=n_prompt)
            held: _Item | None = None
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
                elif isinstance(item, BackendError):
                    raise item
                else:
                    raise BackendError(f"llama.cpp failed: {item!r}") from item
        finally:
            # Reached on the end, an error, aclose() (GeneratorExit) or task cancellation.
            # The engine is only handed on once the worker has really stopped using it.
            cancel.set()
            await _join(worker)
            if self._active is job:  # a later request may already have its own job here
                self._active = None
        # The worker has stopped: the engine is free whether or not the consumer reads on.
        if finished is not None:
            yield finished


def _sampling_kwargs(s: SamplingParams) -> dict[str, float]:
    """llama-cpp-python ``generate`` keywords; unset fields take llama.cpp's defaults."""
    temperature = _DEFAULT_TEMPERATURE if s.temperature is None else s.temperature
    return {
        # llama-cpp-python samples greedily at exactly 0; below it would mean "no scaling".
        "temp": max(temperature, 0.0),
        "top_p": _DEFAULT_TOP_P if s.top_p is None else s.top_p,
        "top_k": _DEFAULT_TOP_K if s.top_k is None else s.top_k,
        "min_p": _DEFAULT_MIN_P if s.min_p is None else s.min_p,
        "repeat_penalty": _DEFAULT_REPEAT_PENALTY if s.repeat_penalty is None else s.repeat_penalty,
        "presence_penalty": s.presence_penalty or 0.0,
        "frequency_penalty": s.frequency_penalty or 0.0,
    }


async def _join(worker: asyncio.Future[None]) -> None:
    """Wait for the engine thread to finish its job, even through repeated cancellation."""
    cancelled = False
    while not worker.done():
        try:
            await asyncio.shield(worker)
        except asyncio.CancelledError:
            if worker.cancelled():
                break
            cancelled = True
        except Exception:
            break  # run() reports its errors through the queue; nothing more to do here
    if cancelled:
        raise asyncio.CancelledError


def _close_loaded(future: asyncio.Future[_Engine]) -> None:
    if not future.cancelled() and future.exception() is None:
        future.result().close()
