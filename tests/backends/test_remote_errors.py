"""The remote backend against fake vLLM servers (real HTTP on loopback ports, aiohttp's
server): the request it sends, error mapping, retries, replica choice, health checks, api keys
and cancellation.

The real server is exercised in ``test_vllm_real.py``; these pin down what is hard to provoke
there (a 503, a stream that breaks after one chunk, a replica rejecting its key).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Mapping,
    Sequence,
)
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web

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


# A point in a streamed body where the fake server breaks the connection (no chunked end).
DROP = object()
Part = bytes | object


@dataclass
class Body:
    """A streamed response body: parts in order; at ``DROP`` the connection is cut. With
    ``hang`` it then waits, like a long generation, until the client closes the connection;
    ``closed`` records that it did."""

    parts: Sequence[Part]
    hang: bool = False
    closed: bool = False


@dataclass
class Canned:
    """What a fake server answers: a status with a JSON body, or a streamed ``Body``.
    ``delay``: seconds before the headers; ``drop``: cut the connection instead of answering."""

    status: int = 200
    json: Any = None
    body: Body | None = None
    delay: float = 0.0
    drop: bool = False


@dataclass(frozen=True)
class Url:
    host: str
    path: str


@dataclass(frozen=True)
class Seen:
    """A request as the fake server received it (``url.host`` is the replica's name)."""

    url: Url
    headers: Mapping[str, str]
    content: bytes


Handler = Callable[[Seen], Canned]


@dataclass
class FakeReplica:
    """One fake vLLM server on a loopback port, speaking real HTTP. ``completion`` answers
    /v1/completions; the default streams GOOD. ``refuse`` stops listening (and cuts open
    connections): the next connection is refused, as by a server that went away."""

    name: str
    health: int = 200
    max_model_len: int = 2048
    completion: Handler | None = None
    requests: list[Seen] = field(default_factory=list)
    bodies: list[Body] = field(default_factory=list)
    health_checks: int = 0
    port: int = 0
    _handler: web.Server | None = None
    _server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def completions(self) -> list[Seen]:
        return [r for r in self.requests if r.url.path == "/v1/completions"]

    def stream(self, parts: Sequence[Part], *, hang: bool = False) -> Canned:
        body = Body(parts, hang=hang)
        self.bodies.append(body)
        return Canned(body=body)

    async def listen(self) -> None:
        self._handler = web.Server(self._handle)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._handler, "127.0.0.1", self.port, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def refuse(self) -> None:
        server, handler = self._server, self._handler
        self._server = self._handler = None
        if server is not None and handler is not None:
            server.close()
            await handler.shutdown(0.1)
            await server.wait_closed()

    def answer(self, request: Seen) -> Canned:
        path = request.url.path
        if path == "/health":
            self.health_checks += 1
            return Canned(self.health)
        if path == "/v1/models":
            model = {"id": "glm", "object": "model", "max_model_len": self.max_model_len}
            return Canned(json={"object": "list", "data": [model]})
        if path == "/v1/completions":
            if self.completion is not None:
                return self.completion(request)
            return self.stream(list(sse(*GOOD, "[DONE]")))
        return Canned(404)

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        seen = Seen(Url(self.name, request.path), request.headers, await request.read())
        self.requests.append(seen)
        canned = self.answer(seen)
        if canned.delay:
            await asyncio.sleep(canned.delay)
        transport = request.transport
        if canned.drop and transport is not None:
            transport.abort()
        if canned.body is None:
            text = "" if canned.json is None else json.dumps(canned.json)
            return web.Response(status=canned.status, text=text, content_type="application/json")
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        body = canned.body
        with contextlib.suppress(ConnectionError):
            for part in body.parts:
                if part is DROP:
                    if transport is not None:
                        transport.abort()
                    return response
                assert isinstance(part, bytes)
                await response.write(part)
            if body.hang:
                while transport is not None and not transport.is_closing():
                    await asyncio.sleep(0.005)
                body.closed = True
                return response
            await response.write_eof()
        return response


class FakeVllm:
    """Fake replicas, each its own server; ``async with FakeVllm(n) as fake``."""

    def __init__(self, n: int = 2) -> None:
        self.replicas = {f"r{i}": FakeReplica(f"r{i}") for i in range(n)}

    def __getitem__(self, name: str) -> FakeReplica:
        return self.replicas[name]

    async def __aenter__(self) -> FakeVllm:
        for replica in self.replicas.values():
            await replica.listen()
        return self

    async def __aexit__(self, *exc: object) -> None:
        for replica in self.replicas.values():
            await replica.refuse()

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
            RemoteReplica(url=r.url, api_key=keys.get(name), **replica_options)
            for name, r in self.replicas.items()
        ]
        return RemoteBackend(
            replicas, model="glm", health_interval=health_interval, context_length=context_length
        )


