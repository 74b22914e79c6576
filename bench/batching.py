"""The batched llama.cpp engine against llama-server (issue 14), side by side in one run.

Same GGUF (SmolLM2-135M Q4_1), same context and threads. llama-server is built from the
llama.cpp that llama-cpp-python vendors (scripts/build-llama-server.sh) and runs with its
defaults (4 slots, unified KV cache, continuous batching) but for context and threads.

- aggregate decode tok/s of N concurrent 96-token streams, N = 1, 2, 4, 8 (4 slots each);
- an agent trace: a main conversation growing turn by turn, a short unrelated request
  between turns; main-turn TTFT and prompt tokens read per turn;
- 4 parallel requests sharing a ~2k-token prefix: wall time and prompt tokens read;
- inter-token gaps of 3 running streams while a ~4k-token prompt is admitted (p99, max);
- one stream through the gateway against direct llama-cpp-python (``Llama``), same threads.

    python -m bench.batching [--turns 4]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import statistics
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

from . import servers as srv
from .common import SMOLLM2, Server, Servers, free_port, table

N_CTX = 8192
THREADS = 2
MAX_TOKENS = 96
NOTES = "The parser module fails on nested generics because the lexer drops a token. " * 24
# About 16 tokens each in SmolLM2's vocabulary.
LINE = "Step {i}: the cache keeps entry {i} until the worker at node {i} confirms it. "


def _llama_server_binary() -> Path:
    script = Path(__file__).resolve().parent.parent / "scripts" / "build-llama-server.sh"
    out = subprocess.run(["bash", str(script)], check=True, capture_output=True, text=True)
    return Path(out.stdout.strip().splitlines()[-1])


def start_llama_server(servers: Servers, binary: Path) -> Server:
    port = free_port()
    argv = [str(binary), "-m", str(SMOLLM2), "--host", "127.0.0.1", "--port", str(port)]
    argv += ["-c", str(N_CTX), "-t", str(THREADS), "-tb", str(THREADS), "--no-webui"]
    return servers.start("llama-server", argv, port=port, ready_path="/health", timeout=120)


def start_gateway(servers: Servers) -> Server:
    backend = {"type": "llamacpp", "model": str(SMOLLM2), "n_ctx": N_CTX}
    backend |= {"threads": THREADS, "threads_batch": THREADS, "parallel": 4}
    return srv.gateway(servers, "gateway", [{"id": "smollm2", "backend": backend}])


async def stream(
    client: httpx.AsyncClient, base: str, messages: list[dict[str, str]], n: int
) -> dict[str, Any]:
    body = {"model": "smollm2", "messages": messages, "max_tokens": n, "temperature": 0}
    body |= {"stream": True, "stream_options": {"include_usage": True}}
    # The gateway renders GLM's template for any model: thinking off, plain content.
    body["chat_template_kwargs"] = {"enable_thinking": False}
    started = time.perf_counter()
    stamps: list[float] = []
    text: list[str] = []
    usage: dict[str, Any] = {}
    async with client.stream("POST", f"{base}/v1/chat/completions", json=body) as reply:
        if reply.status_code != 200:
            raise RuntimeError(f"{base}: {reply.status_code} {(await reply.aread())[:300]!r}")
        async for line in reply.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            usage = event.get("usage") or usage
            timings = event.get("timings")
            if timings:
                usage["prompt_n"] = timings.get("prompt_n")
            for choice in event.get("choices", []):
                delta = choice.get("delta", {})
                piece = delta.get("content") or delta.get("reasoning_content")
                if piece:
                    stamps.append(time.perf_counter())
                    text.append(piece)
    return {"t0": started, "stamps": stamps, "text": "".join(text), "usage": usage}


async def concurrency(base: str, n: int) -> float:
    async with httpx.AsyncClient(timeout=600) as client:
        msgs = [
            [{"role": "user", "content": f"({i}) Write a long story about a lighthouse."}]
            for i in range(n)
        ]
        results = await asyncio.gather(*(stream(client, base, m, MAX_TOKENS) for m in msgs))
    first = min(r["stamps"][0] for r in results)
    last = max(r["stamps"][-1] for r in results)
    tokens = sum(r["usage"].get("completion_tokens", len(r["stamps"])) for r in results)
    return tokens / (last - first)


async def agent_trace(base: str, turns: int) -> list[tuple[float, Any]]:
    out: list[tuple[float, Any]] = []
    history = [{"role": "user", "content": f"Notes:\n{NOTES}\nWhat is wrong?"}]
    async with httpx.AsyncClient(timeout=600) as client:
        for turn in range(turns):
            main = await stream(client, base, history, 24)
            ttft = main["stamps"][0] - main["t0"]
            usage = main["usage"]
            read = usage.get("prompt_n")
            if read is None:
                cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0)
                read = usage.get("prompt_tokens", 0) - cached
            out.append((ttft, read))
            side = [{"role": "user", "content": f"Write a 5-word title for note {turn}."}]
            await stream(client, base, side, 12)
            history += [
                {"role": "assistant", "content": main["text"]},
                {
                    "role": "user",
                    "content": f"{NOTES[: 200 * (turn + 1)]} And what about step {turn}?",
                },
            ]
    return out


def _usage_read(usage: dict[str, Any]) -> int:
    read = usage.get("prompt_n")
    if read is None:
        cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0)
        read = usage.get("prompt_tokens", 0) - cached
    return int(read)


def _document(lines: int) -> str:
    # A nonce first: nothing of it is in any cache from an earlier part.
    return f"[{uuid.uuid4().hex}]\n" + "".join(LINE.format(i=i) for i in range(lines))


async def shared_prefix(base: str) -> tuple[float, int, int]:
    """4 requests with one ~2k-token prefix at once: wall s, prompt tokens, tokens read."""
    prefix = _document(80)  # ~1.95k tokens: within one of llama-server's 4 slots' 2048
    msgs = [
        [{"role": "user", "content": f"{prefix}\nQuestion {i}: which step matters most?"}]
        for i in range(4)
    ]
    async with httpx.AsyncClient(timeout=600) as client:
        started = time.perf_counter()
        results = await asyncio.gather(*(stream(client, base, m, 8) for m in msgs))
        wall = time.perf_counter() - started
    total = sum(int(r["usage"].get("prompt_tokens", 0)) for r in results)
    return wall, total, sum(_usage_read(r["usage"]) for r in results)


async def long_prompt_admitted(base: str) -> tuple[float, float, float, float]:
    """Inter-token gaps (s) of 3 streams while a ~4k-token prompt is read: p50, p99, max;
    and the long prompt's TTFT."""
    async with httpx.AsyncClient(timeout=600) as client:
        # Counting runs to the token limit: the streams outlast the long prompt.
        msgs = [
            [{"role": "user", "content": f"({i}) Count from 1 to 1000, separated by commas."}]
            for i in range(3)
        ]
        runs = [asyncio.ensure_future(stream(client, base, m, 400)) for m in msgs]
        await asyncio.sleep(3.0)  # the three are decoding
        doc = [{"role": "user", "content": f"{_document(170)}\nSummarise the steps."}]
        long = await stream(client, base, doc, 1)
        window = (long["t0"], long["stamps"][0] if long["stamps"] else time.perf_counter())
        results = await asyncio.gather(*runs)
    gaps = []
    for r in results:
        stamps = r["stamps"]
        gaps += [b - a for a, b in itertools.pairwise(stamps) if window[0] <= b <= window[1]]
    gaps.sort()
    if not gaps:  # the streams ended before the long prompt was read
        return (float("nan"),) * 3 + (window[1] - window[0],)
    p99 = gaps[min(len(gaps) - 1, int(0.99 * len(gaps)))]
    return statistics.median(gaps), p99, gaps[-1], window[1] - window[0]


