"""The batched llama.cpp engine against llama-server (issue 14), side by side in one run.

Same GGUF (SmolLM2-135M Q4_1), same context and threads. llama-server is built from the
llama.cpp that llama-cpp-python vendors (scripts/build-llama-server.sh) and runs with its
defaults (4 slots, unified KV cache, continuous batching) but for context and threads.

- aggregate decode tok/s of N concurrent 96-token streams, N = 1, 2, 4, 8 (4 slots each);
- an agent trace: a main conversation growing turn by turn, a short unrelated request
  between turns; main-turn TTFT and prompt tokens read per turn;
- 4 parallel requests sharing a ~2k-token prefix: wall time and prompt tokens read;
- inter-token gaps of 3 running streams while a ~4k-token prompt is admitted (p99, max);
- one stream through the gateway against direct llama-cpp-python (``Llama``, loaded once in
  this process, same threads and flash attention) and against llama-server, in back-to-back
  triples (the N=1 decode row's rounds are minutes apart, and this machine drifts).

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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import uvloop

from . import servers as srv
from .common import SMOLLM2, Server, Servers, free_port, load, save, smollm2_llama, table
from .httpclient import Connection

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


@dataclass(frozen=True)
class Target:
    url: str
    # The gateway whose render endpoint gives the prompt text: llama-server then reads that
    # exact text (``/v1/completions``), so both engines see the same tokens. Its own chat
    # template (ChatML for SmolLM2) would give other token counts, and other cache matches
    # for a conversation's history.
    render: str | None = None


async def stream(
    client: httpx.AsyncClient, target: Target, messages: list[dict[str, str]], n: int
) -> dict[str, Any]:
    body: dict[str, Any] = {"model": "smollm2", "messages": messages, "max_tokens": n}
    body |= {"temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
    # The gateway renders GLM's template for any model: thinking off, plain content.
    body["chat_template_kwargs"] = {"enable_thinking": False}
    path = "/v1/chat/completions"
    if target.render is not None:
        reply = await client.post(f"{target.render}/v1/chat/completions/render", json=body)
        reply.raise_for_status()
        body = {k: v for k, v in body.items() if k not in ("messages", "chat_template_kwargs")}
        body["prompt"] = reply.json()["prompt"]
        path = "/v1/completions"
    # The stream itself on the bench's raw asyncio client: httpx's line iteration costs about
    # 0.7 ms of CPU per token here, taken from the engines on a 2-core machine.
    url = urlsplit(target.url)
    conn = Connection(url.hostname or "127.0.0.1", url.port or 80)
    try:
        started = time.perf_counter()
        reply = await conn.request("POST", path, json.dumps(body).encode(), stream=True)
    finally:
        await conn.close()
    if reply.status != 200 or reply.error:
        raise RuntimeError(f"{target.url}: {reply.status} {reply.error or reply.body[:300]!r}")
    usage = dict(reply.usage or {})
    if reply.timings:
        usage["prompt_n"] = reply.timings.get("prompt_n")
    return {
        "t0": started,
        "stamps": reply.token_times,
        "text": "".join(reply.texts),
        "usage": usage,
    }


COUNT = "({i}) Count from 1 to 1000, separated by commas."


async def concurrency(base: Target, n: int) -> float:
    """Aggregate decode tok/s of ``n`` streams that each run to the token limit (a counting
    prompt: the same length on both servers, whatever chat template each applies)."""
    for attempt in range(3):
        async with _client() as client:
            msgs = [
                [{"role": "user", "content": COUNT.format(i=i + 10 * attempt)}] for i in range(n)
            ]
            results = await asyncio.gather(*(stream(client, base, m, MAX_TOKENS) for m in msgs))
        counts = [int(r["usage"].get("completion_tokens", 0)) for r in results]
        # Greedy, but the floats differ with the batch's shape (and a cached prefix's last
        # token is read again): a stream may meet an end token early now and then. Most
        # must run to the limit, or the rate means little: then once more, other prompts.
        if sum(counts) >= 0.75 * n * MAX_TOKENS:
            break
    else:
        raise RuntimeError(f"{base.url}: streams ended well before {MAX_TOKENS} tokens: {counts}")
    first = min(r["stamps"][0] for r in results)
    last = max(r["stamps"][-1] for r in results)
    # Each stream's first token comes with its prompt: not decode time.
    return float((sum(counts) - n) / (last - first))


class _Conversation:
    """The agent trace on one server: a main conversation growing turn by turn, a short
    unrelated request after each main turn."""

    def __init__(self, target: Target) -> None:
        self.target = target
        # A nonce first: an earlier round's conversation is not in the cache.
        nonce = uuid.uuid4().hex
        self.history = [{"role": "user", "content": f"[{nonce}] Notes:\n{NOTES}\nWhat is wrong?"}]

    async def turn(self, client: httpx.AsyncClient, turn: int) -> tuple[float, int]:
        """The main turn's TTFT s and prompt tokens read."""
        main = await stream(client, self.target, self.history, 24)
        side = [{"role": "user", "content": f"Write a 5-word title for note {turn}."}]
        await stream(client, self.target, side, 12)
        self.history += [
            {"role": "assistant", "content": main["text"]},
            {"role": "user", "content": f"{NOTES[: 200 * (turn + 1)]} And what about step {turn}?"},
        ]
        return main["stamps"][0] - main["t0"], _usage_read(main["usage"])