def error(status: int, message: str, param: str | None = None) -> Handler:
    def handler(request: Seen) -> Canned:
        return Canned(status, {"error": {"message": message, "type": "Error", "param": param}})

    return handler


async def until(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(5):
        while not condition():
            await asyncio.sleep(0.01)


async def run(backend: RemoteBackend, request: GenerationRequest = REQUEST) -> list[BackendEvent]:
    return [e async for e in backend.generate(request)]


async def started(backend: RemoteBackend) -> list[BackendEvent]:
    await backend.start()
    return await run(backend)


Opener = Callable[[int], Awaitable[FakeVllm]]


@pytest.fixture
async def open_fake() -> AsyncIterator[Opener]:
    """Opens fake replica sets for a test, and closes them after it."""
    opened: list[FakeVllm] = []

    async def open_(n: int) -> FakeVllm:
        fake = FakeVllm(n)
        opened.append(fake)
        return await fake.__aenter__()

    yield open_
    for fake in opened:
        await fake.__aexit__()


@pytest.fixture
async def fake(open_fake: Opener) -> FakeVllm:
    return await open_fake(2)


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


async def test_unset_sampling_is_omitted_and_max_tokens_fills_the_context(
    open_fake: Opener,
) -> None:
    fake = await open_fake(1)
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
    # How many chunks depends on how the events arrive (those read together are one chunk);
    # their texts and token counts do not.
    assert events[0] == Started(prompt_tokens=0)
    assert events[-1] == Finished("stop", 12, 5)
    chunks = events[1:-1]
    assert all(isinstance(c, Chunk) for c in chunks)
    assert "".join(c.text for c in chunks if isinstance(c, Chunk)) == "Hi there.</think>Hello!"
    assert sum(c.tokens for c in chunks if isinstance(c, Chunk)) == 5
    # The token whose text was held back is counted with the first text.
    assert isinstance(chunks[0], Chunk) and chunks[0].tokens >= 2
    await backend.aclose()


async def test_events_that_arrive_together_are_one_chunk(fake: FakeVllm) -> None:
    for name in fake.replicas:
        fake[name].completion = lambda r: fake[r.url.host].stream([b"".join(sse(*GOOD, "[DONE]"))])
    backend = fake.backend()
    events = await started(backend)
    assert events == [
        Started(prompt_tokens=0),
        Chunk("Hi there.</think>Hello!", 5),
        Finished("stop", 12, 5),
    ]
    await backend.aclose()
    # A text-less event after the last text (the end) adds no tokens to that text's chunk.
    tail = [event("a", ids=1), event("", finish="stop", ids=1), USAGE, "[DONE]"]
    for name in fake.replicas:
        fake[name].completion = lambda r: fake[r.url.host].stream([b"".join(sse(*tail))])
    backend = fake.backend()
    events = await started(backend)
    assert events[1:-1] == [Chunk("a", 1)]
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
    original = fake["r0"].answer

    def answer(request: Seen) -> Canned:
        if request.url.path == "/v1/models":
            return Canned(json={"data": [{"id": "other", "max_model_len": 8}]})
        return original(request)

    fake["r0"].answer = answer  # type: ignore[method-assign]
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
    handler: Handler, kind: type[BackendError], status: int, needle: str, open_fake: Opener
) -> None:
    fake = await open_fake(1)
    fake["r0"].completion = handler
    backend = fake.backend()
    await backend.start()
    with pytest.raises(kind) as err:
        await run(backend)
    assert type(err.value) is kind
    assert from_backend(err.value).status_code == status
    assert needle in err.value.message
    # The replica's address stays internal.
    assert f":{fake['r0'].port}" not in err.value.message
    await backend.aclose()


