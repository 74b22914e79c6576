"""Preserved thinking for clients that drop it.

The GLM-4.7 template renders each assistant turn's reasoning within a tool loop; most
OpenAI-chat clients send those turns back without ``reasoning_content``, so the rendered
history differs from what the model generated (it loses its chain of thought and the engine's
prompt cache misses from that turn on). The gateway remembers the reasoning of the turns it
generated and puts it back when a client omits it; reasoning the client sends wins.

A turn is remembered by its tool-call ids (random, so unique to that turn) and a hash of its
content and calls, scoped to the API key that asked for it: one key's clients never receive
another's reasoning. Turns without tool calls are not remembered: without ids nothing tells
two identical answers in different conversations apart. Memory is bounded in entries and
characters, oldest first out.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

from .loop_guard import canonical_arguments


def _content_text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content.strip()
    parts = []
    for part in content:
        if isinstance(part, Mapping) and part.get("type") in ("text", "output_text", None):
            parts.append(str(part.get("text", "")))
    return "".join(parts).strip()


def turn_key(scope: str, content: Any, calls: Sequence[tuple[str, str, Any]]) -> str | None:
    """``calls`` are (id, name, arguments); None: nothing to key the turn by."""
    if not calls or any(not call_id for call_id, _, _ in calls):
        return None
    digest = hashlib.sha256()
    for piece in (scope, _content_text(content)):
        digest.update(piece.encode("utf-8", "surrogatepass") + b"\0")
    for call_id, name, arguments in calls:
        for piece in (call_id, name, canonical_arguments(arguments)):
            digest.update(piece.encode("utf-8", "surrogatepass") + b"\0")
    return digest.hexdigest()


def message_key(scope: str, message: Mapping[str, Any]) -> str | None:
    calls = []
    for call in message.get("tool_calls") or ():
        function = call.get("function") or {}
        calls.append(
            (str(call.get("id") or ""), str(function.get("name", "")), function.get("arguments"))
        )
    return turn_key(scope, message.get("content"), calls)


class ThinkingMemory:
    """Reasoning by turn key, least recently used out first; one per app."""

    def __init__(self, *, max_entries: int = 4096, max_chars: int = 32 * 1024 * 1024) -> None:
        self.max_entries = max_entries
        self.max_chars = max_chars
        self._entries: OrderedDict[str, str] = OrderedDict()
        self._chars = 0

    def __len__(self) -> int:
        return len(self._entries)

    def remember(self, key: str, reasoning: str) -> None:
        if not reasoning or len(reasoning) > self.max_chars:
            return
        old = self._entries.pop(key, None)
        if old is not None:
            self._chars -= len(old)
        self._entries[key] = reasoning
        self._chars += len(reasoning)
        while len(self._entries) > self.max_entries or self._chars > self.max_chars:
            _, dropped = self._entries.popitem(last=False)
            self._chars -= len(dropped)

    def recall(self, key: str) -> str | None:
        reasoning = self._entries.get(key)
        if reasoning is not None:
            self._entries.move_to_end(key)
        return reasoning

    def restore(
        self, scope: str, messages: list[Mapping[str, Any]]
    ) -> tuple[list[Mapping[str, Any]], int]:
        """``messages`` with remembered reasoning put back where a turn has none; and how many
        turns got theirs back."""
        out: list[Mapping[str, Any]] = []
        restored = 0
        for message in messages:
            if message.get("role") == "assistant" and not message.get("reasoning_content"):
                key = message_key(scope, message)
                reasoning = self.recall(key) if key is not None else None
                if reasoning is not None:
                    message = {**message, "reasoning_content": reasoning}
                    restored += 1
            out.append(message)
        return out, restored
