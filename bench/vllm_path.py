"""Part 4: the vLLM path. glm-tiny on the CPU vLLM server, direct vs through the gateway.

- **direct**: the client streams ``/v1/completions`` from vLLM with the body the gateway's
  ``vllm`` backend would send (the gateway-rendered prompt, raw special tokens, the GLM stop
  strings, usage at the end);
- **gateway**: the client streams ``/v1/chat/completions`` from this gateway, whose ``vllm``
  backend calls the same server; the gateway renders the prompt and parses the output.

Same prompt, ``max_tokens``, temperature 0 and seed, so both produce the same tokens. Time to
first token, and inter-token latency = (last token - first token) / (tokens - 1) per stream,
with tokens from vLLM's usage. Added = gateway - direct, per round; median over rounds.
"""

from __future__ import annotations

import asyncio
import json
import os
from itertools import pairwise
from pathlib import Path
from typing import Any

from backends.base import GenerationRequest, SamplingParams
from backends.remote.wire import completion_body
from gateway.glm47.tokens import STOP_TOKENS

from . import servers as srv
from .common import (
    LOGS,
    VLLM_VENV,
    Servers,
    banner,
    fmt_spread,
    loadavg,
    machine,
    median,
    percentile,
    save,
    table,
)
from .httpclient import Connection

MAX_TOKENS = 128
SEED = 7
MESSAGES = [{"role": "user", "content": "Write a short poem about the sea."}]


def start_vllm(servers: Servers) -> Any:
    return srv.vllm(
        servers,
        "vllm-server",
        timeout=float(os.environ.get("BENCH_VLLM_START_TIMEOUT", "600")),
        env={"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_LOGGING_LEVEL": "WARNING"},
    )