async def test_context_error_names_messages(open_fake: Opener) -> None:
    fake = await open_fake(1)
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
async def test_rejected_api_key_is_named_never_echoed(status: int, open_fake: Opener) -> None:
    fake = await open_fake(1)
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
    ("failure", "kind", "status"),
    [
        ("refused", BackendUnavailable, 503),
        ("slow", BackendTimeout, 504),
        ("dropped", BackendError, 502),
    ],
)
async def test_transport_error_mapping(
    failure: str, kind: type[BackendError], status: int, open_fake: Opener
) -> None:
    fake = await open_fake(1)
    # A connect timeout cannot be staged on loopback; it maps as a refused connection does.
    fake["r0"].completion = lambda r: Canned(delay=1.0 if failure == "slow" else 0.0, drop=True)
    backend = fake.backend(read_timeout=0.2)
    await backend.start()
    if failure == "refused":
        await fake["r0"].refuse()
    with pytest.raises(kind) as err:
        await run(backend)
    assert from_backend(err.value).status_code == status
    await backend.aclose()


async def test_read_timeout_is_not_retried(fake: FakeVllm) -> None:
    for name in fake.replicas:
        fake[name].completion = lambda r: Canned(delay=1.0, drop=True)
    backend = fake.backend(read_timeout=0.2)
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


async def first_call_fails(fake: FakeVllm, failure: str) -> None:
    """The first /v1/completions call, on whichever replica, fails as ``failure`` says
    ("connect": the first replica picked, r0, no longer listens)."""
    if failure == "connect":
        await fake["r0"].refuse()
        return
    calls = 0

    def handler(request: Seen) -> Canned:
        nonlocal calls
        calls += 1
        replica = fake[request.url.host]
        if calls > 1:
            return replica.stream(sse(*GOOD, "[DONE]"))
        if failure == "broken-before-text":
            return replica.stream([*sse(event("", ids=1)), DROP])
        if failure == "ended-early":
            return replica.stream(sse(event("", ids=1)))
        if failure == "dropped":
            return Canned(drop=True)
        return error(int(failure), "upstream trouble")(request)

    for name in fake.replicas:
        fake[name].completion = handler


@pytest.mark.parametrize(
    "failure",
    ["connect", "503", "500", "502", "401", "404", "dropped", "broken-before-text", "ended-early"],
)
async def test_failure_before_first_chunk_is_retried_once_elsewhere(
    fake: FakeVllm, failure: str
) -> None:
    backend = fake.backend()
    await backend.start()
    await first_call_fails(fake, failure)
    events = await run(backend)
    assert [e for e in events if isinstance(e, Started)] == [Started(0)]  # only once
    assert events[0] == Started(0)
    assert "".join(e.text for e in events if isinstance(e, Chunk)) == "Hi there.</think>Hello!"
    assert events[-1] == Finished("stop", 12, 5)
    # One attempt on each replica: the retry went elsewhere (a refused connection never
    # reached r0's server).
    # A connection closed before any answer is first tried again on a fresh connection to the
    # same replica (a kept-alive connection closed by the server as it was reused).
    expected = {"connect": [0, 1], "dropped": [2, 0]}.get(failure, [1, 1])
    assert [len(fake[n].completions()) for n in fake.replicas] == expected
    await backend.aclose()


async def test_single_replica_is_not_retried_on_itself(open_fake: Opener) -> None:
    fake = await open_fake(1)
    backend = fake.backend()
    await backend.start()
    await first_call_fails(fake, "503")
    with pytest.raises(BackendUnavailable):
        await run(backend)
    assert len(fake["r0"].completions()) == 1
    await backend.aclose()


async def test_retried_only_once(open_fake: Opener) -> None:
    fake = await open_fake(3)
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
        fake[name].completion = lambda r: fake[r.url.host].stream([*sse(event("Hi", ids=1)), DROP])
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


async def test_a_malformed_event_after_text_is_an_error_and_before_it_a_retry(
    fake: FakeVllm,
) -> None:
    # Both in one network read: the text before the bad event still reaches the client.
    fake["r0"].completion = lambda r: fake["r0"].stream(
        [b"".join(sse(event("Hi", ids=1))) + b"data: {not json\n\n"]
    )
    fake["r1"].completion = fake["r0"].completion
    backend = fake.backend()
    await backend.start()
    got: list[BackendEvent] = []
    with pytest.raises(BackendError, match="malformed"):
        async for e in backend.generate(REQUEST):
            got.append(e)
    assert got == [Started(0), Chunk("Hi", 1)]
    assert len(fake["r0"].completions()) + len(fake["r1"].completions()) == 1
    await backend.aclose()
    # Nothing sent yet: another replica is tried.
    for name, answer in (("r0", [b"data: {not json\n\n"]), ("r1", list(sse(*GOOD, "[DONE]")))):
        fake[name].completion = lambda r, a=answer, n=name: fake[n].stream(a)
    backend = fake.backend()
    await backend.start()
    for _ in range(4):  # whichever replica is picked first
        events = await run(backend)
        assert "".join(e.text for e in events if isinstance(e, Chunk)) == "Hi there.</think>Hello!"
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


