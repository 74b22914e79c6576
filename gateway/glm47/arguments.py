"""The tool-call half of the GLM-4.7 parser: names, keys, typed values, and where a value ends.

``CallArguments`` is the base of ``GLM47Parser`` (``parser.py``): the parser scans the text and
dispatches tags by state; the handlers here build the call. The model writes its tags as single
tokens, also when a value's text mentions them, so inside a value ``</arg_value>``,
``</tool_call>`` and ``<arg_key>`` are only candidates (FORMAT.md section 2b): the parser enters a
pending state that collects the candidate and the whitespace after it (``_pend``) until the next
text decides. Structural: the value ends as the tag says. Data: the collected text is handed to
the value and scanning goes on (``_to_data``). Nothing pending is ever emitted, so nothing has to
be taken back; what waits is bounded by a tag, a 128-character key, and whitespace.
"""

from __future__ import annotations

import re

from gateway.glm47.events import ParseEvent, ToolCallArguments, ToolCallEnd, ToolCallStart
from gateway.glm47.schema import (
    Param,
    ToolSchemas,
    encode_nullable,
    encode_string,
    encode_value,
    is_string_only,
)
from gateway.glm47.state import State
from gateway.glm47.tokens import (
    ARG_KEY_CLOSE,
    ARG_KEY_OPEN,
    ARG_VALUE_CLOSE,
    TOOL_CALL_CLOSE,
)

__all__ = ["MAX_VALUE_KEY", "CallArguments"]

MAX_VALUE_KEY = 128  # FORMAT.md 2b.3: a longer "key" inside a value is the value's own text

_CONTENT = State.CONTENT
_CALL_NAME = State.CALL_NAME
_ARG_KEY = State.ARG_KEY
_BEFORE_VALUE = State.BEFORE_VALUE
_BETWEEN_ARGS = State.BETWEEN_ARGS
_STRING_VALUE = State.STRING_VALUE
_NULLABLE_VALUE = State.NULLABLE_VALUE
_JSON_VALUE = State.JSON_VALUE
_SKIP_VALUE = State.SKIP_VALUE
_AFTER_VALUE_CLOSE = State.AFTER_VALUE_CLOSE
_AFTER_CALL_CLOSE = State.AFTER_CALL_CLOSE
_VALUE_KEY = State.VALUE_KEY
_VALUE_KEY_END = State.VALUE_KEY_END

# A nullable string is held while it may still be one exact JSON string literal: its complete
# characters, and an escape that the end of a chunk cut.
_LITERAL_CHARS = re.compile(r'(?:[^"\\\x00-\x1f]|\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4}))*')
_CUT_ESCAPE = re.compile(r"\\(?:u[0-9a-fA-F]{0,3})?")