def direct_llama_cpp() -> float:
    """One 96-token greedy stream on llama-cpp-python's ``Llama``, decode tok/s."""
    from llama_cpp import Llama

    llm = Llama(
        model_path=str(SMOLLM2),
        n_ctx=N_CTX,
        n_threads=THREADS,
        n_threads_batch=THREADS,
        verbose=False,
    )
    try:
        msgs: Any = [{"role": "user", "content": "Write a long story about a lighthouse."}]
        stamps: list[float] = []
        n = 0
        for event in llm.create_chat_completion(
            msgs, max_tokens=MAX_TOKENS, temperature=0, stream=True
        ):
            delta: Any = event["choices"][0]["delta"]  # type: ignore[index]
            if delta.get("content"):
                stamps.append(time.perf_counter())
                n += 1
        return (n - 1) / (stamps[-1] - stamps[0])
    finally:
        llm.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--turns", type=int, default=4)
    args = parser.parse_args()
    binary = _llama_server_binary()
    results: dict[str, dict[str, Any]] = {}
    with Servers() as servers:
        for name, start in (
            ("gateway", start_gateway),
            ("llama-server", lambda s: start_llama_server(s, binary)),
        ):
            server = start(servers)
            asyncio.run(concurrency(server.base, 1))  # warm-up
            row: dict[str, Any] = {}
            for n in (1, 2, 4, 8):
                row[f"N={n}"] = asyncio.run(concurrency(server.base, n))
            row["trace"] = asyncio.run(agent_trace(server.base, args.turns))
            row["prefix"] = asyncio.run(shared_prefix(server.base))
            row["long"] = asyncio.run(long_prompt_admitted(server.base))
            results[name] = row
            servers.stop(server)
    direct = direct_llama_cpp()  # after the servers: alone on the cores
    rows = []
    for n in (1, 2, 4, 8):
        g, ls = results["gateway"][f"N={n}"], results["llama-server"][f"N={n}"]
        rows.append([f"{n} streams, aggregate tok/s", f"{g:.1f}", f"{ls:.1f}", f"{g / ls:.2f}x"])
    for turn, (g, ls) in enumerate(
        zip(results["gateway"]["trace"], results["llama-server"]["trace"], strict=True)
    ):
        rows.append(
            [
                f"agent turn {turn}: TTFT s (prompt tokens read)",
                f"{g[0]:.2f} ({g[1]})",
                f"{ls[0]:.2f} ({ls[1]})",
                f"{g[0] / ls[0]:.2f}x",
            ]
        )
    g, ls = results["gateway"]["prefix"], results["llama-server"]["prefix"]
    rows.append(
        [
            "4 requests, shared 2k prefix: wall s (tokens read / prompt tokens)",
            f"{g[0]:.2f} ({g[2]}/{g[1]})",
            f"{ls[0]:.2f} ({ls[2]}/{ls[1]})",
            f"{g[0] / ls[0]:.2f}x",
        ]
    )
    g, ls = results["gateway"]["long"], results["llama-server"]["long"]
    for i, name in enumerate(("p50", "p99", "max")):
        rows.append(
            [
                f"3 streams' inter-token {name} s while a 4k prompt is read",
                f"{g[i]:.3f}",
                f"{ls[i]:.3f}",
                f"{g[i] / ls[i]:.2f}x",
            ]
        )
    rows.append(["the 4k prompt's TTFT s", f"{g[3]:.2f}", f"{ls[3]:.2f}", f"{g[3] / ls[3]:.2f}x"])
    one = results["gateway"]["N=1"]
    rows.append(
        [
            "1 stream tok/s: gateway vs direct llama-cpp-python",
            f"{one:.1f}",
            f"{direct:.1f}",
            f"{one / direct:.2f}x",
        ]
    )
    print(table(["", "gateway", "llama-server (last row: Llama)", "ratio"], rows))
    print(f"load average {os.getloadavg()}")


if __name__ == "__main__":
    main()
