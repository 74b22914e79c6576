"""The ``vllm`` backend: one or more vLLM OpenAI servers, reached over HTTP.

The gateway renders the GLM-4.7 prompt itself and sends the text to vLLM's ``/v1/completions``
(never ``/v1/chat/completions``): vLLM runs without its chat template, reasoning parser and
tool parser, and streams back the model's raw text, tags included, which then feeds the same
parser as llama.cpp's output. So both backends answer a prompt the same way.

What is sent, and why: see ``wire.completion_body``.

Replicas: each request goes to the healthy replica with the fewest requests in flight. A
background task polls every replica's ``/health`` (and, once, ``/v1/models`` for its
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

Cancellation: the consumer closing this generator (client gone) exits the httpx stream
context, which closes the connection; vLLM sees the disconnect and aborts the request.

The gateway never imports vLLM: it runs in its own environment (``scripts/setup-vllm.sh``).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx

from ..base import (
    Backend,
    BackendEvent,
    Chunk,
    Finished,
    FinishReason,
    GenerationRequest,
    ModelInfo,
    Started,
)
from ..errors import BackendError, BackendNotReady, BackendTimeout, BackendUnavailable
from .replicas import ReplicaState, ReplicaStatus, VllmReplica
from .wire import (
    client_error,
    completion_body,
    int_field,
    sse_data,
    upstream_message,
    upstream_param,
)

if TYPE_CHECKING:
    from .settings import VllmBackendSettings

logger = logging.getLogger("glm_gateway.backends.vllm")

# Statuses that say "this replica cannot serve right now" rather than "this request is wrong".
_UNAVAILABLE_STATUSES = frozenset({429, 502, 503, 504})
_CLIENT_ERROR_STATUSES = frozenset({400, 413, 422})


class _Retryable(Exception):
    """A failure before the first chunk that another replica may not have."""

    def __init__(self, error: BackendError) -> None:
        super().__init__(error.message)
        self.error = error


@dataclass(slots=True)
class _Attempt:
    """What one upstream attempt produced, for the retry decision."""

    chunks: int = 0
    finished: Finished | None = None


class VllmBackend(Backend):
    supports_grammar = True

    def __init__(
        self,
        replicas: Sequence[VllmReplica],
        *,
        model: str,
        context_length: int | None = None,
        health_interval: float = 5.0,
        client: httpx.AsyncClient | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        """``client`` or ``transport`` (e.g. ``httpx.MockTransport``) replace the real network
        in tests; a given client is not closed by ``aclose``."""
        if not replicas:
            raise ValueError("the vllm backend needs at least one replica")
        self._replicas = [ReplicaState(i, r) for i, r in enumerate(replicas)]
        self._model = model
        self._context_length = context_length
        self._health_interval = health_interval
        self._given_client = client
        self._transport = transport
        self._client: httpx.AsyncClient | None = None
        self._health_task: asyncio.Task[None] | None = None
        self._closed = False
        # Breaks ties between equally loaded replicas in turn rather than always the first.
        self._turn = itertools.count()

    @classmethod
    def from_settings(
        cls, opts: VllmBackendSettings, *, transport: httpx.AsyncBaseTransport | None = None
    ) -> VllmBackend:
        replicas = [
            VllmReplica(
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
            context_length=opts.context_length,
            health_interval=opts.health_interval,
            transport=transport,
        )

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        if self._client is not None:
            return
        self._closed = False
        self._client = self._given_client or httpx.AsyncClient(
            transport=self._transport,
            # No connection cap: every in-flight generation holds one streaming connection,
            # and the gateway's admission control already bounds how many there are.
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=32),
        )
        # One round now, so the gateway is ready as soon as a replica is; replicas that are
        # down stay out until the background checks see them up. Never raises: a gateway that
        # starts before its vLLM servers simply is not ready yet.
        await self._health_round()
        self._health_task = asyncio.create_task(self._health_loop(), name="vllm-health")

    async def aclose(self) -> None:
        self._closed = True
        task, self._health_task = self._health_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        client, self._client = self._client, None
        if client is not None and client is not self._given_client:
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
            "backend": "vllm",
            "model": self._model,
            "replicas": [
                {
                    "url": r.url,
                    "healthy": r.healthy,
                    "in_flight": r.in_flight,
                    "max_model_len": r.max_model_len,
                }
                for r in self.replicas
            ],
        }
        return ModelInfo(context_length=context, extra=extra)

    @property
    def replicas(self) -> tuple[ReplicaStatus, ...]:
        return tuple(
            ReplicaStatus(s.base, s.healthy, s.in_flight, s.max_model_len) for s in self._replicas
        )

    # -- health -----------------------------------------------------------------------------

    async def _health_loop(self) -> None:
        while True:
            await asyncio.sleep(self._health_interval)
            await self._health_round()

    async def _health_round(self) -> None:
        await asyncio.gather(*(self._check(s) for s in self._replicas))

    async def _check(self, state: ReplicaState) -> None:
        client = self._client
        if client is None:
            return
        r = state.replica
        # A health answer slower than the interval is as good as none.
        timeout = httpx.Timeout(
            connect=r.connect_timeout, read=max(self._health_interval, 2.0), write=5.0, pool=5.0
        )
        reason = ""
        try:
            response = await client.get(
                f"{state.base}/health", headers=state.headers(), timeout=timeout
            )
            healthy = response.status_code == 200
            if not healthy:
                reason = f"/health answered {response.status_code}"
            elif state.max_model_len is None:
                # Without the replica's context length there is no sane max_tokens default
                # (vLLM's is 16), so a replica only counts as up once it is known.
                state.max_model_len = await self._read_max_model_len(client, state, timeout)
                healthy = state.max_model_len is not None or self._context_length is not None
                if not healthy:
                    reason = f"no max_model_len for {self._model!r} in /v1/models"
        except Exception as exc:  # whatever went wrong, the loop goes on to the next round
            healthy = False
            reason = f"{type(exc).__name__}: {exc}"
        if healthy != state.healthy:
            if healthy:
                logger.info("%s (%s) is healthy", state.name, state.base)
            else:
                logger.warning("%s (%s) is unhealthy: %s", state.name, state.base, reason)
        state.healthy = healthy

    async def _read_max_model_len(
        self, client: httpx.AsyncClient, state: ReplicaState, timeout: httpx.Timeout
    ) -> int | None:
        response = await client.get(
            f"{state.base}/v1/models", headers=state.headers(), timeout=timeout
        )
        if response.status_code in (401, 403):
            raise BackendError(f"{state.name} rejected its api_key on /v1/models")
        response.raise_for_status()
        data = response.json()
        entries = data.get("data") if isinstance(data, dict) else None
        entries = entries if isinstance(entries, list) else []
        for entry in entries:
            if isinstance(entry, dict) and entry.get("id") == self._model:
                value = entry.get("max_model_len")
                return value if isinstance(value, int) and value > 0 else None
        served = [e.get("id") for e in entries if isinstance(e, dict)]
        logger.warning(
            "%s (%s) does not serve the model %r (it serves %s)",
            state.name,
            state.base,
            self._model,
            served,
        )
        return None

    def _mark_down(self, state: ReplicaState, why: str) -> None:
        # Passive health: a replica that refused a connection is taken out now; the health
        # loop puts it back once /health answers again.
        if state.healthy:
            logger.warning("%s (%s) taken out: %s", state.name, state.base, why)
        state.healthy = False

    # -- replica choice ---------------------------------------------------------------------

    def _pick(self, exclude: set[int]) -> ReplicaState | None:
        candidates = [s for s in self._replicas if s.healthy and s.index not in exclude]
        if not candidates:
            return None
        n = len(self._replicas)
        turn = next(self._turn) % n
        return min(candidates, key=lambda s: (s.in_flight, (s.index - turn) % n))

    # -- generation -------------------------------------------------------------------------

    async def count_tokens(self, prompt: str) -> int:
        """vLLM's own tokenizer, through its ``/tokenize`` endpoint (special tokens as text,
        exactly as ``generate`` sends the prompt)."""
        client = self._client
        state = self._pick(set())
        if client is None or self._closed or state is None:
            raise BackendUnavailable(f"No vLLM replica serving {self._model} is healthy.")
        body = {"model": self._model, "prompt": prompt, "add_special_tokens": False}
        try:
            response = await client.post(
                f"{state.base}/tokenize",
                json=body,
                headers=state.headers(),
                timeout=state.timeout(),
            )
        except httpx.HTTPError as exc:
            raise self._transport_error(state, exc, _Attempt())[0] from exc
        if response.status_code != 200:
            error = self._status_error(state, response)
            raise error.error if isinstance(error, _Retryable) else error
        count = response.json().get("count")
        if not isinstance(count, int):
            raise BackendError(f"{state.name} answered /tokenize without a token count")
        return count

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[BackendEvent, None]:
        client = self._client
        if client is None or self._closed:
            raise BackendNotReady(f"the vLLM backend for {self._model} is not started")
        tried: set[int] = set()
        started = False
        last: BackendError | None = None
        finished: Finished | None = None
        # At most two attempts: the first, and one retry on another replica.
        for _ in range(2):
            state = self._pick(tried)
            if state is None:
                break
            tried.add(state.index)
            attempt = _Attempt()
            state.in_flight += 1
            try:
                async with client.stream(
                    "POST",
                    f"{state.base}/v1/completions",
                    json=self._body(request, state),
                    headers=state.headers(),
                    timeout=state.timeout(),
                ) as response:
                    if response.status_code != 200:
                        await response.aread()
                        raise self._status_error(state, response)
                    # Headers are in: vLLM has validated the request (prompt length, grammar,
                    # sampling). The prompt's token count only arrives with the usage at the end.
                    if not started:
                        started = True
                        yield Started(prompt_tokens=0)
                    async for event in self._read(state, response, attempt):
                        yield event
            except _Retryable as exc:
                if attempt.chunks:
                    raise exc.error from exc.__cause__
                last = exc.error
                logger.warning("%s failed before the first chunk: %s", state.name, exc.error)
                continue
            except httpx.HTTPError as exc:
                error, retry = self._transport_error(state, exc, attempt)
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
                f"No vLLM replica serving {self._model} is healthy; try again shortly."
            )
        # Outside the stream context: the connection is released before the consumer sees
        # the end, whether or not it asks for it.
        yield finished

    async def _read(
        self, state: ReplicaState, response: httpx.Response, attempt: _Attempt
    ) -> AsyncIterator[Chunk]:
        """The stream's text chunks; records the end (or raises) in ``attempt``."""
        finish: str | None = None
        stop_sequence: str | None = None
        usage: dict[str, Any] | None = None
        # Tokens whose text vLLM held back (a possible stop string, a partial character): they
        # are counted with the next text that comes.
        pending = 0
        completion = 0
        done = False
        async for data in sse_data(response):
            # Read on to the end of the body after [DONE] (it comes right after): a response
            # closed early takes its connection with it, and a new one costs milliseconds.
            if done or data == "[DONE]":
                done = True
                continue
            try:
                event = json.loads(data)
            except ValueError as exc:
                raise _Retryable(BackendError(f"{state.name} sent a malformed event")) from exc
            if not isinstance(event, dict):
                continue
            if "error" in event:
                raise self._event_error(state, event["error"])
            if isinstance(event.get("usage"), dict):
                usage = event["usage"]
            for choice in event.get("choices") or ():
                if not isinstance(choice, dict):
                    continue
                ids = choice.get("token_ids")
                count = len(ids) if isinstance(ids, list) else 1
                pending += count
                completion += count
                text = choice.get("text")
                if isinstance(text, str) and text:
                    attempt.chunks += 1
                    yield Chunk(text, pending)
                    pending = 0
                if choice.get("finish_reason"):
                    finish = str(choice["finish_reason"])
                    # vLLM names the stop string that matched (or the stop token's id).
                    matched = choice.get("stop_reason")
                    stop_sequence = matched if isinstance(matched, str) else None
        if finish is None:
            # The stream ended without saying how the generation did: the replica went away.
            self._mark_down(state, "stream ended early")
            raise _Retryable(
                BackendError(f"{state.name} closed the stream before the generation finished")
            )
        if finish == "abort":
            raise _Retryable(BackendUnavailable(f"{state.name} aborted the generation"))
        if finish == "error":
            raise _Retryable(BackendError(f"{state.name} failed during the generation"))
        reason: FinishReason = "length" if finish == "length" else "stop"
        prompt_tokens = int_field(usage, "prompt_tokens")
        completion_tokens = int_field(usage, "completion_tokens")
        details = (usage or {}).get("prompt_tokens_details")
        cached = int_field(details if isinstance(details, dict) else None, "cached_tokens")
        attempt.finished = Finished(
            reason,
            prompt_tokens if prompt_tokens is not None else 0,
            completion_tokens if completion_tokens is not None else completion,
            cached_tokens=cached or 0,
            stop_sequence=stop_sequence,
        )

    # -- request body -----------------------------------------------------------------------

    def _body(self, request: GenerationRequest, state: ReplicaState) -> dict[str, Any]:
        return completion_body(
            request, self._model, context_limit=state.max_model_len or self._context_length
        )

    # -- errors -----------------------------------------------------------------------------

    def _status_error(self, state: ReplicaState, response: httpx.Response) -> Exception:
        status = response.status_code
        message = upstream_message(response)
        if status in _CLIENT_ERROR_STATUSES:
            return client_error(message, upstream_param(response))
        if status in (401, 403):
            return _Retryable(
                BackendError(
                    f"{state.name} rejected the api_key configured for it (HTTP {status}); "
                    "check the gateway's vllm replica settings."
                )
            )
        if status == 404:
            return _Retryable(
                BackendError(f"{state.name} does not serve the model {self._model!r}: {message}")
            )
        if status in _UNAVAILABLE_STATUSES:
            self._mark_down(state, f"HTTP {status}")
            return _Retryable(
                BackendUnavailable(f"{state.name} is unavailable (HTTP {status}): {message}")
            )
        return _Retryable(BackendError(f"{state.name} failed (HTTP {status}): {message}"))

    def _event_error(self, state: ReplicaState, error: Any) -> Exception:
        """An error vLLM sent as an SSE event after its 200 (e.g. the engine failed)."""
        message = str(error.get("message") if isinstance(error, dict) else error)
        code = error.get("code") if isinstance(error, dict) else None
        if code in _CLIENT_ERROR_STATUSES:
            param = error.get("param") if isinstance(error, dict) else None
            return client_error(message, param if isinstance(param, str) else None)
        return _Retryable(BackendError(f"{state.name} failed during the generation: {message}"))

    def _transport_error(
        self, state: ReplicaState, exc: httpx.HTTPError, attempt: _Attempt
    ) -> tuple[BackendError, bool]:
        """The error to raise for a network failure, and whether another replica may help."""
        if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
            self._mark_down(state, f"{type(exc).__name__}: {exc}")
            return BackendUnavailable(f"{state.name} cannot be reached"), True
        if isinstance(exc, httpx.TimeoutException):
            return (
                BackendTimeout(f"{state.name} sent nothing for {state.replica.read_timeout:g} s"),
                False,
            )
        if isinstance(exc, httpx.TransportError):
            # The connection dropped: a replica that crashed or is shutting down.
            self._mark_down(state, f"{type(exc).__name__}: {exc}")
            where = "during the generation" if attempt.chunks else "before answering"
            return BackendError(f"{state.name} dropped the connection {where}"), True
        return BackendError(f"{state.name} failed: {type(exc).__name__}"), False
