"""GLM-4.7 prompt rendering, byte-identical to the model's published chat template.

The template is re-implemented in Python instead of run through Jinja so that the gateway does not
depend on a template engine, so that malformed input fails with a client error that names the
offending field instead of a template exception, and so that rendering stays linear in the request
size. Every branch below mirrors one branch of the template; where the code looks odd (raw
truthiness checks, ``partition`` versus ``rpartition``), it is because the template does exactly
that and the model was trained on its output. ``tests/fixtures/glm47/render_cases.json`` holds
prompts rendered by the real template and is the arbiter.

Deliberate differences from running the Jinja text verbatim, all on inputs where the template
produces text the model never saw in training:

* ``content: null`` renders as nothing, not as the literal ``None`` Jinja would print.
* A ``tool`` message whose content is a list of parts renders its text parts like any other
  message, instead of the Python ``repr`` of each part under a fresh ``<|observation|>``.
* Tool-call arguments may arrive as the JSON string of the OpenAI wire; the template only knows
  decoded objects.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from gateway.errors import InvalidRequestError
from gateway.glm47.tokens import (
    ARG_KEY_CLOSE,
    ARG_KEY_OPEN,
    ARG_VALUE_CLOSE,
    ARG_VALUE_OPEN,
    ASSISTANT,
    OBSERVATION,
    PROMPT_PREFIX,
    SYSTEM,
    THINK_CLOSE,
    THINK_OPEN,
    TOOL_CALL_CLOSE,
    TOOL_CALL_OPEN,
    TOOL_RESPONSE_CLOSE,
    TOOL_RESPONSE_OPEN,
    USER,
)

__all__ = ["render_prompt"]

# Fixed text of the template's tools block. It is instruction prose the model was trained on, so it
# is kept as one literal rather than assembled from the token constants.
_TOOLS_HEADER = (
    "<|system|>\n"
    "# Tools\n"
    "\n"
    "You may call one or more functions to assist with the user query.\n"
    "\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n"
    "<tools>\n"
)
_TOOLS_FOOTER = (
    "</tools>\n"
    "\n"
    "For each function call, output the function name and arguments within the following XML"
    " format:\n"
    "<tool_call>{function-name}<arg_key>{arg-key-1}</arg_key><arg_value>{arg-value-1}</arg_value>"
    "<arg_key>{arg-key-2}</arg_key><arg_value>{arg-value-2}</arg_value>...</tool_call>"
)


def render_prompt(
    messages: Sequence[Mapping[str, Any]],
    *,
    tools: Sequence[Mapping[str, Any]] | None = None,
    enable_thinking: bool = True,
    clear_thinking: bool = True,
    add_generation_prompt: bool = True,
) -> str:
    """Render an OpenAI-style conversation into the exact GLM-4.7 prompt text.

    Raises ``InvalidRequestError`` (with ``param`` naming the field) when a message cannot be
    rendered, e.g. tool-call arguments that are not a JSON object.
    """
    out: list[str] = [PROMPT_PREFIX]

    if tools:
        out.append(_TOOLS_HEADER)
        for tool in tools:
            # dict() because json.dumps only serializes real dicts; it keeps the key order, which
            # the template preserves too.
            out.append(json.dumps(dict(tool), ensure_ascii=False))
            out.append("\n")
        out.append(_TOOLS_FOOTER)

    # The template counts positions in the raw message list (dropped roles included) and compares
    # each assistant turn against the last message whose role is exactly "user". Tool results do
    # not move it, so a whole tool loop after the user's question keeps its reasoning; the next
    # user message pushes every earlier turn before it and they collapse to a bare </think>.
    last_user_index = -1
    for index, message in enumerate(messages):
        if message.get("role") == "user":
            last_user_index = index

    previous_role: object = None
    for index, message in enumerate(messages):
        role = message.get("role")
        if role == "user":
            out.append(USER)
            out.append(_visible_text(message.get("content"), index))
        elif role in ("system", "developer"):
            # "developer" is OpenAI's newer name for the system role; the template predates it.
            out.append(SYSTEM)
            out.append(_visible_text(message.get("content"), index))
        elif role == "assistant":
            show_reasoning = not clear_thinking or index > last_user_index
            _render_assistant(out, message, index, show_reasoning)
        elif role == "tool":
            # The template looks only at the immediately preceding raw message, so a run of results
            # shares one <|observation|>; anything in between (even a dropped role) opens a new one.
            if previous_role != "tool":
                out.append(OBSERVATION)
            out.append(TOOL_RESPONSE_OPEN)
            out.append(_visible_text(message.get("content"), index))
            out.append(TOOL_RESPONSE_CLOSE)
        previous_role = role

    if add_generation_prompt:
        out.append(ASSISTANT)
        # With thinking on the prompt opens the reasoning block, so the model's output starts
        # inside it; with thinking off an already-closed block tells it to answer directly.
        out.append(THINK_OPEN if enable_thinking else THINK_CLOSE)

    return "".join(out)


def _visible_text(content: Any, index: int) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list | tuple):
        texts: list[str] = []
        for part_index, part in enumerate(content):
            if isinstance(part, str):
                texts.append(part)
            elif isinstance(part, Mapping) and part.get("type") == "text":
                text = part.get("text")
                if not isinstance(text, str):
                    raise InvalidRequestError(
                        "A text content part must have a string 'text'.",
                        param=f"messages[{index}].content[{part_index}].text",
                    )
                texts.append(text)
            # Other parts (images, audio, ...) have no textual form for this model: dropped, as
            # the template drops them.
        return "".join(texts)
    raise InvalidRequestError(
        "Message content must be a string, null, or a list of content parts.",
        param=f"messages[{index}].content",
    )


def _render_assistant(
    out: list[str], message: Mapping[str, Any], index: int, show_reasoning: bool
) -> None:
    out.append(ASSISTANT)
    content = _visible_text(message.get("content"), index)

    # A string reasoning field wins even when empty; only when there is none is a <think> block
    # inside the content split out. The split takes the reasoning before the first </think> and
    # the content after the last one, exactly like the template's split('</think>')[0] / [-1].
    reasoning = message.get("reasoning_content")
    if not isinstance(reasoning, str):
        reasoning = message.get("reasoning")
    if not isinstance(reasoning, str):
        reasoning = ""
        if THINK_CLOSE in content:
            before = content.partition(THINK_CLOSE)[0].rstrip("\n")
            reasoning = before.rpartition(THINK_OPEN)[2].lstrip("\n")
            content = content.rpartition(THINK_CLOSE)[2].lstrip("\n")

    # The template tests the reasoning before stripping it, so whitespace-only reasoning still
    # yields an (empty) <think></think> pair.
    if show_reasoning and reasoning:
        out.append(THINK_OPEN)
        out.append(reasoning.strip())
        out.append(THINK_CLOSE)
    else:
        out.append(THINK_CLOSE)

    out.append(content.strip())

    tool_calls = message.get("tool_calls")
    if not tool_calls:
        return
    for call_index, call in enumerate(tool_calls):
        _render_tool_call(out, call, f"messages[{index}].tool_calls[{call_index}]")


def _render_tool_call(out: list[str], call: Any, param: str) -> None:
    if not isinstance(call, Mapping):
        raise InvalidRequestError("A tool call must be an object.", param=param)
    # OpenAI nests name and arguments under "function"; the template also accepts them flat.
    function = call.get("function")
    if function:
        if not isinstance(function, Mapping):
            raise InvalidRequestError(
                "A tool call's 'function' must be an object.", param=f"{param}.function"
            )
        call = function
        param = f"{param}.function"

    name = call.get("name")
    if not isinstance(name, str):
        raise InvalidRequestError("A tool call must have a string name.", param=f"{param}.name")

    out.append(TOOL_CALL_OPEN)
    out.append(name)
    for key, value in _decode_arguments(call.get("arguments"), f"{param}.arguments").items():
        out.append(ARG_KEY_OPEN)
        out.append(str(key))
        out.append(ARG_KEY_CLOSE)
        out.append(ARG_VALUE_OPEN)
        # Strings go in raw because that is how the model writes them back; everything else is
        # JSON with Python's default separators (the template's tojson is json.dumps).
        out.append(value if isinstance(value, str) else _dump_value(value, param))
        out.append(ARG_VALUE_CLOSE)
    out.append(TOOL_CALL_CLOSE)


def _decode_arguments(arguments: Any, param: str) -> Mapping[Any, Any]:
    if arguments is None:
        return {}
    if isinstance(arguments, Mapping):
        return arguments
    if not isinstance(arguments, str):
        raise InvalidRequestError(
            "Tool call arguments must be a JSON object encoded as a string.", param=param
        )
    # A zero-argument call is often sent as "" rather than "{}".
    if not arguments.strip():
        return {}
    try:
        decoded = json.loads(arguments)
    except (ValueError, RecursionError) as exc:
        raise InvalidRequestError(
            f"Tool call arguments are not valid JSON: {exc}", param=param
        ) from None
    if not isinstance(decoded, dict):
        raise InvalidRequestError(
            f"Tool call arguments must be a JSON object, not {_json_type(decoded)}.",
            param=param,
        )
    return decoded


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "an array"


def _dump_value(value: Any, param: str) -> str:
    try:
        return json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError, RecursionError) as exc:
        raise InvalidRequestError(
            f"Tool call argument value cannot be serialized as JSON: {exc}",
            param=f"{param}.arguments",
        ) from None


def stable_prefix_length(prompt: str) -> int:
    """How much of a rendered prompt stays the same over a conversation's turns: the system
    prompt, the tools and the first user message, up to the first assistant (or observation)
    tag after it. Later parts change: earlier reasoning is cleared, turns are appended. 0 when
    the prompt has no user turn."""
    start = prompt.find(USER)
    if start < 0:
        return 0
    ends = [i for tag in (ASSISTANT, OBSERVATION) if (i := prompt.find(tag, start)) >= 0]
    return min(ends) if ends else len(prompt)