async def agent_traces(targets: dict[str, Target], turns: int) -> dict[str, list[Any]]:
    """The trace on every server in lockstep, turn by turn (the order alternating), so each
    turn's TTFTs are measured seconds apart: this machine's speed drifts by 20% within
    minutes, as much as the differences measured. The servers' caches are their own, so
    the interleaving changes nothing else."""
    conversations = {name: _Conversation(t) for name, t in targets.items()}
    out: dict[str, list[Any]] = {name: [] for name in targets}
    async with _client() as client:
        for turn in range(turns):
            names = list(targets) if turn % 2 == 0 else list(reversed(targets))
            for name in names:
                out[name].append(await conversations[name].turn(client, turn))
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


async def shared_prefix(base: Target) -> tuple[float, int, int]:
    """4 requests with one ~2k-token prefix at once: wall s, prompt tokens, tokens read."""
    prefix = _document(80)  # ~1.95k tokens: within one of llama-server's 4 slots' 2048
    msgs = [
        [{"role": "user", "content": f"{prefix}\nQuestion {i}: which step matters most?"}]
        for i in range(4)
    ]
    async with _client() as client:
        started = time.perf_counter()
        results = await asyncio.gather(*(stream(client, base, m, 8) for m in msgs))
        wall = time.perf_counter() - started
    total = sum(int(r["usage"].get("prompt_tokens", 0)) for r in results)
    return wall, total, sum(_usage_read(r["usage"]) for r in results)


async def long_prompt_admitted(base: Target) -> tuple[float, float, float, float]:
    """Inter-token gaps (s) of 3 streams while a ~4k-token prompt is read: p50, p99, max;
    and the long prompt's TTFT."""
    async with _client() as client:
        # Counting runs to the token limit: the streams outlast the long prompt.
        msgs = [[{"role": "user", "content": COUNT.format(i=i)}] for i in range(3)]
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


class Direct:
    """llama-cpp-python's ``Llama`` in this process, loaded once for the whole run, with the
    gateway's settings: same context and threads, and flash attention on (the gateway's
    ``auto`` resolves to on for this model on CPU; ``Llama``'s default is off)."""

    def __init__(self) -> None:
        self.llm = smollm2_llama(
            n_ctx=N_CTX, threads=THREADS, threads_batch=THREADS, flash_attn=True
        )

    def stream(self) -> float:
        """One 96-token greedy stream, decode tok/s."""
        # The same prompt each time (some numbers make SmolLM2 stop early); only the decode
        # rate is measured, so the prompt cache it may reuse does not matter.
        msgs: Any = [{"role": "user", "content": COUNT.format(i=0)}]
        stamps: list[float] = []
        for event in self.llm.create_chat_completion(
            msgs, max_tokens=MAX_TOKENS, temperature=0, stream=True
        ):
            delta: Any = event["choices"][0]["delta"]  # type: ignore[index]
            if delta.get("content"):
                stamps.append(time.perf_counter())
        if len(stamps) < MAX_TOKENS * 0.9:  # a multi-byte piece may come with the next token
            raise RuntimeError(f"direct llama-cpp-python: {len(stamps)} tokens, not {MAX_TOKENS}")
        return (len(stamps) - 1) / (stamps[-1] - stamps[0])

    def close(self) -> None:
        self.llm.close()


# One stream is the most sensitive to the machine's moment: each round takes the median of a
# few, on every target alike.
SINGLE_STREAMS = 3


