"""An Anthropic Messages request -> the pipeline's ``ChatInput``.

The conversation goes through the same GLM-4.7 renderer as chat completions, so it is first
put in the renderer's OpenAI-like shape: ``system`` first, ``role: system`` messages where
they stand, each user turn split into its tool results (``tool`` messages, in order) and its
text, each assistant turn folded into reasoning (its thinking blocks), text and tool calls.

Nothing from headers or ``metadata`` enters the prompt. Claude Code's
``x-anthropic-billing-header`` system block changes from request to request (it carries the
client version and entry point), so it is dropped before rendering: left in, it would make
every prompt differ from the previous one at its very start and defeat every prompt cache.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from ...errors import InvalidRequestError, UnsupportedParameterError
from ...pipeline.plan import ChatInput, OutputFormat, ToolChoice
from .request import (
    CountTokensRequest,
    DocumentBlock,
    ImageBlock,
    MessageParam,
    MessagesRequest,
    RedactedThinkingBlock,
    TextBlock,
    ThinkingBlock,
    ToolParam,
    ToolResultBlock,
    ToolUseBlock,
)

BILLING_HEADER_PREFIX = "x-anthropic-billing-header:"


def _unreadable(block: ImageBlock | DocumentBlock, param: str) -> UnsupportedParameterError:
    return UnsupportedParameterError(
        f"{block.type} content blocks are not supported: GLM-4.7-Flash reads text only.",
        param=param,
    )


def _system_message(system: str | list[TextBlock] | None) -> dict[str, Any] | None:
    if system is None:
        return None
    if isinstance(system, str):
        text = system
    else:
        text = "".join(
            block.text for block in system if not block.text.startswith(BILLING_HEADER_PREFIX)
        )
    return {"role": "system", "content": text} if text else None


def _text_of(content: str | list[Any], param: str) -> str:
    """The text of a system message or a tool result: text blocks only."""
    if isinstance(content, str):
        return content
    texts: list[str] = []
    for j, block in enumerate(content):
        if isinstance(block, TextBlock):
            texts.append(block.text)
        elif isinstance(block, ImageBlock | DocumentBlock):
            raise _unreadable(block, f"{param}.{j}")
        else:
            raise InvalidRequestError(
                f"{block.type} blocks are not allowed here; only text blocks are.",
                param=f"{param}.{j}.type",
            )
    return "".join(texts)


def _tool_result(block: ToolResultBlock, param: str) -> dict[str, Any]:
    text = "" if block.content is None else _text_of(block.content, f"{param}.content")
    if block.is_error:
        # GLM's template has no error flag; the model learns it from the text.
        text = f"Error: {text}" if text else "Error"
    return {"role": "tool", "tool_call_id": block.tool_use_id, "content": text}


def _user_turn(message: MessageParam, i: int) -> list[dict[str, Any]]:
    if isinstance(message.content, str):
        return [{"role": "user", "content": message.content}]
    out: list[dict[str, Any]] = []
    texts: list[str] = []

    def flush_text() -> None:
        if texts:
            out.append({"role": "user", "content": "".join(texts)})
            texts.clear()

    for j, block in enumerate(message.content):
        param = f"messages.{i}.content.{j}"
        if isinstance(block, TextBlock):
            texts.append(block.text)
        elif isinstance(block, ToolResultBlock):
            flush_text()
            out.append(_tool_result(block, param))
        elif isinstance(block, ImageBlock | DocumentBlock):
            raise _unreadable(block, param)
        else:
            raise InvalidRequestError(
                f"{block.type} blocks are not allowed in a user message.", param=f"{param}.type"
            )
    flush_text()
    if not out:
        # An empty user turn still ends the previous assistant turn in the prompt.
        out.append({"role": "user", "content": ""})
    return out


def _assistant_turn(message: MessageParam, i: int) -> dict[str, Any]:
    if isinstance(message.content, str):
        return {"role": "assistant", "content": message.content}
    reasoning: list[str] = []
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for j, block in enumerate(message.content):
        param = f"messages.{i}.content.{j}"
        if isinstance(block, ThinkingBlock):
            reasoning.append(block.thinking)
        elif isinstance(block, RedactedThinkingBlock):
            # Opaque (another model's encrypted reasoning): nothing this model can read.
            continue
        elif isinstance(block, TextBlock):
            texts.append(block.text)
        elif isinstance(block, ToolUseBlock):
            calls.append(
                {
                    "id": block.id,
                    "type": "function",
                    "function": {"name": block.name, "arguments": block.input},
                }
            )
        elif isinstance(block, ImageBlock | DocumentBlock):
            raise _unreadable(block, param)
        else:
            raise InvalidRequestError(
                f"{block.type} blocks are not allowed in an assistant message.",
                param=f"{param}.type",
            )
    turn: dict[str, Any] = {"role": "assistant", "content": "".join(texts)}
    # The turn's own reasoning, so that preserved thinking renders it; none means none.
    turn["reasoning_content"] = "\n".join(reasoning)
    if calls:
        turn["tool_calls"] = calls
    return turn


def to_messages(request: CountTokensRequest) -> list[Mapping[str, Any]]:
    messages: list[Mapping[str, Any]] = []
    system = _system_message(request.system)
    if system is not None:
        messages.append(system)
    for i, message in enumerate(request.messages):
        if message.role == "user":
            messages.extend(_user_turn(message, i))
        elif message.role == "assistant":
            messages.append(_assistant_turn(message, i))
        else:
            text = _text_of(message.content, f"messages.{i}.content")
            messages.append({"role": "system", "content": text})
    if request.messages and request.messages[-1].role == "assistant":
        raise UnsupportedParameterError(
            "The last message is an assistant message: prefilling the response is not "
            "supported. End with a user message.",
            param=f"messages.{len(request.messages) - 1}.role",
        )
    return messages


def _function_tool(tool: ToolParam, i: int) -> dict[str, Any]:
    if tool.type not in (None, "custom") or tool.input_schema is None:
        raise UnsupportedParameterError(
            f"Tool {tool.name!r} is of type {tool.type!r}: only custom tools with an "
            "input_schema are supported (Anthropic's server and built-in tools are not).",
            param=f"tools.{i}",
        )
    function: dict[str, Any] = {"name": tool.name}
    if tool.description is not None:
        function["description"] = tool.description
    function["parameters"] = tool.input_schema
    return {"type": "function", "function": function}


def _tools(
    request: CountTokensRequest,
) -> tuple[list[Mapping[str, Any]] | None, list[Mapping[str, Any]] | None]:
    """Shown and hidden tools; ``defer_loading`` ones are hidden, as Anthropic's API does."""
    if not request.tools:
        return None, None
    shown: list[Mapping[str, Any]] = []
    hidden: list[Mapping[str, Any]] = []
    for i, tool in enumerate(request.tools):
        (hidden if tool.defer_loading else shown).append(_function_tool(tool, i))
    return shown or None, hidden or None


