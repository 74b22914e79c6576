"""Part 2: the engine path. SmolLM2-135M (Q4_1 GGUF) on llama-cpp-python, three ways:

- **direct**: ``Llama.create_completion(stream=True)`` in this process;
- **gateway**: this gateway's ``llamacpp`` backend (``/v1/chat/completions``, streamed);
- **llama-cpp-python server**: ``python -m llama_cpp.server`` (``/v1/completions``, streamed).

All three get the same prompt text (the one the gateway renders, taken from its ``/render``
endpoint, thinking off), the same ``max_tokens``, temperature 0 and seed, the same context and
thread count. Single stream: time to first token and decode tokens/s = (tokens - 1) / (last
token - first token). Then 4 clients at once per server, to see how each treats the others.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from . import servers as srv
from .common import (
    SMOLLM2,
    Servers,
    banner,
    fmt_spread,
    loadavg,
    machine,
    median,
    save,
    smollm2_llama,
    table,
)
from .httpclient import Connection

N_CTX = 2048
# One thread everywhere, for generation and for the prompt (batch): on this 2-core VM, 2
# llama.cpp threads spin-wait on each other whenever another process holds a core, and prompt
# evaluation gets 10-30x slower (``threads_batch_probe`` measures it each run). The gateway
# takes both from its settings (``threads``, ``threads_batch``).
THREADS = 1
THREADS_BATCH = 1
SEED = 1234
# Request k asks this with its number in front: every prompt differs from the previous one in
# its first words, so no server reuses a cached prompt prefix and TTFT always includes the
# prompt's evaluation (the gateway only reuses whole n_batch-sized chunks, the others any
# common prefix). The same k-th prompt goes to every target.
QUESTION = "Write a 500-word essay about the history of the printing press."


def _message(k: int) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"({k}) {QUESTION}"}]


def _gateway_body(max_tokens: int, k: int = 0) -> dict[str, Any]:
    return {
        "model": "smollm2",
        "messages": _message(k),
        "max_tokens": max_tokens,
        "temperature": 0,
        "seed": SEED,
        "stream": True,
        "stream_options": {"include_usage": True},
        "chat_template_kwargs": {"enable_thinking": False},
    }


def _server_body(prompt: str, max_tokens: int) -> dict[str, Any]:
    return {
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": 0,
        "seed": SEED,
        "stream": True,
    }


def _stream_stats(sent: float, times: list[float], done: float, tokens: int) -> dict[str, Any]:
    return {
        "ttft_ms": (times[0] - sent) * 1000 if times else float("nan"),
        "tokens": tokens,
        "events": len(times),
        "decode_tps": (tokens - 1) / (times[-1] - times[0])
        if len(times) > 1 and times[-1] > times[0]
        else float("nan"),
        "e2e_tps": tokens / (done - sent) if done > sent else float("nan"),
        "total_ms": (done - sent) * 1000,
    }


class Direct:
    """llama-cpp-python called from Python, no HTTP: the ceiling."""

    def __init__(self) -> None:
        self.llm = smollm2_llama(
            n_ctx=N_CTX, threads=THREADS, threads_batch=THREADS_BATCH, seed=SEED
        )

    def stream(self, prompt: str, max_tokens: int) -> dict[str, Any]:
        # Tokenized as the gateway does (no BOS added; the rendered prompt carries its prefix).
        tokens = self.llm.tokenize(prompt.encode(), add_bos=False, special=True)
        self.llm.set_seed(SEED)
        sent = time.perf_counter()
        times: list[float] = []
        text = []
        finish = None
        for chunk in self.llm.create_completion(
            tokens, max_tokens=max_tokens, temperature=0.0, seed=SEED, stream=True
        ):
            choice = chunk["choices"][0]
            if choice.get("text"):
                times.append(time.perf_counter())
                text.append(choice["text"])
            finish = choice.get("finish_reason") or finish
        done = time.perf_counter()
        n = len(self.llm.tokenize("".join(text).encode(), add_bos=False, special=True))
        out = _stream_stats(sent, times, done, n)
        out.update(prompt_tokens=len(tokens), finish_reason=finish, chunks=len(times))
        return out

    def close(self) -> None:
        self.llm.close()


def threads_batch_probe(
    prompts: list[str], batch_threads: tuple[int, ...] = (1, 2)
) -> dict[str, Any]:
    """Prompt evaluation time (ms) by ``n_threads_batch``, same prompts, cache cleared."""
    out: dict[str, Any] = {}
    for tb in batch_threads:
        llm = smollm2_llama(n_ctx=N_CTX, threads=THREADS, threads_batch=tb)
        try:
            times = []
            for prompt in prompts:
                tokens = llm.tokenize(prompt.encode(), add_bos=False, special=True)
                llm.reset()
                start = time.perf_counter()
                llm.eval(tokens)
                times.append((time.perf_counter() - start) * 1000)
            out[str(tb)] = {"prompt_eval_ms": times, "loadavg": loadavg()}
        finally:
            llm.close()
    return out


def prefix_reuse_probe(direct: Direct, prompts: list[str], max_tokens: int = 8) -> dict[str, Any]:
    """Direct TTFT (ms) with llama-cpp-python's own prompt-prefix reuse, and with the KV cache
    cleared before each request (nothing reused, as in the gateway for prompts shorter than
    n_batch): what the gateway's reuse of whole n_batch-sized chunks only costs here."""
    out: dict[str, Any] = {}
    for mode in ("reuse", "cleared"):
        ttft = []
        for prompt in prompts:
            # Put a different prompt with the same prefix in the cache first.
            direct.stream(prompt.replace("(", "(9", 1), 1)
            if mode == "cleared":
                direct.llm.reset()
            ttft.append(direct.stream(prompt, max_tokens)["ttft_ms"])
        out[mode] = {"ttft_ms": ttft, "loadavg": loadavg()}
    tokens = [direct.llm.tokenize(p.encode(), add_bos=False, special=True) for p in prompts[:2]]
    common = 0
    for a, b in zip(tokens[0], tokens[1], strict=False):
        if a != b:
            break
        common += 1
    out["common_prefix_tokens"] = common
    out["prompt_tokens"] = len(tokens[0])
    return out


