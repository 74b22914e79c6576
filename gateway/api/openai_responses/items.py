"""Responses input items -> the GLM renderer's messages.

An assistant turn is the run of output-side items between two input-side ones: ``reasoning``
(its text becomes the turn's ``reasoning_content``, so GLM's preserved thinking survives the
round trip), assistant ``message`` text, ``function_call`` and ``custom_tool_call`` items (the
turn's ``tool_calls``). Tool outputs become ``tool`` messages.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ...errors import InvalidRequestError, NotFoundError, UnsupportedParameterError
from .sealing import Sealer, SealError
from .tools import CUSTOM_INPUT, prompt_name

ItemLookup = Callable[[str], Mapping[str, Any] | None]

_ROLES = ("user", "assistant", "system", "developer")
_TEXT_PARTS = ("input_text", "output_text", "text")


def _text_parts(content: Any, param: str) -> list[dict[str, str]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not isinstance(content, list):
        raise InvalidRequestError(
            "A message's 'content' must be a string or a list of content parts.", param=param
        )
    parts: list[dict[str, str]] = []
    for j, part in enumerate(content):
        where = f"{param}[{j}]"
        if not isinstance(part, Mapping):
            raise InvalidRequestError("A content part must be an object.", param=where)
        kind = part.get("type")
        if kind in _TEXT_PARTS:
            text = part.get("text")
            if not isinstance(text, str):
                raise InvalidRequestError(
                    "A text content part must have a string 'text'.", param=f"{where}.text"
                )
            parts.append({"type": "text", "text": text})
        elif kind == "refusal":
            refusal = part.get("refusal")
            parts.append({"type": "text", "text": refusal if isinstance(refusal, str) else ""})
        elif kind in ("input_image", "input_file", "input_audio"):
            raise UnsupportedParameterError(
                f"Content parts of type {kind!r} are not supported: GLM-4.7-Flash reads text only.",
                param=f"{where}.type",
            )
        else:
            raise InvalidRequestError(f"Unknown content part type {kind!r}.", param=f"{where}.type")
    return parts


def _joined(parts: list[dict[str, str]]) -> str:
    return "".join(p["text"] for p in parts)


def _output_text(output: Any, param: str) -> str:
    """A tool output: a string, or input_text parts."""
    if isinstance(output, str):
        return output
    if isinstance(output, list):
        return _joined(_text_parts(output, param))
    raise InvalidRequestError("A tool output must be a string or a list of parts.", param=param)


def reasoning_text(item: Mapping[str, Any], param: str, sealer: Sealer) -> str:
    """The text of a reasoning item: the gateway's sealed copy, else content, else summary."""
    sealed = item.get("encrypted_content")
    if isinstance(sealed, str) and sealed:
        try:
            return sealer.open(sealed)
        except SealError as exc:
            raise InvalidRequestError(
                f"This reasoning item's encrypted_content cannot be read: {exc}.",
                param=f"{param}.encrypted_content",
                code="invalid_encrypted_content",
            ) from None
    for key, kinds in (("content", ("reasoning_text", "text")), ("summary", ("summary_text",))):
        entries = item.get(key)
        if entries is None:
            continue
        if not isinstance(entries, list):
            raise InvalidRequestError(f"A reasoning item's {key!r} must be a list.", param=param)
        texts = []
        for j, entry in enumerate(entries):
            if not isinstance(entry, Mapping) or entry.get("type") not in kinds:
                raise InvalidRequestError(
                    f"Reasoning {key} entries must be {' or '.join(kinds)} parts.",
                    param=f"{param}.{key}[{j}]",
                )
            text = entry.get("text")
            if not isinstance(text, str):
                raise InvalidRequestError(
                    "A reasoning part must have a string 'text'.", param=f"{param}.{key}[{j}].text"
                )
            texts.append(text)
        if texts:
            return "\n".join(texts)
    return ""


