"""Runs vLLM's GLM parsers in streaming mode, inside the vLLM environment.

    $VLLM_VENV/bin/python bench/vllm_parser_worker.py tokenize TOKENIZER_DIR CORPUS.txt...
    $VLLM_VENV/bin/python bench/vllm_parser_worker.py parse TOKENIZER_DIR CORPUS.txt CAP_S RUNS

``tokenize`` writes ``CORPUS.deltas.json`` beside each corpus: the text cut into the deltas a
streaming server emits, one per token (the glm-tiny tokenizer, GLM-4.7's special tokens), with
their token ids. ``parse`` drives vLLM's own serving-layer parser the way
``vllm/entrypoints/openai/chat_completion/serving.py`` does for a streamed chat completion
with ``--tool-call-parser glm47 --reasoning-parser glm45 --enable-auto-tool-choice``: one
``Parser`` per request, ``parse_delta`` per token. It prints one JSON line per run (CPU
seconds, what came out) and stops starting runs once one took longer than CAP_S.

This file imports vLLM and transformers: it never runs in the project's environment.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

# The tools offered: the same file as bench/parser_bench.py reads.
TOOLS: list[dict[str, Any]] = json.loads(
    (Path(__file__).resolve().parent / "tools.json").read_text(encoding="utf-8")
)

# GLM-4.7's generation prompt with thinking on ends inside <think>.
PROMPT = "[gMASK]<sop><|user|>Go.<|assistant|><think>"


def _tokenizer(path: str) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def deltas_of(tok: Any, text: str) -> list[tuple[str, list[int]]]:
    """The text as per-token deltas. A character split over several byte tokens arrives with
    its last token (earlier ones carry ''), as vLLM's incremental detokenizer sends it."""
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    out: list[tuple[str, list[int]]] = []
    pos = 0
    for tid, (_start, end) in zip(enc["input_ids"], enc["offset_mapping"], strict=True):
        piece = text[pos:end] if end > pos else ""
        pos = max(pos, end)
        out.append((piece, [tid]))
    if pos < len(text) and out:
        out[-1] = (out[-1][0] + text[pos:], out[-1][1])
    assert "".join(d for d, _ in out) == text
    return out


def cmd_tokenize(tokdir: str, files: list[str]) -> None:
    tok = _tokenizer(tokdir)
    for name in files:
        path = Path(name)
        text = path.read_text(encoding="utf-8")
        deltas = deltas_of(tok, text)
        path.with_suffix(".deltas.json").write_text(json.dumps(deltas, ensure_ascii=False))
        print(json.dumps({"file": name, "tokens": len(deltas), "chars": len(text)}), flush=True)


def cmd_parse(tokdir: str, name: str, cap_s: float, runs: int) -> None:
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
    from vllm.parser import ParserManager

    tok = _tokenizer(tokdir)
    path = Path(name)
    deltas = json.loads(path.with_suffix(".deltas.json").read_text(encoding="utf-8"))
    parser_cls = ParserManager.get_parser(
        tool_parser_name="glm47",
        reasoning_parser_name="glm45",
        enable_auto_tools=True,
        model_name="glm-tiny",
        tokenizer=tok,
    )
    assert parser_cls is not None
    request = ChatCompletionRequest(
        model="glm-tiny",
        messages=[{"role": "user", "content": "Go."}],
        tools=TOOLS,
        tool_choice="auto",
        stream=True,
    )
    prompt_ids = tok.encode(PROMPT, add_special_tokens=False)
    last = len(deltas) - 1
    began = time.perf_counter()
    for run in range(runs):
        parser = parser_cls(tok, request.tools, chat_template_kwargs={}, model_config=None)
        reasoning = content = 0
        calls: dict[int, dict[str, Any]] = {}
        start = time.process_time()
        wall = time.perf_counter()
        timed_out = False
        for i, (text, ids) in enumerate(deltas):
            msg = parser.parse_delta(
                text, ids, request, prompt_token_ids=prompt_ids, finished=i == last
            )
            if msg is not None:
                reasoning += len(msg.reasoning or "")
                content += len(msg.content or "")
                for tc in msg.tool_calls or []:
                    call = calls.setdefault(tc.index, {"name": "", "args": 0})
                    if tc.function is not None:
                        call["name"] += tc.function.name or ""
                        call["args"] += len(tc.function.arguments or "")
            if i % 256 == 0 and time.perf_counter() - wall > cap_s:
                timed_out = True
                break
        cpu = time.process_time() - start
        print(
            json.dumps(
                {
                    "run": run,
                    "cpu_s": cpu,
                    "wall_s": time.perf_counter() - wall,
                    "timed_out": timed_out,
                    "deltas": len(deltas),
                    "fed": i + 1,
                    "reasoning_chars": reasoning,
                    "content_chars": content,
                    "tool_calls": len(calls),
                    "argument_chars": sum(c["args"] for c in calls.values()),
                }
            ),
            flush=True,
        )
        # Repeat only while the repeats stay within the cap too.
        if timed_out or (time.perf_counter() - began) * (run + 2) / (run + 1) > cap_s:
            break


def main(argv: list[str]) -> int:
    if argv[0] == "tokenize":
        cmd_tokenize(argv[1], argv[2:])
    elif argv[0] == "parse":
        cmd_parse(argv[1], argv[2], float(argv[3]), int(argv[4]))
    else:
        raise SystemExit(__doc__)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
