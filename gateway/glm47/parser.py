"""Incremental parser for GLM-4.7 output: reasoning, content and OpenAI tool calls.

``GLM47Parser`` is a pure state machine (FORMAT.md sections 2, 2b and 3). Feed it the model's
text in chunks of any size; each ``feed`` returns the events that text settles, ``finish`` returns
the rest. Folding every event with ``MessageAccumulator`` gives the same message for every
chunking, and the work per chunk is proportional to the chunk.

How it works. The parser is always in one ``State``. Each state recognizes a fixed set of tags
and maps each to a handler (its ``TagTable``); text between tags goes to the state's sink
(reasoning, content, the call's name, the current key, a value, a pending decision, or nowhere).
A ``<`` that may still begin one of the state's tags at the end of a chunk is held back (at most
a tag's length); once it cannot, it is ordinary text. Structural tags never reach an event.

Text can change the state (the first text after ``</arg_key>`` opens a value; the first
non-whitespace text after a candidate closing tag makes it data). Every such state's table holds
every tag of the state it may change into, so the scan never skips a ``<`` that the new state
would recognize, and after such a change the scan looks at the next ``<`` again.

Outside values, malformed markup is repaired, never raised on (FORMAT.md 2b.5): a stray tag is
dropped; a missing ``</arg_key>`` is implied by ``<arg_value>``, a missing ``<arg_value>`` by
text, a missing ``<arg_key>`` by ``</arg_key>`` after the name, a missing ``</tool_call>`` by
``<tool_call>``. ``arguments.py`` has the calls and values. ``</think>`` ends the reasoning once;
afterwards it is text like any other.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from gateway.glm47.arguments import CallArguments
from gateway.glm47.events import ContentDelta, ParseEvent, ReasoningDelta, ToolCallArguments
from gateway.glm47.schema import ToolSchemas, encode_string
from gateway.glm47.state import CALL_STATES, PENDING_STATES, VALUE_STATES, State
from gateway.glm47.tables import CALL_HANDLERS, KEY_LEN, Handler, TagTable, stray_tags, tag_table
from gateway.glm47.tokens import THINK_CLOSE, THINK_OPEN, TOOL_CALL_OPEN

__all__ = ["GLM47Parser"]

# Plain module globals: ``State.X`` is a slow class attribute lookup on Python 3.11.
_LEAD = State.LEAD
_REASONING = State.REASONING
_CONTENT = State.CONTENT
_CALL_NAME = State.CALL_NAME
_ARG_KEY = State.ARG_KEY
_BEFORE_VALUE = State.BEFORE_VALUE
_STRING_VALUE = State.STRING_VALUE
_NULLABLE_VALUE = State.NULLABLE_VALUE
_JSON_VALUE = State.JSON_VALUE
_AFTER_VALUE_CLOSE = State.AFTER_VALUE_CLOSE
_AFTER_CALL_CLOSE = State.AFTER_CALL_CLOSE
_DONE = State.DONE

_SPACES = re.compile(r"\s*")  # what str.strip() strips (Py_UNICODE_ISSPACE)
_COLLECTING = frozenset({_CALL_NAME, _ARG_KEY, _JSON_VALUE})  # the states whose text goes to _buf
_SECTIONS = frozenset({_LEAD, _REASONING, _CONTENT})
_CALL_STRUCTURE = CALL_STATES - VALUE_STATES - PENDING_STATES  # in a call, outside a value


class GLM47Parser(CallArguments):
    """Splits one response's raw GLM-4.7 output into parse events, incrementally.

    ``thinking``: the prompt opened ``<think>``, so the output starts inside the reasoning.
    ``tools``: the OpenAI tools offered; ``None`` or empty means tool markup is plain content (pass
    ``None`` when ``tool_choice`` is ``"none"``).
    """

    __slots__ = ("_held", "_tables", "_text_started", "_ws")

    def __init__(self, *, thinking: bool, tools: Sequence[Mapping[str, Any]] | None) -> None:
        super().__init__(ToolSchemas(tools), _LEAD if thinking else _CONTENT)
        self._tables = _TABLES_WITH_TOOLS if tools else _TABLES_WITHOUT_TOOLS
        self._held = ""  # the start of a tag, still incomplete at the end of the last chunk
        # The current text section (reasoning, then content): stripped across the whole stream.
        self._text_started = False  # a non-whitespace character was emitted
        self._ws: list[str] = []  # trailing whitespace, held until more text of the section comes

    # -- public API -------------------------------------------------------------------------------

    def feed(self, text: str) -> list[ParseEvent]:
        """Consume a chunk of model output; return the events it settles."""
        events: list[ParseEvent] = []
        self._events = events
        held = self._held
        if held:
            text = held + text
            table = self._tables[self._state]
            if table is not None and len(text) < table.longest and text in table.prefixes:
                self._held = text  # still only the start of a tag
                return events
            self._held = ""
        elif "<" not in text:
            if text:
                self._text(text)
            return events
        pos = 0  # where to look for the next '<'
        if self._state is _LEAD:
            pos = self._lead(text)
        # Scan for '<'. Text between tags goes to the current state's sink in one piece (a '<' that
        # begins no tag stays part of it); a possible tag cut off by the end of the chunk is held.
        n = len(text)
        start = pos  # start of the text not yet handed to a sink
        held_at = -1  # where a possible tag starts that the chunk cuts off
        tables = self._tables
        table = tables[self._state]
        while table is not None:  # (None: nothing to recognize, e.g. content without tools)
            j = text.find("<", pos)
            if j < 0:
                break
            tag = table.by_key.get(text[j : j + KEY_LEN])
            if tag is not None and text.startswith(tag, j):
                if j > start:
                    state = self._state
                    self._text(text[start:j])
                    if self._state is not state:  # the text decided: look at this tag again
                        start = pos = j
                        table = tables[self._state]
                        continue
                start = pos = j + len(tag)
                table.handlers[tag](self)
                table = tables[self._state]
                continue
            if n - j < table.longest and text[j:] in table.prefixes:
                held_at = j
                break
            pos = j + 1  # a '<' that begins no tag: plain text
        end = n
        if held_at >= 0:
            self._held = text[held_at:]
            end = held_at
        if start < end:
            state = self._state
            self._text(text[start:end] if start or end < n else text)
            if held_at >= 0 and self._state is not state:
                self._release_held()
        return events

    def finish(self, *, truncated: bool = False) -> list[ParseEvent]:
        """End of output. ``truncated``: the token limit cut it (FORMAT.md 2b.6 and 2b.7).

        Held text that might have become a tag is dropped after the limit, text otherwise. A call
        left open is kept only after a stop and between arguments, with its required arguments.
        """
        events: list[ParseEvent] = []
        self._events = events
        state = self._state
        if state is _DONE:
            return events
        held = self._held
        self._held = ""
        if state in PENDING_STATES:  # the end of the output decides
            if state is _AFTER_VALUE_CLOSE:
                self._finish_value()
            elif state is _AFTER_CALL_CLOSE:
                self._value_ends_next_call()
                self._state = _CONTENT
            else:  # a key inside a value that no <arg_value> followed
                self._to_data()
            state = self._state
        if state in _SECTIONS:
            if held and not truncated:
                self._text(held)
        elif state in _CALL_STRUCTURE and not truncated and self._keep_at_end(held):
            self._close_call()
        self._ws.clear()
        self._buf.clear()
        self._pend.clear()
        self._state = _DONE
        return events

    # -- scanning ---------------------------------------------------------------------------------

    def _lead(self, text: str) -> int:
        """Start of the output, thinking on: skip whitespace and the tags that may come first.

        Returns where the main scan goes on (the state has left LEAD unless all was consumed).
        """
        table = self._tables[_LEAD]
        assert table is not None
        n = len(text)
        pos = 0
        while True:
            spaces = _SPACES.match(text, pos)  # (leading whitespace of the reasoning: dropped)
            if spaces is not None:  # (always: the pattern matches the empty string)
                pos = spaces.end()
            if pos == n:
                return n
            if text[pos] != "<":
                break
            tag = table.by_key.get(text[pos : pos + KEY_LEN])
            if tag is not None and text.startswith(tag, pos):
                pos += len(tag)
                table.handlers[tag](self)  # <think> is dropped; a stray tool tag too
                if self._state is not _LEAD:
                    return pos
                continue
            if n - pos < table.longest and text[pos:] in table.prefixes:
                self._held = text[pos:]
                return n
            break
        self._state = _REASONING
        return pos

    def _release_held(self) -> None:
        """The state changed under a held partial tag: keep it only if it may still be one."""
        table = self._tables[self._state]
        held = self._held
        if table is None or held not in table.prefixes:
            self._held = ""
            self._text(held)

    def _text(self, text: str) -> None:
        """Hand text between tags to the current state's sink."""
        state = self._state
        if state is _STRING_VALUE:
            self._events.append(ToolCallArguments(self._call_index - 1, encode_string(text)[1:-1]))
        elif state in _COLLECTING:
            self._buf.append(text)
        elif state is _CONTENT or state is _REASONING:
            self._section_text(text)
        elif state is _NULLABLE_VALUE:
            self._nullable_text(text)
        elif state in PENDING_STATES:
            self._pending_text(text)
        elif state is _BEFORE_VALUE:
            self._before_value_text(text)
        elif state is _LEAD:
            self._section_text(text)
            if self._text_started:
                self._state = _REASONING
        # BETWEEN_ARGS, SKIP_VALUE: dropped.

    def _section_text(self, text: str) -> None:
        """Reasoning or content text, stripped of surrounding whitespace across the stream."""
        if not self._text_started:
            text = text.lstrip()
            if not text:
                return
            self._text_started = True
        core = text.rstrip()
        if len(core) < len(text) or self._ws:
            if not core:
                self._ws.append(text)
                return
            tail = text[len(core) :]
            if self._ws:
                core = "".join(self._ws) + core
                self._ws.clear()
            if tail:
                self._ws.append(tail)
        if self._state is _CONTENT:
            self._events.append(ContentDelta(core))
        else:
            self._events.append(ReasoningDelta(core))

    # -- tags of the text sections ----------------------------------------------------------------

    def _reasoning_call_open(self) -> None:  # a call before </think> ends the reasoning (T16)
        self._end_reasoning()
        self._state = _CALL_NAME

    def _content_call_open(self) -> None:
        self._state = _CALL_NAME

    def _think_close(self) -> None:  # only recognized before the reasoning ended
        self._end_reasoning()
        self._state = _CONTENT

    def _think_open(self) -> None:  # only recognized in LEAD: an echo of the prompt's <think>
        self._state = _REASONING

    def _end_reasoning(self) -> None:
        self._ws.clear()
        self._text_started = False


# -- the tag tables (those of a call are in tables.py) ---------------------------------------------


def _tables(tools: bool) -> tuple[TagTable | None, ...]:
    parser = GLM47Parser
    sections: dict[State, dict[str, Handler]] = {
        _LEAD: {THINK_OPEN: parser._think_open, THINK_CLOSE: parser._think_close},
        _REASONING: {THINK_CLOSE: parser._think_close},
        _CONTENT: {},
    }
    if tools:  # (outside a call, every tool tag but <tool_call> is stray)
        for state, call_open in (
            (_LEAD, parser._reasoning_call_open),
            (_REASONING, parser._reasoning_call_open),
            (_CONTENT, parser._content_call_open),
        ):
            sections[state] |= stray_tags()
            sections[state][TOOL_CALL_OPEN] = call_open
    by_state: dict[State, Mapping[str, Handler]] = {**sections, **CALL_HANDLERS}
    return tuple(tag_table(by_state.get(state, {})) for state in State)


_TABLES_WITH_TOOLS = _tables(True)
_TABLES_WITHOUT_TOOLS = _tables(False)
