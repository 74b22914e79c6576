"""Part 3: the GLM-4.7 output parser against vLLM's, on the same generated text.

Two corpora, each at sizes from 1 KB to 1 MB (UTF-8 bytes):

- **mixed**: a quarter reasoning prose, ``</think>``, then content sentences and tool calls
  (``get_weather``, ``search`` with a JSON object argument, a small ``write_file``, an
  argument-less ``list_files``) in turn: an agent's turn, many calls;
- **long argument**: one ``write_file`` call whose ``content`` argument (code, with ``<``,
  quotes, CJK and emoji) is the whole size: an assistant writing a big file.

Our parser (``gateway.glm47.parser.GLM47Parser``, what the gateway runs on every backend's
output) is fed each text whole, per token (the same deltas vLLM gets) and one character at a
time. vLLM's ``glm47`` tool parser + ``glm45`` reasoning parser (vLLM 0.32, run through its
serving-layer ``Parser.parse_delta`` in its own environment, ``bench/vllm_parser_worker.py``)
get the per-token deltas of the glm-tiny tokenizer, which has GLM-4.7's special tokens.

Times are CPU seconds (``time.process_time``) of the parse alone; each point is the median of
up to 5 runs (fewer where one run is long), min and max kept. A vLLM run that passes the cap
(60 s) is stopped, and larger sizes of that corpus are not tried.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

from .common import RESULTS, VLLM_VENV, banner, glm_tiny, loadavg, machine, save, table
from .parser_bench import (
    TOOLS,
    MessageAccumulator,
    _repeat_to,
    many_calls_output,
    stream,
    write_file_output,
)

KIB = 1024
SIZES = (1 * KIB, 4 * KIB, 16 * KIB, 64 * KIB, 256 * KIB, 1024 * KIB)
CORPUS = RESULTS / "parser-corpus"
WORKER = Path(__file__).with_name("vllm_parser_worker.py")

_PROSE = (
    "The user wants the weather in Paris for three days; I should call get_weather with "
    "city=Paris and days=3, then summarise. Note: 2 < 3 and <b>bold</b> is HTML. 北京 😀\n"
)


def mixed(size: int) -> str:
    reasoning = _repeat_to(lambda i: _PROSE, size // 4)
    rest = many_calls_output(size - len(reasoning.encode()))
    # many_calls_output starts with its own short reasoning and </think>.
    return reasoning + rest


def long_argument(size: int) -> str:
    overhead = len(write_file_output(0).encode())
    return write_file_output(max(size - overhead, 0))


CORPORA = {"mixed": mixed, "long argument": long_argument}


def _slug(kind: str, size: int) -> str:
    return f"{kind.replace(' ', '-')}-{size // KIB}k"


def _time(fn: Any, runs: int = 5, budget: float = 20.0) -> dict[str, Any]:
    times = []
    began = time.perf_counter()
    for _ in range(runs):
        start = time.process_time()
        fn()
        times.append(time.process_time() - start)
        if time.perf_counter() - began > budget:
            break
    times.sort()
    return {
        "median_s": times[len(times) // 2],
        "min_s": times[0],
        "max_s": times[-1],
        "runs": len(times),
    }


def _ours_summary(chunks: list[str]) -> dict[str, Any]:
    acc = MessageAccumulator()
    for event in stream(chunks):
        acc.add(event)
    msg = acc.result()
    return {
        "reasoning_chars": len(msg.reasoning_content or ""),
        "content_chars": len(msg.content or ""),
        "tool_calls": len(msg.tool_calls),
    }


def run(max_size: int = max(SIZES), cap_s: float = 60.0) -> dict[str, Any]:
    banner("Part 3: GLM-4.7 parser vs vLLM's glm47/glm45 parsers")
    sizes = [s for s in SIZES if s <= max_size]
    CORPUS.mkdir(parents=True, exist_ok=True)
    files: dict[tuple[str, int], Path] = {}
    for kind, make in CORPORA.items():
        for size in sizes:
            path = CORPUS / f"{_slug(kind, size)}.txt"
            path.write_text(make(size), encoding="utf-8")
            files[(kind, size)] = path
    result: dict[str, Any] = {
        "machine": machine(),
        "params": {"sizes": sizes, "cap_s": cap_s, "tools": [t["function"]["name"] for t in TOOLS]},
        "points": [],
        "loadavg": [loadavg()],
    }
    vllm_python = VLLM_VENV / "bin" / "python"
    have_vllm = vllm_python.exists()
    if have_vllm:
        print("  tokenizing the corpora with the glm-tiny tokenizer (vLLM venv)...", flush=True)
        proc = subprocess.run(
            [
                str(vllm_python),
                str(WORKER),
                "tokenize",
                str(glm_tiny()),
                *(str(p) for p in files.values()),
            ],
            capture_output=True,
            text=True,
            timeout=600,
        )
        if proc.returncode != 0:
            print(proc.stderr[-3000:])
            have_vllm = False
    else:
        print(f"  {vllm_python} missing: vLLM's parsers skipped (scripts/setup-vllm.sh)")

    skipped_from: dict[str, int] = {}
    for (kind, size), path in files.items():
        text = path.read_text(encoding="utf-8")
        nbytes = len(text.encode())
        deltas_path = path.with_suffix(".deltas.json")
        token_chunks: list[str] | None = None
        if deltas_path.exists():
            token_chunks = [d for d, _ in json.loads(deltas_path.read_text(encoding="utf-8"))]
            token_chunks = [c for c in token_chunks if c]
        chars = list(text)
        point: dict[str, Any] = {
            "corpus": kind,
            "size": size,
            "bytes": nbytes,
            "chars": len(text),
            "loadavg": loadavg(),
        }
        reference = _ours_summary([text])
        point["ours_whole"] = {**_time(lambda t=text: stream([t])), **reference}
        if token_chunks is not None:
            point["tokens"] = len(token_chunks)
            same = _ours_summary(token_chunks)
            assert same == reference, (kind, size, same, reference)
            point["ours_tokens"] = {**_time(lambda c=token_chunks: stream(c)), **same}
        point["ours_chars"] = _time(lambda c=chars: stream(c))
        if have_vllm and kind not in skipped_from:
            point["vllm"] = _vllm(vllm_python, path, cap_s)
            if point["vllm"].get("timed_out") or point["vllm"].get("median_s", 0) > cap_s:
                skipped_from[kind] = size
        elif have_vllm:
            point["vllm"] = {
                "skipped": f"the {skipped_from[kind] // KIB} KiB run passed {cap_s:g} s"
            }
        result["points"].append(point)
        v = point.get("vllm", {})
        print(
            f"  {kind:<14} {nbytes:>8} B  ours whole {point['ours_whole']['median_s']:8.4f} s"
            f"  per token {point.get('ours_tokens', {}).get('median_s', float('nan')):8.4f} s"
            f"  per char {point['ours_chars']['median_s']:8.4f} s"
            f"  vLLM per token "
            + (
                f"{v['median_s']:8.3f} s" + (" (stopped at cap)" if v.get("timed_out") else "")
                if "median_s" in v
                else str(v.get("skipped") or v.get("error") or "n/a")
            ),
            flush=True,
        )
    result["loadavg"].append(loadavg())
    save("parser", result)
    print(report(result))
    return result


def _vllm(python: Path, path: Path, cap_s: float) -> dict[str, Any]:
    try:
        proc = subprocess.run(
            [str(python), str(WORKER), "parse", str(glm_tiny()), str(path), str(cap_s), "5"],
            capture_output=True,
            text=True,
            timeout=cap_s * 2 + 120,
        )
    except subprocess.TimeoutExpired:
        return {"timed_out": True, "error": f"worker killed after {cap_s * 2 + 120:.0f} s"}
    runs = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    if not runs:
        return {"error": (proc.stderr or "no output")[-500:]}
    if any(r["timed_out"] for r in runs):
        r = next(r for r in runs if r["timed_out"])
        return {
            "timed_out": True,
            "fed": r["fed"],
            "deltas": r["deltas"],
            "cpu_s": r["cpu_s"],
            "wall_s": r["wall_s"],
        }
    times = sorted(r["cpu_s"] for r in runs)
    last = runs[-1]
    return {
        "median_s": times[len(times) // 2],
        "min_s": times[0],
        "max_s": times[-1],
        "runs": len(times),
        "reasoning_chars": last["reasoning_chars"],
        "content_chars": last["content_chars"],
        "tool_calls": last["tool_calls"],
        "argument_chars": last["argument_chars"],
    }


def _cell(p: dict[str, Any] | None) -> str:
    if not p:
        return "n/a"
    if "median_s" in p:
        return f"{p['median_s']:.4g} [{p['min_s']:.3g}-{p['max_s']:.3g}] n={p['runs']}"
    if p.get("timed_out"):
        if "fed" in p:
            return f"> cap (stopped after {p['fed']}/{p['deltas']} tokens, {p['wall_s']:.0f} s)"
        return "> cap"
    return str(p.get("skipped") or p.get("error") or "n/a")[:60]


def report(result: dict[str, Any]) -> str:
    lines = [
        "CPU seconds to parse the whole text (median [min-max], n = runs); per token = "
        "glm-tiny token deltas, as a streaming server emits them:\n"
    ]
    rows = []
    for p in result["points"]:
        ours_tok = p.get("ours_tokens", {}).get("median_s")
        vl = p.get("vllm", {}).get("median_s")
        ratio = f"{vl / ours_tok:.0f}x" if vl and ours_tok else "—"
        rows.append(
            [
                p["corpus"],
                f"{p['bytes'] // KIB} KiB" if p["bytes"] >= KIB else f"{p['bytes']} B",
                str(p.get("tokens", "")),
                _cell(p["ours_whole"]),
                _cell(p.get("ours_tokens")),
                _cell(p["ours_chars"]),
                _cell(p.get("vllm")),
                ratio,
            ]
        )
    lines.append(
        table(
            [
                "corpus",
                "size",
                "tokens",
                "ours, whole",
                "ours, per token",
                "ours, per char",
                "vLLM glm47+glm45, per token",
                "vLLM / ours (per token)",
            ],
            rows,
        )
    )
    checks = []
    for p in result["points"]:
        v = p.get("vllm", {})
        if "tool_calls" in v:
            checks.append(
                f"{p['corpus']} {p['bytes'] // KIB} KiB: tool calls ours "
                f"{p['ours_whole']['tool_calls']}"
                f" / vLLM {v['tool_calls']}, reasoning chars {p['ours_whole']['reasoning_chars']}"
                f" / {v['reasoning_chars']}, content chars {p['ours_whole']['content_chars']}"
                f" / {v['content_chars']}"
            )
    if checks:
        lines.append("\nWhat each parser found (same text):\n")
        lines.extend(f"- {c}" for c in checks)
    return "\n".join(lines)


if __name__ == "__main__":
    run()