async def _http_stream(port: int, path: str, body: dict[str, Any]) -> dict[str, Any]:
    conn = Connection("127.0.0.1", port)
    try:
        resp = await asyncio.wait_for(
            conn.request("POST", path, json.dumps(body).encode(), stream=True), 600
        )
    finally:
        await conn.close()
    usage = resp.usage or {}
    tokens = int(usage.get("completion_tokens") or len(resp.token_times))
    out = _stream_stats(resp.sent, resp.token_times, resp.done, tokens)
    out.update(
        status=resp.status,
        error=resp.error,
        finish_reason=resp.finish_reason,
        prompt_tokens=usage.get("prompt_tokens"),
        chunks=len(resp.token_times),
        sent=resp.sent,
        first=resp.token_times[0] if resp.token_times else None,
        done=resp.done,
    )
    return out


async def _concurrent(port: int, path: str, bodies: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Start the requests 20 ms apart (so 'first', 'second' are well defined), all at once."""

    async def one(i: int, body: dict[str, Any]) -> dict[str, Any]:
        await asyncio.sleep(0.02 * i)
        try:
            return await _http_stream(port, path, body)
        except Exception as exc:  # a server that drops the connection
            return {"status": 0, "error": f"{type(exc).__name__}: {exc}", "tokens": 0}

    return list(await asyncio.gather(*(one(i, b) for i, b in enumerate(bodies))))


def run(
    rounds: int = 3, max_tokens: int = 128, single_n: int = 4, clients: int = 4
) -> dict[str, Any]:
    banner("Part 2: engine path (SmolLM2-135M on llama-cpp-python)")
    if not SMOLLM2.is_file():
        raise FileNotFoundError(f"{SMOLLM2} missing: run scripts/fetch-test-models.sh")
    result: dict[str, Any] = {
        "machine": machine(),
        "params": {
            "model": SMOLLM2.name,
            "rounds": rounds,
            "max_tokens": max_tokens,
            "single_n": single_n,
            "clients": clients,
            "n_ctx": N_CTX,
            "threads": THREADS,
            "threads_batch": THREADS_BATCH,
            "seed": SEED,
            "temperature": 0,
        },
        "rounds": [],
    }
    with Servers() as servers:
        gw = srv.gateway(
            servers,
            "gateway-engine",
            [
                {
                    "id": "smollm2",
                    "backend": {
                        "type": "llamacpp",
                        "model": str(SMOLLM2),
                        "n_ctx": N_CTX,
                        "threads": THREADS,
                        "threads_batch": THREADS_BATCH,
                        "n_gpu_layers": 0,
                    },
                }
            ],
        )
        # The exact prompts the gateway gives the engine, one per request number.
        total = 1 + rounds * single_n + clients
        prompts = [
            asyncio.run(_render(gw.port, _gateway_body(max_tokens, k))) for k in range(total)
        ]
        result["prompt_example"] = prompts[1]
        targets: dict[str, Any] = {"direct": None, "gateway": gw}
        if srv.llama_server_available():
            targets["llama-cpp-python server"] = srv.llama_server(
                servers,
                SMOLLM2,
                n_ctx=N_CTX,
                n_threads=THREADS,
                n_threads_batch=THREADS_BATCH,
                seed=SEED,
            )
        else:
            print("  llama-cpp-python server venv missing: skipped")
        direct = Direct()
        try:
            names = list(targets)
            result["targets"] = names

            def once(name: str, k: int) -> dict[str, Any]:
                if name == "direct":
                    return direct.stream(prompts[k], max_tokens)
                if name == "gateway":
                    return asyncio.run(
                        _http_stream(gw.port, "/v1/chat/completions", _gateway_body(max_tokens, k))
                    )
                server = targets[name]
                return asyncio.run(
                    _http_stream(
                        server.port, "/v1/completions", _server_body(prompts[k], max_tokens)
                    )
                )

            for name in names:  # warm-up: load pages, caches
                once(name, 0)
            for r in range(rounds):
                order = names[r % len(names) :] + names[: r % len(names)]
                rnd: dict[str, Any] = {"order": order, "loadavg": loadavg(), "single": {}}
                print(f"  round {r + 1}/{rounds} (load {rnd['loadavg'][0]:.2f})")
                for name in order:
                    runs = [once(name, 1 + r * single_n + i) for i in range(single_n)]
                    rnd["single"][name] = runs
                    print(
                        f"    {name:<26} decode "
                        f"{median([x['decode_tps'] for x in runs]):6.1f} tok/s"
                        f"  ttft {median([x['ttft_ms'] for x in runs]):7.1f} ms"
                        f"  tokens {sorted({x['tokens'] for x in runs})}"
                        f"  prompt {sorted({str(x.get('prompt_tokens')) for x in runs})}",
                        flush=True,
                    )
                result["rounds"].append(rnd)

            print("  direct TTFT with and without prompt-prefix reuse:")
            result["prefix_reuse_probe"] = prefix_reuse_probe(direct, prompts[1:6])
            for mode in ("reuse", "cleared"):
                ttfts = result["prefix_reuse_probe"][mode]["ttft_ms"]
                print(f"    {mode}: {[round(x) for x in ttfts]} ms")
            print("  prompt evaluation by n_threads_batch (direct, cache cleared):")
            probe_prompts = prompts[1:6]
            result["threads_batch_probe"] = threads_batch_probe(probe_prompts)
            for tb, data in result["threads_batch_probe"].items():
                print(f"    n_threads_batch={tb}: {[round(x) for x in data['prompt_eval_ms']]} ms")

            # Concurrency: the same 4 requests, sent within 60 ms, to each server; also to
            # llama-cpp-python's server with --interrupt_requests False (its default, True,
            # stops a running stream when another request comes in).
            conc_targets = {n: targets[n] for n in names if n != "direct"}
            if "llama-cpp-python server" in conc_targets:
                conc_targets["llama-cpp-python server, interrupt_requests off"] = srv.llama_server(
                    servers,
                    SMOLLM2,
                    n_ctx=N_CTX,
                    n_threads=THREADS,
                    n_threads_batch=THREADS_BATCH,
                    seed=SEED,
                    name="llama-server-no-interrupt",
                    extra=("--interrupt_requests", "False"),
                )
            result["concurrent"] = {}
            for name, server in conc_targets.items():
                first = 1 + rounds * single_n
                if name.startswith("gateway"):
                    path = "/v1/chat/completions"
                    bodies = [_gateway_body(max_tokens, first + i) for i in range(clients)]
                else:
                    path = "/v1/completions"
                    bodies = [_server_body(prompts[first + i], max_tokens) for i in range(clients)]
                t0 = time.perf_counter()
                res = asyncio.run(_concurrent(server.port, path, bodies))
                wall = time.perf_counter() - t0
                result["concurrent"][name] = {"clients": res, "wall_s": wall}
                print(f"    {clients} clients -> {name}: {wall:.1f} s")
                for i, c in enumerate(res):
                    print(
                        f"      client {i + 1}: status {c.get('status')} tokens {c.get('tokens')} "
                        f"finish {c.get('finish_reason')} "
                        f"ttft {c.get('ttft_ms', float('nan')):.0f} ms "
                        f"total {c.get('total_ms', float('nan')):.0f} ms"
                        + (f" error {str(c.get('error'))[:120]}" if c.get("error") else "")
                    )
        finally:
            direct.close()
    result["summary"] = summarize(result)
    save("engine", result)
    print(report(result))
    return result


async def _render(port: int, body: dict[str, Any]) -> str:
    conn = Connection("127.0.0.1", port)
    try:
        resp = await conn.request(
            "POST", "/v1/chat/completions/render", json.dumps({**body, "stream": False}).encode()
        )
    finally:
        await conn.close()
    return str(resp.json()["prompt"])


def summarize(result: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in result["targets"]:
        per = [r["single"][name] for r in result["rounds"]]
        out[name] = {
            "decode_tps": [median([x["decode_tps"] for x in runs]) for runs in per],
            "e2e_tps": [median([x["e2e_tps"] for x in runs]) for runs in per],
            "ttft_ms": [median([x["ttft_ms"] for x in runs]) for runs in per],
            "all_decode_tps": [x["decode_tps"] for runs in per for x in runs],
            "tokens": sorted({x["tokens"] for runs in per for x in runs}),
            "prompt_tokens": sorted({str(x.get("prompt_tokens")) for runs in per for x in runs}),
        }
    d = out["direct"]
    for name in result["targets"]:
        if name == "direct":
            continue
        o = out[name]
        o["decode_ratio"] = [a / b for a, b in zip(o["decode_tps"], d["decode_tps"], strict=True)]
        o["e2e_ratio"] = [a / b for a, b in zip(o["e2e_tps"], d["e2e_tps"], strict=True)]
        o["added_ttft_ms"] = [a - b for a, b in zip(o["ttft_ms"], d["ttft_ms"], strict=True)]
    return out


def report(result: dict[str, Any]) -> str:
    s = result["summary"]
    p = result["params"]
    lines = [
        f"Single stream, {p['model']}, {p['max_tokens']} max tokens, temperature 0, "
        f"{p['threads']} thread (batch: {p.get('threads_batch')}), n_ctx {p['n_ctx']}; "
        f"{p['single_n']} streams per target per round, {p['rounds']} rounds "
        f"({p['single_n'] * p['rounds']} samples); median of per-round medians "
        "[min-max over rounds]:\n"
    ]
    rows = []
    for name in result["targets"]:
        o = s[name]
        rows.append(
            [
                name,
                fmt_spread(o["decode_tps"], 1),
                fmt_spread([100 * v for v in o["decode_ratio"]], 1) if name != "direct" else "100",
                fmt_spread(o["e2e_tps"], 1),
                fmt_spread(o["ttft_ms"], 1),
                fmt_spread(o["added_ttft_ms"], 1) if name != "direct" else "—",
                ",".join(str(t) for t in o["tokens"]),
                ",".join(o["prompt_tokens"]),
            ]
        )
    lines.append(
        table(
            [
                "path",
                "decode tok/s",
                "% of direct",
                "end-to-end tok/s",
                "TTFT ms",
                "added TTFT ms",
                "tokens",
                "prompt tokens",
            ],
            rows,
        )
    )
    if "gateway" in s:
        ratio = median(s["gateway"]["decode_ratio"]) * 100
        lines.append(
            f"\nTarget >= 98% of direct tokens/s (single stream): "
            f"{'met' if ratio >= 98 else 'NOT met'} ({ratio:.1f}%)."
        )
    probe = result.get("threads_batch_probe")
    if probe:
        lines.append(
            "\nPrompt evaluation (ms, same prompts, cache cleared) by n_threads_batch: "
            + "; ".join(
                f"{tb}: median {median(d['prompt_eval_ms']):.0f} "
                f"[{min(d['prompt_eval_ms']):.0f}-{max(d['prompt_eval_ms']):.0f}] "
                f"(n={len(d['prompt_eval_ms'])}, load {d['loadavg'][0]:.1f})"
                for tb, d in probe.items()
            )
        )
    reuse = result.get("prefix_reuse_probe")
    if reuse:
        lines.append(
            f"\nDirect TTFT (ms) after a prompt sharing the first {reuse['common_prefix_tokens']} "
            f"of {reuse['prompt_tokens']} tokens: with llama-cpp-python's prefix reuse median "
            f"{median(reuse['reuse']['ttft_ms']):.0f} "
            f"[{min(reuse['reuse']['ttft_ms']):.0f}-{max(reuse['reuse']['ttft_ms']):.0f}], "
            f"with the cache cleared (as the gateway, which reuses only whole {512}-token "
            f"chunks) median {median(reuse['cleared']['ttft_ms']):.0f} "
            f"[{min(reuse['cleared']['ttft_ms']):.0f}-{max(reuse['cleared']['ttft_ms']):.0f}] "
            f"(n={len(reuse['reuse']['ttft_ms'])} each)."
        )
    conc = result.get("concurrent") or {}
    if conc:
        lines.append(f"\n{p['clients']} concurrent clients (started 20 ms apart), per client:\n")
        rows = []
        for name, data in conc.items():
            for i, c in enumerate(data["clients"]):
                rows.append(
                    [
                        name,
                        str(i + 1),
                        str(c.get("status")),
                        str(c.get("tokens")),
                        str(c.get("finish_reason")),
                        f"{c.get('ttft_ms', float('nan')):.0f}",
                        f"{c.get('total_ms', float('nan')):.0f}",
                        (str(c.get("error"))[:60] if c.get("error") else ""),
                    ]
                )
        lines.append(
            table(
                ["server", "client", "status", "tokens", "finish", "TTFT ms", "total ms", "error"],
                rows,
            )
        )
    return "\n".join(lines)


if __name__ == "__main__":
    run()