def _gateway_body(max_tokens: int) -> dict[str, Any]:
    return {
        "model": "glm-tiny",
        "messages": MESSAGES,
        "max_tokens": max_tokens,
        "temperature": 0,
        "seed": SEED,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


def _direct_body(prompt: str, max_tokens: int) -> dict[str, Any]:
    # Exactly what the vLLM backend sends for the same request.
    request = GenerationRequest(
        prompt=prompt,
        sampling=SamplingParams(temperature=0, seed=SEED, max_tokens=max_tokens),
        stop_tokens=STOP_TOKENS,
    )
    return completion_body(request, "glm-tiny")


async def _streams(port: int, path: str, body: dict[str, Any], n: int) -> list[dict[str, Any]]:
    conn = Connection("127.0.0.1", port)
    out = []
    try:
        for _ in range(n):
            resp = await asyncio.wait_for(
                conn.request("POST", path, json.dumps(body).encode(), stream=True), 300
            )
            t = resp.token_times
            usage = resp.usage or {}
            tokens = int(usage.get("completion_tokens") or len(t))
            gaps = [(b - a) * 1000 for a, b in pairwise(t)]
            out.append(
                {
                    "status": resp.status,
                    "error": resp.error,
                    "ttft_ms": (t[0] - resp.sent) * 1000 if t else float("nan"),
                    "itl_ms": (t[-1] - t[0]) * 1000 / (tokens - 1)
                    if len(t) > 1 and tokens > 1
                    else float("nan"),
                    "gap_p50_ms": percentile(gaps, 50) if gaps else float("nan"),
                    "gap_p99_ms": percentile(gaps, 99) if gaps else float("nan"),
                    "total_ms": resp.latency * 1000,
                    "tokens": tokens,
                    "events": len(t),
                    "finish_reason": resp.finish_reason,
                    "overhead_header_ms": float(resp.headers.get("x-gateway-overhead-ms", "nan")),
                }
            )
    finally:
        await conn.close()
    return out


async def _render(port: int) -> str:
    conn = Connection("127.0.0.1", port)
    try:
        resp = await conn.request(
            "POST",
            "/v1/chat/completions/render",
            json.dumps({**_gateway_body(MAX_TOKENS), "stream": False}).encode(),
        )
    finally:
        await conn.close()
    return str(resp.json()["prompt"])


def run(rounds: int = 3, n: int = 15, max_tokens: int = MAX_TOKENS) -> dict[str, Any]:
    banner("Part 4: vLLM path (glm-tiny on CPU vLLM)")
    if not (VLLM_VENV / "bin" / "python").exists():
        raise FileNotFoundError(f"{VLLM_VENV} missing: run scripts/setup-vllm.sh")
    result: dict[str, Any] = {
        "machine": machine(),
        "params": {
            "rounds": rounds,
            "n": n,
            "max_tokens": max_tokens,
            "temperature": 0,
            "seed": SEED,
            "model": "glm-tiny (tests/fixtures/models/glm-tiny/hf)",
        },
        "rounds": [],
    }
    with Servers() as servers:
        print("  starting vLLM (about a minute)...", flush=True)
        vllm = start_vllm(servers)
        gw = srv.gateway(
            servers,
            "gateway-vllm",
            [
                {
                    "id": "glm-tiny",
                    "backend": {
                        "type": "vllm",
                        "replicas": [{"url": vllm.base}],
                        "model": "glm-tiny",
                    },
                }
            ],
        )
        prompt = asyncio.run(_render(gw.port))
        gw_log = gw.log
        result["prompt"] = prompt
        targets = {
            "direct": (vllm.port, "/v1/completions", _direct_body(prompt, max_tokens)),
            "gateway": (gw.port, "/v1/chat/completions", _gateway_body(max_tokens)),
        }
        for port, path, body in targets.values():  # warm-up
            asyncio.run(_streams(port, path, body, 2))
        for r in range(rounds):
            order = list(targets) if r % 2 == 0 else list(reversed(targets))
            rnd: dict[str, Any] = {"order": order, "loadavg": loadavg(), "targets": {}}
            print(f"  round {r + 1}/{rounds} (load {rnd['loadavg'][0]:.2f})")
            for name in order:
                port, path, body = targets[name]
                runs = asyncio.run(_streams(port, path, body, n))
                rnd["targets"][name] = runs
                print(
                    f"    {name:<8} ttft {median([x['ttft_ms'] for x in runs]):7.2f} ms  "
                    f"itl {median([x['itl_ms'] for x in runs]):7.3f} ms  "
                    f"tokens {sorted({x['tokens'] for x in runs})} "
                    f"events {sorted({x['events'] for x in runs})}  "
                    f"errors {sum(1 for x in runs if x['status'] != 200 or x['error'])}",
                    flush=True,
                )
            result["rounds"].append(rnd)
        result["gateway_log_ttft_ms"] = gateway_log_ttft(gw_log)
    result["summary"] = summarize(result)
    save("vllm", result)
    print(report(result))
    return result


def gateway_log_ttft(log: Path) -> list[float]:
    """The gateway's own TTFT per chat request (its JSON access log: arrival to the first
    text from vLLM), in request order."""
    out = []
    if not log.is_file():
        return out
    for line in log.read_text(errors="replace").splitlines():
        start = line.find("{")
        if start < 0:
            continue
        try:
            record = json.loads(line[start:])
        except ValueError:
            continue
        if (
            isinstance(record, dict)
            and record.get("path") == "/v1/chat/completions"
            and isinstance(record.get("ttft_ms"), int | float)
        ):
            out.append(float(record["ttft_ms"]))
    return out


def summarize(result: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in ("direct", "gateway"):
        per = [r["targets"][name] for r in result["rounds"]]
        out[name] = {
            "ttft_ms": [median([x["ttft_ms"] for x in runs]) for runs in per],
            "itl_ms": [median([x["itl_ms"] for x in runs]) for runs in per],
            "gap_p99_ms": [median([x["gap_p99_ms"] for x in runs]) for runs in per],
            "total_ms": [median([x["total_ms"] for x in runs]) for runs in per],
            "tokens": sorted({x["tokens"] for runs in per for x in runs}),
            "events": sorted({x["events"] for runs in per for x in runs}),
            "errors": sum(1 for runs in per for x in runs if x["status"] != 200 or x["error"]),
            "all_ttft_ms": [x["ttft_ms"] for runs in per for x in runs],
            # Streams whose tokens arrived in one burst (mean gap under 1 ms): vLLM's API
            # server sent them late, all at once.
            "bursts": sum(1 for runs in per for x in runs if x["itl_ms"] < 1.0),
            "n": sum(len(runs) for runs in per),
            "all_itl_ms": [x["itl_ms"] for runs in per for x in runs],
            "all_total_ms": [x["total_ms"] for runs in per for x in runs],
        }
    d, g = out["direct"], out["gateway"]
    g["added_ttft_ms"] = [a - b for a, b in zip(g["ttft_ms"], d["ttft_ms"], strict=True)]
    g["added_itl_ms"] = [a - b for a, b in zip(g["itl_ms"], d["itl_ms"], strict=True)]
    g["added_total_ms"] = [a - b for a, b in zip(g["total_ms"], d["total_ms"], strict=True)]
    headers = [
        x["overhead_header_ms"]
        for r in result["rounds"]
        for x in r["targets"]["gateway"]
        if x["overhead_header_ms"] == x["overhead_header_ms"]
    ]
    g["overhead_header_ms"] = headers
    # Pair the gateway's own TTFT with the client's, stream by stream (the client's streams
    # through the gateway, in order, are the last ones in its log).
    logged = result.get("gateway_log_ttft_ms") or gateway_log_ttft(LOGS / "gateway-vllm.log")
    client = [x["ttft_ms"] for r in result["rounds"] for x in r["targets"]["gateway"]]
    if len(logged) >= len(client) > 0:
        logged = logged[-len(client) :]
        g["gateway_side_ttft_ms"] = logged
        g["client_minus_gateway_ttft_ms"] = [c - x for c, x in zip(client, logged, strict=True)]
    return out


def report(result: dict[str, Any]) -> str:
    s = result["summary"]
    p = result["params"]
    lines = [
        f"glm-tiny on vLLM (CPU), {p['max_tokens']} max tokens, temperature 0; {p['n']} streams "
        f"per path per round, {p['rounds']} rounds ({p['n'] * p['rounds']} samples per path); "
        "median of per-round medians [min-max over rounds]:\n"
    ]
    rows = []
    for name in ("direct", "gateway"):
        o = s[name]
        rows.append(
            [
                name,
                fmt_spread(o["ttft_ms"], 2),
                fmt_spread(o.get("added_ttft_ms", [0.0]), 2) if name == "gateway" else "—",
                fmt_spread(o["itl_ms"], 3),
                fmt_spread(o.get("added_itl_ms", [0.0]), 3) if name == "gateway" else "—",
                fmt_spread(o["gap_p99_ms"], 2),
                fmt_spread(o["total_ms"], 1),
                ",".join(map(str, o["tokens"])),
                str(o["errors"]),
            ]
        )
    lines.append(
        table(
            [
                "path",
                "TTFT ms",
                "added TTFT ms",
                "ITL ms",
                "added ITL ms",
                "gap p99 ms",
                "whole stream ms",
                "tokens",
                "errors",
            ],
            rows,
        )
    )
    lines.append("\nAll streams pooled (ms): TTFT median [IQR] (min-max):\n")
    pooled = []
    for name in ("direct", "gateway"):
        o = s[name]
        t = o["all_ttft_ms"]
        pooled.append(
            [
                name,
                f"{percentile(t, 50):.1f} [{percentile(t, 25):.1f}-{percentile(t, 75):.1f}] "
                f"({min(t):.1f}-{max(t):.1f})",
                f"{o.get('bursts', 'n/a')} of {o.get('n', len(t))}",
            ]
        )
    lines.append(table(["path", "TTFT", "streams delivered in one burst"], pooled))
    g = s["gateway"]
    if g.get("gateway_side_ttft_ms"):
        diff = g["client_minus_gateway_ttft_ms"]
        lines.append(
            "\nWhere the time to first token goes, through the gateway: the gateway's access log "
            "records, per request, arrival to the first text received from vLLM: median "
            f"{median(g['gateway_side_ttft_ms']):.1f} ms; the client saw its first token a median "
            f"{median(diff):.2f} ms later (IQR {percentile(diff, 25):.2f}-"
            f"{percentile(diff, 75):.2f} ms, n={len(diff)}). The rest of the TTFT is vLLM's."
        )
    if g.get("overhead_header_ms"):
        lines.append(
            "\nx-gateway-overhead-ms on these streams: median "
            f"{median(g['overhead_header_ms']):.3f} ms "
            f"(n={len(g['overhead_header_ms'])})."
        )
    return "\n".join(lines)


if __name__ == "__main__":
    run()
