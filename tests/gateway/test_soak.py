"""Soak: thousands of requests through a real uvicorn; the gateway's memory settles.

The server runs in this process (a thread), so its resident set is this process's: sampled from
``/proc/self/statm`` after a warm-up and then after every batch. The client lives in the same
process, so a leak on either side shows; the comparison is between the middle and the last
third of the run, so one-off growth while caches and pools fill up does not count.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import resource
import statistics
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from backends.scripted import ScriptedBackend, ScriptedBackendSettings, ScriptedResponse
from gateway.admission import AdmissionGate
from gateway.app import create_app
from gateway.settings import AdmissionSettings, ModelSettings, Settings
from tests.conftest import serve

MODEL = "glm-4.7-flash"
TOTAL = 3000
WARMUP = 300
BATCH = 50
CONCURRENCY = 25
TIME_LIMIT = 90.0  # seconds, for the whole run; a normal run takes a fraction of it
GROWTH_LIMIT = 8 * 1024 * 1024  # bytes, last third's mean RSS over the middle third's
PAGE = resource.getpagesize()

REASONING = "The user wants a greeting."
CONTENT = "Hello! How can I help you today?"
SCRIPT = [
    ScriptedResponse(
        (
            "The user ",
            "wants a ",
            "greeting.</th",
            "ink>\n\n",
            "Hello! ",
            "How can ",
            "I help you today?",
        )
    ),
]


def rss_bytes() -> int:
    statm = Path("/proc/self/statm")
    if not statm.exists():
        pytest.skip("needs /proc/self/statm (Linux)")
    return int(statm.read_text().split()[1]) * PAGE


@pytest.fixture(scope="module")
def soak_server() -> Iterator[tuple[str, FastAPI]]:
    settings = Settings(
        models=[
            ModelSettings(
                id=MODEL,
                backend=ScriptedBackendSettings(path="unused.jsonl"),
                admission=AdmissionSettings(max_concurrent=None, max_queue=256),
            )
        ],
        log_level="warning",
    )
    app = create_app(settings, backends={MODEL: ScriptedBackend(SCRIPT)})
    with serve(app) as url:
        yield url, app


def _body(i: int, *, stream: bool) -> dict[str, Any]:
    # A different prompt every time, so nothing is served from any cache by accident.
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": f"Hello number {i}"}],
        "stream": stream,
        **({"stream_options": {"include_usage": True}} if stream and i % 4 == 0 else {}),
    }


async def _one(client: httpx.AsyncClient, url: str, i: int) -> str:
    """One request of the mix; returns its kind. Asserts its answer is right."""
    kind = (
        "plain",
        "stream",
        "plain",
        "stream",
        "plain",
        "stream",
        "plain",
        "stream",
        "bad",
        "missing",
    )[i % 10]
    if kind == "plain":
        r = await client.post(f"{url}/v1/chat/completions", json=_body(i, stream=False))
        assert r.status_code == 200, r.text
        message = r.json()["choices"][0]["message"]
        assert (message["reasoning_content"], message["content"]) == (REASONING, CONTENT)
    elif kind == "stream":
        reasoning = content = ""
        done = False
        async with client.stream(
            "POST", f"{url}/v1/chat/completions", json=_body(i, stream=True)
        ) as r:
            assert r.status_code == 200
            async for line in r.aiter_lines():
                if not line.startswith("data: "):
                    continue
                payload = line[len("data: ") :]
                if payload == "[DONE]":
                    done = True
                    continue
                event = json.loads(payload)
                assert "error" not in event, event
                for choice in event["choices"]:
                    reasoning += choice["delta"].get("reasoning_content") or ""
                    content += choice["delta"].get("content") or ""
        assert done
        assert (reasoning, content) == (REASONING, CONTENT)
    elif kind == "bad":
        # Errors take their own path through the app (exception handlers, access log).
        r = await client.post(
            f"{url}/v1/chat/completions", json={"model": MODEL, "messages": [], "n": 2}
        )
        assert r.status_code == 400, r.text
    else:
        body = {**_body(i, stream=False), "model": f"no-such-model-{i}"}
        r = await client.post(f"{url}/v1/chat/completions", json=body)
        assert r.status_code == 404, r.text
        assert r.json()["error"]["code"] == "model_not_found"
    return kind


async def test_memory_settles_over_thousands_of_requests(
    soak_server: tuple[str, FastAPI],
) -> None:
    url, app = soak_server
    gate: AdmissionGate = app.state.registry.resolve(MODEL).model.gate
    limit = asyncio.Semaphore(CONCURRENCY)
    kinds: Counter[str] = Counter()
    samples: list[int] = []
    started = time.monotonic()

    async def bounded(client: httpx.AsyncClient, i: int) -> None:
        async with limit:
            kinds[await _one(client, url, i)] += 1

    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    async with httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(60.0)) as client:
        for first in range(0, TOTAL, BATCH):
            batch = range(first, min(first + BATCH, TOTAL))
            await asyncio.wait_for(asyncio.gather(*(bounded(client, i) for i in batch)), TIME_LIMIT)
            elapsed = time.monotonic() - started
            assert elapsed < TIME_LIMIT, f"{first + BATCH} requests took {elapsed:.0f} s"
            if first + BATCH >= WARMUP:
                gc.collect()
                samples.append(rss_bytes())
    elapsed = time.monotonic() - started

    assert sum(kinds.values()) == TOTAL
    assert (gate.running, gate.waiting) == (0, 0)
    third = len(samples) // 3
    middle = statistics.mean(samples[third : 2 * third])
    last = statistics.mean(samples[2 * third :])
    mib = 1024 * 1024
    print(
        f"\nsoak: {TOTAL} requests ({dict(kinds)}) in {elapsed:.1f} s; RSS after warm-up "
        f"{samples[0] / mib:.1f} MiB, end {samples[-1] / mib:.1f} MiB, middle third mean "
        f"{middle / mib:.1f} MiB, last third mean {last / mib:.1f} MiB, pid {os.getpid()}"
    )
    assert last - middle <= GROWTH_LIMIT, (
        f"memory keeps growing: last third {last / mib:.1f} MiB vs middle third "
        f"{middle / mib:.1f} MiB; samples (MiB): {[round(s / mib, 1) for s in samples]}"
    )
