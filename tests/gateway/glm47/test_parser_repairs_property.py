"""Property tests for FORMAT.md section 2b (reproducible: derandomized hypothesis).

1. Repair round trip: a known message, rendered in GLM-4.7 syntax with values that mention every
   tag and with the tags the real model skips (an opening, a closing, the final ``</tool_call>``)
   left out wherever section 2b says they are implied, parses back to exactly that message,
   under any chunking.
2. Bounded work: the work of each one-character feed does not grow with the text before it, for
   the shapes that make the parser hold text (whitespace after a candidate closing tag, a key
   inside a value, a nullable string literal, a long name or JSON value). Counted in traced
   steps, so the check does not depend on the machine's speed.
"""

from __future__ import annotations

import json
import sys
from types import FrameType
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from gateway.glm47.events import ParsedMessage, ToolCallResult
from gateway.glm47.parser import GLM47Parser
from tests.gateway.glm47.test_parser_property import (
    ALL_TAGS,
    PLAIN,
    PROPERTY_SETTINGS,
    TOOLS,
    VALUES,
    check_events,
    cut,
    run,
)

# A string value that mentions tags: each mention is followed by a letter, so no position in it
# is structural, and the value may start or end with one.
MENTION = st.lists(
    st.one_of(PLAIN, st.sampled_from(ALL_TAGS).map(lambda tag: tag + "x")), max_size=5
).map("".join)


def _plain_nullable(text: str) -> bool:
    """Text that a nullable string keeps verbatim (not ``null``, not one JSON string literal)."""
    if text == "null":
        return False
    try:
        return not isinstance(json.loads(text), str) or not text.startswith('"')
    except ValueError:
        return True


STRINGS = {("get_weather", "city"), ("search", "q"), ("write_file", "path")}
STRINGS |= {("write_file", "content"), ("search", "maybe")}
REPAIR_VALUES: dict[str, dict[str, st.SearchStrategy[Any]]] = {
    name: {
        key: (MENTION.filter(_plain_nullable) if (name, key) in STRINGS else strategy)
        for key, strategy in params.items()
    }
    for name, params in VALUES.items()
}
DAMAGE = st.sampled_from(["keep"] * 3 + ["skip_value_open", "skip_value_close", "skip_key_close"])


@st.composite
def damaged_call(draw: st.DrawFn, *, then: str) -> tuple[str, ToolCallResult]:
    """A call rendered with skipped tags, and what it must parse to.

    ``then``: what follows it, after whitespace: ``"call"``, ``"end"`` (the output ends after
    whitespace), ``"eof"`` (it ends right there) or ``"text"``.
    """
    name = draw(st.sampled_from(sorted(REPAIR_VALUES)))
    params = REPAIR_VALUES[name]
    keys = draw(st.lists(st.sampled_from(sorted(params) or ["_"]), unique=True))
    args = {key: draw(params[key]) for key in keys if key in params}
    texts = [v if isinstance(v, str) else json.dumps(v, ensure_ascii=False) for v in args.values()]
    damages = [draw(DAMAGE) for _ in texts]
    for i, text in enumerate(texts):
        if damages[i] == "skip_value_open" and (not text or text[0].isspace() or text[0] == "<"):
            damages[i] = "keep"  # its start would be taken for whitespace or a tag
    for i in range(len(texts)):
        # A skipped </arg_value> is implied by the next <arg_key>K</arg_key><arg_value>, or by
        # </tool_call> before <tool_call> or the end.
        follows = damages[i + 1] == "keep" if i + 1 < len(texts) else then != "text"
        if damages[i] == "skip_value_close" and not follows:
            damages[i] = "keep"
    key_open_skipped = bool(texts) and damages[0] != "skip_key_close" and draw(st.booleans())
    sep = draw(st.sampled_from(["", "\n", " \n"]))
    parts = [f"<tool_call>{name}{sep}"]
    for i, (key, text) in enumerate(zip(args, texts, strict=True)):
        damage = damages[i]
        if i == 0 and key_open_skipped:  # <tool_call>NAME KEY</arg_key> (NAME is offered)
            parts.append(draw(st.sampled_from(["", " ", "\n"])) + key + "</arg_key>")
        else:
            parts.append(f"<arg_key>{key}{'' if damage == 'skip_key_close' else '</arg_key>'}{sep}")
        parts.append("" if damage == "skip_value_open" else "<arg_value>")
        parts.append(text if damage == "skip_value_close" else f"{text}</arg_value>{sep}")
    ending = "</tool_call>"
    if then in ("end", "eof") and (not texts or damages[-1] != "skip_value_close"):
        # Left open at a stop: kept after a value, or inside a partial </tool_call>.
        endings = ["</tool_call>", "</tool_", "</tool_call"] if then == "eof" else []
        endings += [""] if texts else []
        if endings:
            ending = draw(st.sampled_from(endings))
    call = ToolCallResult(name, json.dumps(args, ensure_ascii=False))
    return "".join(parts) + ending, call