async def test_least_in_flight_replica_is_chosen(open_fake: Opener) -> None:
    fake = await open_fake(3)
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

    r1.health = 200
    await until(lambda: backend.replicas[1].healthy)
    await r0.refuse()
    await until(lambda: not backend.replicas[0].healthy)
    for _ in range(3):
        await run(backend)
    assert len(r0.completions()) == 4 and len(r1.completions()) == 3

    r1.health = 503
    await until(lambda: not backend.ready)
    with pytest.raises(BackendUnavailable):
        await run(backend)
    r0.health = 200
    await r0.listen()
    await until(lambda: backend.ready)
    await run(backend)
    assert len(r0.completions()) == 5
    await backend.aclose()
    checks = r0.health_checks
    await asyncio.sleep(0.1)
    assert r0.health_checks == checks  # aclose() stopped the health loop


async def test_connection_failure_takes_a_replica_out_at_once(fake: FakeVllm) -> None:
    backend = fake.backend()
    await backend.start()
    await fake["r0"].refuse()
    for _ in range(4):
        await run(backend)
    # Idle replicas take turns, so r0 got the first request and refused the connection; the
    # health loop has not run again (interval 1 h), yet r0 is out: the retry and later
    # requests skip it.
    assert len(fake["r0"].completions()) == 0
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
    r0, r1 = fake["r0"], fake["r1"]
    backend = RemoteBackend.from_settings(
        RemoteBackendSettings(
            model="glm",
            connect_timeout=3,
            read_timeout=30,
            health_interval=3600,
            replicas=[
                RemoteReplicaSettings(url=r0.url, api_key="k0", read_timeout=0.2),
                RemoteReplicaSettings(url=r1.url + "/", connect_timeout=1),
            ],
        )
    )
    assert backend.supports_grammar
    await backend.start()
    assert [r.url for r in backend.replicas] == [r0.url, r1.url]
    await run(backend)
    await run(backend)
    (first,) = r0.completions()
    (second,) = r1.completions()
    assert first.headers["Authorization"] == "Bearer k0"
    assert "Authorization" not in second.headers

    # r0's own read timeout (0.2 s) is in force, r1 has the backend's (30 s); the connect
    # timeouts cannot be staged on loopback.
    def slow(request: Seen) -> Canned:
        canned = fake[request.url.host].stream(sse(*GOOD, "[DONE]"))
        canned.delay = 0.5
        return canned

    r0.completion = r1.completion = slow
    with pytest.raises(BackendTimeout):
        await run(backend)  # r0's turn
    events = await run(backend)  # r1's turn
    assert events[-1] == Finished("stop", 12, 5)
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
    first = await anext(gen)
    # One chunk or two, as the events happen to arrive.
    assert first in (Chunk("Hi", 1), Chunk("Hi there", 2))
    (body,) = fake["r0"].bodies + fake["r1"].bodies
    assert not body.closed
    await gen.aclose()  # the client went away
    await until(lambda: body.closed)
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
    await until(lambda: body.closed)
    await backend.aclose()


async def test_events_split_anywhere_and_crlf_read_the_same(fake: FakeVllm) -> None:
    whole = b"".join(sse(*GOOD, "[DONE]")).replace(b"\n", b"\r\n")
    pieces = [whole[i : i + 7] for i in range(0, len(whole), 7)]
    for name in fake.replicas:
        fake[name].completion = lambda r: fake[r.url.host].stream(pieces)
    backend = fake.backend()
    events = await started(backend)
    assert events[-1] == Finished("stop", 12, 5)
    chunks = [e for e in events[1:-1] if isinstance(e, Chunk)]
    assert len(chunks) == len(events) - 2
    assert "".join(c.text for c in chunks) == "Hi there.</think>Hello!"
    assert sum(c.tokens for c in chunks) == 5
    await backend.aclose()
