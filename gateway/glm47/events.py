"""Events the GLM-4.7 output parser emits, and the fold that turns them into a message.

Streaming sends each event as an OpenAI delta; non-streaming folds the same events with
``MessageAccumulator``, so both paths give the same result by construction.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class ReasoningDelta:
    text: str


@dataclass(frozen=True, slots=True)
class ContentDelta:
    text: str


@dataclass(frozen=True, slots=True)
class ToolCallStart:
    """A call's header: emitted once its complete, stripped name is known."""

    index: int
    name: str


@dataclass(frozen=True, slots=True)
class ToolCallArguments:
    """A fragment of the call's ``arguments`` JSON text; fragments concatenate to the whole.

    A value's own text may mention the format's tags (a file about it); structure never shows."""

    index: int
    fragment: str


@dataclass(frozen=True, slots=True)
class ToolCallEnd:
    """The call ended: its ``</tool_call>``, or at a stop the end of the output (FORMAT.md 2b.6).

    A call that never ends is dropped from the result."""

    index: int


ParseEvent = ReasoningDelta | ContentDelta | ToolCallStart | ToolCallArguments | ToolCallEnd


@dataclass(slots=True)
class ToolCallResult:
    name: str
    arguments: str = ""


@dataclass(slots=True)
class ParsedMessage:
    reasoning_content: str | None = None
    content: str | None = None
    tool_calls: list[ToolCallResult] = field(default_factory=list)


@dataclass(slots=True)
class _PendingCall:
    name: str
    fragments: list[str] = field(default_factory=list)
    ended: bool = False


class MessageAccumulator:
    """Folds parser events into the non-streaming message."""

    def __init__(self) -> None:
        self._reasoning: list[str] = []
        self._content: list[str] = []
        self._calls: list[_PendingCall] = []

    def add(self, event: ParseEvent) -> None:
        match event:
            case ReasoningDelta(text):
                self._reasoning.append(text)
            case ContentDelta(text):
                self._content.append(text)
            case ToolCallStart(_, name):
                self._calls.append(_PendingCall(name))
            case ToolCallArguments(index, fragment):
                self._calls[index].fragments.append(fragment)
            case ToolCallEnd(index):
                self._calls[index].ended = True

    def result(self) -> ParsedMessage:
        reasoning = "".join(self._reasoning)
        content = "".join(self._content)
        return ParsedMessage(
            reasoning_content=reasoning or None,
            content=content or None,
            tool_calls=[
                ToolCallResult(call.name, "".join(call.fragments))
                for call in self._calls
                if call.ended
            ],
        )
