"""A Responses request -> the pipeline's ``ChatInput``, plus what the encoder needs back."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ...errors import InvalidRequestError, NotFoundError, UnsupportedParameterError
from ...pipeline.plan import ChatInput, OutputFormat, ToolChoice
from .items import resolve_items, to_messages
from .request import ResponsesRequest
from .sealing import Sealer
from .store import ResponseStore
from .tools import HOSTED_TOOLS, ToolSet, prompt_name, translate_tools

ENCRYPTED_REASONING = "reasoning.encrypted_content"


@dataclass(slots=True)
class Translated:
    request: ResponsesRequest
    chat: ChatInput
    tools: ToolSet
    #: The conversation so far as items (stored turns, then this input), for the store.
    items: list[Mapping[str, Any]] = field(default_factory=list)
    summary: bool = False
    encrypted_reasoning: bool = False

    @property
    def store(self) -> bool:
        return self.request.store is not False


def _check_supported(request: ResponsesRequest) -> None:
    if request.background:
        raise UnsupportedParameterError(
            "background responses are not supported; stream instead.", param="background"
        )
    if request.conversation is not None:
        raise UnsupportedParameterError(
            "conversation objects are not supported; use previous_response_id or send the items.",
            param="conversation",
        )
    if request.prompt is not None:
        raise UnsupportedParameterError("prompt templates are not supported.", param="prompt")
    if request.top_logprobs:
        raise UnsupportedParameterError("logprobs are not supported.", param="top_logprobs")
    for i, name in enumerate(request.include or ()):
        if name == "message.output_text.logprobs":
            raise UnsupportedParameterError("logprobs are not supported.", param=f"include[{i}]")


def _named(tools: ToolSet, choice: Mapping[str, Any], param: str) -> ToolChoice:
    name = choice.get("name")
    if not isinstance(name, str):
        raise InvalidRequestError("tool_choice needs a string 'name'.", param=f"{param}.name")
    namespace = choice.get("namespace")
    return ToolChoice(
        "named",
        prompt_name(name, namespace if isinstance(namespace, str) else None),
        param=f"{param}.name",
    )


def _tool_choice(request: ResponsesRequest, tools: ToolSet) -> tuple[ToolChoice, list[Any]]:
    """The choice, and the tools to show (allowed_tools narrows them)."""
    choice = request.tool_choice
    shown: list[Any] = list(tools.tools)
    if choice is None or choice == "auto":
        return ToolChoice("auto"), shown
    if choice == "none":
        return ToolChoice("none"), shown
    if choice == "required":
        return ToolChoice("required"), shown
    if isinstance(choice, str):
        raise InvalidRequestError(
            "tool_choice must be 'auto', 'none', 'required' or an object.", param="tool_choice"
        )
    kind = choice.get("type")
    if kind in ("function", "custom"):
        return _named(tools, choice, "tool_choice"), shown
    if kind == "allowed_tools":
        mode = choice.get("mode", "auto")
        if mode not in ("auto", "required"):
            raise InvalidRequestError(
                "allowed_tools mode must be 'auto' or 'required'.", param="tool_choice.mode"
            )
        allowed = choice.get("tools")
        if not isinstance(allowed, list):
            raise InvalidRequestError(
                "allowed_tools needs a list of 'tools'.", param="tool_choice.tools"
            )
        names = []
        for i, entry in enumerate(allowed):
            if not isinstance(entry, Mapping):
                raise InvalidRequestError(
                    "An allowed tool must be an object.", param=f"tool_choice.tools[{i}]"
                )
            if entry.get("type") in HOSTED_TOOLS:
                continue
            named = _named(tools, entry, f"tool_choice.tools[{i}]")
            if named.name not in tools.targets:
                raise InvalidRequestError(
                    f"allowed_tools names {named.name!r}, which is not among the tools.",
                    param=named.param,
                )
            names.append(named.name or "")
        return ToolChoice("required" if mode == "required" else "auto"), tools.subset(names)
    if kind in HOSTED_TOOLS or (isinstance(kind, str) and kind.startswith("web_search")):
        raise UnsupportedParameterError(
            f"tool_choice cannot force the hosted tool {kind!r}: this gateway does not run "
            "hosted tools.",
            param="tool_choice.type",
        )
    raise InvalidRequestError(f"Unknown tool_choice type {kind!r}.", param="tool_choice.type")


def _output_format(request: ResponsesRequest) -> OutputFormat | None:
    fmt = request.text.format if request.text is not None else None
    if fmt is None or fmt.get("type") == "text":
        return None
    kind = fmt.get("type")
    if kind == "json_object":
        return OutputFormat("json_object", param="text.format")
    if kind == "json_schema":
        schema = fmt.get("schema")
        if not isinstance(schema, Mapping):
            raise InvalidRequestError(
                "text.format json_schema needs a 'schema' object.", param="text.format.schema"
            )
        return OutputFormat("json_schema", schema, param="text.format")
    raise InvalidRequestError(
        f"Unknown text.format type {kind!r}; use text, json_object or json_schema.",
        param="text.format.type",
    )


def _sampling(request: ResponsesRequest) -> dict[str, Any]:
    layer: dict[str, Any] = {}
    if request.temperature is not None:
        layer["temperature"] = request.temperature
    if request.top_p is not None:
        layer["top_p"] = request.top_p
    if request.max_output_tokens is not None:
        layer["max_tokens"] = request.max_output_tokens
    return layer


def translate(body: Mapping[str, Any], store: ResponseStore, sealer: Sealer) -> Translated:
    request = ResponsesRequest.model_validate(body)
    _check_supported(request)
    history: list[Mapping[str, Any]] = []
    params: list[str] = []
    if request.previous_response_id is not None:
        stored = store.get(request.previous_response_id)
        if stored is None:
            raise NotFoundError(
                f"No stored response with id {request.previous_response_id!r}: it was never "
                "stored (store: false), or it has been evicted.",
                param="previous_response_id",
                code="response_not_found",
            )
        history = list(stored.items)
        params = ["previous_response_id"] * len(history)
    items, item_params = resolve_items(request.input, store.item)
    conversation = [*history, *items]
    messages: list[Mapping[str, Any]] = list(
        to_messages(conversation, sealer, [*params, *item_params])
    )
    if request.instructions:
        messages.insert(0, {"role": "system", "content": request.instructions})
    tools = translate_tools(request.tools)
    choice, shown = _tool_choice(request, tools)
    effort = request.reasoning.effort if request.reasoning is not None else None
    enable = None if effort is None else effort not in ("none", "minimal")
    chat = ChatInput(
        model=request.model,
        messages=messages,
        tools=shown or None,
        tool_choice=choice,
        parallel_tool_calls=request.parallel_tool_calls is not False,
        output_format=_output_format(request),
        sampling=_sampling(request),
        max_tokens_param="max_output_tokens",
        enable_thinking=enable,
        reasoning_effort=effort,
        stream=request.stream is True,
        conversation_key=request.prompt_cache_key or request.safety_identifier or request.user,
    )
    return Translated(
        request=request,
        chat=chat,
        tools=tools,
        items=conversation,
        summary=request.summary is not None,
        encrypted_reasoning=ENCRYPTED_REASONING in (request.include or ()),
    )
