"""The grammar that finishes a tool call from where it went wrong (a repair's continuation).

A repair goes on from a point inside a call: right after ``<tool_call>`` (the name failed),
before a value (its type or enum failed), after the last complete argument (a required one is
missing), or inside a string value (the output stopped there). The grammar covers what the
continuation generates: the rest of that call, held to the tool's schema as ``tool_call_grammar``
holds a whole call, then any further calls (none unless ``parallel``).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

from . import tokens
from .grammar import TOOL_TAGS, GrammarBuilder, _argument_value, _call_rule, _sequence, literal
from .refs import object_schema

__all__ = ["call_rest_grammar"]


def _parameters(tool: Mapping[str, Any]) -> tuple[Any, Mapping[str, Any], set[str]]:
    function = tool.get("function") or {}
    root = function.get("parameters") or {}
    parameters = object_schema(root)
    if not isinstance(parameters, Mapping):
        parameters = {}
    properties = parameters.get("properties")
    return (
        root,
        properties if isinstance(properties, Mapping) else {},
        set(parameters.get("required") or ()),
    )


def _rest_of_call(
    builder: GrammarBuilder,
    tool: Mapping[str, Any],
    *,
    with_name: bool,
    given: Collection[str],
    open_key: str | None,
    open_string: bool,
) -> str:
    root, properties, required = _parameters(tool)
    parts: list[str] = []
    if with_name:
        parts.append(literal(str((tool.get("function") or {}).get("name", ""))))
    if open_key is not None:
        if open_string:  # (the value's text so far is in the prompt: raw text goes on)
            parts.append(builder.text_without(TOOL_TAGS, "raw-text"))
        else:
            parts.append(_argument_value(builder, properties.get(open_key, {}), root))
        parts.append(literal(tokens.ARG_VALUE_CLOSE))
    members: list[tuple[bool, str]] = []
    for key, sub in properties.items():
        if key in given or key == open_key:
            continue
        opening = tokens.ARG_KEY_OPEN + key + tokens.ARG_KEY_CLOSE + tokens.ARG_VALUE_OPEN
        value = _argument_value(builder, sub, root)
        members.append(
            (key in required, f"{literal(opening)} {value} {literal(tokens.ARG_VALUE_CLOSE)}")
        )
    if members:
        parts.append(_sequence(members, "", "", " ").strip())
    parts.append(literal(tokens.TOOL_CALL_CLOSE))
    return " ".join(p for p in parts if p)


def call_rest_grammar(
    tools: Sequence[Mapping[str, Any]],
    *,
    name: str | None,
    given: Collection[str] = (),
    open_key: str | None = None,
    open_string: bool = False,
    parallel: bool = True,
) -> str:
    """The rest of one call, then further calls.

    ``name`` None: the continuation starts after ``<tool_call>`` and writes the name (any of
    ``tools``). Otherwise ``given`` arguments are written already; ``open_key``: the value of that
    argument comes first (``open_string``: its raw text has begun).
    """
    if not tools:
        raise ValueError("a tool-call grammar needs at least one tool")
    builder = GrammarBuilder(string_without=TOOL_TAGS)
    if name is None:
        whole = [
            _rest_of_call(builder, t, with_name=True, given=(), open_key=None, open_string=False)
            for t in tools
        ]
        rest = builder.add("rest", " | ".join(f"( {body} )" for body in whole))
    else:
        tool = next(t for t in tools if (t.get("function") or {}).get("name") == name)
        rest = builder.add(
            "rest",
            _rest_of_call(
                builder,
                tool,
                with_name=False,
                given=given,
                open_key=open_key,
                open_string=open_string,
            ),
        )
    root = rest
    if parallel:
        calls = builder.add("any-call", " | ".join(_call_rule(builder, t) for t in tools))
        root = f"{rest} {calls}*"
    return builder.render(root)
