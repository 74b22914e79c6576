"""Faults: a backend that fails mid-stream, one that hangs, one slow to start, and client
disconnects on the real llama.cpp engine (queued, during prompt processing, during generation).

Everything goes through a real uvicorn on loopback. Timing assertions are generous upper
bounds only; the measured times are printed (``-s``) for the record.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from backends.fake import FakeBackend
from backends.llamacpp import LlamaCppBackend, LlamaCppBackendSettings, LlamaCppOptions
from backends.scripted import ScriptedBackendSettings
from gateway.admission import AdmissionGate
from gateway.app import create_app
from gateway.settings import AdmissionSettings, ModelSettings, Settings
from tests.conftest import serve

MODEL = "glm-4.7-flash"
TIMEOUT = httpx.Timeout(60.0)


def _app(fake: FakeBackend, *, admission: AdmissionSettings | None = None, **extra: Any) -> FastAPI:
    model = ModelSettings(
        id=MODEL,
        backend=ScriptedBackendSettings(path="unused.jsonl"),
        admission=admission or AdmissionSettings(),
    )
    return create_app(
        Settings(models=[model], log_level="warning", **extra), backends={MODEL: fake}
    )


def _gate(app: FastAPI) -> AdmissionGate:
    gate: AdmissionGate = app.state.registry.resolve(MODEL).model.gate
    return gate


def _body(content: str = "Hi", **extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": content}], **extra}


@dataclass
class Stream:
    """What a client saw of an SSE response, in order."""

    status: int
    lines: list[str] = field(default_factory=list)  # non-empty lines, comments included

    @property
    def data(self) -> list[Any]:
        out: list[Any] = []
        for line in self.lines:
            if line.startswith("data: "):
                payload = line[len("data: ") :]
                out.append(payload if payload == "[DONE]" else json.loads(payload))
        return out

    @property
    def chunks(self) -> list[dict[str, Any]]:
        return [d for d in self.data if isinstance(d, dict) and "choices" in d]

    @property
    def reasoning(self) -> str:
        return "".join(
            c["choices"][0]["delta"].get("reasoning_content") or ""
            for c in self.chunks
            if c["choices"]
        )

    @property
    def content(self) -> str:
        return "".join(
            c["choices"][0]["delta"].get("content") or "" for c in self.chunks if c["choices"]
        )


async def stream(url: str, body: dict[str, Any]) -> Stream:
    async with (
        httpx.AsyncClient(timeout=TIMEOUT) as client,
        client.stream("POST", f"{url}/v1/chat/completions", json={**body, "stream": True}) as r,
    ):
        result = Stream(r.status_code)
        async for line in r.aiter_lines():
            if line:
                result.lines.append(line)
        return result


async def wait_until(condition: Callable[[], bool], what: str, timeout: float = 20.0) -> float:
    """Poll ``condition``; return the seconds it took. Fails after ``timeout``."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            pytest.fail(f"timed out after {timeout} s waiting until {what}")
        await asyncio.sleep(0.01)
    return time.monotonic() - started


def assert_openai_error(error: Any, *, code: str, error_type: str = "server_error") -> None:
    assert isinstance(error, dict), error
    assert set(error) >= {"message", "type", "param", "code"}, error
    assert isinstance(error["message"], str) and error["message"]
    assert (error["type"], error["code"]) == (error_type, code), error


# -- a backend that raises mid-stream ----------------------------------------------------------


@pytest.fixture
def failing() -> Iterator[tuple[str, FastAPI, FakeBackend]]:
    fake = FakeBackend(fail_after=2)
    app = _app(fake)
    with serve(app) as url:
        yield url, app, fake


