"""An OpenAI chat completions request -> the pipeline's ``ChatInput``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ...errors import InvalidRequestError, UnsupportedParameterError
from ...pipeline.plan import ChatInput, OutputFormat, ToolChoice
from .request import ChatCompletionRequest, NamedToolChoice, OtherPart

# Sampling fields whose names are the same on the wire and in SamplingParams.
_SAMPLING_FIELDS = (
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "repeat_penalty",
    "presence_penalty",
    "frequency_penalty",
    "seed",
)


def _check_supported(request: ChatCompletionRequest) -> None:
    """Refuse, with a clear 400, what this gateway cannot honour."""
    if request.n is not None and request.n != 1:
        raise UnsupportedParameterError("Only n=1 is supported.", param="n")
    if request.logprobs:
        raise UnsupportedParameterError("logprobs are not supported.", param="logprobs")
    for i, message in enumerate(request.messages):
        if isinstance(message.content, list):
            for j, part in enumerate(message.content):
                if isinstance(part, OtherPart):
                    raise UnsupportedParameterError(
                        f"Content parts of type {part.type!r} are not supported: "
                        "GLM-4.7-Flash reads text only.",
                        param=f"messages[{i}].content[{j}].type",
                    )


def client_sampling(request: ChatCompletionRequest) -> dict[str, Any]:
    """The sampling fields the client actually set."""
    layer: dict[str, Any] = {
        name: getattr(request, name)
        for name in _SAMPLING_FIELDS
        if getattr(request, name) is not None
    }
    max_tokens = request.max_completion_tokens or request.max_tokens
    if max_tokens is not None:
        layer["max_tokens"] = max_tokens
    if request.stop is not None:
        layer["stop"] = request.stop_list
    return layer


def _tool_choice(request: ChatCompletionRequest) -> ToolChoice:
    choice = request.tool_choice
    if isinstance(choice, NamedToolChoice):
        return ToolChoice("named", choice.function.name, param="tool_choice.function.name")
    if choice in ("none", "required"):
        return ToolChoice(choice)
    return ToolChoice("auto")


def _output_format(request: ChatCompletionRequest) -> OutputFormat | None:
    fmt = request.response_format
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return OutputFormat("json_object")
    schema = fmt.json_schema.schema_ if fmt.json_schema is not None else None
    return OutputFormat("json_schema", schema)


def _thinking(request: ChatCompletionRequest) -> tuple[bool | None, bool | None]:
    """enable_thinking and clear_thinking as the client set them; kwargs beat the effort."""
    enable: bool | None = None
    if request.reasoning_effort is not None:
        enable = request.reasoning_effort != "none"
    clear: bool | None = None
    kwargs = request.chat_template_kwargs
    if kwargs is not None:
        if kwargs.enable_thinking is not None:
            enable = kwargs.enable_thinking
        clear = kwargs.clear_thinking
    return enable, clear


def to_chat_input(body: Mapping[str, Any]) -> ChatInput:
    """Validate ``body`` (the raw JSON: tools render in the client's key order)."""
    request = ChatCompletionRequest.model_validate(body)
    _check_supported(request)
    choice = _tool_choice(request)
    if choice.mode not in ("auto", "none") and not request.tools:
        raise InvalidRequestError(
            "tool_choice requires tools, but no tools were given.", param="tool_choice"
        )
    enable, clear = _thinking(request)
    return ChatInput(
        model=request.model,
        messages=list(body["messages"]),
        tools=list(body["tools"]) if request.tools else None,
        tool_choice=choice,
        parallel_tool_calls=request.parallel_tool_calls is not False,
        output_format=_output_format(request),
        sampling=client_sampling(request),
        max_tokens_param="max_completion_tokens" if request.max_completion_tokens else "max_tokens",
        enable_thinking=enable,
        clear_thinking=clear,
        reasoning_effort=request.reasoning_effort,
        add_generation_prompt=request.add_generation_prompt,
        stream=request.stream,
        # The OpenAI chat API's own end-user id; other hints come from headers (the route).
        conversation_key=request.user,
    )
