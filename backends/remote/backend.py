"""The ``remote`` backend (formerly ``vllm``): one or more servers of an engine with an OpenAI
``/v1/completions`` that returns special tokens as text (vLLM, llama-server, SGLang), over HTTP.

The gateway renders the GLM-4.7 prompt itself and sends the text to ``/v1/completions``
(never ``/v1/chat/completions``): the engine runs without its chat template, reasoning parser
and tool parser, and streams back the model's raw text, tags included, which then feeds the
same parser as llama.cpp's output. So every backend answers a prompt the same way.

What is sent, and why: see ``wire.completion_body`` and ``engines``.

Replicas: ``routing.Router`` picks one (conversation affinity under a bounded load, or least
loaded). A background task polls every replica's ``/health`` (and, once, ``/v1/models`` for its
``max_model_len``); a replica that fails is taken out, one that answers again is put back. A
connection failure seen by a request takes its replica out at once, without waiting for the
next poll. A request that fails before any text reached the consumer is retried once on
another replica; after that it never is, and the consumer gets an error.

Errors (upstream -> ours; the client sees the status and vLLM's message where it is the
client's fault, never a replica's URL or key):

====================================================  =========================================
upstream                                              raised
====================================================  =========================================
400/413/422, message about the context length         PromptTooLong (400)
400/413/422, anything else (bad grammar, ...)         BadRequest (400), vLLM's message
401/403                                               BackendError (502): api_key rejected
404 (the replica does not serve ``model``)            BackendError (502)
429, 502, 503, 504, connect error or timeout          BackendUnavailable (503)
500 and other statuses                                BackendError (502)
stream broken (connection dropped, error event)       BackendError (502)
read timeout (no chunk for ``read_timeout`` s)        BackendTimeout (504)
no healthy replica                                    BackendUnavailable (503)
====================================================  =========================================

Everything but the 4xx client errors and read timeouts is retried once on another replica
when it happens before the first chunk. A read timeout is not: the replica may still be
working on the prompt, and a retry would double the load that made it slow.

Cancellation: the consumer closing this generator (client gone) exits the HTTP stream
context, which closes the connection (``http.HttpClient.stream``); the engine sees the
disconnect and aborts the request.

The gateway never imports an engine: each runs in its own process (``scripts/setup-vllm.sh``,
``scripts/build-llama-server.sh``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, Sequence
from typing import TYPE_CHECKING, Any

from ..base import Backend, BackendEvent, Finished, GenerationRequest, ModelInfo, Started
from ..errors import BackendError, BackendNotReady, BackendUnavailable
from ..stops import StopMatcher
from . import health
from .engines import ENGINES, Engine, token_count
from .failures import Retryable, status_error, transport_error
from .http import HttpClient, UpstreamError
from .reader import Attempt, read_stream
from .replicas import RemoteReplica, ReplicaState, ReplicaStatus
from .routing import Router
from .settings import EngineName, RoutingName
from .wire import completion_body

if TYPE_CHECKING:
    from .settings import RemoteBackendSettings

logger = logging.getLogger("glm_gateway.backends.remote")


class RemoteBackend(Backend):
    supports_grammar = True

    def __init__(
        self,
        replicas: Sequence[RemoteReplica],
        *,
        model: str,
        engine: EngineName = "vllm",
        context_length: int | None = None,
        health_interval: float = 5.0,
        routing: RoutingName | None = None,
        affinity_balance: float = 0.25,
    ) -> None:
        """``routing`` None: affinity with more than one replica."""
        if not replicas:
            raise ValueError("the remote backend needs at least one replica")
        self._engine: Engine = ENGINES[engine]
        self._replicas = [
            ReplicaState(i, r, label=self._engine.label) for i, r in enumerate(replicas)
        ]
        affinity = routing == "affinity" if routing is not None else len(replicas) > 1
        self.router = Router(self._replicas, affinity=affinity, balance=affinity_balance)
        self._model = model
        self._context_length = context_length
        self._health_interval = health_interval
        self._client: HttpClient | None = None
        self._health_task: asyncio.Task[None] | None = None
        self._closed = False

    @classmethod
    def from_settings(cls, opts: RemoteBackendSettings) -> RemoteBackend:
        replicas = [
            RemoteReplica(
                url=r.url,
                api_key=r.api_key,
                connect_timeout=r.connect_timeout or opts.connect_timeout,
                read_timeout=r.read_timeout or opts.read_timeout,
            )
            for r in opts.replicas
        ]
        return cls(
            replicas,
            model=opts.model,
            engine=opts.engine,
            context_length=opts.context_length,
            health_interval=opts.health_interval,
            routing=opts.routing,
            affinity_balance=opts.affinity_balance,
        )

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        if self._client is not None:
            return
        self._closed = False
        self._client = HttpClient()
        # One round now, so the gateway is ready as soon as a replica is; replicas that are
        # down stay out until the background checks see them up. Never raises: a gateway that
        # starts before its engine servers simply is not ready yet.
        await self._health_round()
        self._health_task = asyncio.create_task(self._health_loop(), name="remote-health")

    async def aclose(self) -> None:
        self._closed = True
        task, self._health_task = self._health_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()
        for state in self._replicas:
            state.healthy = False

    @property
    def ready(self) -> bool:
        return (
            self._client is not None and not self._closed and any(s.healthy for s in self._replicas)
        )

    @property
    def info(self) -> ModelInfo:
        known = [s.max_model_len for s in self._replicas if s.max_model_len is not None]
        # The smallest replica bounds what any request can be sure of.
        context = self._context_length or (min(known) if known else None)
        extra: dict[str, object] = {
            "backend": "remote",
            "engine": self._engine.name,
            "model": self._model,
            "routing": "affinity" if self.router.affinity else "least-loaded",
            "replicas": [
                {
                    "url": r.url,
                    "healthy": r.healthy,
                    "in_flight": r.in_flight,
                    "max_model_len": r.max_model_len,
                    "routed": r.routed,
                    "affine": r.affine,
                }
                for r in self.replicas
            ],
        }
        return ModelInfo(context_length=context, extra=extra)

    @property
    def replicas(self) -> tuple[ReplicaStatus, ...]:
        return tuple(
            ReplicaStatus(s.base, s.healthy, s.in_flight, s.max_model_len, s.routed, s.affine)
            for s in self._replicas
        )

    # -- health -----------------------------------------------------------------------------

    async def _health_loop(self) -> None:
        while True:
            await asyncio.sleep(self._health_interval)
            await self._health_round()

    async def _health_round(self) -> None:
        client = self._client
        if client is None:
            return
        await asyncio.gather(
            *(
                health.check(
                    client,
                    s,
                    engine=self._engine,
                    model=self._model,
                    interval=self._health_interval,
                    configured_context=self._context_length,
                )
                for s in self._replicas
            )
        )

    def _mark_down(self, state: ReplicaState, why: str) -> None:
        # Passive health: a replica that refused a connection is taken out now; the health
        # loop puts it back once /health answers again.
        if state.healthy:
            logger.warning("%s (%s) taken out: %s", state.name, state.base, why)
        state.healthy = False

    # -- generation -------------------------------------------------------------------------

    async def count_tokens(self, prompt: str) -> int | None:
        """The engine's own tokenizer, through its ``/tokenize`` endpoint (special tokens as
        text, exactly as ``generate`` sends the prompt); None where the engine has none."""
        field = self._engine.tokenize_field
        if field is None:
            return None
        client = self._client
        state = self.router.pick(None)
        if client is None or self._closed or state is None:
            raise BackendUnavailable(f"No replica serving {self._model} is healthy.")
        body: dict[str, Any] = {"model": self._model, field: prompt}
        # vLLM: no tokenizer-added prefix; llama-server: its default (add_special false).
        body["add_special_tokens" if field == "prompt" else "add_special"] = False
        try:
            response = await client.post(
                f"{state.base}/tokenize", body, state.headers(), state.timeout()
            )
        except UpstreamError as exc:
            raise transport_error(state, exc, 0, self._mark_down)[0] from exc
        if response.status != 200:
            error = status_error(state, response, self._model, self._mark_down)
            raise error.error if isinstance(error, Retryable) else error
        count = token_count(response.json())
        if count is None:
            raise BackendError(f"{state.name} answered /tokenize without a token count")
        return count

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[BackendEvent, None]:
        client = self._client
        if client is None or self._closed:
            raise BackendNotReady(f"the remote backend for {self._model} is not started")
        tried: set[int] = set()
        started = False
        last: BackendError | None = None
        finished: Finished | None = None
        local_stops = not self._engine.reports_stop and bool(request.sampling.stop)
        key = self.router.key(request)
        # At most two attempts: the first, and one retry on another replica.
        for _ in range(2):
            state = self.router.pick(key, tried)
            if state is None:
                break
            tried.add(state.index)
            attempt = Attempt()
            stops = StopMatcher(request.sampling.stop) if local_stops else None
            state.in_flight += 1
            state.routed += 1
            try:
                async with client.stream(
                    f"{state.base}/v1/completions",
                    self._body(request, state),
                    state.headers(),
                    state.timeout(),
                ) as response:
                    if response.status != 200:
                        reply = await response.read()
                        raise status_error(state, reply, self._model, self._mark_down)
                    # Headers are in: the engine has validated the request (prompt length,
                    # grammar, sampling). The prompt's token count arrives with the usage.
                    if not started:
                        started = True
                        yield Started(prompt_tokens=0)
                    async for event in read_stream(
                        state, response, attempt, stops, self._mark_down
                    ):
                        yield event
            except Retryable as exc:
                if attempt.chunks:
                    raise exc.error from exc.__cause__
                last = exc.error
                logger.warning("%s failed before the first chunk: %s", state.name, exc.error)
                continue
            except UpstreamError as exc:
                error, retry = transport_error(state, exc, attempt.chunks, self._mark_down)
                if not retry or attempt.chunks:
                    raise error from exc
                last = error
                logger.warning("%s failed before the first chunk: %s", state.name, error)
                continue
            finally:
                state.in_flight -= 1
            finished = attempt.finished
            break
        if finished is None:
            if last is not None:
                raise last
            raise BackendUnavailable(
                f"No replica serving {self._model} is healthy; try again shortly."
            )
        # Outside the stream context: the connection is released before the consumer sees
        # the end, whether or not it asks for it.
        yield finished

    def _body(self, request: GenerationRequest, state: ReplicaState) -> dict[str, Any]:
        return completion_body(
            request,
            self._model,
            self._engine,
            context_limit=state.max_model_len or self._context_length,
        )
