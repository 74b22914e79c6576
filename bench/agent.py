"""``python -m bench.agent``: the agent features on glm-tiny (llama.cpp, greedy), before/after.

- schema-valid tool calls on held-out prompts with the repairs off and on (write_file, two
  parallel weather calls, weather);
- completion tokens spent on looping prompts with the loop guard off and on;
- cached prompt tokens over a tool loop with ``clear_thinking`` true and false;
- the time the schema checks add per call (parser alone against parser + checks).

In process (the app under Starlette's test client), so only the engine and the gateway count.
"""

from __future__ import annotations

import itertools
import json
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import jsonschema
from starlette.testclient import TestClient

from backends.llamacpp import LlamaCppBackend, LlamaCppBackendSettings, LlamaCppOptions
from gateway.app import create_app
from gateway.glm47.parser import GLM47Parser
from gateway.pipeline.tool_check import ToolCallChecker
from gateway.settings import LoopGuardSettings, ModelSettings, RouteSettings, Settings

ROOT = Path(__file__).resolve().parents[1]
GGUF = ROOT / "tests" / "fixtures" / "models" / "glm-tiny" / "glm-tiny.gguf"
BASE_TOOLS: list[dict[str, Any]] = json.loads(
    (GGUF.parent / "tools.json").read_text(encoding="utf-8")
)
# The write_file tool glm-tiny was trained with (one JSON file for the bench and the tests).
WRITE: dict[str, Any] = json.loads(
    (GGUF.parent / "write_file_tool.json").read_text(encoding="utf-8")
)
TOOLS = [*BASE_TOOLS, WRITE]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
CITIES = ["Quito", "Hanoi", "Tallinn", "Accra", "Perth", "Bergen", "Cusco", "Tromso"]
WRITES = [
    "Create a file called todo.md with the text buy milk.",
    "Write a file named plan.md saying start early.",
    "Save the word banana in fruit.txt.",
    "Put the text good night into sleep.txt.",
    "Store my list eggs and bread in shop.txt.",
    "Create notes about the meeting in meeting.txt.",
    "Write the number seven to count.txt.",
    "Write hello to notes.txt.",
]
CASES: dict[str, list[tuple[str, int]]] = {
    "write_file": [(p, 1) for p in WRITES],
    "two weather calls": [
        (f"What's the weather in {a} and {b}?", 2) for a, b in itertools.pairwise(CITIES)
    ],
    "weather": [(f"What's the weather in {c}?", 1) for c in CITIES],
}
LOOPING = [
    ("Describe a sunset over the ocean.", False),
    ("List the files in the docs folder.", False),
    ("Name a famous painter from Spain.", True),
    ("How many legs does a spider have?", False),
]
LOOP_MAX = 1200


@contextmanager
def _gateway(**route: Any) -> Iterator[TestClient]:
    routes = {name: RouteSettings(**route) for name in ("general", "tools")}
    model = ModelSettings(
        id="m", backend=LlamaCppBackendSettings(model=str(GGUF), n_ctx=2048), routes=routes
    )
    backend = LlamaCppBackend(LlamaCppOptions(model_path=str(GGUF), n_ctx=2048))
    app = create_app(Settings(models=[model]), backends={"m": backend})
    with TestClient(app) as client:
        deadline = time.monotonic() + 120
        while client.get("/ready").status_code != 200:  # (the model loads in the background)
            if time.monotonic() > deadline:
                raise RuntimeError("the model did not load")
            time.sleep(0.1)
        yield client


def _chat(client: TestClient, messages: list[dict[str, Any]], **body: Any) -> Any:
    reply = client.post(
        "/v1/chat/completions",
        json={"model": "m", "messages": messages, "temperature": 0, **body},
    )
    reply.raise_for_status()
    return reply


def _valid(message: dict[str, Any], expected: int) -> bool:
    calls = message.get("tool_calls") or []
    if len(calls) != expected:
        return False
    try:
        for call in calls:
            function = call["function"]
            jsonschema.validate(json.loads(function["arguments"]), SCHEMAS[function["name"]])
    except (jsonschema.ValidationError, KeyError, json.JSONDecodeError):
        return False
    return True


def repairs() -> list[tuple[str, int, int, int, int]]:
    rows = []
    counts: dict[bool, dict[str, tuple[int, int]]] = {}
    for on in (False, True):
        counts[on] = {}
        with _gateway(repair_tool_calls=on) as client:
            for name, cases in CASES.items():
                valid = repaired = 0
                for prompt, expected in cases:
                    reply = _chat(
                        client, [{"role": "user", "content": prompt}], tools=TOOLS, max_tokens=200
                    )
                    valid += _valid(reply.json()["choices"][0]["message"], expected)
                    repaired += "repaired" in reply.headers.get("x-glm-repairs", "")
                counts[on][name] = (valid, repaired)
    for name, cases in CASES.items():
        rows.append(
            (name, len(cases), counts[False][name][0], counts[True][name][0], counts[True][name][1])
        )
    return rows


