"""What one upstream call costs a proxy, by HTTP client: a breakdown for part 1.

    python bench/upstream_client_probe.py PORT N

Streams ``/v1/completions`` (16 tokens) from the stub N times in a row per mode, as the
gateway's vLLM backend does, and prints one JSON line per mode (p50/p99 ms, TCP connections
the stub accepted per request):

- ``httpx, stop at [DONE]``: httpx ``AsyncClient.stream`` + ``aiter_lines``, leaving the
  stream at ``data: [DONE]`` before the chunked body's end, as ``backends/vllm.py`` does;
- ``httpx, read to the end``: the same, reading on to the body's end;
- ``aiohttp``: ``ClientSession.post`` + line iteration to the end (when aiohttp is installed);
- ``glm-gateway``: the remote backend's own client (``backends/remote/http.py``), reading
  the body's chunks to the end;
- ``raw asyncio``: the bench's own client (``bench/httpclient.py``), for the floor.

Standard library + httpx (+ aiohttp): runs in the project's venv or LiteLLM's.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

BODY = {
    "model": "stub",
    "prompt": "[gMASK]<sop><|user|>Say hi.<|assistant|></think>",
    "stream": True,
    "stream_options": {"include_usage": True},
    "max_tokens": 16,
}


def _stats(base: str) -> dict[str, int]:
    with urllib.request.urlopen(base + "/stats", timeout=5) as r:
        return dict(json.load(r))


def _summary(name: str, times: list[float], conns: int, n: int) -> dict[str, Any]:
    times.sort()
    return {
        "mode": name,
        "n": n,
        "p50_ms": times[len(times) // 2] * 1000,
        "p99_ms": times[min(len(times) - 1, int(len(times) * 0.99))] * 1000,
        "connections_per_request": conns / n,
    }


async def httpx_mode(url: str, n: int, to_end: bool) -> list[float]:
    import httpx

    times = []
    async with httpx.AsyncClient(
        limits=httpx.Limits(max_connections=None, max_keepalive_connections=32)
    ) as client:
        for _ in range(n):
            start = time.perf_counter()
            async with client.stream("POST", url, json=BODY) as resp:
                async for line in resp.aiter_lines():
                    if line.startswith("data:") and line[5:].strip() == "[DONE]" and not to_end:
                        break
                    if line.startswith("data:") and line[5:].strip() != "[DONE]":
                        json.loads(line[5:])
            times.append(time.perf_counter() - start)
    return times


async def aiohttp_mode(url: str, n: int) -> list[float]:
    import aiohttp

    times = []
    async with aiohttp.ClientSession() as session:
        for _ in range(n):
            start = time.perf_counter()
            async with session.post(url, json=BODY) as resp:
                async for raw in resp.content:
                    line = raw.decode().strip()
                    if line.startswith("data:") and line[5:].strip() != "[DONE]":
                        json.loads(line[5:])
            times.append(time.perf_counter() - start)
    return times


async def raw_mode(port: int, n: int) -> list[float]:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from bench.httpclient import Connection

    conn = Connection("127.0.0.1", port)
    body = json.dumps(BODY).encode()
    times = []
    try:
        for _ in range(n):
            start = time.perf_counter()
            await conn.request("POST", "/v1/completions", body, stream=True)
            times.append(time.perf_counter() - start)
    finally:
        await conn.close()
    return times


async def gateway_mode(url: str, n: int) -> list[float]:
    """The remote backend's own client, reading the stream's chunks to the end."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from backends.remote.http import HttpClient, Timeouts

    client = HttpClient()
    timeouts = Timeouts(connect=5.0, read=30.0)
    times = []
    try:
        for _ in range(n):
            start = time.perf_counter()
            async with client.stream(url, BODY, {}, timeouts) as stream:
                async for _chunk in stream.chunks():
                    pass
            times.append(time.perf_counter() - start)
    finally:
        await client.aclose()
    return times


def main(argv: list[str]) -> int:
    port, n = int(argv[0]), int(argv[1])
    base = f"http://127.0.0.1:{port}"
    url = base + "/v1/completions"
    modes: list[tuple[str, Any]] = [
        ("httpx, stop at [DONE] (as backends/vllm.py)", lambda: httpx_mode(url, n, False)),
        ("httpx, read to the end", lambda: httpx_mode(url, n, True)),
    ]
    try:
        import aiohttp  # noqa: F401

        modes.append(("aiohttp", lambda: aiohttp_mode(url, n)))
    except ImportError:
        pass
    try:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        import backends.remote.http  # noqa: F401

        modes.append(("glm-gateway (backends/remote/http.py)", lambda: gateway_mode(url, n)))
    except ImportError:
        pass
    modes.append(("raw asyncio (bench client)", lambda: raw_mode(port, n)))
    for name, make in modes:
        asyncio.run(make())  # warm-up round, not counted
        before = _stats(base)["connections"]
        times = asyncio.run(make())
        conns = _stats(base)["connections"] - before
        print(json.dumps(_summary(name, times, conns, n)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
