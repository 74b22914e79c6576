"""The one state enum of the GLM-4.7 output parser (``parser.py`` and ``arguments.py``)."""

from __future__ import annotations

from enum import IntEnum

__all__ = ["CALL_STATES", "PENDING_STATES", "VALUE_STATES", "State"]


class State(IntEnum):
    """Where the parser is. (An ``IntEnum`` so that it indexes the tag tables cheaply.)"""

    LEAD = 0  # thinking on, nothing but whitespace yet: a ``<think>`` here is dropped
    REASONING = 1
    CONTENT = 2
    CALL_NAME = 3  # after <tool_call>, collecting the name
    ARG_KEY = 4  # after <arg_key>, collecting the key
    BEFORE_VALUE = 5  # after </arg_key>: <arg_value>, or text that starts the value anyway
    BETWEEN_ARGS = 6  # a value ended: waiting for <arg_key> or </tool_call>
    # The open value, by what its text becomes:
    STRING_VALUE = 7  # verbatim, streamed as JSON-escaped pieces
    NULLABLE_VALUE = 8  # verbatim, held while it may still be exactly `null` or a JSON literal
    JSON_VALUE = 9  # buffered, typed by the schema when it ends
    SKIP_VALUE = 10  # dropped: a repeated or empty key, or a call without a name
    # Inside a value, a tag whose meaning depends on what follows it (FORMAT.md section 2b):
    AFTER_VALUE_CLOSE = 11  # </arg_value>: structural if <arg_key>, </tool_call> or the end follow
    AFTER_CALL_CLOSE = 12  # </tool_call>: structural if <tool_call> or the end follow
    VALUE_KEY = 13  # <arg_key>K: K is a next key if </arg_key> comes soon enough
    VALUE_KEY_END = 14  # <arg_key>K</arg_key>: structural if <arg_value> follows
    DONE = 15  # finish() was called


VALUE_STATES = frozenset(
    {State.STRING_VALUE, State.NULLABLE_VALUE, State.JSON_VALUE, State.SKIP_VALUE}
)
PENDING_STATES = frozenset(
    {State.AFTER_VALUE_CLOSE, State.AFTER_CALL_CLOSE, State.VALUE_KEY, State.VALUE_KEY_END}
)
CALL_STATES = frozenset(
    {State.CALL_NAME, State.ARG_KEY, State.BEFORE_VALUE, State.BETWEEN_ARGS}
    | VALUE_STATES
    | PENDING_STATES
)