def loops() -> list[tuple[str, int, int, str]]:
    rows = []
    spent: dict[bool, list[tuple[int, str]]] = {}
    for on in (False, True):
        spent[on] = []
        with _gateway(loop_guard=LoopGuardSettings(enabled=on)) as client:
            for prompt, tools in LOOPING:
                extra = {"tools": BASE_TOOLS} if tools else {}
                reply = _chat(
                    client, [{"role": "user", "content": prompt}], max_tokens=LOOP_MAX, **extra
                )
                tokens = reply.json()["usage"]["completion_tokens"]
                spent[on].append((tokens, reply.headers.get("x-glm-loop-guard", "-")))
    for i, (prompt, _) in enumerate(LOOPING):
        rows.append((prompt, spent[False][i][0], spent[True][i][0], spent[True][i][1]))
    return rows


def thinking_cache() -> list[tuple[str, list[tuple[int, int]]]]:
    """Three generations of a tool loop; each turn sends the model's reasoning back."""
    rows = []
    for clear in (True, False):
        turns: list[tuple[int, int]] = []
        with _gateway() as client:
            messages: list[dict[str, Any]] = [
                {"role": "user", "content": "What's the weather in Oslo?"}
            ]
            results = ["Sunny, 21C", "Rainy, 9C"]
            for turn in range(3):
                body = {
                    "tools": BASE_TOOLS,
                    "max_tokens": 120,
                    "chat_template_kwargs": {"clear_thinking": clear},
                }
                done = _chat(client, messages, **body).json()
                usage = done["usage"]
                cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
                turns.append((usage["prompt_tokens"], cached))
                message = done["choices"][0]["message"]
                assistant: dict[str, Any] = {
                    "role": "assistant",
                    "content": message.get("content"),
                    "reasoning_content": message.get("reasoning_content"),
                }
                if message.get("tool_calls"):
                    assistant["tool_calls"] = message["tool_calls"]
                messages.append(assistant)
                if message.get("tool_calls"):
                    for call in message["tool_calls"]:
                        messages.append(
                            {"role": "tool", "tool_call_id": call["id"], "content": results[0]}
                        )
                else:
                    messages.append({"role": "user", "content": "And in Rome?"})
                del turn
        rows.append((f"clear_thinking {str(clear).lower()}", turns))
    return rows


def check_latency(rounds: int = 2000) -> list[tuple[str, float, float]]:
    content = "line of text\n" * 80
    calls = {
        "weather (1 string)": "<tool_call>get_weather<arg_key>city</arg_key><arg_value>Oslo"
        "</arg_value></tool_call>",
        "write_file (1 KiB)": "<tool_call>write_file<arg_key>path</arg_key><arg_value>a.txt"
        f"</arg_value><arg_key>content</arg_key><arg_value>{content}</arg_value></tool_call>",
    }
    rows = []
    for name, raw in calls.items():
        chunks = [raw[i : i + 4] for i in range(0, len(raw), 4)]
        timings = []
        for checked in (False, True):
            start = time.perf_counter()
            for _ in range(rounds):
                parser = GLM47Parser(thinking=False, tools=TOOLS)
                checker = (
                    ToolCallChecker(parser.schemas, incremental=True, repairable=True)
                    if checked
                    else None
                )
                for chunk in chunks:
                    events = parser.feed(chunk)
                    if checker is not None:
                        checker.feed(events)
            timings.append((time.perf_counter() - start) / rounds * 1e6)
        rows.append((name, timings[0], timings[1] - timings[0]))
    return rows


def _table(head: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def main(argv: Sequence[str] = ()) -> int:
    parts = set(argv) or {"repairs", "loops", "cache", "latency"}
    if "repairs" in parts:
        print("Schema-valid responses (expected calls, all valid), held-out prompts, greedy")
        head = ["prompts", "n", "valid, repairs off", "valid, repairs on", "repaired"]
        print(_table(head, repairs()), "\n")
    if "loops" in parts:
        print(f"Completion tokens on looping prompts (max_tokens {LOOP_MAX})")
        head = ["prompt", "guard off", "guard on", "x-glm-loop-guard"]
        print(_table(head, loops()), "\n")
    if "cache" in parts:
        print("Prompt / cached tokens per generation, 3-generation tool loop")
        rows = [(name, *(f"{p} / {c}" for p, c in turns)) for name, turns in thinking_cache()]
        print(_table(["template", "turn 1", "turn 2", "turn 3"], rows), "\n")
    if "latency" in parts:
        print("Schema checks per call (4-character chunks), microseconds")
        rows = [(n, f"{a:.1f}", f"{b:.1f}") for n, a, b in check_latency()]
        print(_table(["call", "parser alone", "checks add"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