async def test_backend_error_mid_stream_ends_with_error_event_then_next_succeeds(
    failing: tuple[str, FastAPI, FakeBackend],
) -> None:
    url, app, fake = failing
    broken = await asyncio.wait_for(stream(url, _body()), 60)
    assert broken.status == 200
    data = broken.data
    # The deltas generated before the failure reached the client ...
    assert data[0]["choices"][0]["delta"]["role"] == "assistant"
    assert broken.reasoning == "Thinking."
    assert broken.content == "Hello"
    # ... then one final error event, OpenAI-shaped, and nothing after it.
    assert isinstance(data[-1], dict) and set(data[-1]) == {"error"}, data[-1]
    assert_openai_error(data[-1]["error"], code="backend_error")
    assert "[DONE]" not in data
    assert all("error" not in d for d in data[:-1] if isinstance(d, dict))
    assert not any(c["choices"] and c["choices"][0]["finish_reason"] for c in broken.chunks)

    # Without streaming the same failure is a 502 in the same shape.
    async with httpx.AsyncClient(timeout=TIMEOUT) as client:
        r = await client.post(f"{url}/v1/chat/completions", json=_body())
    assert r.status_code == 502
    assert set(r.json()) == {"error"}
    assert_openai_error(r.json()["error"], code="backend_error")

    assert fake.active == 0
    assert fake.closed_early == 2
    assert (_gate(app).running, _gate(app).waiting) == (0, 0)

    # The next request on the same app is served normally.
    fake.fail_after = None
    healthy = await asyncio.wait_for(stream(url, _body()), 60)
    assert healthy.status == 200
    assert healthy.data[-1] == "[DONE]"
    assert all("error" not in d for d in healthy.data if isinstance(d, dict))
    assert (healthy.reasoning, healthy.content) == ("Thinking.", "Hello there!")
    async with httpx.AsyncClient(timeout=TIMEOUT) as client:
        r = await client.post(f"{url}/v1/chat/completions", json=_body())
    assert r.status_code == 200
    assert r.json()["choices"][0]["message"]["content"] == "Hello there!"
    assert fake.active == 0


# -- a backend that hangs ----------------------------------------------------------------------


@pytest.fixture
def hanging() -> Iterator[tuple[str, FastAPI, FakeBackend]]:
    fake = FakeBackend(hang_after=1)
    app = _app(fake, request_timeout=1.0)
    with serve(app) as url:
        yield url, app, fake


async def test_hanging_backend_hits_the_request_timeout(
    hanging: tuple[str, FastAPI, FakeBackend],
) -> None:
    url, app, fake = hanging
    started = time.monotonic()
    async with httpx.AsyncClient(timeout=TIMEOUT) as client:
        r = await client.post(f"{url}/v1/chat/completions", json=_body())
    took = time.monotonic() - started
    assert r.status_code == 504
    assert set(r.json()) == {"error"}
    assert_openai_error(r.json()["error"], code="request_timeout")
    assert took >= 0.9, f"the timeout fired after {took:.2f} s, before request_timeout"
    await wait_until(lambda: fake.active == 0, "the hung generation is closed")

    streamed = await asyncio.wait_for(stream(url, _body()), 60)
    assert streamed.status == 200
    assert streamed.reasoning == "Thinking."
    last = streamed.data[-1]
    assert isinstance(last, dict) and set(last) == {"error"}, last
    assert_openai_error(last["error"], code="request_timeout")
    await wait_until(lambda: fake.active == 0, "the hung generation is closed")
    assert fake.closed_early == 2
    assert (_gate(app).running, _gate(app).waiting) == (0, 0)


# -- keep-alive comments -----------------------------------------------------------------------


def _keepalives_before_first_data(result: Stream) -> int:
    count = 0
    for line in result.lines:
        if line.startswith("data: "):
            break
        assert line == ": keep-alive", line
        count += 1
    return count


async def test_slow_start_sends_keepalive_comments_before_the_first_chunk() -> None:
    fake = FakeBackend(start_delay=1.5)
    with serve(_app(fake, keepalive_interval=0.2)) as url:
        result = await asyncio.wait_for(stream(url, _body()), 60)
    assert result.status == 200
    assert _keepalives_before_first_data(result) >= 2
    assert result.data[-1] == "[DONE]"
    assert (result.reasoning, result.content) == ("Thinking.", "Hello there!")


async def test_keepalive_interval_zero_sends_no_comments() -> None:
    fake = FakeBackend(start_delay=1.5)
    with serve(_app(fake, keepalive_interval=0)) as url:
        result = await asyncio.wait_for(stream(url, _body()), 60)
    assert result.status == 200
    assert [line for line in result.lines if not line.startswith("data: ")] == []
    assert result.data[-1] == "[DONE]"
    assert (result.reasoning, result.content) == ("Thinking.", "Hello there!")


async def test_queued_stream_gets_keepalive_comments_while_it_waits() -> None:
    fake = FakeBackend(chunk_delay=1.0)
    app = _app(
        fake,
        admission=AdmissionSettings(max_concurrent=1, max_queue=4, max_wait=60),
        keepalive_interval=0.2,
    )
    with serve(app) as url:
        first = asyncio.ensure_future(stream(url, _body("first")))
        try:
            await wait_until(lambda: _gate(app).running == 1, "the first request runs")
            second = await asyncio.wait_for(stream(url, _body("second")), 60)
            done = await asyncio.wait_for(first, 60)
        finally:
            first.cancel()
            await asyncio.gather(first, return_exceptions=True)
    assert _keepalives_before_first_data(second) >= 2
    for result in (done, second):
        assert result.status == 200
        assert result.data[-1] == "[DONE]"
        assert result.content == "Hello there!"