def _string(item: Mapping[str, Any], key: str, param: str) -> str:
    value = item.get(key)
    if not isinstance(value, str):
        raise InvalidRequestError(f"{key!r} must be a string.", param=f"{param}.{key}")
    return value


class _Turns:
    """Collects messages, folding consecutive output-side items into one assistant turn."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self._assistant: dict[str, Any] | None = None

    def assistant(self, *, new_turn: bool = False) -> dict[str, Any]:
        turn = self._assistant
        if turn is not None and new_turn and (turn["content"] or turn.get("tool_calls")):
            turn = None
        if turn is None:
            turn = {"role": "assistant", "content": ""}
            self.messages.append(turn)
            self._assistant = turn
        return turn

    def other(self, message: dict[str, Any]) -> None:
        self._assistant = None
        self.messages.append(message)


def to_messages(
    items: Sequence[Mapping[str, Any]], sealer: Sealer, params: Sequence[str] | None = None
) -> list[dict[str, Any]]:
    """``items`` (already resolved, no item_reference) as renderer messages."""
    turns = _Turns()
    for index, item in enumerate(items):
        param = params[index] if params is not None else f"input[{index}]"
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role")
            if role not in _ROLES:
                raise InvalidRequestError(
                    f"A message's role must be one of {', '.join(_ROLES)}.", param=f"{param}.role"
                )
            parts = _text_parts(item.get("content"), f"{param}.content")
            if role == "assistant":
                turn = turns.assistant()
                turn["content"] += _joined(parts)
            else:
                turns.other({"role": role, "content": parts})
        elif kind == "reasoning":
            text = reasoning_text(item, param, sealer)
            turn = turns.assistant(new_turn=True)
            previous = turn.get("reasoning_content")
            turn["reasoning_content"] = f"{previous}\n{text}" if previous else text
        elif kind in ("function_call", "custom_tool_call"):
            call_id = _string(item, "call_id", param)
            name = _string(item, "name", param)
            if kind == "function_call":
                namespace = item.get("namespace")
                arguments = _string(item, "arguments", param)
                name = prompt_name(name, namespace if isinstance(namespace, str) else None)
            else:
                arguments = json.dumps(
                    {CUSTOM_INPUT: _string(item, "input", param)}, ensure_ascii=False
                )
            call = {
                "id": call_id,
                "type": "function",
                "function": {"name": name, "arguments": arguments},
            }
            turns.assistant().setdefault("tool_calls", []).append(call)
        elif kind in ("function_call_output", "custom_tool_call_output"):
            call_id = _string(item, "call_id", param)
            output = _output_text(item.get("output"), f"{param}.output")
            turns.other({"role": "tool", "tool_call_id": call_id, "content": output})
        else:
            raise UnsupportedParameterError(
                f"Input items of type {kind!r} are not supported.", param=f"{param}.type"
            )
    return turns.messages


def resolve_items(
    raw: str | Sequence[Any], lookup: ItemLookup
) -> tuple[list[Mapping[str, Any]], list[str]]:
    """The request's input as items (a string is one user message), item_references resolved;
    with each item's place in the request, for error messages."""
    if isinstance(raw, str):
        return [{"type": "message", "role": "user", "content": raw}], ["input"]
    items: list[Mapping[str, Any]] = []
    params: list[str] = []
    for i, item in enumerate(raw):
        param = f"input[{i}]"
        if not isinstance(item, Mapping):
            raise InvalidRequestError("An input item must be an object.", param=param)
        if item.get("type") == "item_reference":
            item_id = item.get("id")
            if not isinstance(item_id, str):
                raise InvalidRequestError(
                    "An item_reference needs a string 'id'.", param=f"{param}.id"
                )
            found = lookup(item_id)
            if found is None:
                raise NotFoundError(
                    f"No stored item with id {item_id!r}: it was never stored (store: false), "
                    "or it has been evicted.",
                    param=f"{param}.id",
                )
            item = found
        items.append(item)
        params.append(param)
    return items, params
