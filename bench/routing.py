"""Part 5: replica routing on two real vLLM replicas (glm-tiny, CPU): prefix-cache hit rate and
time to first token per turn, least-in-flight against conversation affinity, on one trace.

The trace: four conversations, each with its own long system prompt (about 900 tokens), turns
interleaved in an irregular order (a strict rotation would keep each conversation on one
replica by coincidence under least-in-flight). Each routing mode runs through its own gateway
on the same two vLLM servers, with system prompts tagged per mode so that one run's cache
cannot serve the other. Hits and queries are vLLM's own counters
(``vllm:prefix_cache_hits_total`` / ``vllm:prefix_cache_queries_total``, in tokens), summed
over both replicas; a turn's replica is the one whose ``vllm:request_success_total`` rose.
"""

from __future__ import annotations

import json
import time
from typing import Any

import httpx

from . import servers as srv
from .common import (
    VLLM_VENV,
    Servers,
    banner,
    loadavg,
    machine,
    median,
    save,
    table,
)

MODES = ("least-loaded", "affinity")
ORDER = "ABCD" + "BADC" + "ACBD" + "DBCA" + "CADB"
FILLER = (
    "You are a careful assistant for a travel agency. Answer in one short sentence, name the "
    "city you are asked about, and never invent prices, dates or opening hours. "
)


def start_replica(servers: Servers, name: str) -> Any:
    return srv.vllm(
        servers,
        name,
        extra=("--enforce-eager", "--disable-uvicorn-access-log"),
        timeout=600,
        env={
            "VLLM_CPU_KVCACHE_SPACE": "1",
            "VLLM_CPU_OMP_THREADS_BIND": "nobind",
            "OMP_NUM_THREADS": "1",
            "VLLM_LOGGING_LEVEL": "WARNING",
        },
    )


def metric(base: str, name: str) -> float:
    text = httpx.get(f"{base}/metrics", timeout=10).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith((name + "{", name + " "))
    )


def turn(
    client: httpx.Client, gateway: str, replicas: list[str], messages: list[dict[str, Any]]
) -> dict[str, Any]:
    before = [metric(b, "vllm:request_success_total") for b in replicas]
    body = {
        "model": "glm-tiny",
        "messages": messages,
        "temperature": 0,
        "max_tokens": 16,
        "stream": True,
    }
    start = time.perf_counter()
    ttft: float | None = None
    content = ""
    with client.stream("POST", f"{gateway}/v1/chat/completions", json=body) as response:
        for line in response.iter_lines():
            if not line.startswith("data: {"):
                continue
            delta = json.loads(line[6:])["choices"]
            delta = delta[0]["delta"] if delta else {}
            text = (delta.get("content") or "") + (delta.get("reasoning_content") or "")
            if text and ttft is None:
                ttft = (time.perf_counter() - start) * 1000
            content += delta.get("content") or ""
    after = [metric(b, "vllm:request_success_total") for b in replicas]
    where = [i for i, (b, a) in enumerate(zip(before, after, strict=True)) if a > b]
    return {"ttft_ms": ttft, "replica": where[0] if where else None, "content": content}


def run_mode(servers: Servers, replicas: list[str], mode: str) -> dict[str, Any]:
    gw = srv.gateway(
        servers,
        f"gateway-{mode}",
        [
            {
                "id": "glm-tiny",
                "backend": {
                    "type": "remote",
                    "engine": "vllm",
                    "replicas": [{"url": u} for u in replicas],
                    "model": "glm-tiny",
                    "routing": mode,
                },
            }
        ],
        log_level="warning",
    )
    history = {
        name: [{"role": "system", "content": f"[{mode}/{name}] " + FILLER * 20}] for name in "ABCD"
    }
    hits0 = sum(metric(b, "vllm:prefix_cache_hits_total") for b in replicas)
    queries0 = sum(metric(b, "vllm:prefix_cache_queries_total") for b in replicas)
    turns: list[dict[str, Any]] = []
    with httpx.Client(timeout=300) as client:
        for name in ORDER:
            messages = history[name]
            n = len(messages) // 2 + 1
            messages.append({"role": "user", "content": f"Turn {n}: what about Oslo?"})
            got = turn(client, gw.base, replicas, messages)
            messages.append({"role": "assistant", "content": got.pop("content")})
            turns.append({"conversation": name, "turn": n, **got})
            print(
                f"    {mode:<13} {name} turn {n}: replica {got['replica']} "
                f"ttft {got['ttft_ms']:.1f} ms",
                flush=True,
            )
    hits = sum(metric(b, "vllm:prefix_cache_hits_total") for b in replicas) - hits0
    queries = sum(metric(b, "vllm:prefix_cache_queries_total") for b in replicas) - queries0
    servers.stop(gw)
    return {"hits": hits, "queries": queries, "turns": turns}


def run(rounds: int = 1) -> dict[str, Any]:
    banner("Part 5: replica routing (two glm-tiny vLLM replicas on CPU)")
    if not (VLLM_VENV / "bin" / "python").exists():
        raise FileNotFoundError(f"{VLLM_VENV} missing: run scripts/setup-vllm.sh")
    result: dict[str, Any] = {"machine": machine(), "order": ORDER, "rounds": []}
    with Servers() as servers:
        print("  starting two vLLM replicas (a minute or two each)...", flush=True)
        replicas = [start_replica(servers, f"vllm-{i}").base for i in range(2)]
        for r in range(rounds):
            rnd: dict[str, Any] = {"loadavg": loadavg(), "modes": {}}
            order = MODES if r % 2 == 0 else tuple(reversed(MODES))
            for mode in order:
                rnd["modes"][mode] = run_mode(servers, replicas, f"{mode}")
            result["rounds"].append(rnd)
    save("routing", result)
    print(report(result))
    return result


def report(result: dict[str, Any]) -> str:
    rows = []
    for mode in MODES:
        runs = [rnd["modes"][mode] for rnd in result["rounds"]]
        hits = sum(x["hits"] for x in runs)
        queries = sum(x["queries"] for x in runs)
        turns = [t for x in runs for t in x["turns"]]
        moved = 0
        for x in runs:
            for name in "ABCD":
                where = {t["replica"] for t in x["turns"] if t["conversation"] == name}
                moved += len(where) > 1
        by_turn = []
        for n in range(1, max(t["turn"] for t in turns) + 1):
            values = [t["ttft_ms"] for t in turns if t["turn"] == n and t["ttft_ms"] is not None]
            by_turn.append(f"{median(values):.0f}")
        rows.append(
            [
                mode,
                f"{hits / queries:.1%}" if queries else "-",
                f"{hits:.0f} / {queries:.0f}",
                f"{moved} of {4 * len(runs)}",
                " / ".join(by_turn),
            ]
        )
    return table(
        [
            "routing",
            "prefix-cache hit rate",
            "hit / queried tokens",
            "conversations that moved",
            "TTFT p50 per turn 1..5 (ms)",
        ],
        rows,
    )