# -- the real llama.cpp engine: disconnects free it at once -------------------------------------


ENGINE_MODEL = "smol"
LONG_STORY: dict[str, Any] = {
    "model": ENGINE_MODEL,
    "messages": [{"role": "user", "content": "Write a very long story about a dragon."}],
    "max_tokens": 1000,
    "seed": 11,
}
QUICK: dict[str, Any] = {**LONG_STORY, "max_tokens": 2, "stream": False}


@dataclass
class Engine:
    url: str
    app: FastAPI
    backend: LlamaCppBackend
    model_path: Path

    @property
    def gate(self) -> AdmissionGate:
        gate: AdmissionGate = self.app.state.registry.resolve(ENGINE_MODEL).model.gate
        return gate


@pytest.fixture(scope="module")
def engine(smollm_path: Path) -> Iterator[Engine]:
    # A small n_batch: a long prompt is evaluated in many cancellable steps.
    settings = Settings(
        models=[
            ModelSettings(
                id=ENGINE_MODEL,
                backend=LlamaCppBackendSettings(model=str(smollm_path), n_ctx=2048, n_batch=64),
            )
        ],
        log_level="warning",
    )
    # One sequence: these tests are about the line behind a busy engine.
    backend = LlamaCppBackend(
        LlamaCppOptions(model_path=str(smollm_path), n_ctx=2048, n_batch=64, parallel=1)
    )
    app = create_app(settings, backends={ENGINE_MODEL: backend})
    with serve(app) as url:
        yield Engine(url, app, backend, smollm_path)


class OpenStream:
    """A streaming request held open by a task; ``close`` is the client going away."""

    def __init__(self, url: str, body: dict[str, Any]) -> None:
        self.lines: list[str] = []
        self.status: int | None = None
        self.error: str | None = None
        self.finished = False
        self.task = asyncio.ensure_future(self._run(url, body))

    async def _run(self, url: str, body: dict[str, Any]) -> None:
        async with (
            httpx.AsyncClient(timeout=TIMEOUT) as client,
            client.stream("POST", f"{url}/v1/chat/completions", json={**body, "stream": True}) as r,
        ):
            self.status = r.status_code
            if r.status_code != 200:
                self.error = (await r.aread()).decode()
                return
            async for line in r.aiter_lines():
                if line:
                    self.lines.append(line)
        self.finished = True

    def data_lines(self) -> int:
        assert self.error is None, f"status {self.status}: {self.error}"
        return sum(line.startswith("data: ") for line in self.lines)

    def content_lines(self) -> int:
        """Data lines that carry generated text (reasoning or content)."""
        assert self.error is None, f"status {self.status}: {self.error}"
        count = 0
        for line in self.lines:
            if line.startswith("data: {"):
                for choice in json.loads(line[len("data: ") :]).get("choices", []):
                    delta = choice["delta"]
                    count += bool(delta.get("reasoning_content") or delta.get("content"))
        return count

    async def close(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        assert not self.finished, "the stream ended by itself before the client left"


class OpenRequest:
    """A non-streaming request held open by a task."""

    def __init__(self, url: str, body: dict[str, Any]) -> None:
        self.task = asyncio.ensure_future(self._run(url, body))

    async def _run(self, url: str, body: dict[str, Any]) -> None:
        async with httpx.AsyncClient(timeout=TIMEOUT) as client:
            await client.post(f"{url}/v1/chat/completions", json=body)

    async def close(self) -> None:
        assert not self.task.done(), "the request was answered before the client left"
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


@asynccontextmanager
async def closing(*held: OpenStream | OpenRequest) -> AsyncIterator[None]:
    try:
        yield
    finally:
        for h in held:
            h.task.cancel()
        await asyncio.gather(*(h.task for h in held), return_exceptions=True)


async def assert_engine_free(engine: Engine, what: str) -> float:
    """The engine stops, the gate empties, and a next request completes promptly."""
    freed = await wait_until(
        lambda: (engine.gate.running, engine.gate.waiting) == (0, 0), f"{what}: the gate empties"
    )
    generated = engine.backend.stats.tokens_generated
    await asyncio.sleep(0.5)
    assert engine.backend.stats.tokens_generated == generated, f"{what}: the engine kept going"
    started = time.monotonic()
    async with httpx.AsyncClient(timeout=TIMEOUT) as client:
        r = await client.post(f"{engine.url}/v1/chat/completions", json=QUICK)
    took = time.monotonic() - started
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] <= 2
    assert took < 30, f"{what}: the next request took {took:.1f} s"
    assert (engine.gate.running, engine.gate.waiting) == (0, 0)
    print(f"\n{what}: gate empty {freed:.3f} s after the client left; next request {took:.2f} s")
    return freed


