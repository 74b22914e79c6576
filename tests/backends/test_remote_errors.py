"""The vllm backend against fake vLLM servers (``httpx.MockTransport``): the request it sends,
error mapping, retries, replica choice, health checks, api keys and cancellation.

The real server is exercised in ``test_vllm_real.py``; these pin down what is hard to provoke
there (a 503, a stream that breaks after one chunk, a replica rejecting its key).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from backends.base import (
    BackendEvent,
    Chunk,
    Finished,
    GenerationRequest,
    SamplingParams,
    Started,
)
from backends.errors import (
    BackendError,
    BackendNotReady,
    BackendTimeout,
    BackendUnavailable,
    BadRequest,
    PromptTooLong,
)
from backends.remote import (
    RemoteBackend,
    RemoteBackendSettings,
    RemoteReplica,
    RemoteReplicaSettings,
)
from gateway.errors import from_backend
from gateway.glm47.tokens import STOP_TOKENS

PROMPT = "[gMASK]<sop><|user|>Hi<|assistant|><think>"
REQUEST = GenerationRequest(
    prompt=PROMPT, sampling=SamplingParams(temperature=0.0), stop_tokens=STOP_TOKENS
)


def event(text: str, *, finish: str | None = None, ids: int = 1) -> dict[str, Any]:
    return {
        "choices": [
            {
                "index": 0,
                "text": text,
                "finish_reason": finish,
                "token_ids": list(range(ids)),
            }
        ]
    }


USAGE = {"choices": [], "usage": {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17}}
GOOD = [
    event("", ids=1),  # text held back by vLLM (a possible stop string)
    event("Hi", ids=1),
    event(" there.</think>", ids=2),
    event("Hello!", finish="stop", ids=1),
    USAGE,
]


def sse(*events: dict[str, Any] | str) -> list[bytes]:
    out = []
    for e in events:
        data = e if isinstance(e, str) else json.dumps(e)
        out.append(f"data: {data}\n\n".encode())
    return out


class Body(httpx.AsyncByteStream):
    """A streamed response body: parts in order; an exception part is raised there. With
    ``hang`` it then waits forever, like a long generation. Records whether it was closed."""

    def __init__(self, parts: Sequence[bytes | Exception], *, hang: bool = False) -> None:
        self.parts = parts
        self.hang = hang
        self.closed = False
        self.sent = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for part in self.parts:
            if isinstance(part, Exception):
                raise part
            self.sent += 1
            yield part
        if self.hang:
            await asyncio.Event().wait()

    async def aclose(self) -> None:
        self.closed = True


Handler = Callable[[httpx.Request], httpx.Response]


@dataclass
class FakeReplica:
    """One fake vLLM server. ``completion`` answers /v1/completions; the default streams GOOD."""

    health: int = 200
    max_model_len: int = 2048
    completion: Handler | None = None
    requests: list[httpx.Request] = field(default_factory=list)
    bodies: list[Body] = field(default_factory=list)
    health_checks: int = 0

    def completions(self) -> list[httpx.Request]:
        return [r for r in self.requests if r.url.path == "/v1/completions"]

    def stream(self, parts: Sequence[bytes | Exception], *, hang: bool = False) -> httpx.Response:
        body = Body(parts, hang=hang)
        self.bodies.append(body)
        return httpx.Response(200, stream=body, headers={"content-type": "text/event-stream"})


class FakeVllm:
    def __init__(self, n: int = 2) -> None:
        self.replicas = {f"r{i}": FakeReplica() for i in range(n)}
        self.transport = httpx.MockTransport(self.handle)

    def __getitem__(self, name: str) -> FakeReplica:
        return self.replicas[name]

    def handle(self, request: httpx.Request) -> httpx.Response:
        replica = self.replicas[request.url.host]
        replica.requests.append(request)
        path = request.url.path
        if path == "/health":
            replica.health_checks += 1
            if replica.health == 0:
                raise httpx.ConnectError("connection refused", request=request)
            return httpx.Response(replica.health)
        if replica.health == 0:
            raise httpx.ConnectError("connection refused", request=request)
        if path == "/v1/models":
            return httpx.Response(
                200,
                json={
                    "object": "list",
                    "data": [
                        {"id": "glm", "object": "model", "max_model_len": replica.max_model_len}
                    ],
                },
            )
        if path == "/v1/completions":
            if replica.completion is not None:
                return replica.completion(request)
            return replica.stream(list(sse(*GOOD, "[DONE]")))
        return httpx.Response(404)

    def backend(
        self,
        *,
        keys: dict[str, str] | None = None,
        health_interval: float = 3600.0,
        context_length: int | None = None,
        **replica_options: Any,
    ) -> RemoteBackend:
        keys = keys or {}
        replicas = [
            RemoteReplica(url=f"http://{name}:8000", api_key=keys.get(name), **replica_options)
            for name in self.replicas
        ]
        return RemoteBackend(
            replicas,
            model="glm",
            transport=self.transport,
            health_interval=health_interval,
            context_length=context_length,
        )


def error(status: int, message: str, param: str | None = None) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        body = {"error": {"message": message, "type": "BadRequestError", "param": param}}
        return httpx.Response(status, json=body)

    return handler


async def run(backend: RemoteBackend, request: GenerationRequest = REQUEST) -> list[BackendEvent]:
    return [e async for e in backend.generate(request)]


async def started(backend: RemoteBackend) -> list[BackendEvent]:
    await backend.start()
    return await run(backend)


@pytest.fixture
def fake() -> FakeVllm:
    return FakeVllm(2)


# -- the request ---------------------------------------------------------------------------


async def test_request_body_maps_sampling_and_stops(fake: FakeVllm) -> None:
    backend = fake.backend()
    await backend.start()
    request = GenerationRequest(
        prompt=PROMPT,
        sampling=SamplingParams(
            temperature=0.7,
            top_p=0.9,
            top_k=20,
            min_p=0.01,
            repeat_penalty=1.1,
            presence_penalty=0.5,
            frequency_penalty=-0.5,
            seed=-1,
            max_tokens=100,
            stop=("END", "<|user|>"),
        ),
        stop_tokens=STOP_TOKENS,
        grammar='root ::= "x"',
        request_id="chatcmpl-1",
    )
    await run(backend, request)
    sent = [json.loads(r.content) for r in fake["r0"].completions() + fake["r1"].completions()]
    assert len(sent) == 1
    assert sent[0] == {
        "model": "glm",
        "prompt": PROMPT,
        "stream": True,
        "stream_options": {"include_usage": True},
        "return_token_ids": True,
        "add_special_tokens": False,
        "skip_special_tokens": False,
        "spaces_between_special_tokens": False,
        "temperature": 0.7,
        "top_p": 0.9,
        "top_k": 20,
        "min_p": 0.01,
        "repetition_penalty": 1.1,
        "presence_penalty": 0.5,
        "frequency_penalty": -0.5,
        "seed": 0x7FFF_FFFF_FFFF_FFFF,
        "max_tokens": 100,
        "stop": ["END", "<|user|>", "<|observation|>", "<|endoftext|>"],
        "structured_outputs": {"grammar": 'root ::= "x"'},
        "request_id": "chatcmpl-1",
    }
    await backend.aclose()


async def test_unset_sampling_is_omitted_and_max_tokens_fills_the_context() -> None:
    fake = FakeVllm(1)
    fake["r0"].max_model_len = 1024
    backend = fake.backend()
    await backend.start()
    await run(backend, GenerationRequest(prompt=PROMPT, sampling=SamplingParams()))
    await run(backend, GenerationRequest(prompt=PROMPT, sampling=SamplingParams(max_tokens=5000)))
    await run(backend, GenerationRequest(prompt=PROMPT, sampling=SamplingParams(top_p=0.0)))
    first, second, third = (json.loads(r.content) for r in fake["r0"].completions())
    # vLLM's completions default is 16 tokens: the backend always says how many.
    assert first["max_tokens"] == 1024
    assert not {"temperature", "top_p", "top_k", "min_p", "seed", "stop"} & set(first)
    # vLLM refuses max_tokens above max_model_len; llama.cpp's backend clamps, so does this.
    assert second["max_tokens"] == 1024
    # vLLM refuses top_p 0; keeping only the top token is top_k 1.
    assert third["top_k"] == 1 and "top_p" not in third
    await backend.aclose()


async def test_events_count_tokens_and_take_usage(fake: FakeVllm) -> None:
    backend = fake.backend()
    events = await started(backend)
    assert events == [
        Started(prompt_tokens=0),
        Chunk("Hi", 2),  # with the token whose text was held back
        Chunk(" there.</think>", 2),
        Chunk("Hello!", 1),
        Finished("stop", 12, 5),
    ]
    await backend.aclose()


@pytest.mark.parametrize(("upstream", "ours"), [("length", "length"), ("stop", "stop")])
async def test_finish_reason(fake: FakeVllm, upstream: str, ours: str) -> None:
    for name in fake.replicas:
        fake[name].completion = lambda r, f=upstream: fake[r.url.host].stream(
            sse(event("a", finish=f), USAGE, "[DONE]")
        )
    backend = fake.backend()
    events = await started(backend)
    assert events[-1] == Finished(ours, 12, 5)  # type: ignore[arg-type]
    await backend.aclose()


async def test_context_length_from_models_or_settings(fake: FakeVllm) -> None:
    fake["r0"].max_model_len = 4096
    fake["r1"].max_model_len = 2048
    backend = fake.backend()
    assert backend.info.context_length is None
    await backend.start()
    assert backend.info.context_length == 2048  # the smallest replica bounds every request
    await backend.aclose()
    configured = fake.backend(context_length=1000)
    await configured.start()
    assert configured.info.context_length == 1000
    await configured.aclose()


async def test_replica_serving_another_model_stays_out(fake: FakeVllm) -> None:
    original = fake.handle

    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.host == "r0" and request.url.path == "/v1/models":
            return httpx.Response(200, json={"data": [{"id": "other", "max_model_len": 8}]})
        return original(request)

    fake.transport = httpx.MockTransport(handle)
    backend = fake.backend()
    await backend.start()
    assert [r.healthy for r in backend.replicas] == [False, True]
    for _ in range(3):
        await run(backend)
    assert not fake["r0"].completions() and len(fake["r1"].completions()) == 3
    await backend.aclose()


async def test_aclose_makes_it_not_ready(fake: FakeVllm) -> None:
    backend = fake.backend()
    await backend.start()
    assert backend.ready
    await backend.aclose()
    assert not backend.ready
    with pytest.raises(BackendNotReady):
        await run(backend)


async def test_not_started_is_not_ready(fake: FakeVllm) -> None:
    backend = fake.backend()
    assert not backend.ready
    with pytest.raises(BackendNotReady):
        await run(backend)


# -- error mapping --------------------------------------------------------------------------

CONTEXT_MESSAGE = (
    "This model's maximum context length is 2048 tokens. However, your prompt contains at "
    "least 2049 input tokens. (parameter=input_tokens, value=2049)"
)


@pytest.mark.parametrize(
    ("handler", "kind", "status", "needle"),
    [
        (error(400, CONTEXT_MESSAGE, "input_tokens"), PromptTooLong, 400, "2049"),
        (error(400, "Invalid grammar specification: bad"), BadRequest, 400, "grammar"),
        (error(500, "engine exploded"), BackendError, 502, "engine exploded"),
        (error(503, "overloaded"), BackendUnavailable, 503, "overloaded"),
        (error(404, "The model `glm` does not exist."), BackendError, 502, "does not serve"),
    ],
    ids=["context", "bad-request", "500", "503", "404"],
)
async def test_status_mapping(
    handler: Handler, kind: type[BackendError], status: int, needle: str
) -> None:
    fake = FakeVllm(1)
    fake["r0"].completion = handler
    backend = fake.backend()
    await backend.start()
    with pytest.raises(kind) as err:
        await run(backend)
    assert type(err.value) is kind
    assert from_backend(err.value).status_code == status
    assert needle in err.value.message
    assert "r0:8000" not in err.value.message  # the replica's address stays internal
    await backend.aclose()


async def test_context_error_names_messages() -> None:
    fake = FakeVllm(1)
    fake["r0"].completion = error(400, CONTEXT_MESSAGE, "input_tokens")
    backend = fake.backend()
    await backend.start()
    with pytest.raises(PromptTooLong) as err:
        await run(backend)
    assert err.value.message == CONTEXT_MESSAGE
    assert err.value.param == "messages"
    assert from_backend(err.value).code == "context_length_exceeded"
    await backend.aclose()


@pytest.mark.parametrize("status", [401, 403])
async def test_rejected_api_key_is_named_never_echoed(status: int) -> None:
    fake = FakeVllm(1)
    fake["r0"].completion = error(status, "Unauthorized")
    backend = fake.backend(keys={"r0": "sk-very-secret"})
    await backend.start()
    with pytest.raises(BackendError) as err:
        await run(backend)
    assert from_backend(err.value).status_code == 502
    assert "api_key" in err.value.message
    assert "sk-very-secret" not in err.value.message
    await backend.aclose()


@pytest.mark.parametrize(
    ("exc", "kind", "status"),
    [
        (httpx.ConnectError("refused"), BackendUnavailable, 503),
        (httpx.ConnectTimeout("slow"), BackendUnavailable, 503),
        (httpx.ReadTimeout("slow"), BackendTimeout, 504),
        (httpx.RemoteProtocolError("dropped"), BackendError, 502),
    ],
    ids=["connect", "connect-timeout", "read-timeout", "dropped"],
)
async def test_transport_error_mapping(
    exc: Exception, kind: type[BackendError], status: int
) -> None:
    fake = FakeVllm(1)

    def fail(request: httpx.Request) -> httpx.Response:
        raise exc

    fake["r0"].completion = fail
    backend = fake.backend()
    await backend.start()
    with pytest.raises(kind) as err:
        await run(backend)
    assert from_backend(err.value).status_code == status
    await backend.aclose()


async def test_read_timeout_is_not_retried(fake: FakeVllm) -> None:
    def slow(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    for name in fake.replicas:
        fake[name].completion = slow
    backend = fake.backend()
    await backend.start()
    with pytest.raises(BackendTimeout):
        await run(backend)
    # The replica may still be working on the prompt: a retry would double its load.
    assert len(fake["r0"].completions()) + len(fake["r1"].completions()) == 1
    await backend.aclose()


async def test_error_event_before_text_is_a_client_error(fake: FakeVllm) -> None:
    bad = {"error": {"message": "grammar rejected", "type": "BadRequestError", "code": 400}}
    for name in fake.replicas:
        fake[name].completion = lambda r: fake[r.url.host].stream(sse(bad, "[DONE]"))
    backend = fake.backend()
    await backend.start()
    with pytest.raises(BadRequest, match="grammar rejected"):
        await run(backend)
    assert len(fake["r0"].completions()) + len(fake["r1"].completions()) == 1
    await backend.aclose()


# -- retries --------------------------------------------------------------------------------


def connect_refused(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("connection refused", request=request)


def first_call_fails(fake: FakeVllm, failure: str) -> None:
    """The first /v1/completions call, on whichever replica, fails as ``failure`` says."""
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        replica = fake[request.url.host]
        if calls > 1:
            return replica.stream(sse(*GOOD, "[DONE]"))
        if failure == "connect":
            raise httpx.ConnectError("connection refused", request=request)
        if failure == "broken-before-text":
            return replica.stream([*sse(event("", ids=1)), httpx.RemoteProtocolError("closed")])
        if failure == "ended-early":
            return replica.stream(sse(event("", ids=1)))
        return error(int(failure), "upstream trouble")(request)

    for name in fake.replicas:
        fake[name].completion = handler


@pytest.mark.parametrize(
    "failure", ["connect", "503", "500", "502", "401", "404", "broken-before-text", "ended-early"]
)
async def test_failure_before_first_chunk_is_retried_once_elsewhere(
    fake: FakeVllm, failure: str
) -> None:
    first_call_fails(fake, failure)
    backend = fake.backend()
    await backend.start()
    events = await run(backend)
    assert [e for e in events if isinstance(e, Started)] == [Started(0)]  # only once
    assert events[0] == Started(0)
    assert "".join(e.text for e in events if isinstance(e, Chunk)) == "Hi there.</think>Hello!"
    assert events[-1] == Finished("stop", 12, 5)
    # One attempt on each replica: the retry went elsewhere.
    assert [len(fake[n].completions()) for n in fake.replicas] == [1, 1]
    await backend.aclose()


async def test_single_replica_is_not_retried_on_itself() -> None:
    fake = FakeVllm(1)
    first_call_fails(fake, "503")
    backend = fake.backend()
    await backend.start()
    with pytest.raises(BackendUnavailable):
        await run(backend)
    assert len(fake["r0"].completions()) == 1
    await backend.aclose()


async def test_retried_only_once() -> None:
    fake = FakeVllm(3)
    for name in fake.replicas:
        fake[name].completion = error(503, "busy")
    backend = fake.backend()
    await backend.start()
    with pytest.raises(BackendUnavailable):
        await run(backend)
    assert sum(len(fake[n].completions()) for n in fake.replicas) == 2
    await backend.aclose()


async def test_client_errors_are_not_retried(fake: FakeVllm) -> None:
    for name in fake.replicas:
        fake[name].completion = error(400, "temperature must be non-negative")
    backend = fake.backend()
    await backend.start()
    with pytest.raises(BadRequest):
        await run(backend)
    assert len(fake["r0"].completions()) + len(fake["r1"].completions()) == 1
    await backend.aclose()


async def test_failure_after_first_chunk_is_an_error_not_a_retry(fake: FakeVllm) -> None:
    for name in fake.replicas:
        fake[name].completion = lambda r: fake[r.url.host].stream(
            [*sse(event("Hi", ids=1)), httpx.ReadError("connection reset")]
        )
    backend = fake.backend()
    await backend.start()
    got: list[BackendEvent] = []
    with pytest.raises(BackendError) as err:
        async for e in backend.generate(REQUEST):
            got.append(e)
    assert got == [Started(0), Chunk("Hi", 1)]
    assert from_backend(err.value).status_code == 502
    assert "during the generation" in err.value.message
    assert len(fake["r0"].completions()) + len(fake["r1"].completions()) == 1
    await backend.aclose()


async def test_abort_after_first_chunk_is_an_error(fake: FakeVllm) -> None:
    # vLLM ends a request it aborted itself (shutting down) with finish_reason "abort".
    for name in fake.replicas:
        fake[name].completion = lambda r: fake[r.url.host].stream(
            sse(event("Hi", ids=1), event("", finish="abort"), "[DONE]")
        )
    backend = fake.backend()
    await backend.start()
    with pytest.raises(BackendUnavailable, match="aborted"):
        await run(backend)
    await backend.aclose()


async def test_error_event_after_first_chunk_is_an_error(fake: FakeVllm) -> None:
    bad = {
        "error": {"message": "Internal server error", "type": "InternalServerError", "code": 500}
    }
    for name in fake.replicas:
        fake[name].completion = lambda r: fake[r.url.host].stream(
            sse(event("Hi", ids=1), bad, "[DONE]")
        )
    backend = fake.backend()
    await backend.start()
    with pytest.raises(BackendError, match="Internal server error"):
        await run(backend)
    assert len(fake["r0"].completions()) + len(fake["r1"].completions()) == 1
    await backend.aclose()


async def test_no_healthy_replica_is_503(fake: FakeVllm) -> None:
    for name in fake.replicas:
        fake[name].health = 503
    backend = fake.backend()
    await backend.start()
    assert not backend.ready
    with pytest.raises(BackendUnavailable, match="healthy"):
        await run(backend)
    assert not fake["r0"].completions() and not fake["r1"].completions()
    await backend.aclose()


# -- replica choice and health ---------------------------------------------------------------


async def test_least_in_flight_replica_is_chosen() -> None:
    fake = FakeVllm(3)
    for name in fake.replicas:
        fake[name].completion = lambda r: fake[r.url.host].stream(
            sse(event("Hi", ids=1)), hang=True
        )
    backend = fake.backend()
    await backend.start()

    def counts() -> list[int]:
        return [len(fake[n].completions()) for n in fake.replicas]

    async def open_one() -> tuple[AsyncGenerator[BackendEvent, None], int]:
        before = counts()
        gen = backend.generate(REQUEST)
        assert await anext(gen) == Started(0)
        after = counts()
        (where,) = [i for i, (a, b) in enumerate(zip(before, after, strict=True)) if a != b]
        return gen, where

    gens = [await open_one() for _ in range(3)]
    # Three long generations: one on each replica.
    assert sorted(where for _, where in gens) == [0, 1, 2]
    assert [r.in_flight for r in backend.replicas] == [1, 1, 1]
    # A fourth makes one replica busier; then whichever replica is freed gets the next one.
    extra, busiest = await open_one()
    freed_gen, freed = next((g, w) for g, w in gens if w != busiest)
    await freed_gen.aclose()
    assert backend.replicas[freed].in_flight == 0
    nxt, where = await open_one()
    assert where == freed
    for gen in (nxt, extra, *(g for g, _ in gens)):
        await gen.aclose()
    assert [r.in_flight for r in backend.replicas] == [0, 0, 0]
    await backend.aclose()


async def test_health_checks_take_replicas_out_and_back(fake: FakeVllm) -> None:
    r0, r1 = fake["r0"], fake["r1"]
    r1.health = 503
    backend = fake.backend(health_interval=0.02)
    await backend.start()
    assert backend.ready
    for _ in range(4):
        await run(backend)
    assert len(r0.completions()) == 4 and not r1.completions()

    async def until(condition: Callable[[], bool]) -> None:
        async with asyncio.timeout(5):
            while not condition():
                await asyncio.sleep(0.01)

    r1.health = 200
    await until(lambda: backend.replicas[1].healthy)
    r0.health = 0  # connection refused
    await until(lambda: not backend.replicas[0].healthy)
    for _ in range(3):
        await run(backend)
    assert len(r0.completions()) == 4 and len(r1.completions()) == 3

    r1.health = 503
    await until(lambda: not backend.ready)
    with pytest.raises(BackendUnavailable):
        await run(backend)
    r0.health = 200
    await until(lambda: backend.ready)
    await run(backend)
    assert len(r0.completions()) == 5
    await backend.aclose()
    checks = r0.health_checks
    await asyncio.sleep(0.1)
    assert r0.health_checks == checks  # aclose() stopped the health loop


async def test_connection_failure_takes_a_replica_out_at_once(fake: FakeVllm) -> None:
    fake["r0"].completion = connect_refused
    backend = fake.backend()
    await backend.start()
    for _ in range(4):
        await run(backend)
    # Idle replicas take turns, so r0 got the first request and refused it; the health loop
    # has not run again (interval 1 h), yet r0 is out: the retry and later requests skip it.
    assert len(fake["r0"].completions()) == 1
    assert len(fake["r1"].completions()) == 4
    assert not backend.replicas[0].healthy
    await backend.aclose()


# -- api keys, timeouts, cancellation --------------------------------------------------------


async def test_api_key_per_replica(fake: FakeVllm) -> None:
    backend = fake.backend(keys={"r0": "key-zero"})
    await backend.start()
    # Idle replicas take turns: one request each.
    await run(backend)
    await run(backend)
    (first,) = fake["r0"].completions()
    (second,) = fake["r1"].completions()
    assert first.headers["authorization"] == "Bearer key-zero"
    assert "authorization" not in second.headers
    await backend.aclose()


async def test_from_settings_replica_overrides_backend(fake: FakeVllm) -> None:
    backend = RemoteBackend.from_settings(
        RemoteBackendSettings(
            model="glm",
            connect_timeout=3,
            read_timeout=30,
            health_interval=3600,
            replicas=[
                RemoteReplicaSettings(url="http://r0:8000", api_key="k0", read_timeout=99),
                RemoteReplicaSettings(url="http://r1:8000/", connect_timeout=1),
            ],
        ),
        transport=fake.transport,
    )
    assert backend.supports_grammar
    await backend.start()
    assert [r.url for r in backend.replicas] == ["http://r0:8000", "http://r1:8000"]
    await run(backend)
    await run(backend)
    (first,) = fake["r0"].completions()
    (second,) = fake["r1"].completions()
    assert first.extensions["timeout"]["connect"] == 3
    assert first.extensions["timeout"]["read"] == 99
    assert first.headers["authorization"] == "Bearer k0"
    assert second.extensions["timeout"]["connect"] == 1
    assert second.extensions["timeout"]["read"] == 30
    assert "authorization" not in second.headers
    await backend.aclose()


async def test_replica_timeouts_reach_the_request(fake: FakeVllm) -> None:
    backend = fake.backend(connect_timeout=2.5, read_timeout=42.0)
    await backend.start()
    await run(backend)
    (request,) = fake["r0"].completions() + fake["r1"].completions()
    timeout = request.extensions["timeout"]
    assert timeout["connect"] == 2.5 and timeout["read"] == 42.0
    await backend.aclose()


async def test_closing_the_generator_closes_the_upstream_response(fake: FakeVllm) -> None:
    for name in fake.replicas:
        fake[name].completion = lambda r: fake[r.url.host].stream(
            sse(event("Hi", ids=1), event(" there", ids=1)), hang=True
        )
    backend = fake.backend()
    await backend.start()
    gen = backend.generate(REQUEST)
    assert await anext(gen) == Started(0)
    assert await anext(gen) == Chunk("Hi", 1)
    (body,) = fake["r0"].bodies + fake["r1"].bodies
    assert not body.closed
    await gen.aclose()  # the client went away
    assert body.closed
    assert [r.in_flight for r in backend.replicas] == [0, 0]
    await backend.aclose()


async def test_cancelling_the_consumer_task_closes_the_upstream_response(fake: FakeVllm) -> None:
    for name in fake.replicas:
        fake[name].completion = lambda r: fake[r.url.host].stream(
            sse(event("Hi", ids=1)), hang=True
        )
    backend = fake.backend()
    await backend.start()
    seen = asyncio.Event()

    async def consume() -> None:
        async for e in backend.generate(REQUEST):
            if isinstance(e, Chunk):
                seen.set()

    task = asyncio.create_task(consume())
    await seen.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    (body,) = fake["r0"].bodies + fake["r1"].bodies
    assert body.closed
    await backend.aclose()
