"""Request models of the Anthropic Messages API (``POST /v1/messages``, ``.../count_tokens``).

Lenient where Anthropic's own API is: unknown fields, beta features (``cache_control``,
``context_management``, ``container``, ``mcp_servers``, ``service_tier``, ...) and extra keys
on known objects are accepted and ignored. What is known is typed, so a wrong type is a 400
that names the field. Content blocks are told apart by ``type``; an unknown block type is a
400 there too, while known blocks the model cannot read (images, documents) pass validation
and are refused by the translation with a message that says why.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag

from backends.sampling import MaxTokens, Temperature, TopK, TopP


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


# -- content blocks ---------------------------------------------------------------------------


class TextBlock(_Lenient):
    type: Literal["text"] = "text"
    text: str


class ImageBlock(_Lenient):
    type: Literal["image"] = "image"
    source: dict[str, Any] | None = None


class DocumentBlock(_Lenient):
    type: Literal["document"] = "document"
    source: dict[str, Any] | None = None


class ToolUseBlock(_Lenient):
    type: Literal["tool_use"] = "tool_use"
    id: str
    name: str
    input: dict[str, Any] = Field(default_factory=dict)


class ThinkingBlock(_Lenient):
    type: Literal["thinking"] = "thinking"
    thinking: str
    # Echoed back from our own responses; any value (an empty one included) is accepted.
    signature: str | None = None


class RedactedThinkingBlock(_Lenient):
    type: Literal["redacted_thinking"] = "redacted_thinking"
    data: str = ""


def _block_type(value: Any) -> str | None:
    if isinstance(value, dict):
        kind = value.get("type")
        return kind if isinstance(kind, str) else None
    return getattr(value, "type", None)


_BLOCK_TYPES = "text, image, document, tool_use, tool_result, thinking, redacted_thinking"


# Blocks allowed inside a tool_result's content (Anthropic: text, image, document, search
# results); anything else there is refused by the translation.
ToolResultContentBlock = Annotated[
    Annotated[TextBlock, Tag("text")]
    | Annotated[ImageBlock, Tag("image")]
    | Annotated[DocumentBlock, Tag("document")],
    Discriminator(
        _block_type,
        custom_error_type="invalid_block_type",
        custom_error_message="a tool_result's content blocks must be text blocks",
    ),
]


class ToolResultBlock(_Lenient):
    type: Literal["tool_result"] = "tool_result"
    tool_use_id: str
    content: str | list[ToolResultContentBlock] | None = None
    is_error: bool | None = None


ContentBlock = Annotated[
    Annotated[TextBlock, Tag("text")]
    | Annotated[ImageBlock, Tag("image")]
    | Annotated[DocumentBlock, Tag("document")]
    | Annotated[ToolUseBlock, Tag("tool_use")]
    | Annotated[ToolResultBlock, Tag("tool_result")]
    | Annotated[ThinkingBlock, Tag("thinking")]
    | Annotated[RedactedThinkingBlock, Tag("redacted_thinking")],
    Discriminator(
        _block_type,
        custom_error_type="invalid_block_type",
        custom_error_message=f"unknown content block type; expected one of: {_BLOCK_TYPES}",
    ),
]


class MessageParam(_Lenient):
    # "system" is a beta (mid-conversation system messages) that Claude Code uses.
    role: Literal["user", "assistant", "system"]
    content: str | list[ContentBlock]


# -- tools and options ------------------------------------------------------------------------


class ToolParam(_Lenient):
    name: str = Field(min_length=1)
    description: str | None = None
    input_schema: dict[str, Any] | None = None
    # "custom" or absent for client tools; Anthropic-defined tools name a versioned type.
    type: str | None = None
    # Tool search: such a tool is not shown to the model, but a call to it is still parsed.
    defer_loading: bool | None = None


class ToolChoiceParam(_Lenient):
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None
    disable_parallel_tool_use: bool | None = None


class ThinkingParam(_Lenient):
    type: Literal["enabled", "adaptive", "disabled"]
    # The most reasoning tokens (the gateway closes the reasoning there).
    budget_tokens: int | None = Field(None, ge=0)
    display: str | None = None


class OutputFormatParam(_Lenient):
    type: Literal["json_schema"]
    schema_: dict[str, Any] = Field(alias="schema")


class OutputConfigParam(_Lenient):
    effort: str | None = None
    format: OutputFormatParam | None = None


class MetadataParam(_Lenient):
    user_id: str | None = None


class ContextEdit(_Lenient):
    type: str
    # clear_thinking: "all", or {"type": "thinking_turns", "value": N}.
    keep: Any = None


class ContextManagementParam(_Lenient):
    edits: list[ContextEdit] = Field(default_factory=list)


class CountTokensRequest(_Lenient):
    """What ``/v1/messages/count_tokens`` takes: the prompt-shaping part of a request."""

    model: str
    messages: list[MessageParam]
    system: str | list[TextBlock] | None = None
    tools: list[ToolParam] | None = None
    tool_choice: ToolChoiceParam | None = None
    thinking: ThinkingParam | None = None
    output_config: OutputConfigParam | None = None
    # The structured-outputs beta's name for output_config.format.
    output_format: OutputFormatParam | None = None
    metadata: MetadataParam | None = None
    context_management: ContextManagementParam | None = None


class MessagesRequest(CountTokensRequest):
    max_tokens: MaxTokens
    stream: bool = False
    temperature: Temperature | None = None
    top_p: TopP | None = None
    top_k: TopK | None = None
    stop_sequences: list[str] | None = Field(None, max_length=16)
