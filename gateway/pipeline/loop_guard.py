"""The loop guard: generations that repeat a segment, conversations that repeat a call.

Repetition is found on the reversed tail of the output with the prefix function: for the
reversed text ``s``, the prefix of length ``L`` has period ``L - pi[L-1]``, so the longest
tail made of one segment repeated back to back is found in one linear pass. The check runs
every ``stride`` characters, so its cost per generated character is constant; and only when
the last few characters recur within ``max_period`` before them (``str.find``), which any
repeated tail implies: ordinary text skips the Python pass, which otherwise took about a
third of the gateway's CPU per streamed token.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..glm47.events import (
    MessageAccumulator,
    ParseEvent,
    ToolCallArguments,
    ToolCallEnd,
    ToolCallStart,
)

if TYPE_CHECKING:
    from ..settings import LoopGuardSettings

CallKey = tuple[str, str]


@dataclass(frozen=True, slots=True)
class Repetition:
    period: int
    repeats: int
    chars: int


class RepetitionDetector:
    """Fed the output as it is generated; says when its tail is one segment repeated."""

    def __init__(
        self, *, min_repeats: int, min_chars: int, max_period: int, stride: int = 64
    ) -> None:
        self.min_repeats = min_repeats
        self.min_chars = min_chars
        self.max_period = max_period
        self.stride = stride
        # Enough tail to see max_period repeated min_repeats times (and min_chars).
        self.window = max(min_chars, max_period * min_repeats)
        self._tail = ""
        self._since_check = 0
        # Any tail check() reports has length L >= min_chars and period p with L >= p *
        # min_repeats, so L - p >= min_chars * (1 - 1 / min_repeats) >= probe: its last
        # ``probe`` characters also occur p characters earlier.
        self.probe = max(1, min(32, min_chars * (min_repeats - 1) // min_repeats))

    @classmethod
    def for_settings(cls, guard: LoopGuardSettings) -> RepetitionDetector:
        """From a route's loop-guard settings."""
        return cls(
            min_repeats=guard.min_repeats, min_chars=guard.min_chars, max_period=guard.max_period
        )

    def feed(self, text: str) -> Repetition | None:
        if not text:
            return None
        self._tail = (self._tail + text)[-self.window :]
        self._since_check += len(text)
        if self._since_check < self.stride or len(self._tail) < self.min_chars:
            return None
        self._since_check = 0
        if not self._may_repeat():
            return None
        return self.check()

    def _may_repeat(self) -> bool:
        tail, m = self._tail, self.probe
        n = len(tail)
        return tail.find(tail[n - m :], max(0, n - m - self.max_period), n - 1) >= 0

    def check(self) -> Repetition | None:
        s = self._tail[::-1]
        n = len(s)
        pi = [0] * n
        found: Repetition | None = None
        k = 0
        for i in range(1, n):
            while k and s[i] != s[k]:
                k = pi[k - 1]
            if s[i] == s[k]:
                k += 1
            pi[i] = k
            length = i + 1
            period = length - k
            if (
                length >= self.min_chars
                and period <= self.max_period
                and length >= period * self.min_repeats
            ):
                found = Repetition(period, length // period, length)
        return found


def canonical_arguments(arguments: Any) -> str:
    """Arguments as one canonical JSON text (clients reformat what they send back)."""
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError:
            return str(arguments).strip()
    return json.dumps(arguments, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def turn_calls(message: Mapping[str, Any]) -> tuple[CallKey, ...]:
    calls = message.get("tool_calls") or ()
    keys: list[CallKey] = []
    for call in calls:
        function = call.get("function") or {}
        keys.append((str(function.get("name", "")), canonical_arguments(function.get("arguments"))))
    return tuple(sorted(keys))


def repeated_calls(messages: Sequence[Mapping[str, Any]], turns: int) -> tuple[CallKey, ...] | None:
    """The calls the model made in each of its last ``turns - 1`` turns, when they are the same
    every time (and no user turn came between): one more of them is the ``turns``-th."""
    seen: tuple[CallKey, ...] | None = None
    count = 0
    for message in reversed(messages):
        role = message.get("role")
        if role == "tool":
            continue
        if role != "assistant":
            break
        calls = turn_calls(message)
        if not calls or (seen is not None and calls != seen):
            break
        seen = calls
        count += 1
        if count >= turns - 1:
            return seen
    return None


class RepeatedCallGuard:
    """Holds this turn's tool-call events back when one more repeat of the last turns' calls
    would trip the guard: they go out at the end, unless they are that repeat."""

    def __init__(self, repeated: tuple[CallKey, ...]) -> None:
        self._repeated = repeated
        self._held: list[ParseEvent] | None = []

    def release(
        self, parsed: list[ParseEvent], *, end: bool = False
    ) -> tuple[list[ParseEvent], bool]:
        """What may go out now, and whether the turn was the repeat (its calls dropped)."""
        held = self._held
        if held is None:
            return parsed, False
        out: list[ParseEvent] = []
        for event in parsed:
            if isinstance(event, ToolCallStart | ToolCallArguments | ToolCallEnd):
                held.append(event)
            else:
                out.append(event)
        if not end:
            return out, False
        self._held = None
        folded = MessageAccumulator()
        for event in held:
            folded.add(event)
        calls = tuple(
            sorted((c.name, canonical_arguments(c.arguments)) for c in folded.result().tool_calls)
        )
        if calls and calls == self._repeated:
            return out, True
        return out + held, False