def _tool_choice(request: CountTokensRequest) -> tuple[ToolChoice, bool]:
    choice = request.tool_choice
    if choice is None:
        return ToolChoice("auto"), True
    parallel = choice.disable_parallel_tool_use is not True
    match choice.type:
        case "any":
            return ToolChoice("required"), parallel
        case "none":
            return ToolChoice("none"), parallel
        case "tool":
            if not choice.name:
                raise InvalidRequestError(
                    "tool_choice of type 'tool' needs a name.", param="tool_choice.name"
                )
            return ToolChoice("named", choice.name, param="tool_choice.name"), parallel
    return ToolChoice("auto"), parallel


def _clear_thinking(request: CountTokensRequest) -> bool | None:
    """Claude Code's ``clear_thinking`` edit with ``keep: "all"`` asks for every earlier
    turn's thinking to stay in context: GLM-4.7's preserved thinking. Anything else leaves
    the route default (earlier turns' reasoning dropped, the current tool loop's kept, which
    is also what Anthropic's API does by default)."""
    if request.context_management is None:
        return None
    for edit in request.context_management.edits:
        if edit.type.startswith("clear_thinking") and edit.keep == "all":
            return False
    return None


def _output_format(request: CountTokensRequest) -> OutputFormat | None:
    if request.output_config is not None and request.output_config.format is not None:
        return OutputFormat(
            "json_schema", request.output_config.format.schema_, param="output_config.format"
        )
    if request.output_format is not None:
        return OutputFormat("json_schema", request.output_format.schema_, param="output_format")
    return None


def conversation_key(request: CountTokensRequest) -> str | None:
    """The session id in ``metadata.user_id`` (Claude Code sends a JSON object there)."""
    user_id = request.metadata.user_id if request.metadata is not None else None
    if not user_id:
        return None
    try:
        decoded = json.loads(user_id)
    except ValueError:
        return None
    session = decoded.get("session_id") if isinstance(decoded, dict) else None
    return session if isinstance(session, str) and session else None


def _sampling(request: MessagesRequest) -> dict[str, Any]:
    layer: dict[str, Any] = {"max_tokens": request.max_tokens}
    for name in ("temperature", "top_p", "top_k"):
        value = getattr(request, name)
        if value is not None:
            layer[name] = value
    if request.stop_sequences:
        layer["stop"] = list(request.stop_sequences)
    return layer


def to_chat_input(request: CountTokensRequest, model: str) -> ChatInput:
    """``model`` is the served name the requested one resolved to."""
    tools, hidden = _tools(request)
    choice, parallel = _tool_choice(request)
    thinking = request.thinking
    enable = None if thinking is None else thinking.type != "disabled"
    effort = request.output_config.effort if request.output_config is not None else None
    chat = ChatInput(
        model=model,
        messages=to_messages(request),
        tools=tools,
        hidden_tools=hidden,
        tool_choice=choice,
        parallel_tool_calls=parallel,
        output_format=_output_format(request),
        enable_thinking=enable,
        clear_thinking=_clear_thinking(request),
        reasoning_effort=effort,
        thinking_budget=(
            thinking.budget_tokens if thinking is not None and thinking.type == "enabled" else None
        ),
        conversation_key=conversation_key(request),
    )
    if isinstance(request, MessagesRequest):
        chat.sampling = _sampling(request)
        # Anthropic's max_tokens is required, and clients size it for Claude's context
        # (Claude Code: 32000-64000), so it is a ceiling here: the answer ends with
        # "max_tokens" where the context or the model's limit ends, never a 400.
        chat.max_tokens_ceiling = True
        chat.stream = request.stream
    return chat
