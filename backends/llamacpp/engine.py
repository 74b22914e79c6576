"""The continuous-batching loop over one llama.cpp context.

One thread owns the context. Each step is one ``llama_decode`` over a batch holding the next
token of every decoding sequence plus chunks of waiting prompts up to ``n_batch``, so streams
keep flowing while a long prompt is read. ``parallel`` sequences share one unified KV cache.
A job is admitted when a sequence is free and the cache can hold its prompt plus its token
limit (so running jobs never run out of room); otherwise it waits. Cancellation is seen
between steps, so a cancelled job frees its sequence within one step. A sequence's cache that
is dropped goes to host RAM first (``state_cache``), to be restored for its next turn.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from ..base import Chunk, Finished, FinishReason
from ..errors import BackendError, BackendUnavailable
from .compact import COMPACT_BELOW, compact
from .jobs import Admitted, Job, timed_out, until_deadline
from .model import LoadedModel, TextOutput
from .options import LlamaCppStats
from .sampler import SamplerChain
from .slots import MIN_USEFUL_PREFIX, Placement, Slot, common_prefix, pending_overlap, place
from .state_cache import Match, StateCache


@dataclass(slots=True)
class _Active:
    job: Job
    slot: Slot
    sampler: SamplerChain
    pending: list[int]  # prompt tokens not yet in the cache
    cached: int
    output: TextOutput
    next_token: int | None = None
    completion: int = 0


class Engine:
    def __init__(
        self, model: LoadedModel, parallel: int, cache_ram: int = 0, cache_idle: bool = False
    ) -> None:
        self._m = model
        self._lib = model.lib
        self.n_ctx = model.n_ctx
        self.n_batch = model.n_batch
        self.prefill_budget = min(model.prefill_budget, self.n_batch)
        self.parallel = parallel
        self._slots = [Slot(i) for i in range(parallel)]
        self._batch: Any = self._lib.llama_batch_init(self.n_batch, 0, 1)
        self._cond = threading.Condition()
        self._incoming: deque[Job] = deque()
        self._waiting: deque[Job] = deque()
        self._active: list[_Active] = []
        self._stopping = False
        self._requests = 0
        self._ram = StateCache(cache_ram if model.cache_prompt else 0)
        self._freed = 0  # cells dropped since the last compaction
        self._cache_idle = cache_idle and self._ram.enabled
        self._c = {
            "restored": 0,
            "generated": 0,
            "evaluated": 0,
            "reused": 0,
            "shared": 0,
            "steps": 0,
            "max": 0,
        }
        self.stats = LlamaCppStats(kv_cells_total=self.n_ctx)
        self._thread = threading.Thread(target=self._loop, name="llamacpp-engine", daemon=True)
        self._thread.start()

    # -- any thread -------------------------------------------------------------------------

    def submit(self, job: Job) -> None:
        with self._cond:
            if self._stopping:
                raise BackendUnavailable("the model is being unloaded")
            self._incoming.append(job)
            self._cond.notify()

    def wake(self) -> None:
        with self._cond:
            self._cond.notify()

    def stop(self) -> None:
        """Ends every job (BackendUnavailable), stops the thread and frees the model."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._thread.join()

    # -- engine thread ----------------------------------------------------------------------

    def _loop(self) -> None:
        try:
            idle = False
            while True:
                with self._cond:
                    # Waiting jobs are retried at once while something runs (each step may
                    # free room); with nothing running, when a job arrives or leaves.
                    while not (self._stopping or self._incoming or self._active or self._ready()):
                        if self._waiting and not idle:
                            break
                        self._cond.wait(until_deadline(self._waiting))
                    self._waiting.extend(self._incoming)
                    self._incoming.clear()
                    if self._stopping:
                        break
                self._drop_cancelled()
                self._admit()
                self._expire()
                idle = not self._active
                if self._active:
                    self._step()
                self._publish()
        finally:
            gone = BackendUnavailable("the model is being unloaded; generation stopped")
            with self._cond:
                self._waiting.extend(self._incoming)
                self._incoming.clear()
            for job in self._waiting:
                job.emit(gone)
                job.released()
            for active in list(self._active):
                self._end(active, gone)
            self._lib.llama_batch_free(self._batch)
            self._m.close()

    def _ready(self) -> bool:
        now = time.monotonic()
        return any(j.cancel.is_set() or j.expired(now) for j in self._waiting)

    def _expire(self) -> None:
        now = time.monotonic()
        for job in [j for j in self._waiting if j.expired(now)]:
            self._waiting.remove(job)
            job.emit(timed_out())
            job.released()

    def _drop_cancelled(self) -> None:
        for job in [j for j in self._waiting if j.cancel.is_set()]:
            self._waiting.remove(job)
            job.released()
        for active in [a for a in self._active if a.job.cancel.is_set()]:
            self._end(active, None)

    def _admit(self) -> None:
        reading = [a.job.prompt_tokens for a in self._active if a.pending]
        for job in list(self._waiting):
            # A prompt sharing a long prefix with one still being read waits for it, then
            # copies it: parallel requests with one system prompt read it once.
            overlap = pending_overlap(job.prompt_tokens, reading)
            have = max(common_prefix(s.tokens, job.prompt_tokens) for s in self._slots)
            if overlap >= have + MIN_USEFUL_PREFIX:
                continue
            now = self._requests + 1
            placement = place(self._slots, job.prompt_tokens, job.conversation_key, now)
            if placement is None:
                return
            offered = max(placement.common, placement.share_len)
            restore = self._ram.match(job.prompt_tokens, offered) if self._ram.enabled else None
            if not self._fits(job, placement, restore) and placement.share_from is not None:
                # Keeping the donor resident does not leave room: read the prefix afresh
                # (or from RAM) and let the donor go like any idle cache.
                placement = Placement(placement.slot, placement.common)
                restore = (
                    self._ram.match(job.prompt_tokens, placement.common)
                    if self._ram.enabled
                    else None
                )
            if not self._fits(job, placement, restore):
                return  # FIFO: later jobs wait behind this one (running ones end in time)
            self._requests = now
            self._waiting.remove(job)
            self._start(job, placement, restore)
            reading.append(job.prompt_tokens)

    def _need(self, job: Job) -> int:
        return len(job.prompt_tokens) + job.max_new_tokens

    def _fits(self, job: Job, placement: Placement, restore: Match | None) -> bool:
        """Whether the cache holds the job; evicts idle caches, least valuable first.

        Neither the chosen sequence nor the one its prefix is shared from is evicted."""
        keep = (placement.slot, placement.share_from)
        reserved = sum(self._need(a.job) for a in self._active)
        idle = sorted(
            (s for s in self._slots if not s.busy and s not in keep and s.tokens),
            key=lambda s: s.value(self._requests),
        )
        held = sum(len(s.tokens) for s in idle)
        source = placement.share_from
        if source is not None and not source.busy:
            # The source stays resident: what the new sequence does not share is held too.
            held += max(len(source.tokens) - placement.share_len, 0)
        need = self._need(job)
        if restore is not None:  # the whole state goes in before its tail is trimmed
            need = max(need, len(restore.state.tokens))
        while reserved + held + need > self.n_ctx and idle:
            victim = idle.pop(0)
            held -= len(victim.tokens)
            self._ram.save(self._m, victim, self._requests)
            self._drop(victim)
        return reserved + held + need <= self.n_ctx

    def _start(self, job: Job, placement: Placement, restore: Match | None) -> None:
        slot = placement.slot
        prompt = job.prompt_tokens
        if len(slot.tokens) - placement.common >= MIN_USEFUL_PREFIX:
            # Another conversation's cache, about to be overwritten.
            self._ram.save(self._m, slot, self._requests)
        if self._ram.enabled and restore is None:
            self._ram.misses += 1
        if restore is not None:
            self._freed += len(slot.tokens)
            common = self._ram.restore(self._m, slot, restore, self._requests)
        elif placement.share_from is not None:
            n = min(placement.share_len, len(prompt) - 1)
            self._drop(slot)
            self._m.seq_cp(placement.share_from.seq_id, slot.seq_id, n)
            slot.tokens = list(placement.share_from.tokens[:n])
            slot.exact = min(placement.share_from.exact, n)
            self._c["shared"] += min(n, len(prompt) - 1)
            common = n
        else:
            common = placement.common
        # The last prompt token is always decoded again: it yields the logits to sample from.
        reuse = min(common, len(prompt) - 1) if self._m.cache_prompt else 0
        if job.deterministic:
            reuse = min(reuse, slot.exact) // self.n_batch * self.n_batch
        if not self._m.seq_rm(slot.seq_id, reuse):
            reuse = 0
            self._m.seq_rm(slot.seq_id, 0)
        self._freed += max(len(slot.tokens) - reuse, 0)
        slot.tokens = slot.tokens[:reuse]
        slot.exact = min(slot.exact, reuse)
        slot.busy = True
        slot.last_used = self._requests
        slot.conversation_key = job.conversation_key
        if self._cache_idle:
            # Every step attends over the cache's cells up to the highest one in use (the
            # others' masked): idle conversations left there slow the running ones (17% at
            # 7.7k idle cells of 8k, and 5% at three idle 126-token exchanges, SmolLM2 on 2
            # cores). They wait in host RAM instead, as llama-server's idle slots do, and
            # come back with their next turn.
            self._evict_idle()
        if self._freed >= COMPACT_BELOW:
            # Short sequences may sit above the dropped cells: they move down. Idle ones and
            # this one (nothing decoded yet); a running stream's cells go when it ends.
            self._freed = 0
            moving = [
                s
                for s in self._slots
                if 0 < len(s.tokens) < COMPACT_BELOW and (not s.busy or s is slot)
            ]
            if slot in compact(self._m, moving):
                reuse = 0
        self._c["reused"] += reuse
        if restore is not None:
            self._c["restored"] += reuse
        job.emit(Admitted(reuse))
        try:
            sampler = SamplerChain(self._lib, self._m.vocab, job.sampling, job.seed, job.grammar)
        except BaseException as exc:
            slot.busy = False
            job.emit(exc if isinstance(exc, BackendError) else BackendError(f"llama.cpp: {exc!r}"))
            job.released()
            return
        output = self._m.text_output(job.stop_strings)
        self._active.append(_Active(job, slot, sampler, prompt[reuse:], reuse, output))

    def _step(self) -> None:
        batch = self._batch
        rows: list[tuple[_Active, int]] = []  # (sequence, batch row) whose logits are sampled
        n = 0
        decoded: list[tuple[_Active, list[int]]] = []
        for a in self._active:
            if a.next_token is not None:
                self._put(n, a.next_token, len(a.slot.tokens), a.slot.seq_id, True)
                rows.append((a, n))
                decoded.append((a, [a.next_token]))
                n += 1
        streams = n
        nb = self.n_batch
        # With streams running, prompts get a budget per step: the streams' next tokens wait
        # for the whole step, so a long prompt read in one go would stall them for seconds.
        limit = min(nb, n + self.prefill_budget) if n else nb
        for a in self._active:
            if not a.pending or n >= limit:
                continue
            base = len(a.slot.tokens)
            room = limit - n
            if a.job.deterministic:
                # Chunks cut at multiples of n_batch, whatever was reused or runs beside.
                room = min(room, nb - base % nb)
            chunk = a.pending[:room]
            last = len(chunk) == len(a.pending)
            for i, token in enumerate(chunk):
                want = last and i == len(chunk) - 1 and a.job.max_new_tokens > 0
                self._put(n, token, base + i, a.slot.seq_id, want)
                if want:
                    rows.append((a, n))
                n += 1
            decoded.append((a, chunk))
        if n == 0:
            for a in [a for a in self._active if not a.pending and a.next_token is None]:
                self._finish(a, "length")
            return
        if n > streams:
            # A step that reads a prompt takes long: the streams' held-back text goes first.
            for a in self._active:
                a.job.flush()
        batch.n_tokens = n
        rc = int(self._lib.llama_decode(self._m.ctx, batch))
        if rc == 1 and self._evict_idle():
            # No KV slot for the batch (llama.cpp restored the cache as it was): the cells of
            # idle conversations go, and the step is tried once more.
            rc = int(self._lib.llama_decode(self._m.ctx, batch))
        if rc != 0:
            self._fail_all(BackendError(f"llama_decode failed ({rc})"))
            return
        self._c["steps"] += 1
        self._c["max"] = max(self._c["max"], len(decoded))
        alone = len(decoded) == 1
        for a, tokens in decoded:
            slot = a.slot
            # A step's floats depend on its shape (llama.cpp's kernels group rows): only a
            # whole aligned chunk read in a step of its own is what a fresh read computes.
            aligned = slot.exact == len(slot.tokens) and slot.exact % nb == 0
            if alone and aligned and len(tokens) == nb and a.next_token is None:
                slot.exact += nb
            slot.tokens.extend(tokens)
            if a.next_token is not None and tokens == [a.next_token] and not a.pending:
                a.next_token = None
            else:
                del a.pending[: len(tokens)]
                self._c["evaluated"] += len(tokens)
        for a in [a for a in self._active if not a.pending and a.job.max_new_tokens == 0]:
            self._finish(a, "length")
        for a, row in rows:
            try:
                token = a.sampler.sample(self._m.ctx, row)
            except BaseException as exc:
                self._end(a, BackendError(f"llama.cpp sampling failed: {exc!r}"))
                continue
            self._on_token(a, token)

    def _evict_idle(self) -> bool:
        """Moves idle sequences' caches to the RAM cache (those worth keeping)."""
        evicted = False
        for slot in self._slots:
            if not slot.busy and slot.tokens:
                self._ram.save(self._m, slot, self._requests)
                self._drop(slot)
                evicted = True
        return evicted

    def _drop(self, slot: Slot) -> None:
        self._m.seq_rm(slot.seq_id, 0)
        self._freed += len(slot.tokens)
        slot.tokens = []
        slot.exact = 0

    def _put(self, i: int, token: int, pos: int, seq: int, logits: bool) -> None:
        b = self._batch
        b.token[i] = token
        b.pos[i] = pos
        b.n_seq_id[i] = 1
        b.seq_id[i][0] = seq
        b.logits[i] = logits

    def _on_token(self, a: _Active, token: int) -> None:
        a.completion += 1
        self._c["generated"] += 1
        if token in a.job.stop_ids or self._m.is_eog(token):
            self._finish(a, "stop")
            return
        text = a.output.feed(token)
        if text:
            a.job.emit(Chunk(text, a.output.take_unsent()))
        if a.output.stopped:
            self._finish(a, "stop")
        elif a.completion >= a.job.max_new_tokens:
            self._finish(a, "length")
        else:
            a.next_token = token

    def _finish(self, a: _Active, reason: FinishReason) -> None:
        tail = a.output.flush()
        if tail:
            a.job.emit(Chunk(tail, a.output.take_unsent()))
        n_prompt = len(a.job.prompt_tokens)
        finished = Finished(
            reason, n_prompt, a.completion, cached_tokens=a.cached, stop_sequence=a.output.matched
        )
        self._end(a, finished)

    def _end(self, a: _Active, item: Any) -> None:
        """Frees the job's sequence (its cache stays for a follow-up) and reports ``item``."""
        self._active.remove(a)
        a.sampler.close()
        a.slot.busy = False
        # Whatever was not decoded is not in the cache: the slot's tokens stay exact.
        self._publish()
        if item is not None:
            a.job.emit(item)
        a.job.released()

    def _fail_all(self, exc: BackendError) -> None:
        # The context may hold a half-written batch: start every sequence from scratch.
        self._m.clear()
        for slot in self._slots:
            slot.tokens = []
            slot.exact = 0
        for a in list(self._active):
            self._end(a, exc)

    def _publish(self) -> None:
        # Replaced whole, so a reader on another thread always sees a consistent snapshot.
        c = self._c
        self.stats = LlamaCppStats(
            tokens_generated=c["generated"],
            prompt_tokens_evaluated=c["evaluated"],
            prompt_tokens_reused=c["reused"],
            prompt_tokens_shared=c["shared"],
            prompt_tokens_restored=c["restored"],
            ram_cache_bytes=self._ram.nbytes,
            ram_cache_states=len(self._ram),
            ram_cache_hits=self._ram.hits,
            ram_cache_misses=self._ram.misses,
            ram_cache_evictions=self._ram.evictions,
            kv_cells_used=sum(len(s.tokens) for s in self._slots),
            kv_cells_total=self.n_ctx,
            sequences_busy=sum(s.busy for s in self._slots),
            steps=c["steps"],
            max_sequences_per_step=c["max"],
        )
