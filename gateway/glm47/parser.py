"""Incremental parser for GLM-4.7 output: reasoning, content and OpenAI tool calls.

``GLM47Parser`` is a pure state machine (FORMAT.md sections 2 and 3). Feed it the model's text in
chunks of any size; each ``feed`` returns the events that text settles, ``finish`` returns the rest.
Folding every event with ``MessageAccumulator`` gives the same message for every chunking, and the
work per chunk is proportional to the chunk.

How it works. The parser is always in one ``_State``. Each state recognizes a fixed set of
tags (its ``_TagTable``); text between tags goes to the state's sink (reasoning, content, the call's
name, the current key, a streamed string value, a buffered JSON value, or nowhere for whitespace
between tags). A ``<`` that may still begin one of the state's tags at the end of a chunk is held
back (at most a tag's length); once it cannot, it is ordinary text. Tags never reach an event.

With tools offered the six tool tags are markup everywhere, so no event ever carries one; without
tools they are plain text. Malformed markup is repaired, never raised on: a stray tag outside its
place is dropped; a missing ``</arg_key>``/``</arg_value>``/``</tool_call>`` is implied by the next
tag that needs it (``<arg_value>``, ``<arg_key>``, ``<tool_call>``); a key without a value is
dropped; a ``<tool_call>`` inside a call whose name is not complete yet starts over. Every call
announced by ``ToolCallStart`` thus ends with valid JSON arguments, unless the output stops inside.
``</think>`` ends the reasoning once; afterwards it is text like any other.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from enum import IntEnum
from typing import Any, NamedTuple

from gateway.glm47.events import (
    ContentDelta,
    ParseEvent,
    ReasoningDelta,
    ToolCallArguments,
    ToolCallEnd,
    ToolCallStart,
)
from gateway.glm47.schema import ToolSchemas, encode_string, encode_value, is_string_only
from gateway.glm47.tokens import (
    ARG_KEY_CLOSE,
    ARG_KEY_OPEN,
    ARG_VALUE_CLOSE,
    ARG_VALUE_OPEN,
    THINK_CLOSE,
    THINK_OPEN,
    TOOL_CALL_CLOSE,
    TOOL_CALL_OPEN,
)

__all__ = ["GLM47Parser"]


class _State(IntEnum):
    """Where the parser is. (An ``IntEnum`` so that it indexes the tag tables cheaply.)"""

    LEAD = 0  # thinking on, nothing but whitespace yet: a ``<think>`` here is dropped
    REASONING = 1
    CONTENT = 2
    CALL_NAME = 3  # after <tool_call>, collecting the name
    ARG_KEY = 4  # after <arg_key>, collecting the key
    BEFORE_VALUE = 5  # after </arg_key>, waiting for <arg_value>
    STRING_VALUE = 6  # inside a verbatim string value: streamed as JSON-escaped pieces
    JSON_VALUE = 7  # inside any other value: buffered, decoded at </arg_value>
    BETWEEN_ARGS = 8  # after </arg_value>, waiting for <arg_key> or </tool_call>
    DONE = 9  # finish() was called


# Plain module globals: ``_State.X`` is a slow class attribute lookup on Python 3.11.
_LEAD = _State.LEAD
_REASONING = _State.REASONING
_CONTENT = _State.CONTENT
_CALL_NAME = _State.CALL_NAME
_ARG_KEY = _State.ARG_KEY
_BEFORE_VALUE = _State.BEFORE_VALUE
_STRING_VALUE = _State.STRING_VALUE
_JSON_VALUE = _State.JSON_VALUE
_BETWEEN_ARGS = _State.BETWEEN_ARGS
_DONE = _State.DONE

_KEY_LEN = 7  # every tag is at least this long, and their first 7 characters are all different
_TOOL_TAGS = (
    TOOL_CALL_OPEN,
    TOOL_CALL_CLOSE,
    ARG_KEY_OPEN,
    ARG_KEY_CLOSE,
    ARG_VALUE_OPEN,
    ARG_VALUE_CLOSE,
)


class _TagTable(NamedTuple):
    by_key: dict[str, str]  # the first _KEY_LEN characters of a tag -> the tag
    prefixes: frozenset[str]  # every proper prefix of a tag: a tag may still follow
    longest: int  # the longest tag's length


def _table(*tags: str) -> _TagTable | None:
    if not tags:
        return None
    assert all(len(tag) >= _KEY_LEN for tag in tags)
    by_key = {tag[:_KEY_LEN]: tag for tag in tags}
    assert len(by_key) == len(tags)
    prefixes = frozenset(tag[:n] for tag in tags for n in range(1, len(tag)))
    return _TagTable(by_key, prefixes, max(map(len, tags)))


def _tables(tools: bool) -> tuple[_TagTable | None, ...]:
    tool_tags = _TOOL_TAGS if tools else ()
    in_call = _table(*_TOOL_TAGS)
    by_state = {
        _LEAD: _table(THINK_OPEN, THINK_CLOSE, *tool_tags),
        _REASONING: _table(THINK_CLOSE, *tool_tags),
        _CONTENT: _table(*tool_tags),
        _DONE: None,
    }
    return tuple(by_state.get(state, in_call) for state in _State)


_SPACES = re.compile(r"\s*")  # what str.strip() strips (Py_UNICODE_ISSPACE)

_TABLES_WITH_TOOLS = _tables(True)
_TABLES_WITHOUT_TOOLS = _tables(False)

_COLLECTING = frozenset({_CALL_NAME, _ARG_KEY, _JSON_VALUE})  # the states whose text goes to _buf
_CALL_STATES = frozenset(
    {
        _CALL_NAME,
        _ARG_KEY,
        _BEFORE_VALUE,
        _STRING_VALUE,
        _JSON_VALUE,
        _BETWEEN_ARGS,
    }
)


class GLM47Parser:
    """Splits one response's raw GLM-4.7 output into parse events, incrementally.

    ``thinking``: the prompt opened ``<think>``, so the output starts inside the reasoning.
    ``tools``: the OpenAI tools offered; ``None`` or empty means tool markup is plain content (pass
    ``None`` when ``tool_choice`` is ``"none"``).
    """

    __slots__ = (
        "_buf",
        "_call_index",
        "_call_name",
        "_events",
        "_held",
        "_key",
        "_nargs",
        "_schemas",
        "_state",
        "_tables",
        "_text_started",
        "_types",
        "_ws",
    )

    def __init__(self, *, thinking: bool, tools: Sequence[Mapping[str, Any]] | None) -> None:
        self._state = _LEAD if thinking else _CONTENT
        self._tables = _TABLES_WITH_TOOLS if tools else _TABLES_WITHOUT_TOOLS
        self._schemas = ToolSchemas(tools)
        self._held = ""  # the start of a tag, still incomplete at the end of the last chunk
        self._events: list[ParseEvent] = []
        # The current text section (reasoning, then content): stripped across the whole stream.
        self._text_started = False  # a non-whitespace character was emitted
        self._ws: list[str] = []  # trailing whitespace, held until more text of the section comes
        # The current tool call.
        self._call_index = 0  # index of the next call to start
        self._call_name = ""
        self._nargs = 0  # arguments opened so far
        self._key = ""
        self._types: frozenset[str] | None = None  # JSON types the open value's schema allows
        self._buf: list[str] = []  # name, key or JSON value being collected (as the state says)

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
            tag = table.by_key.get(text[j : j + _KEY_LEN])
            if tag is not None and text.startswith(tag, j):
                if j > start:
                    self._text(text[start:j])
                start = pos = j + len(tag)
                _ON_TAG[tag](self)
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
            self._text(text[start:end] if start or end < n else text)
        return events

    def finish(self) -> list[ParseEvent]:
        """End of output: release a held partial tag as text; an unclosed call gets no end."""
        events: list[ParseEvent] = []
        self._events = events
        state = self._state
        if state is _DONE:
            return events
        if self._held and state not in _CALL_STATES:
            self._text(self._held)
        self._held = ""
        self._ws.clear()
        self._buf.clear()
        self._state = _DONE
        return events

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
            tag = table.by_key.get(text[pos : pos + _KEY_LEN])
            if tag is not None and text.startswith(tag, pos):
                pos += len(tag)
                _ON_TAG[tag](self)  # <think> is dropped; a stray tool tag too
                if self._state is not _LEAD:
                    return pos
                continue
            if n - pos < table.longest and text[pos:] in table.prefixes:
                self._held = text[pos:]
                return n
            break
        self._state = _REASONING
        return pos

    def _text(self, text: str) -> None:
        """Hand text between tags to the current state's sink."""
        state = self._state
        if state is _STRING_VALUE:
            self._events.append(ToolCallArguments(self._call_index - 1, encode_string(text)[1:-1]))
        elif state in _COLLECTING:
            self._buf.append(text)
        elif state is _CONTENT or state is _REASONING:
            self._section_text(text)
        elif state is _LEAD:
            self._section_text(text)
            if self._text_started:
                self._state = _REASONING
        # BEFORE_VALUE, BETWEEN_ARGS: whitespace (or stray text) between tags is ignored.

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

    # -- tags -------------------------------------------------------------------------------------

    # A complete tag the current state recognizes (see ``_ON_TAG``); one out of place is dropped.

    def _on_tool_call_open(self) -> None:
        state = self._state
        if state is _LEAD or state is _REASONING:
            self._end_reasoning()
        elif state in _CALL_STATES and state is not _CALL_NAME:
            self._close_call()  # the model forgot </tool_call>
        self._buf.clear()  # (in CALL_NAME: a name not yet announced is discarded)
        self._state = _CALL_NAME

    def _on_tool_call_close(self) -> None:
        if self._state in _CALL_STATES:
            self._close_call()
            self._state = _CONTENT

    def _on_arg_key_open(self) -> None:
        state = self._state
        if state is _CALL_NAME:
            self._start_call()
        elif state is _STRING_VALUE or state is _JSON_VALUE:
            self._emit_args(self._close_value())  # the model forgot </arg_value>
        elif state not in _CALL_STATES:
            return
        self._buf.clear()  # (in ARG_KEY/BEFORE_VALUE: the unfinished key is discarded)
        self._state = _ARG_KEY

    def _on_arg_key_close(self) -> None:
        if self._state is _ARG_KEY:
            self._end_key()

    def _on_arg_value_open(self) -> None:
        state = self._state
        if state is _ARG_KEY:
            self._end_key()
            self._open_value()
        elif state is _BEFORE_VALUE:
            self._open_value()

    def _on_arg_value_close(self) -> None:
        state = self._state
        if state is _STRING_VALUE or state is _JSON_VALUE:
            self._emit_args(self._close_value())
            self._state = _BETWEEN_ARGS

    def _on_think_close(self) -> None:  # only recognized before the reasoning ended
        self._end_reasoning()
        self._state = _CONTENT

    def _on_think_open(self) -> None:  # only recognized in LEAD: an echo of the prompt's <think>
        self._state = _REASONING

    def _end_reasoning(self) -> None:
        self._ws.clear()
        self._text_started = False

    def _emit_args(self, fragment: str) -> None:
        self._events.append(ToolCallArguments(self._call_index - 1, fragment))

    def _start_call(self) -> None:
        """The name is complete: announce the call."""
        self._call_name = "".join(self._buf).strip()
        self._buf.clear()
        self._nargs = 0
        self._events.append(ToolCallStart(self._call_index, self._call_name))
        self._call_index += 1

    def _end_key(self) -> None:
        self._key = "".join(self._buf).strip()
        self._buf.clear()
        self._state = _BEFORE_VALUE

    def _open_value(self) -> None:
        opening = "{" if self._nargs == 0 else ", "
        self._nargs += 1
        types = self._types = self._schemas.param_types(self._call_name, self._key)
        if is_string_only(types):
            self._emit_args(f'{opening}{encode_string(self._key)}: "')
            self._state = _STRING_VALUE
        else:
            self._emit_args(f"{opening}{encode_string(self._key)}: ")
            self._state = _JSON_VALUE

    def _close_value(self) -> str:
        """The JSON text that completes the open value."""
        if self._state is _STRING_VALUE:
            return '"'
        value = encode_value("".join(self._buf), self._types)
        self._buf.clear()
        return value

    def _close_call(self) -> None:
        """``</tool_call>`` (or a ``<tool_call>`` that implies it) in any call state."""
        state = self._state
        if state is _CALL_NAME:
            self._start_call()
            closing = "{}"
        elif state is _STRING_VALUE or state is _JSON_VALUE:
            closing = self._close_value() + "}"
        else:  # ARG_KEY, BEFORE_VALUE (an unfinished key is dropped), BETWEEN_ARGS
            self._buf.clear()
            closing = "}" if self._nargs else "{}"
        self._emit_args(closing)
        self._events.append(ToolCallEnd(self._call_index - 1))


_ON_TAG = {
    THINK_OPEN: GLM47Parser._on_think_open,
    THINK_CLOSE: GLM47Parser._on_think_close,
    TOOL_CALL_OPEN: GLM47Parser._on_tool_call_open,
    TOOL_CALL_CLOSE: GLM47Parser._on_tool_call_close,
    ARG_KEY_OPEN: GLM47Parser._on_arg_key_open,
    ARG_KEY_CLOSE: GLM47Parser._on_arg_key_close,
    ARG_VALUE_OPEN: GLM47Parser._on_arg_value_open,
    ARG_VALUE_CLOSE: GLM47Parser._on_arg_value_close,
}