PARTS = ("decode", "trace", "prefix", "long")


def _client() -> httpx.AsyncClient:
    # A fresh connection per request: llama-server's HTTP library once closed a kept-alive
    # connection as the next request went out, and a connect costs ~0.1 ms of seconds.
    return httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_keepalive_connections=0))


# Traces per round on each server: one trace's turns take a second or two each, and one
# sample per round would leave each turn's row to three numbers.
TRACES = 3


def _one(part: str, base: Target, n: int = 1) -> Any:
    # The bench client on uvloop, like the servers: on 2 cores its own CPU is taken from them.
    if part == "decode":
        if n == 1:
            return statistics.median(
                uvloop.run(concurrency(base, 1)) for _ in range(SINGLE_STREAMS)
            )
        return uvloop.run(concurrency(base, n))
    if part == "prefix":
        return uvloop.run(shared_prefix(base))
    return uvloop.run(long_prompt_admitted(base))


def _measure(part: str, targets: dict[str, Target], turns: int) -> list[dict[str, Any]]:
    """One round of ``part`` on every server, each unit of it (a stream count, a trace's
    turn) measured on both back to back, the order alternating: this machine's speed drifts
    by 20% within minutes, as much as the differences measured, so the servers are compared
    unit by unit. Returns one sample per server name, index by index."""
    names = list(targets)
    if part == "trace":
        return [uvloop.run(agent_traces(targets, turns)) for _ in range(TRACES)]
    if part == "decode":
        got: dict[str, dict[str, float]] = {name: {} for name in names}
        for k, n in enumerate((1, 2, 4, 8)):
            for name in names if k % 2 == 0 else reversed(names):
                got[name][f"N={n}"] = _one(part, targets[name], n)
        return [got]
    return [{name: _one(part, targets[name]) for name in names}]


def run(rounds: int, turns: int, parts: list[str]) -> dict[str, Any]:
    """Both servers up at once; every part measured on both unit by unit, the order rotated
    each round, so a change in the machine's load falls on both sides alike. Sample ``i``
    of a part on one server was measured beside sample ``i`` on the other."""
    binary = _llama_server_binary()
    samples: dict[str, dict[str, list[Any]]] = {"gateway": {}, "llama-server": {}}
    loads: list[float] = []
    direct = Direct() if "decode" in parts else None
    pairs: list[tuple[float, float, float]] = []
    try:
        with Servers() as servers:
            up = {
                "gateway": start_gateway(servers),
                "llama-server": start_llama_server(servers, binary),
            }
            targets = {
                "gateway": Target(up["gateway"].base),
                "llama-server": Target(up["llama-server"].base, render=up["gateway"].base),
            }
            for target in targets.values():
                uvloop.run(concurrency(target, 1))  # warm-up
            if direct is not None:
                direct.stream()
            for r in range(rounds):
                order = list(up) if r % 2 == 0 else list(reversed(up))
                for part in parts:
                    loads.append(os.getloadavg()[0])
                    for sample in _measure(part, {name: targets[name] for name in order}, turns):
                        for name, value in sample.items():
                            samples[name].setdefault(part, []).append(value)
                        print(f"round {r} {part}: {sample}", flush=True)
                    if part == "decode" and direct is not None:
                        pairs += _paired(targets["gateway"], targets["llama-server"], direct, r)
    finally:
        if direct is not None:
            direct.close()
    return {"samples": samples, "pairs": pairs, "loads": loads, "rounds": rounds}


# This machine's speed drifts by 20% within minutes: one stream on the gateway is compared
# with direct llama-cpp-python and with llama-server stream by stream, back to back, and
# judged by the ratios within each triple.
PAIRS = 6


def _paired(
    gateway: Target, llama_server: Target, direct: Direct, r: int
) -> list[tuple[float, float, float]]:
    """(gateway, direct, llama-server) tok/s of back-to-back streams, the order reversed
    every other time; the servers are idle but for the one measured."""
    measure: dict[str, Callable[[], float]] = {
        "gateway": lambda: uvloop.run(concurrency(gateway, 1)),
        "direct": direct.stream,
        "llama-server": lambda: uvloop.run(concurrency(llama_server, 1)),
    }
    out = []
    for k in range(PAIRS):
        names = list(measure) if k % 2 == 0 else list(reversed(measure))
        got = {name: measure[name]() for name in names}
        out.append((got["gateway"], got["direct"], got["llama-server"]))
    against = [(round(g / d, 3), round(g / ls, 3)) for g, d, ls in out]
    print(f"round {r} one stream, gateway/direct, gateway/llama-server: {against}", flush=True)
    return out


