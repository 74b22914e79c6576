"""Part 1: gateway overhead against an upstream that answers instantly.

The stub (``bench/stub_upstream.py``) is reached three ways in the same run:

- **direct**: the client talks to the stub's ``/v1/chat/completions``;
- **gateway**: this gateway's ``vllm`` backend in front of the stub (the gateway renders the
  GLM-4.7 prompt, calls the stub's streaming ``/v1/completions`` and parses the text);
- **litellm**: the LiteLLM proxy with ``openai/stub`` pointing at the stub.

Variants of the gateway, to see what its defaults cost: **gateway, log warning** (``log_level:
warning``: no access log line and no httpx request log line per request) and
**gateway, asyncio+h11** (``server_loop: asyncio``, ``server_http: h11``: the pure-Python
pair uvicorn falls back to without uvloop and httptools, the gateway's default before).

Each round measures every target, in a rotated order: sequential non-streaming latency,
sequential 500-token streams (time to first token, inter-token latency), and closed-loop
throughput at concurrency 1, 16 and 64. "Added" numbers are a target's median minus the
direct path's median in the same round; the reported number is the median over rounds.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from itertools import pairwise
from pathlib import Path
from typing import Any

from . import servers as srv
from .common import (
    PROJECT_PYTHON,
    Servers,
    banner,
    fmt_spread,
    http_get,
    loadavg,
    machine,
    median,
    percentile,
    save,
    summary,
    table,
)
from .httpclient import Connection, closed_loop

CHAT = "/v1/chat/completions"
MESSAGES = [{"role": "user", "content": "Say hi."}]


def _body(max_tokens: int, stream: bool) -> bytes:
    body: dict[str, Any] = {"model": "stub", "messages": MESSAGES, "max_tokens": max_tokens}
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return json.dumps(body).encode()


async def latency_run(port: int, n: int, warmup: int, max_tokens: int) -> dict[str, Any]:
    conn = Connection("127.0.0.1", port)
    body = _body(max_tokens, stream=False)
    lat: list[float] = []
    overhead: list[float] = []
    errors = 0
    try:
        for i in range(warmup + n):
            resp = await asyncio.wait_for(conn.request("POST", CHAT, body), 30)
            if resp.status != 200:
                errors += 1
                continue
            if i >= warmup:
                lat.append(resp.latency * 1000)
                if "x-gateway-overhead-ms" in resp.headers:
                    overhead.append(float(resp.headers["x-gateway-overhead-ms"]))
    finally:
        await conn.close()
    return {"latency_ms": lat, "overhead_header_ms": overhead, "errors": errors}


async def stream_run(port: int, n: int, warmup: int, tokens: int) -> dict[str, Any]:
    conn = Connection("127.0.0.1", port)
    body = _body(tokens, stream=True)
    ttft: list[float] = []
    itl_mean: list[float] = []
    gaps: list[float] = []
    total: list[float] = []
    counts: list[int] = []
    overhead: list[float] = []
    errors = 0
    try:
        for i in range(warmup + n):
            resp = await asyncio.wait_for(conn.request("POST", CHAT, body, stream=True), 60)
            if resp.status != 200 or resp.error or not resp.token_times:
                errors += 1
                continue
            if i < warmup:
                continue
            t = resp.token_times
            ttft.append((t[0] - resp.sent) * 1000)
            total.append(resp.latency * 1000)
            counts.append(len(t))
            if len(t) > 1:
                itl_mean.append((t[-1] - t[0]) / (len(t) - 1) * 1000)
                gaps.extend((b - a) * 1000 for a, b in pairwise(t))
            if "x-gateway-overhead-ms" in resp.headers:
                overhead.append(float(resp.headers["x-gateway-overhead-ms"]))
    finally:
        await conn.close()
    return {
        "ttft_ms": ttft,
        "itl_mean_ms": itl_mean,
        "gap_p99_ms": percentile(gaps, 99) if gaps else float("nan"),
        "total_ms": total,
        "tokens_seen": counts,
        "overhead_header_ms": overhead,
        "errors": errors,
    }


def client_probe(port: int, n: int = 300) -> dict[str, Any]:
    """One upstream call by HTTP client (``bench/upstream_client_probe.py``), in LiteLLM's
    venv when there (it has httpx, same version as ours, and aiohttp), else in ours."""
    python = srv.LITELLM_VENV / "bin" / "python"
    if not python.exists():
        python = PROJECT_PYTHON
    probe = Path(__file__).with_name("upstream_client_probe.py")
    try:
        proc = subprocess.run(
            [str(python), str(probe), str(port), str(n)],
            capture_output=True,
            text=True,
            timeout=300,
        )
    except subprocess.TimeoutExpired:
        return {"error": "timed out"}
    modes = [json.loads(x) for x in proc.stdout.splitlines() if x.startswith("{")]
    print("  upstream call by client (16-token stream from the stub, sequential):")
    for m in modes:
        print(
            f"    {m['mode']:<45} p50 {m['p50_ms']:.3f} ms  p99 {m['p99_ms']:.3f} ms  "
            f"connections/request {m['connections_per_request']:.2f}"
        )
    return {"python": str(python), "modes": modes, "stderr": proc.stderr[-1000:]}


def _stub_stats(base: str) -> dict[str, int]:
    return dict(json.loads(http_get(base + "/stats")[1]))


def run(
    rounds: int = 3,
    latency_n: int = 300,
    stream_n: int = 20,
    stream_tokens: int = 500,
    duration: float = 4.0,
    concurrencies: tuple[int, ...] = (1, 16, 64),
    variants: bool = True,
) -> dict[str, Any]:
    banner("Part 1: gateway overhead (stub upstream)")
    result: dict[str, Any] = {
        "machine": machine(),
        "params": {
            "rounds": rounds,
            "latency_n": latency_n,
            "latency_max_tokens": 16,
            "stream_n": stream_n,
            "stream_tokens": stream_tokens,
            "throughput_duration_s": duration,
            "concurrencies": list(concurrencies),
        },
        "rounds": [],
    }
    with Servers() as servers:
        upstream = srv.stub(servers)
        gw_model = [
            {
                "id": "stub",
                "backend": {
                    "type": "remote",
                    "replicas": [{"url": upstream.base}],
                    "model": "stub",
                },
            }
        ]
        targets: dict[str, int] = {"direct": upstream.port}
        # An API key, like the LiteLLM proxy's master key: both check one per request.
        keys = {"api_keys": [srv.API_KEY]}
        targets["gateway"] = srv.gateway(servers, "gateway-overhead", gw_model, **keys).port
        if variants:
            # What the defaults cost: the same gateway without per-request log lines
            # (log_level warning: no access log line).
            targets["gateway, log warning"] = srv.gateway(
                servers, "gateway-overhead-logwarn", gw_model, log_level="warning", **keys
            ).port
        if variants:
            # What uvloop + httptools (the defaults) save: the pure-Python asyncio + h11.
            targets["gateway, asyncio+h11"] = srv.gateway(
                servers,
                "gateway-overhead-h11",
                gw_model,
                server_loop="asyncio",
                server_http="h11",
                **keys,
            ).port
        if srv.litellm_available():
            targets["litellm"] = srv.litellm(servers, upstream).port
        else:
            print("  LiteLLM venv missing: skipped (see docs/BENCHMARKS.md to install it)")
        result["targets"] = list(targets)
        names = list(targets)
        for r in range(rounds):
            order = names[r % len(names) :] + names[: r % len(names)]
            rnd: dict[str, Any] = {"order": order, "loadavg": loadavg(), "targets": {}}
            print(
                f"  round {r + 1}/{rounds} (order {', '.join(order)}; load {rnd['loadavg'][0]:.2f})"
            )
            for name in order:
                port = targets[name]
                t0 = time.perf_counter()
                before = _stub_stats(upstream.base)
                lat = asyncio.run(latency_run(port, latency_n, 30, 16))
                streams = asyncio.run(stream_run(port, stream_n, 3, stream_tokens))
                tput = {}
                for c in concurrencies:
                    res = asyncio.run(
                        closed_loop(
                            "127.0.0.1",
                            port,
                            CHAT,
                            _body(16, stream=False),
                            concurrency=c,
                            duration=duration,
                            max_requests=20000,
                            warmup=1.0,
                        )
                    )
                    res.pop("latencies")
                    tput[str(c)] = res
                after = _stub_stats(upstream.base)
                rnd["targets"][name] = {
                    "latency": lat,
                    "stream": streams,
                    "throughput": tput,
                    # Upstream TCP connections opened per upstream request (keep-alive reuse).
                    "upstream_requests": after["requests"] - before["requests"],
                    "upstream_connections": after["connections"] - before["connections"],
                }
                print(
                    f"    {name:<15} p50 {percentile(lat['latency_ms'], 50):7.3f} ms  "
                    f"ttft {median(streams['ttft_ms']):7.3f} ms  "
                    f"itl {median(streams['itl_mean_ms']) * 1000:7.1f} us  "
                    + "  ".join(f"c{c} {tput[str(c)]['rps']:7.0f}/s" for c in concurrencies)
                    + f"  ({time.perf_counter() - t0:.0f} s)",
                    flush=True,
                )
            result["rounds"].append(rnd)
        result["client_probe"] = client_probe(upstream.port)
    result["summary"] = summarize(result)
    save("overhead", result)
    print(report(result))
    return result


def summarize(result: dict[str, Any]) -> dict[str, Any]:
    rounds = result["rounds"]
    names = result["targets"]
    out: dict[str, Any] = {}
    for name in names:
        per = [r["targets"][name] for r in rounds]
        lat_p50 = [percentile(p["latency"]["latency_ms"], 50) for p in per]
        lat_p99 = [percentile(p["latency"]["latency_ms"], 99) for p in per]
        ttft = [median(p["stream"]["ttft_ms"]) for p in per]
        itl = [median(p["stream"]["itl_mean_ms"]) for p in per]
        total = [median(p["stream"]["total_ms"]) for p in per]
        gap99 = [p["stream"]["gap_p99_ms"] for p in per]
        out[name] = {
            "latency_p50_ms": lat_p50,
            "latency_p99_ms": lat_p99,
            "ttft_ms": ttft,
            "itl_ms": itl,
            "stream_total_ms": total,
            "gap_p99_ms": gap99,
            "tokens_seen": sorted({c for p in per for c in p["stream"]["tokens_seen"]}),
            "rps": {c: [p["throughput"][c]["rps"] for p in per] for c in per[0]["throughput"]},
            "errors": sum(
                p["latency"]["errors"]
                + p["stream"]["errors"]
                + sum(t["errors"] for t in p["throughput"].values())
                for p in per
            ),
            "overhead_header_ms": [v for p in per for v in p["latency"]["overhead_header_ms"]],
            "overhead_header_stream_ms": [
                v for p in per for v in p["stream"]["overhead_header_ms"]
            ],
            "latency_all_ms": [v for p in per for v in p["latency"]["latency_ms"]],
            "upstream_connections_per_request": (
                sum(p["upstream_connections"] for p in per)
                / max(1, sum(p["upstream_requests"] for p in per))
            ),
        }
    direct = out["direct"]
    for name in names:
        if name == "direct":
            continue
        o = out[name]
        o["added_p50_ms"] = [
            a - b for a, b in zip(o["latency_p50_ms"], direct["latency_p50_ms"], strict=True)
        ]
        o["added_p99_ms"] = [
            a - b for a, b in zip(o["latency_p99_ms"], direct["latency_p99_ms"], strict=True)
        ]
        o["added_ttft_ms"] = [a - b for a, b in zip(o["ttft_ms"], direct["ttft_ms"], strict=True)]
        o["added_itl_ms"] = [a - b for a, b in zip(o["itl_ms"], direct["itl_ms"], strict=True)]
    if "gateway" in out and "litellm" in out:
        g, ll = out["gateway"], out["litellm"]
        out["ratio_litellm_over_gateway_added_p50"] = (
            median(ll["added_p50_ms"]) / median(g["added_p50_ms"])
            if median(g["added_p50_ms"]) > 0
            else float("inf")
        )
        out["ratio_litellm_over_gateway_added_p99"] = (
            median(ll["added_p99_ms"]) / median(g["added_p99_ms"])
            if median(g["added_p99_ms"]) > 0
            else float("inf")
        )
    return out


def report(result: dict[str, Any]) -> str:
    s = result["summary"]
    p = result["params"]
    names = result["targets"]
    lines = []
    n_lat = p["latency_n"] * p["rounds"]
    lines.append(
        f"Non-streaming latency, ms (16-token answer; {p['latency_n']} sequential requests per "
        f"target per round, {p['rounds']} rounds = {n_lat} samples; median of the per-round "
        "numbers [min-max over rounds]):\n"
    )
    rows = []
    for name in names:
        o = s[name]
        rows.append(
            [
                name,
                fmt_spread(o["latency_p50_ms"], 3),
                fmt_spread(o["latency_p99_ms"], 3),
                fmt_spread(o.get("added_p50_ms", [0.0]), 3) if name != "direct" else "—",
                fmt_spread(o.get("added_p99_ms", [0.0]), 3) if name != "direct" else "—",
            ]
        )
    lines.append(table(["path", "p50", "p99", "added p50", "added p99"], rows))
    if "ratio_litellm_over_gateway_added_p50" in s:
        g = median(s["gateway"]["added_p50_ms"])
        r50 = s["ratio_litellm_over_gateway_added_p50"]
        r99 = s["ratio_litellm_over_gateway_added_p99"]
        lines.append(
            f"\nLiteLLM adds {r50:.1f}x the gateway's added p50 latency ({r99:.1f}x at p99). "
            f"Targets: >= 5x less than LiteLLM: {'met' if r50 >= 5 else 'NOT met'}; "
            f"< 1 ms added p50: {'met' if g < 1 else 'NOT met'} ({g:.3f} ms)."
        )
    gw = s.get("gateway", {})
    if gw.get("overhead_header_ms"):
        h = summary(gw["overhead_header_ms"])
        hs = summary(gw["overhead_header_stream_ms"]) if gw["overhead_header_stream_ms"] else None
        lines.append(
            f"\nx-gateway-overhead-ms header (gateway's own estimate), non-streaming: median "
            f"{h['p50']:.3f} ms, IQR {h['q1']:.3f}-{h['q3']:.3f}, p99 {h['p99']:.3f} "
            f"(n={h['n']})"
            + (
                f"; streaming (set when headers go out, so only the part before the hand-off): "
                f"median {hs['p50']:.3f} ms (n={hs['n']})"
                if hs
                else ""
            )
        )
    n_st = p["stream_n"] * p["rounds"]
    lines.append(
        f"\nStreams of {p['stream_tokens']} tokens ({p['stream_n']} sequential streams per target "
        f"per round, {n_st} samples; TTFT = request sent to first token event; ITL = (last "
        "token - first token) / (tokens - 1), per stream; median [min-max over rounds]):\n"
    )
    rows = []
    for name in names:
        o = s[name]
        rows.append(
            [
                name,
                fmt_spread(o["ttft_ms"], 3),
                fmt_spread(o.get("added_ttft_ms", [0.0]), 3) if name != "direct" else "—",
                fmt_spread([v * 1000 for v in o["itl_ms"]], 1),
                fmt_spread([v * 1000 for v in o.get("added_itl_ms", [0.0])], 1)
                if name != "direct"
                else "—",
                fmt_spread(o["gap_p99_ms"], 3),
                fmt_spread(o["stream_total_ms"], 1),
                ",".join(str(c) for c in o["tokens_seen"]),
            ]
        )
    lines.append(
        table(
            [
                "path",
                "TTFT ms",
                "added TTFT ms",
                "ITL µs",
                "added ITL µs",
                "gap p99 ms",
                "whole stream ms",
                "token events",
            ],
            rows,
        )
    )
    lines.append(
        f"\nMaximum throughput, requests/s (closed loop, non-streaming 16-token answers, "
        f"{p['throughput_duration_s']:g} s per point after 1 s warm-up; median [min-max over "
        f"{p['rounds']} rounds]):\n"
    )
    concs = [str(c) for c in p["concurrencies"]]
    rows = [
        [name]
        + [fmt_spread(s[name]["rps"][c], 0) for c in concs]
        + [
            str(s[name]["errors"]),
            f"{s[name].get('upstream_connections_per_request', float('nan')):.2f}",
        ]
        for name in names
    ]
    lines.append(
        table(
            ["path"]
            + [f"concurrency {c}" for c in concs]
            + ["errors", "upstream TCP connects per request"],
            rows,
        )
    )
    probe = result.get("client_probe") or {}
    if probe.get("modes"):
        n = probe["modes"][0]["n"]
        lines.append(
            f"\nOne upstream call by HTTP client (a 16-token stream from the stub, {n} sequential "
            "calls per mode after a warm-up round; `bench/upstream_client_probe.py`):\n"
        )
        lines.append(
            table(
                ["client", "p50 ms", "p99 ms", "TCP connects per request"],
                [
                    [
                        m["mode"],
                        f"{m['p50_ms']:.3f}",
                        f"{m['p99_ms']:.3f}",
                        f"{m['connections_per_request']:.2f}",
                    ]
                    for m in probe["modes"]
                ],
            )
        )
    return "\n".join(lines)


if __name__ == "__main__":
    run()