@PROPERTY_SETTINGS
@given(
    data=st.data(),
    reasoning=PLAIN,
    texts=st.lists(PLAIN, max_size=4),
    tail=PLAIN,
    cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=12),
)
def test_repair_round_trip(
    data: st.DataObject, reasoning: str, texts: list[str], tail: str, cuts: list[int]
) -> None:
    if reasoning.lstrip().startswith("<think>"):
        return
    raw = f"{reasoning}</think>"
    calls: list[ToolCallResult] = []
    for i, text in enumerate(texts):
        after = texts[i + 1] if i + 1 < len(texts) else tail
        if after.strip():
            then = "text"
        elif i + 1 < len(texts):
            then = "call"
        else:
            then = "end" if tail else "eof"
        rendered, call = data.draw(damaged_call(then=then))
        raw += text + rendered
        calls.append(call)
    raw += tail
    expected = ParsedMessage(
        reasoning_content=reasoning.strip() or None,
        content=("".join(texts) + tail).strip() or None,
        tool_calls=calls,
    )
    for chunks in ([raw], cut(raw, cuts), list(raw)):
        events, message = run(chunks, thinking=True, tools=TOOLS)
        assert message == expected, raw
        check_events(events, tools_offered=True)


# -- bounded work per feed -------------------------------------------------------------------------

HEAD = "r</think><tool_call>write_file<arg_key>content</arg_key><arg_value>"
JSON_HEAD = "r</think><tool_call>search<arg_key>opts</arg_key><arg_value>"
NULLABLE_HEAD = "r</think><tool_call>search<arg_key>maybe</arg_key><arg_value>"


def shapes(n: int) -> dict[str, tuple[str, str]]:
    """Shapes of output that make the parser hold text: (a head, then a body of ``n`` or so)."""
    return {
        "whitespace after </arg_value>": (HEAD, "a</arg_value>" + " \n" * n + "b"),
        "whitespace after </tool_call>": (HEAD, "a</tool_call>" + "\n" * n + "b"),
        "keys inside a value": (HEAD, ("<arg_key>" + "k" * 100 + " ") * (n // 100)),
        "whitespace after a key inside a value": (HEAD, "<arg_key>k</arg_key>" + " " * n),
        "a nullable string literal": (NULLABLE_HEAD, '"' + "a\\n" * n),
        "a long name": ("r</think><tool_call>", "n" * n),
        "a long JSON value": (JSON_HEAD, "[1, " * n),
        "tag mentions": (HEAD, "</arg_value> x <arg_key>k</arg_key> y </tool_call> z " * (n // 50)),
        "content whitespace": ("r</think>a", " " * n + "<tool_call>list_files</tool_call>"),
    }


def max_steps_per_feed(head: str, body: str) -> int:
    """The most steps (Python lines, Python and C calls) one feed of the body, a character at a
    time, takes: a loop over what was held would show as lines, a call per held item as calls."""
    parser = GLM47Parser(thinking=True, tools=TOOLS)
    parser.feed(head)  # (the first lookups build the schema index: once per request)
    count = 0

    def trace(frame: FrameType, event: str, arg: Any) -> Any:
        nonlocal count
        count += 1  # "call" and "line" events
        return trace

    def profile(frame: FrameType, event: str, arg: Any) -> None:
        nonlocal count
        count += event == "c_call"

    most = 0
    for ch in body:
        count = 0
        sys.settrace(trace)
        sys.setprofile(profile)
        try:
            parser.feed(ch)
        finally:
            sys.setprofile(None)
            sys.settrace(None)
        most = max(most, count)
        assert len(parser._held) < 16
    parser.finish()
    return most


def test_work_per_feed_does_not_grow_with_the_text() -> None:
    small, large = shapes(300), shapes(6000)
    for shape, (head, body) in large.items():
        bound = max_steps_per_feed(*small[shape])
        assert bound < 150, shape
        assert max_steps_per_feed(head, body) <= bound, shape
