"""Tool calls checked against their tools' schemas as the parser builds them.

The checker sits between the parser and the client. It checks, as early as each can be known:
the name when the call's header comes (before the header goes out), each value that is not a
streamed string when it is complete (before it goes out), the required arguments when the call
closes, and at the end of the output that no call is left open.

Two ways of letting events out. ``incremental`` (a stream whose failures can be repaired): what
passed goes out at once and only the value being checked waits, so string arguments stream as
generated. Otherwise the whole call waits until it has passed: a call that fails and cannot be
repaired becomes text content, which the client never saw begin as a call; streamed and
non-streamed responses stay the same.

The argument text is the parser's JSON (``arguments.py``): an object whose values are JSON, each
key written by ``_open_value`` and each non-string value whole; the checker scans it at the top
level, skipping the insides of strings with one regex step.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from ..glm47.events import ContentDelta, ParseEvent, ToolCallArguments, ToolCallEnd, ToolCallStart
from ..glm47.schema import (
    JSON_STRING_LITERAL,
    ToolSchemas,
    is_member,
    is_string_only,
    json_type_allowed,
)
from ..glm47.tokens import (
    ARG_KEY_CLOSE,
    ARG_KEY_OPEN,
    ARG_VALUE_CLOSE,
    ARG_VALUE_OPEN,
    TOOL_CALL_CLOSE,
    TOOL_CALL_OPEN,
)

__all__ = ["CallFailure", "ToolCallChecker"]

# Scan states of the arguments object.
_KEY_WAIT, _KEY, _COLON, _VALUE_WAIT, _STRING, _JSON, _CLOSED = range(7)
_STRING_STOP = re.compile(r'["\\]')
_JSON_STOP = re.compile(r'["\\{}\[\],]')


@dataclass(frozen=True, slots=True)
class CallFailure:
    """What failed in a call and where a repair goes on from."""

    problem: str  # unknown_tool, wrong_type, not_in_enum, missing_argument, unclosed_call
    index: int
    name: str | None  # None: the name is what failed
    # The complete arguments so far: key, the value as GLM writes it.
    args: tuple[tuple[str, str], ...] = ()
    # The argument a repair writes first (its value failed, or a string the output cut).
    open_key: str | None = None
    open_string: bool = False
    open_text: str = ""
    header_out: bool = False
    args_out: int = 0  # characters of the arguments JSON already out

    def markup(self) -> str:
        """The call so far in GLM's format: where the repair's continuation begins."""
        out = [TOOL_CALL_OPEN, self.name or ""]
        for key, value in self.args:
            out += [ARG_KEY_OPEN, key, ARG_KEY_CLOSE, ARG_VALUE_OPEN, value, ARG_VALUE_CLOSE]
        if self.open_key is not None:
            out += [ARG_KEY_OPEN, self.open_key, ARG_KEY_CLOSE, ARG_VALUE_OPEN, self.open_text]
        return "".join(out)

    @property
    def given(self) -> tuple[str, ...]:
        return tuple(key for key, _ in self.args)


@dataclass(slots=True)
class _Call:
    index: int
    name: str
    header_out: bool = False
    failed: str | None = None  # the problem, once the call cannot go out as a call
    held: list[ParseEvent] = field(default_factory=list)  # events not out yet (whole-call mode)
    args_out: int = 0
    state: int = _KEY_WAIT
    key: list[str] = field(default_factory=list)
    current: str = ""
    value: list[str] = field(default_factory=list)
    checked: bool = False  # the current value waits for its check
    depth: int = 0
    in_string: bool = False
    escape: bool = False
    args: list[tuple[str, str]] = field(default_factory=list)
    wait: list[str] = field(default_factory=list)  # text behind the value being checked
    closing: str = ""


class CallRejected(Exception):
    """A call failed after it began to go out, and no repair is left (the stream ends)."""

    def __init__(self, failure: CallFailure) -> None:
        super().__init__(failure.problem)
        self.failure = failure


class ToolCallChecker:
    """Feed it the parser's events; it returns those that may go out.

    ``repairable``: a failure stops the checker (``failure`` is set; a repair goes on from it).
    Otherwise a failed call becomes content (whole-call mode) or raises ``CallRejected``.
    """

    def __init__(self, schemas: ToolSchemas, *, incremental: bool, repairable: bool) -> None:
        self._schemas = schemas
        self.incremental = incremental
        self.repairable = repairable
        self.failure: CallFailure | None = None
        self.problems: list[str] = []  # failures turned into content
        self._call: _Call | None = None

    @property
    def open_call(self) -> bool:
        return self._call is not None

    def feed(self, events: list[ParseEvent]) -> list[ParseEvent]:
        out: list[ParseEvent] = []
        for event in events:
            if self.failure is not None:
                break
            call = self._call
            if isinstance(event, ToolCallStart):
                self._start(event, out)
            elif call is None:
                out.append(event)
            elif isinstance(event, ToolCallArguments):
                self._arguments(call, event.fragment, out)
            elif isinstance(event, ToolCallEnd):
                self._end(call, out)
            else:
                out.append(event)  # (text between tags of a call never comes; kept in order)
        return out

    def finish(self, *, truncated: bool) -> list[ParseEvent]:
        """The output ended. A call left open at a stop fails; at the token limit it is dropped."""
        call = self._call
        out: list[ParseEvent] = []
        if call is None or self.failure is not None:
            return out
        if truncated:
            self._call = None
            return out
        self._fail(call, "unclosed_call", out, at_end=True)
        return out

    # -- the call's parts ---------------------------------------------------------------------

    def _start(self, event: ToolCallStart, out: list[ParseEvent]) -> None:
        call = self._call = _Call(event.index, event.name)
        if not self._schemas.offered(event.name):
            self._fail(call, "unknown_tool", out)
            return
        self._emit(call, event, out)
        call.header_out = self.incremental

    def _emit(self, call: _Call, event: ParseEvent, out: list[ParseEvent]) -> None:
        if self.incremental and call.failed is None:
            out.append(event)
        else:
            call.held.append(event)

    def _release(self, call: _Call, text: str, out: list[ParseEvent]) -> None:
        if not text:
            return
        if self.incremental:
            call.args_out += len(text)
        self._emit(call, ToolCallArguments(call.index, text), out)

    def _end(self, call: _Call, out: list[ParseEvent]) -> None:
        if call.failed is None:
            missing = self._schemas.required(call.name) - {key for key, _ in call.args}
            if missing:
                self._fail(call, "missing_argument", out)
                if self.failure is not None:
                    return
        if call.failed is None:
            self._release(call, call.closing, out)
            self._emit(call, ToolCallEnd(call.index), out)
            out += call.held
        else:
            out.append(ContentDelta(_markup_of(call) + TOOL_CALL_CLOSE))
        self._call = None

    def _fail(
        self, call: _Call, problem: str, out: list[ParseEvent], *, at_end: bool = False
    ) -> None:
        if call.failed is not None:
            return
        open_key: str | None = None
        open_string = False
        open_text = ""
        if problem in ("wrong_type", "not_in_enum"):
            open_key = call.current  # (the value is written again)
        elif at_end and call.state == _STRING and not call.checked:
            open_key = call.current  # a streamed string goes on where it stopped
            open_string = True
            open_text = _decode_string_body("".join(call.value)[1:])
        elif at_end and call.state in (_STRING, _JSON, _VALUE_WAIT):
            open_key = call.current  # (a value not out yet is written again)
        failure = CallFailure(
            problem,
            call.index,
            None if problem == "unknown_tool" else call.name,
            tuple(call.args),
            open_key,
            open_string,
            open_text,
            call.header_out,
            call.args_out,
        )
        if self.repairable:
            self.failure = failure
            return
        if self.incremental and call.header_out:
            raise CallRejected(failure)
        call.failed = problem
        call.held.clear()
        self.problems.append(problem)
        if at_end:
            out.append(ContentDelta(failure.markup() if failure.name else _markup_of(call)))
            self._call = None

    # -- the arguments' JSON ------------------------------------------------------------------

    def _arguments(self, call: _Call, text: str, out: list[ParseEvent]) -> None:
        """Scan a fragment; what may go out goes (in the parser's fragments where it can), the
        value being checked waits."""
        streamed = call.state == _STRING and call.in_string and not call.checked
        if streamed and not call.escape and '"' not in text:
            # Inside a streamed string, a fragment without a quote is all string (the common
            # case: a file body); an escape may begin at its end.
            trailing = len(text) - len(text.rstrip("\\"))
            call.escape = trailing % 2 == 1
            call.value.append(text)
            self._release(call, text, out)
            return
        pos = 0
        n = len(text)
        free = 0  # start of the text not yet let out or held
        while pos < n and self.failure is None:
            state = call.state
            ch = text[pos]
            if state == _KEY_WAIT:
                if ch == '"':
                    call.state = _KEY
                    call.key.clear()
                elif ch == "}":
                    self._release(call, text[free:pos], out)
                    call.state = _CLOSED
                    free = pos
                pos += 1
            elif state == _KEY:
                stop = _STRING_STOP.search(text, pos)
                end = n if stop is None else stop.start()
                call.key.append(text[pos:end])
                pos = end
                if stop is not None:
                    if text[pos] == "\\":
                        call.key.append(text[pos : pos + 2])
                        pos += 2
                    else:
                        call.current = _decode_string_body("".join(call.key))
                        call.state = _COLON
                        pos += 1
            elif state == _COLON:
                if ch == ":":
                    call.state = _VALUE_WAIT
                pos += 1
            elif state == _VALUE_WAIT:
                if ch.isspace():
                    pos += 1
                    continue
                param = self._schemas.param(call.name, call.current)
                call.checked = ch != '"' or not is_string_only(param.types)
                call.checked = call.checked or param.members is not None
                call.value.clear()
                call.depth = 0
                call.in_string = call.escape = False
                if call.checked:  # (the value waits: what came before it goes out)
                    self._release(call, text[free:pos], out)
                    free = pos
                call.state = _STRING if ch == '"' else _JSON
            elif state == _STRING:
                start = pos
                pos, done = self._string_value(call, text, pos, n)
                if not call.checked:
                    call.value.append(text[start:pos])
                if done:
                    if call.checked:
                        call.value.append(text[free:pos])
                        free = pos
                    self._value_done(call, out, streamed=not call.checked)
            elif state == _JSON:
                pos, done = self._json_value(call, text, pos, n)
                if done:
                    call.value.append(text[free:pos])
                    free = pos
                    self._value_done(call, out)
            else:  # _CLOSED: nothing follows the object
                pos = n
        if self.failure is not None:
            return
        rest = text[free:]
        if call.state in (_STRING, _JSON) and call.checked:
            call.value.append(rest)
        elif call.state == _CLOSED:
            call.closing += rest
        else:
            self._release(call, rest, out)

    def _string_value(self, call: _Call, text: str, pos: int, n: int) -> tuple[int, bool]:
        """Scan a string value; it ends after its closing quote."""
        if pos < n and not call.in_string:
            pos += 1  # (the opening quote)
            call.in_string = True
        while pos < n:
            if call.escape:
                call.escape = False
                pos += 1
                continue
            stop = _STRING_STOP.search(text, pos)
            if stop is None:
                return n, False
            pos = stop.start()
            if text[pos] == "\\":
                call.escape = True
                pos += 1
                continue
            return pos + 1, True
        return pos, False

    def _json_value(self, call: _Call, text: str, pos: int, n: int) -> tuple[int, bool]:
        """Scan a JSON value; it ends at the delimiter after it (not consumed)."""
        while pos < n:
            if call.escape:
                call.escape = False
                pos += 1
                continue
            stop = _JSON_STOP.search(text, pos)
            if stop is None:
                pos = n
                break
            pos = stop.start()
            ch = text[pos]
            if call.in_string:
                if ch == "\\":
                    call.escape = True
                elif ch == '"':
                    call.in_string = False
                pos += 1
                continue
            if ch == '"':
                call.in_string = True
            elif ch in "{[":
                call.depth += 1
            elif ch in "}]":
                if call.depth == 0:
                    return pos, True
                call.depth -= 1
            elif ch == "," and call.depth == 0:
                return pos, True
            pos += 1
        return pos, False

    def _value_done(self, call: _Call, out: list[ParseEvent], *, streamed: bool = False) -> None:
        exact = "".join(call.value)
        raw = exact.strip()
        call.value.clear()
        call.state = _KEY_WAIT
        try:
            value: Any = json.loads(raw)
        except ValueError:
            value = raw
        if not streamed:
            param = self._schemas.param(call.name, call.current)
            problem = None
            if not json_type_allowed(value, param.types):
                problem = "wrong_type"
            elif param.members is not None and not is_member(value, param.members):
                problem = "not_in_enum"
            if problem is not None:
                self._fail(call, problem, out)
                if self.failure is not None:
                    return
        types = self._schemas.param(call.name, call.current).types
        call.args.append((call.current, _glm_text(value, raw, types)))
        call.checked = False
        if not streamed:
            self._release(call, exact, out)


def _decode_string_body(body: str) -> str:
    try:
        decoded = json.loads('"' + body + '"')
    except ValueError:
        return body
    return decoded if isinstance(decoded, str) else body


def _glm_text(value: Any, raw: str, types: frozenset[str] | None) -> str:
    """A value as GLM writes it: a string parameter's raw text, any other value's JSON."""
    if not isinstance(value, str) or not is_string_only(types):
        return raw
    assert types is not None
    if "null" in types and (value == "null" or JSON_STRING_LITERAL.fullmatch(value)):
        return raw  # (raw, a nullable string's text would be typed again)
    return value


def _markup_of(call: _Call) -> str:
    parts = [TOOL_CALL_OPEN, call.name]
    for key, value in call.args:
        parts += [ARG_KEY_OPEN, key, ARG_KEY_CLOSE, ARG_VALUE_OPEN, value, ARG_VALUE_CLOSE]
    return "".join(parts)