class CallArguments:
    """The current tool call's state and the handlers that build it (see the module docstring)."""

    __slots__ = (
        "_buf",
        "_call_index",
        "_call_name",
        "_events",
        "_key",
        "_keys",
        "_literal_tail",
        "_live",
        "_nargs",
        "_param",
        "_pend",
        "_pend_key",
        "_pend_len",
        "_schemas",
        "_state",
        "_value_state",
    )

    def __init__(self, schemas: ToolSchemas, state: State) -> None:
        self._state = state
        self._schemas = schemas
        self._events: list[ParseEvent] = []
        self._call_index = 0  # index of the next call to announce
        self._call_name = ""
        self._live = False  # the current call was announced (it has a name)
        self._nargs = 0  # arguments emitted so far
        self._keys: set[str] = set()  # their keys: a repeated key's value is dropped
        self._key = ""
        self._param = Param(None)
        self._buf: list[str] = []  # name, key or JSON/nullable value being collected
        self._value_state = _SKIP_VALUE  # the open value's state, to go back to from a pending one
        self._pend: list[str] = []  # a candidate tag and what followed it, not yet decided
        self._pend_len = 0  # characters of a candidate key (VALUE_KEY)
        self._pend_key = ""
        self._literal_tail: str | None = ""  # nullable: a cut escape; None once the literal closed

    @property
    def schemas(self) -> ToolSchemas:
        """The offered tools' schemas, as the parser types values by them."""
        return self._schemas

    def _text(self, text: str) -> None:  # (the parser's: text to the current state's sink)
        raise NotImplementedError

    def _emit_args(self, fragment: str) -> None:
        self._events.append(ToolCallArguments(self._call_index - 1, fragment))

    # -- the call's structure ---------------------------------------------------------------------

    def _start_call(self, name: str) -> None:
        """The name is complete: announce the call, unless it has none (then it is dropped)."""
        self._call_name = name
        self._nargs = 0
        self._keys.clear()
        self._live = bool(name)
        if name:
            self._events.append(ToolCallStart(self._call_index, name))
            self._call_index += 1

    def _take_name(self) -> str:
        name = "".join(self._buf).strip()
        self._buf.clear()
        return name

    def _end_key(self) -> None:
        self._key = "".join(self._buf).strip()
        self._buf.clear()
        self._state = _BEFORE_VALUE

    def _open_value(self) -> None:
        key = self._key
        if not self._live or not key or key in self._keys:
            self._state = self._value_state = _SKIP_VALUE
            return
        self._keys.add(key)
        opening = "{" if self._nargs == 0 else ", "
        self._nargs += 1
        param = self._param = self._schemas.param(self._call_name, key)
        types = param.types
        if not is_string_only(types):
            state = _JSON_VALUE
            self._emit_args(f"{opening}{encode_string(key)}: ")
        elif types is not None and "null" in types:
            state = _NULLABLE_VALUE
            self._literal_tail = ""
            self._emit_args(f"{opening}{encode_string(key)}: ")
        else:
            state = _STRING_VALUE
            self._emit_args(f'{opening}{encode_string(key)}: "')
        self._state = self._value_state = state

    def _close_value(self) -> str:
        """The JSON text that completes the open value."""
        state = self._value_state
        if state is _STRING_VALUE:
            return '"'
        if state is _SKIP_VALUE:
            return ""
        raw = "".join(self._buf)
        self._buf.clear()
        if state is _JSON_VALUE:
            return encode_value(raw, self._param.types, self._param.members)
        return encode_nullable(raw)

    def _finish_value(self) -> None:
        """A candidate turned out structural: the value ends before it."""
        closing = self._close_value()
        if closing:
            self._emit_args(closing)
        self._pend.clear()
        self._state = _BETWEEN_ARGS

    def _close_call(self) -> None:
        """End the call in any state outside a value (a value is finished first)."""
        if self._state is _CALL_NAME:
            self._start_call(self._take_name())
        self._buf.clear()  # (an unfinished key has no value: dropped)
        if self._live:
            self._emit_args("}" if self._nargs else "{}")
            self._events.append(ToolCallEnd(self._call_index - 1))
        self._live = False

    def _keep_at_end(self, held: str) -> bool:
        """FORMAT.md 2b.6, after a stop: may the call the output leaves open be kept?"""
        state = self._state
        if state is not _BETWEEN_ARGS and not (len(held) > 1 and TOOL_CALL_CLOSE.startswith(held)):
            return False  # it ended inside a key or right after one, not between arguments
        name = "".join(self._buf).strip() if state is _CALL_NAME else self._call_name
        keys = self._keys if state is not _CALL_NAME else set()
        return self._schemas.offered(name) and self._schemas.required(name) <= keys

    # -- values -----------------------------------------------------------------------------------

    def _nullable_text(self, text: str) -> None:
        """Text of a nullable string: held while it may be ``null`` or a JSON string literal."""
        if not text:
            return
        buf = self._buf
        first = buf[0][0] if buf else text[0]
        viable = False
        if first == "n":
            viable = "null".startswith("".join(buf) + text)
        elif first == '"' and self._literal_tail is not None:
            rest = self._literal_tail + (text if buf else text[1:])
            rest = rest[_LITERAL_CHARS.match(rest).end() :]  # type: ignore[union-attr]
            if not rest or _CUT_ESCAPE.fullmatch(rest):
                viable = True
                self._literal_tail = rest
            elif rest == '"':
                viable = True
                self._literal_tail = None  # complete: any more text makes it plain text
        if viable:
            buf.append(text)
            return
        held = "".join(buf) + text
        buf.clear()
        self._emit_args(encode_string(held)[:-1])  # (the opening quote, then the text so far)
        self._state = self._value_state = _STRING_VALUE

    def _to_data(self) -> None:
        """The pending candidate is the value's own text after all."""
        text = "".join(self._pend)
        self._pend.clear()
        self._state = self._value_state
        self._text(text)

    def _pending_text(self, text: str) -> None:
        """Text in a pending state: whitespace waits; anything else decides (data)."""
        if self._state is _VALUE_KEY:
            if "<" in text or self._pend_len + len(text) > MAX_VALUE_KEY:
                self._to_data()
                self._text(text)
            else:
                self._pend.append(text)
                self._pend_len += len(text)
            return
        core = text.lstrip()
        if len(core) < len(text):
            self._pend.append(text[: len(text) - len(core)])
        if core:
            self._to_data()
            self._text(core)

    def _before_value_text(self, text: str) -> None:
        """After ``</arg_key>``: text that is not ``<arg_value>`` starts the value anyway."""
        core = text.lstrip()
        if core:
            self._open_value()
            self._text(core)

    # -- tag handlers (the parser's tables say which one runs in which state) ---------------------

    def _ignore(self) -> None:
        """A tag out of its place: dropped."""

    def _name_restart(self) -> None:  # <tool_call> in a name: the first one was stray
        self._buf.clear()

    def _name_key_open(self) -> None:
        self._start_call(self._take_name())
        self._state = _ARG_KEY

    def _name_key_close(self) -> None:
        """``</arg_key>`` in a name: ``<arg_key>`` was skipped; the key follows the name."""
        text = self._take_name()
        name = next((n for n in self._schemas.names() if text.startswith(n)), None)
        if name is not None:
            key = text[len(name) :]
        else:
            parts = text.split(None, 1)
            name, key = (parts[0], parts[1]) if len(parts) == 2 else (text, "")
        self._start_call(name)
        self._key = key.strip()
        self._state = _BEFORE_VALUE

    def _key_close(self) -> None:
        self._end_key()

    def _key_value_open(self) -> None:  # <arg_value> in a key: </arg_key> was skipped
        self._end_key()
        self._open_value()

    def _restart_key(self) -> None:
        self._buf.clear()
        self._state = _ARG_KEY

    def _call_close(self) -> None:
        self._close_call()
        self._state = _CONTENT

    def _call_restart(self) -> None:  # <tool_call> in a call: </tool_call> was skipped
        self._close_call()
        self._state = _CALL_NAME

    def _value_open(self) -> None:
        self._open_value()

    def _empty_value_close(self) -> None:  # </arg_key></arg_value>: an empty value
        self._open_value()
        self._value_close()

    def _key_close_as_value(self) -> None:  # </arg_key></arg_key>: the value's own text
        self._open_value()
        self._text(ARG_KEY_CLOSE)

    def _value_close(self) -> None:
        self._pend.append(ARG_VALUE_CLOSE)
        self._state = _AFTER_VALUE_CLOSE

    def _value_call_close(self) -> None:
        self._pend.append(TOOL_CALL_CLOSE)
        self._state = _AFTER_CALL_CLOSE

    def _value_key_open(self) -> None:
        self._pend.append(ARG_KEY_OPEN)
        self._pend_len = 0
        self._state = _VALUE_KEY

    def _value_ends_next_key(self) -> None:  # </arg_value> <arg_key>
        self._finish_value()
        self._restart_key()

    def _value_ends_call(self) -> None:  # </arg_value> </tool_call>
        self._finish_value()
        self._call_close()

    def _value_ends_next_call(self) -> None:  # </tool_call> <tool_call>: </arg_value> skipped
        between = "".join(self._pend[1:])
        self._finish_value()
        self._call_close()
        if between:
            self._text(between)  # (whitespace between calls is content, as after any call)
        self._state = _CALL_NAME

    def _value_key_end(self) -> None:  # <arg_key>K</arg_key>
        self._pend_key = "".join(self._pend[1:])
        self._pend.append(ARG_KEY_CLOSE)
        self._state = _VALUE_KEY_END

    def _value_ends_key_value(self) -> None:  # <arg_key>K</arg_key> <arg_value>
        key = self._pend_key.strip()
        self._finish_value()
        self._key = key
        self._open_value()
