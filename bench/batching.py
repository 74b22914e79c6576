"""The batched llama.cpp engine against llama-server (issue 14), side by side in one run.

Same GGUF (SmolLM2-135M Q4_1), same context and threads. llama-server is built from the
llama.cpp that llama-cpp-python vendors (scripts/build-llama-server.sh) and runs with its
defaults (4 slots, unified KV cache, continuous batching) but for context and threads.

- aggregate decode tok/s of N concurrent 96-token streams, N = 1, 2, 4;
- an agent trace: a main conversation growing turn by turn, a short unrelated request
  between turns; main-turn TTFT and prompt tokens read per turn.

    python -m bench.batching [--rounds 1]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx

from . import servers as srv
from .common import SMOLLM2, Server, Servers, free_port, table

N_CTX = 8192
THREADS = 2
MAX_TOKENS = 96
NOTES = "The parser module fails on nested generics because the lexer drops a token. " * 24


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
            for n in (1, 2, 4):
                row[f"N={n}"] = asyncio.run(concurrency(server.base, n))
            row["trace"] = asyncio.run(agent_trace(server.base, args.turns))
            results[name] = row
            servers.stop(server)
    rows = []
    for n in (1, 2, 4):
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
    print(table(["", "gateway", "llama-server", "ratio"], rows))
    print(f"load average {os.getloadavg()}")


if __name__ == "__main__":
    main()
