"""The parser's tag tables: for each state, the tags it recognizes and the handler of each.

The handlers of a call's states are ``CallArguments`` methods (``arguments.py``); those of the text
sections are the parser's own (``parser.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, NamedTuple

from gateway.glm47.arguments import CallArguments
from gateway.glm47.state import VALUE_STATES, State
from gateway.glm47.tokens import (
    ARG_KEY_CLOSE,
    ARG_KEY_OPEN,
    ARG_VALUE_CLOSE,
    ARG_VALUE_OPEN,
    TOOL_CALL_CLOSE,
    TOOL_CALL_OPEN,
)

if TYPE_CHECKING:
    from gateway.glm47.parser import GLM47Parser

__all__ = ["CALL_HANDLERS", "KEY_LEN", "Handler", "TagTable", "stray_tags", "tag_table"]

KEY_LEN = 7  # every tag is at least this long, and their first 7 characters are all different

Handler = Callable[["GLM47Parser"], None]


class TagTable(NamedTuple):
    by_key: dict[str, str]  # the first KEY_LEN characters of a tag -> the tag
    prefixes: frozenset[str]  # every proper prefix of a tag: a tag may still follow
    longest: int  # the longest tag's length
    handlers: dict[str, Handler]


def tag_table(handlers: Mapping[str, Handler]) -> TagTable | None:
    """The table of a state that recognizes the tags of ``handlers`` (``None``: no tags)."""
    if not handlers:
        return None
    tags = list(handlers)
    assert all(len(tag) >= KEY_LEN for tag in tags)
    by_key = {tag[:KEY_LEN]: tag for tag in tags}
    assert len(by_key) == len(tags)
    prefixes = frozenset(tag[:n] for tag in tags for n in range(1, len(tag)))
    return TagTable(by_key, prefixes, max(map(len, tags)), dict(handlers))


_A = CallArguments
_TOOL_TAGS = (
    TOOL_CALL_OPEN,
    TOOL_CALL_CLOSE,
    ARG_KEY_OPEN,
    ARG_KEY_CLOSE,
    ARG_VALUE_OPEN,
    ARG_VALUE_CLOSE,
)
# In a value, the three tags that may end it, depending on what follows (FORMAT.md 2b).
_IN_VALUE: dict[str, Handler] = {
    ARG_VALUE_CLOSE: _A._value_close,
    TOOL_CALL_CLOSE: _A._value_call_close,
    ARG_KEY_OPEN: _A._value_key_open,
}


def _data_then(handler: Handler) -> Handler:
    """A value's tag right after a pending candidate: the candidate was data; then the tag."""

    def on_tag(parser: GLM47Parser) -> None:
        parser._to_data()
        handler(parser)

    return on_tag


def _pending(deciding: dict[str, Handler]) -> dict[str, Handler]:
    return {**{tag: _data_then(h) for tag, h in _IN_VALUE.items()}, **deciding}


def stray_tags(**handlers: Handler) -> dict[str, Handler]:
    """Every tool tag dropped, but those named (``call_open=...``)."""
    return {tag: _A._ignore for tag in _TOOL_TAGS} | {_TAG_NAMES[k]: h for k, h in handlers.items()}


_TAG_NAMES = {
    "call_open": TOOL_CALL_OPEN,
    "call_close": TOOL_CALL_CLOSE,
    "key_open": ARG_KEY_OPEN,
    "key_close": ARG_KEY_CLOSE,
    "value_open": ARG_VALUE_OPEN,
    "value_close": ARG_VALUE_CLOSE,
}
# What each tag does in each state of a call.
CALL_HANDLERS: dict[State, dict[str, Handler]] = {
    State.CALL_NAME: stray_tags(
        call_open=_A._name_restart,
        call_close=_A._call_close,
        key_open=_A._name_key_open,
        key_close=_A._name_key_close,
    ),
    State.ARG_KEY: stray_tags(
        call_open=_A._call_restart,
        call_close=_A._call_close,
        key_open=_A._restart_key,
        key_close=_A._key_close,
        value_open=_A._key_value_open,
    ),
    State.BEFORE_VALUE: stray_tags(
        call_open=_A._call_restart,
        call_close=_A._call_close,
        key_open=_A._restart_key,
        key_close=_A._key_close_as_value,
        value_open=_A._value_open,
        value_close=_A._empty_value_close,
    ),
    State.BETWEEN_ARGS: stray_tags(
        call_open=_A._call_restart, call_close=_A._call_close, key_open=_A._restart_key
    ),
    **dict.fromkeys(VALUE_STATES, _IN_VALUE),
    State.AFTER_VALUE_CLOSE: _pending(
        {ARG_KEY_OPEN: _A._value_ends_next_key, TOOL_CALL_CLOSE: _A._value_ends_call}
    ),
    State.AFTER_CALL_CLOSE: _pending({TOOL_CALL_OPEN: _A._value_ends_next_call}),
    State.VALUE_KEY: _pending({ARG_KEY_CLOSE: _A._value_key_end}),
    State.VALUE_KEY_END: _pending({ARG_VALUE_OPEN: _A._value_ends_key_value}),
}