@pytest.mark.engine
async def test_engine_disconnect_while_queued(engine: Engine) -> None:
    running = OpenStream(engine.url, LONG_STORY)
    async with closing(running):
        await wait_until(lambda: running.content_lines() >= 2, "the first request generates")
        evaluated = engine.backend.stats.prompt_tokens_evaluated
        # Two more requests wait behind it, one streaming and one not; both clients leave.
        queued_stream = OpenStream(engine.url, {**LONG_STORY, "seed": 12})
        queued_plain = OpenRequest(engine.url, {**LONG_STORY, "seed": 13, "stream": False})
        async with closing(queued_stream, queued_plain):
            await wait_until(lambda: engine.gate.waiting == 2, "two requests wait in line")
            await queued_stream.close()
            await queued_plain.close()
            left = await wait_until(lambda: engine.gate.waiting == 0, "the waiters leave the line")
        # The running stream was not disturbed, and keeps streaming.
        assert engine.gate.running == 1
        seen = running.content_lines()
        await wait_until(lambda: running.content_lines() > seen + 2, "the running stream goes on")
        assert not running.finished
        await running.close()
    await wait_until(lambda: engine.gate.running == 0, "the running request lets go")
    await asyncio.sleep(0.5)
    # The requests that left the line never reached the engine: no prompt was evaluated
    # after the first request's.
    assert engine.backend.stats.prompt_tokens_evaluated == evaluated
    print(f"\nqueued clients left the line {left:.3f} s after disconnecting")
    await assert_engine_free(engine, "disconnect while queued")


@pytest.mark.engine
async def test_engine_disconnect_during_prompt_processing(engine: Engine) -> None:
    import llama_cpp

    notes = "Summarise these notes about a fox that jumps over a lazy dog. " * 110
    # max_tokens leaves room in the 2048-token context for the ~1550-token prompt.
    body = {**LONG_STORY, "messages": [{"role": "user", "content": notes}], "max_tokens": 200}
    async with httpx.AsyncClient(timeout=TIMEOUT) as client:
        rendered = await client.post(f"{engine.url}/v1/chat/completions/render", json=body)
    vocab = llama_cpp.Llama(model_path=str(engine.model_path), vocab_only=True, verbose=False)
    try:
        prompt = vocab.tokenize(rendered.json()["prompt"].encode(), add_bos=False, special=True)
    finally:
        vocab.close()
    assert len(prompt) > 1400, len(prompt)

    stats = engine.backend.stats
    held = OpenStream(engine.url, body)
    async with closing(held):
        # Headers and the role chunk come once the engine has started on the prompt.
        await wait_until(lambda: held.data_lines() >= 1, "the stream starts")
        await wait_until(
            lambda: engine.backend.stats.prompt_tokens_evaluated > stats.prompt_tokens_evaluated,
            "the prompt evaluation is under way",
        )
        assert engine.backend.stats.tokens_generated == stats.tokens_generated
        assert held.content_lines() == 0
        await held.close()
    evaluated_at_close = engine.backend.stats.prompt_tokens_evaluated
    freed = await wait_until(lambda: engine.gate.running == 0, "the gate empties")
    # The evaluation stopped part-way (within a batch or so) and nothing was generated.
    settled = engine.backend.stats
    assert settled.prompt_tokens_evaluated - stats.prompt_tokens_evaluated < len(prompt)
    assert settled.prompt_tokens_evaluated - evaluated_at_close <= 2 * 64
    assert settled.tokens_generated == stats.tokens_generated
    await assert_engine_free(engine, "disconnect during prompt processing")
    print(
        f"prompt of {len(prompt)} tokens: "
        f"{settled.prompt_tokens_evaluated - stats.prompt_tokens_evaluated} evaluated before "
        f"the engine stopped; gate empty after {freed:.3f} s"
    )


@pytest.mark.engine
async def test_engine_disconnect_during_generation(engine: Engine) -> None:
    held = OpenStream(engine.url, {**LONG_STORY, "seed": 21})
    async with closing(held):
        await wait_until(lambda: held.content_lines() >= 5, "the stream generates")
        assert engine.gate.running == 1
        await held.close()
    at_close = engine.backend.stats.tokens_generated
    await wait_until(lambda: engine.gate.running == 0, "the gate empties")
    drift = engine.backend.stats.tokens_generated - at_close
    assert drift <= 8, f"the engine generated {drift} tokens after the client left"
    await assert_engine_free(engine, "disconnect during generation")