def _med(values: list[float]) -> float:
    return statistics.median(values)


def _spread(values: list[float], digits: int) -> str:
    lo, hi = min(values), max(values)
    return f"{_med(values):.{digits}f} [{lo:.{digits}f}-{hi:.{digits}f}]"


def report(data: dict[str, Any]) -> str:
    g, ls = data["samples"]["gateway"], data["samples"]["llama-server"]
    rows: list[list[str]] = []

    def row(label: str, a: list[float], b: list[float], digits: int = 1) -> None:
        # Sample i on one server was measured beside sample i on the other: the ratio is
        # the median of the pairs' ratios, which the machine's drift moves least.
        ratios = [x / y for x, y in zip(a, b, strict=True) if y and x == x and y == y]
        ratio = _med(ratios) if ratios else float("nan")
        rows.append([label, _spread(a, digits), _spread(b, digits), f"{ratio:.2f}x"])

    if "decode" in g:
        for n in (1, 2, 4, 8):
            k = f"N={n}"
            row(
                f"{n} streams, aggregate tok/s",
                [x[k] for x in g["decode"]],
                [x[k] for x in ls["decode"]],
            )
    if "trace" in g:
        for turn in range(len(g["trace"][0])):
            a = [x[turn][0] for x in g["trace"]]
            b = [x[turn][0] for x in ls["trace"]]
            label = (
                f"agent turn {turn}: TTFT s (prompt tokens read: "
                f"{g['trace'][0][turn][1]} / {ls['trace'][0][turn][1]})"
            )
            row(label, a, b, 2)
    if "prefix" in g:
        label = (
            "4 requests, shared 2k prefix: wall s (tokens read of prompt tokens: "
            f"{g['prefix'][0][2]}/{g['prefix'][0][1]} against "
            f"{ls['prefix'][0][2]}/{ls['prefix'][0][1]})"
        )
        row(label, [x[0] for x in g["prefix"]], [x[0] for x in ls["prefix"]], 2)
    if "long" in g:
        for i, name in enumerate(("p50", "p99", "max")):
            row(
                f"3 streams' inter-token {name} s while a 4k prompt is read",
                [x[i] for x in g["long"]],
                [x[i] for x in ls["long"]],
                3,
            )
        row("the 4k prompt's TTFT s", [x[3] for x in g["long"]], [x[3] for x in ls["long"]], 2)
    # (gateway, direct, llama-server) tok/s of back-to-back streams.
    triples = [t for t in data.get("pairs") or [] if len(t) == 3]
    others = (
        "direct llama-cpp-python `Llama` (flash attention on, like the gateway)",
        "llama-server",
    )
    for i, label in enumerate(others, start=1) if triples else ():
        ratios = sorted(t[0] / t[i] for t in triples)
        rows.append(
            [
                f"1 stream tok/s, {len(triples)} back-to-back triples: gateway against {label}"
                f" (right); ratio: median of the pairs' ratios [quartiles "
                f"{ratios[len(ratios) // 4]:.2f}-{ratios[(3 * len(ratios)) // 4]:.2f}]",
                _spread([t[0] for t in triples], 1),
                _spread([t[i] for t in triples], 1),
                f"{_med(ratios):.2f}x",
            ]
        )
    loads = data["loads"]
    head = [
        f"median [min-max] over {data['rounds']} rounds; ratio: median of paired ratios",
        "gateway",
        "llama-server",
        "ratio",
    ]
    return (
        table(head, rows) + f"\n\nload average (1 min) at the start of each measurement: "
        f"{min(loads):.2f}-{max(loads):.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--turns", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--parts", default=",".join(PARTS), help="comma-separated: " + ",".join(PARTS)
    )
    parser.add_argument("--report", action="store_true", help="only print the last results")
    args = parser.parse_args()
    if not args.report:
        parts = [p for p in args.parts.split(",") if p]
        unknown = set(parts) - set(PARTS)
        if unknown:
            parser.error(f"unknown parts: {sorted(unknown)}")
        save("batching", run(args.rounds, args.turns, parts))
    data = load("batching")
    if data is None:
        parser.error("no results yet: run without --report first")
    print(report(data))


if __name__ == "__main__":
    main()
