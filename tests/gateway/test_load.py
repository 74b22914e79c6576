"""Load on loopback: many concurrent streams through a real uvicorn, and admission overflow.

Bounded in count and time: 200 clients, a global client timeout, no timing assertions beyond
generous upper bounds (the machine is shared).
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from backends.errors import BackendUnavailable
from backends.fake import FakeBackend
from backends.scripted import ScriptedBackend, ScriptedBackendSettings, ScriptedResponse
from gateway.admission import AdmissionGate
from gateway.app import create_app
from gateway.settings import AdmissionSettings, ModelSettings, Settings
from tests.conftest import serve

MODEL = "glm-4.7-flash"
CLIENTS = 200
CLIENT_TIMEOUT = 120.0

# Reasoning and content split across several chunks, the </think> tag itself split too. The
# scripted backend cycles through these, so 200 requests get 50 of each.
SCRIPTS: list[tuple[tuple[str, ...], str, str]] = [
    (
        ("The user ", "says hi", ".</th", "ink>\n\nHello", " there", ", friend!"),
        "The user says hi.",
        "Hello there, friend!",
    ),
    (
        ("Count", "ing: 1, 2", ", 3.</think>", "One,", " two,", " three."),
        "Counting: 1, 2, 3.",
        "One, two, three.",
    ),
    (
        ("Paris is", " the capital", "</think>", "The capital", " of France", " is Paris."),
        "Paris is the capital",
        "The capital of France is Paris.",
    ),
    (
        ("Short.", "</think>", "Ü", "ñ", "íçø", "dé ✓"),
        "Short.",
        "Üñíçødé ✓",
    ),
]


def _settings(*models: ModelSettings, **extra: Any) -> Settings:
    return Settings(models=list(models), log_level="warning", **extra)


def _model(model_id: str, admission: AdmissionSettings) -> ModelSettings:
    return ModelSettings(
        id=model_id, backend=ScriptedBackendSettings(path="unused.jsonl"), admission=admission
    )


def _gate(app: FastAPI, model_id: str) -> AdmissionGate:
    gate: AdmissionGate = app.state.registry.resolve(model_id).model.gate
    return gate


def _body(model: str, *, stream: bool, content: str = "Hi") -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": content}], "stream": stream}


@dataclass
class StreamResult:
    status: int
    reasoning: str = ""
    content: str = ""
    done: bool = False
    errors: list[Any] = field(default_factory=list)
    finish_reason: str | None = None
    ids: set[str] = field(default_factory=set)
    comments: int = 0
    seconds: float = 0.0
    raw_error: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)


async def read_stream(client: httpx.AsyncClient, url: str, body: dict[str, Any]) -> StreamResult:
    """POST a streaming request and reassemble it from the SSE lines."""
    started = time.monotonic()
    async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as response:
        result = StreamResult(response.status_code, headers=dict(response.headers))
        if response.status_code != 200:
            result.raw_error = json.loads(await response.aread())
            result.seconds = time.monotonic() - started
            return result
        async for line in response.aiter_lines():
            if not line:
                continue
            if line.startswith(":"):
                result.comments += 1
                continue
            assert line.startswith("data: "), line
            assert not result.done, f"data after [DONE]: {line!r}"
            payload = line[len("data: ") :]
            if payload == "[DONE]":
                result.done = True
                continue
            event = json.loads(payload)
            if "error" in event:
                result.errors.append(event["error"])
                continue
            result.ids.add(event["id"])
            for choice in event["choices"]:
                delta = choice["delta"]
                assert not ("content" in delta and "reasoning_content" in delta)
                result.reasoning += delta.get("reasoning_content") or ""
                result.content += delta.get("content") or ""
                result.finish_reason = choice["finish_reason"] or result.finish_reason
    result.seconds = time.monotonic() - started
    return result


def _client(connections: int) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
        timeout=httpx.Timeout(CLIENT_TIMEOUT),
    )


def assert_openai_error(body: Any, *, code: str, error_type: str) -> None:
    assert isinstance(body, dict) and set(body) == {"error"}, body
    error = body["error"]
    assert set(error) >= {"message", "type", "param", "code"}, error
    assert isinstance(error["message"], str) and error["message"]
    assert error["type"] == error_type, error
    assert error["code"] == code, error


# -- 200 concurrent streams --------------------------------------------------------------------


@pytest.fixture(scope="module")
def scripted_server() -> Iterator[tuple[str, FastAPI]]:
    responses = [ScriptedResponse(chunks, delay_ms=5) for chunks, _, _ in SCRIPTS]
    settings = _settings(_model(MODEL, AdmissionSettings(max_concurrent=None, max_queue=1024)))
    app = create_app(settings, backends={MODEL: ScriptedBackend(responses)})
    with serve(app) as url:
        yield url, app


async def test_200_concurrent_streams_all_complete_exactly(
    scripted_server: tuple[str, FastAPI],
) -> None:
    url, app = scripted_server
    started = time.monotonic()
    async with _client(CLIENTS) as client:
        results = await asyncio.wait_for(
            asyncio.gather(
                *(
                    read_stream(client, url, _body(MODEL, stream=True, content=f"Hi #{i}"))
                    for i in range(CLIENTS)
                )
            ),
            CLIENT_TIMEOUT,
        )
    elapsed = time.monotonic() - started

    assert [r.status for r in results] == [200] * CLIENTS
    assert [r.errors for r in results if r.errors] == []
    assert all(r.done for r in results), "a stream ended without data: [DONE]"
    assert all(r.finish_reason == "stop" for r in results)
    # Every stream has one id of its own: no chunk went to the wrong client.
    assert all(len(r.ids) == 1 for r in results)
    assert len({next(iter(r.ids)) for r in results}) == CLIENTS
    # The script cycles: each canned answer was served to exactly a quarter of the clients, and
    # every client got one of them whole (no chunks mixed between streams).
    got = Counter((r.reasoning, r.content) for r in results)
    assert got == Counter(
        {(reasoning, content): CLIENTS // len(SCRIPTS) for _, reasoning, content in SCRIPTS}
    )

    latencies = sorted(r.seconds for r in results)
    print(
        f"\n{CLIENTS} concurrent streams: total {elapsed:.2f} s, "
        f"p50 {statistics.median(latencies):.3f} s, max {latencies[-1]:.3f} s"
    )
    gate = _gate(app, MODEL)
    assert (gate.running, gate.waiting) == (0, 0)


# -- admission overflow: 429 at once, 503 after max_wait ---------------------------------------


@pytest.fixture
def busy_server() -> Iterator[tuple[str, FastAPI, FakeBackend]]:
    # Each generation holds its place for seconds (until the test speeds the fake up).
    fake = FakeBackend(chunk_delay=2.0)
    settings = _settings(
        _model(MODEL, AdmissionSettings(max_concurrent=1, max_queue=5, max_wait=120)),
        request_timeout=None,
    )
    app = create_app(settings, backends={MODEL: fake})
    with serve(app) as url:
        yield url, app, fake


async def test_queue_overflow_gives_429_not_timeouts(
    busy_server: tuple[str, FastAPI, FakeBackend],
) -> None:
    url, app, fake = busy_server
    gate = _gate(app, MODEL)
    total, admitted = 30, 1 + 5

    async def one(client: httpx.AsyncClient, i: int) -> StreamResult:
        body = _body(MODEL, stream=i % 2 == 0, content=f"request {i}")
        if body["stream"]:
            return await read_stream(client, url, body)
        started = time.monotonic()
        response = await client.post(f"{url}/v1/chat/completions", json=body)
        result = StreamResult(response.status_code, headers=dict(response.headers))
        result.seconds = time.monotonic() - started
        if response.status_code == 200:
            message = response.json()["choices"][0]["message"]
            result.reasoning, result.content = message["reasoning_content"], message["content"]
            result.done = True
        else:
            result.raw_error = response.json()
        return result

    async with _client(total) as client:
        tasks = [asyncio.ensure_future(one(client, i)) for i in range(total)]
        try:
            # The overflow must be refused at once, while the first request still generates
            # (each of its chunks takes 2 s) and the line is still full.
            rejected: list[StreamResult] = []
            for next_done in asyncio.as_completed(tasks, timeout=60):
                result = await next_done
                assert result.status == 429, (result.status, result.raw_error)
                rejected.append(result)
                if len(rejected) == total - admitted:
                    break
            assert (gate.running, gate.waiting) == (1, 5)
            assert fake.active == 1
            # Let the admitted requests through quickly now.
            fake.chunk_delay = 0.01
            results = await asyncio.wait_for(asyncio.gather(*tasks), CLIENT_TIMEOUT)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    statuses = Counter(r.status for r in results)
    assert statuses == Counter({200: admitted, 429: total - admitted})
    for r in results:
        if r.status == 429:
            assert int(r.headers["retry-after"]) >= 1
            assert_openai_error(r.raw_error, code="queue_full", error_type="rate_limit_error")
        else:
            assert r.errors == []
            assert r.done
            assert (r.reasoning, r.content) == ("Thinking.", "Hello there!")
    # Nothing beyond one at a time ever reached the backend, and everything was let go.
    assert fake.peak_active == 1
    assert len(fake.requests) == admitted
    assert (gate.running, gate.waiting) == (0, 0)
    print(f"\n429s came back within {max(r.seconds for r in rejected):.3f} s")


@pytest.fixture
def slow_server() -> Iterator[tuple[str, FastAPI, FakeBackend]]:
    fake = FakeBackend(chunk_delay=1.0)
    settings = _settings(
        _model(MODEL, AdmissionSettings(max_concurrent=1, max_queue=5, max_wait=0.5)),
        request_timeout=None,
    )
    app = create_app(settings, backends={MODEL: fake})
    with serve(app) as url:
        yield url, app, fake


async def test_waiting_longer_than_max_wait_gives_503(
    slow_server: tuple[str, FastAPI, FakeBackend],
) -> None:
    url, app, fake = slow_server
    gate = _gate(app, MODEL)
    async with _client(4) as client:
        running = asyncio.ensure_future(
            client.post(f"{url}/v1/chat/completions", json=_body(MODEL, stream=False))
        )
        try:
            deadline = time.monotonic() + 30
            while gate.running < 1:
                assert time.monotonic() < deadline, "the first request was never admitted"
                await asyncio.sleep(0.01)
            # The first request holds the only place for ~3 s; these wait 0.5 s at most.
            plain, streamed = await asyncio.wait_for(
                asyncio.gather(
                    client.post(f"{url}/v1/chat/completions", json=_body(MODEL, stream=False)),
                    read_stream(client, url, _body(MODEL, stream=True)),
                ),
                CLIENT_TIMEOUT,
            )
            first = await asyncio.wait_for(running, CLIENT_TIMEOUT)
        finally:
            running.cancel()
            await asyncio.gather(running, return_exceptions=True)

    assert plain.status_code == 503
    assert_openai_error(plain.json(), code="queue_timeout", error_type="server_error")
    # Before any header went out, the streamed request gets the real status too.
    assert streamed.status == 503
    assert_openai_error(streamed.raw_error, code="queue_timeout", error_type="server_error")
    # The request that held the place was never interrupted.
    assert first.status_code == 200
    assert first.json()["choices"][0]["message"]["content"] == "Hello there!"
    assert len(fake.requests) == 1
    assert (gate.running, gate.waiting) == (0, 0)
    # Admitted at once, it could have waited the whole max_wait inside the engine.
    assert fake.requests[0].max_queue_wait == 0.5


async def test_an_engine_that_waited_out_max_wait_gives_the_same_503() -> None:
    # What the llama.cpp engine raises when a request found no room in its KV cache within
    # what was left of max_wait (tests/backends/test_llamacpp_batching.py runs the real one).
    refused = BackendUnavailable("no room in the KV cache in time", code="queue_timeout")
    fake = FakeBackend(fail_at_start=refused)
    settings = _settings(_model(MODEL, AdmissionSettings(max_wait=2)), request_timeout=None)
    app = create_app(settings, backends={MODEL: fake})
    with serve(app) as url:
        async with _client(2) as client:
            plain, streamed = await asyncio.wait_for(
                asyncio.gather(
                    client.post(f"{url}/v1/chat/completions", json=_body(MODEL, stream=False)),
                    read_stream(client, url, _body(MODEL, stream=True)),
                ),
                CLIENT_TIMEOUT,
            )
    assert plain.status_code == 503 and streamed.status == 503
    assert_openai_error(plain.json(), code="queue_timeout", error_type="server_error")
    assert_openai_error(streamed.raw_error, code="queue_timeout", error_type="server_error")
    assert all(0 < (r.max_queue_wait or 0) <= 2 for r in fake.requests)
    assert _gate(app, MODEL).running == 0
