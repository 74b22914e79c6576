"""What the GLM-4.7 parser tests share: the parse vectors, the tags, and one parse run."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from gateway.glm47.events import MessageAccumulator, ParsedMessage, ParseEvent
from gateway.glm47.parser import GLM47Parser

FIXTURE = Path(__file__).resolve().parents[2] / "fixtures" / "glm47" / "parse_cases.json"
CASES: list[dict[str, Any]] = json.loads(FIXTURE.read_text(encoding="utf-8"))

THINK_TAGS = ("<think>", "</think>")
TOOL_TAGS = (
    "<tool_call>",
    "</tool_call>",
    "<arg_key>",
    "</arg_key>",
    "<arg_value>",
    "</arg_value>",
)
ALL_TAGS = THINK_TAGS + TOOL_TAGS


def parse_events(
    chunks: Iterable[str],
    *,
    thinking: bool,
    tools: Sequence[Mapping[str, Any]] | None,
    truncated: bool = False,
) -> list[ParseEvent]:
    """Feed ``chunks`` to a fresh parser and finish it (``truncated``: the engine hit its limit)."""
    parser = GLM47Parser(thinking=thinking, tools=tools)
    events: list[ParseEvent] = []
    for chunk in chunks:
        events += parser.feed(chunk)
    events += parser.finish(truncated=truncated)
    return events


def fold(events: Iterable[ParseEvent]) -> ParsedMessage:
    acc = MessageAccumulator()
    for event in events:
        acc.add(event)
    return acc.result()


def run(
    chunks: Iterable[str],
    *,
    thinking: bool,
    tools: Sequence[Mapping[str, Any]] | None,
    truncated: bool = False,
) -> tuple[list[ParseEvent], ParsedMessage]:
    """The events and the message they fold to."""
    events = parse_events(chunks, thinking=thinking, tools=tools, truncated=truncated)
    return events, fold(events)


def checked_parse(
    tools: list[Mapping[str, Any]], text: str, chunk: int, *, incremental: bool
) -> tuple[ParsedMessage, Any]:
    """``text`` through the parser and the schema checks in ``chunk``-sized pieces: what goes
    out, folded, and the first failure the checks found (or None)."""
    from gateway.glm47.schema import ToolSchemas
    from gateway.pipeline.tool_check import ToolCallChecker

    parser = GLM47Parser(thinking=False, tools=tools)
    checker = ToolCallChecker(ToolSchemas(tools), incremental=incremental, repairable=True)
    events: list[ParseEvent] = []
    for i in range(0, len(text), chunk):
        events += checker.feed(parser.feed(text[i : i + chunk]))
    if checker.failure is None:
        events += checker.feed(parser.finish())
        events += checker.finish(truncated=False)
    folded = MessageAccumulator()
    for event in events:
        folded.add(event)
    return folded.result(), checker.failure
