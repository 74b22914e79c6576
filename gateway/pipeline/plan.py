"""What a wire API hands the pipeline (``ChatInput``) and what the pipeline runs (``Plan``).

Every wire API translates its request into one ``ChatInput``: messages in the GLM renderer's
input shape (OpenAI-chat-like dicts), tools as OpenAI function tools in the client's key order,
and the client's own sampling layer. ``build_plan`` does everything that can still fail with a
clean 4xx: model resolution, limits, the route and its sampling, the prompt and the grammar.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from backends.base import GenerationRequest, SamplingParams

from ..errors import InvalidRequestError, UnsupportedParameterError
from ..glm47 import tokens
from ..glm47.grammar import json_grammar, tool_call_grammar
from ..glm47.render import render_prompt, stable_prefix_length
from ..models import ModelRegistry, ServedModel
from ..sampling import resolve_sampling, select_route
from ..settings import RouteSettings
from .loop_guard import repeated_calls
from .thinking_memory import ThinkingMemory


def new_id(prefix: str) -> str:
    return prefix + secrets.token_hex(12)


@dataclass(frozen=True, slots=True)
class ToolChoice:
    """``auto``: the model decides; ``none``: tools are not offered; ``required``: at least one
    call; ``named``: a call to ``name``. The last two are enforced by grammar."""

    mode: Literal["auto", "none", "required", "named"] = "auto"
    name: str | None = None
    # Where the client wrote it, for error messages ("tool_choice", "tool_choice.name", ...).
    param: str = "tool_choice"


@dataclass(frozen=True, slots=True)
class OutputFormat:
    """Constrained final output: any JSON object, or JSON matching ``schema``."""

    kind: Literal["json_object", "json_schema"]
    schema: Mapping[str, Any] | None = None
    param: str = "response_format"


@dataclass(frozen=True, slots=True)
class Limits:
    max_messages: int = 4096
    max_tools: int = 512


@dataclass(slots=True)
class ChatInput:
    """One request, in no wire format.

    ``messages`` are dicts the GLM-4.7 renderer reads: ``role`` (system, user, assistant,
    tool), ``content`` (a string or text parts), and on assistant turns ``reasoning_content`` and
    ``tool_calls`` (``{"id", "type": "function", "function": {"name", "arguments"}}``); tool turns
    carry ``tool_call_id``. ``tools`` are ``{"type": "function", "function": {"name",
    "description", "parameters"}}`` in the client's key order (they render verbatim);
    ``hidden_tools`` are parsed in the output but not shown in the prompt.
    """

    model: str
    messages: list[Mapping[str, Any]]
    tools: list[Mapping[str, Any]] | None = None
    hidden_tools: list[Mapping[str, Any]] | None = None
    tool_choice: ToolChoice = field(default_factory=ToolChoice)
    parallel_tool_calls: bool = True
    output_format: OutputFormat | None = None
    # The sampling fields the client set (names of ``SamplingParams``), ``max_tokens`` included.
    sampling: Mapping[str, Any] = field(default_factory=dict)
    # The client's name for its token limit, for error messages.
    max_tokens_param: str = "max_tokens"
    # True: max_tokens is only a ceiling, cut to the model's max_tokens_limit and to what the
    # context leaves instead of a 400 (Claude Code always asks for 32000-64000 tokens).
    max_tokens_ceiling: bool = False
    enable_thinking: bool | None = None
    clear_thinking: bool | None = None
    # The client's reasoning effort ("none", "low", ...), where its API has one; the route
    # maps it to a reasoning-token budget.
    reasoning_effort: str | None = None
    # A reasoning-token budget the client gave as a number (Anthropic ``budget_tokens``);
    # it wins over the effort.
    thinking_budget: int | None = None
    add_generation_prompt: bool = True
    stream: bool = False
    # A stable id of the conversation (a session id, a prompt-cache key) for engine caches: a
    # hint for placement, never a substitute for matching the prompt itself.
    conversation_key: str | None = None

    @property
    def offers_tools(self) -> bool:
        return bool(self.tools) and self.tool_choice.mode != "none"


@dataclass(slots=True)
class Plan:
    """A request ready to run: the prompt, how to sample it, how to parse what comes back."""

    input: ChatInput
    model: ServedModel
    route: str
    prompt: str
    sampling: SamplingParams
    thinking: bool
    # Tools the parser types arguments by (offered and hidden ones), or None: no tool parsing.
    parse_tools: Sequence[Mapping[str, Any]] | None
    grammar: str | None = None
    # The most reasoning tokens; when reached, the reasoning is closed and the answer follows.
    thinking_budget: int | None = None
    # The grammar for what follows ``</think>``, for a continuation after a closed reasoning.
    answer_grammar: str | None = None
    # The calls the model made in each of its last turns, when one more would trip the guard.
    repeated_calls: tuple[tuple[str, str], ...] | None = None
    # Assistant turns whose reasoning the gateway put back (preserved thinking).
    restored_thinking: int = 0
    request_id: str = field(default_factory=lambda: new_id(""))
    created: int = field(default_factory=lambda: int(time.time()))

    @property
    def route_settings(self) -> RouteSettings:
        return self.model.routes[self.route]

    @property
    def model_name(self) -> str:
        return self.input.model

    @property
    def asked_max_tokens(self) -> int | None:
        """The limit the client insists on (None when it is only a ceiling)."""
        value = self.input.sampling.get("max_tokens")
        if self.input.max_tokens_ceiling:
            return None
        return value if isinstance(value, int) else None

    @property
    def single_call(self) -> bool:
        """parallel_tool_calls=false: the generation ends with the first complete call."""
        return not self.input.parallel_tool_calls and self.parse_tools is not None

    def generation_request(self) -> GenerationRequest:
        return GenerationRequest(
            prompt=self.prompt,
            sampling=self.sampling,
            stop_tokens=tokens.STOP_TOKENS,
            grammar=self.grammar,
            request_id=self.request_id,
            conversation_key=self.input.conversation_key,
            stable_prefix=stable_prefix_length(self.prompt),
        )


def _check_limits(chat: ChatInput, limits: Limits, model: ServedModel) -> None:
    if len(chat.messages) > limits.max_messages:
        raise InvalidRequestError(
            f"Too many messages: {len(chat.messages)}; the limit is {limits.max_messages}.",
            param="messages",
        )
    n_tools = len(chat.tools or ()) + len(chat.hidden_tools or ())
    if n_tools > limits.max_tools:
        raise InvalidRequestError(
            f"Too many tools: {n_tools}; the limit is {limits.max_tools}.", param="tools"
        )
    cap = model.settings.max_tokens_limit
    asked = chat.sampling.get("max_tokens")
    if cap is not None and asked is not None and asked > cap and not chat.max_tokens_ceiling:
        raise InvalidRequestError(
            f"{chat.max_tokens_param} is {asked}, more than this model allows per request ({cap}).",
            param=chat.max_tokens_param,
            code="max_tokens_exceeded",
        )


def _tool_names(tools: Sequence[Mapping[str, Any]]) -> list[str]:
    return [str(tool["function"]["name"]) for tool in tools]


def _check_choice(chat: ChatInput) -> None:
    choice = chat.tool_choice
    all_tools = [*(chat.tools or ()), *(chat.hidden_tools or ())]
    if choice.mode in ("required", "named") and not all_tools:
        raise InvalidRequestError(
            "tool_choice requires tools, but no tools were given.", param=choice.param
        )
    if choice.mode == "named":
        names = _tool_names(all_tools)
        if choice.name not in names:
            raise InvalidRequestError(
                f"tool_choice names the function {choice.name!r}, which is not among the "
                f"tools: {', '.join(names)}.",
                param=choice.param,
            )
    if chat.output_format is not None and chat.offers_tools:
        raise UnsupportedParameterError(
            f"{chat.output_format.param} cannot be combined with tools; send tool_choice "
            "'none' or no tools.",
            param=chat.output_format.param,
        )


def _thinking_budget(chat: ChatInput, route: RouteSettings, thinking: bool) -> int | None:
    if not thinking:
        return None
    if chat.thinking_budget is not None:
        return chat.thinking_budget
    if chat.reasoning_effort is None:
        return None
    return route.thinking_budgets.get(chat.reasoning_effort)


def _grammar(
    chat: ChatInput, tools: Sequence[Mapping[str, Any]] | None, thinking: bool, model: ServedModel
) -> str | None:
    """The grammar for a required or named tool choice, or a JSON output format."""
    choice, fmt = chat.tool_choice, chat.output_format
    grammar: str | None = None
    param, what = choice.param, "required or a named function"
    if tools and choice.mode in ("required", "named"):
        if choice.mode == "named":
            tools = [t for t in tools if t["function"]["name"] == choice.name]
        grammar = tool_call_grammar(tools, thinking=thinking, parallel=chat.parallel_tool_calls)
    elif fmt is not None:
        param, what = fmt.param, repr(fmt.kind)
        grammar = json_grammar(fmt.schema, thinking=thinking)
    if grammar is not None and not model.backend.supports_grammar:
        raise UnsupportedParameterError(
            f"This model's backend cannot constrain output, so {param} {what} cannot be enforced.",
            param=param,
        )
    return grammar


def build_plan(
    registry: ModelRegistry,
    chat: ChatInput,
    limits: Limits | None = None,
    *,
    memory: ThinkingMemory | None = None,
    scope: str = "",
) -> Plan:
    """Resolve, check and render; every error here is the client's, with a 4xx.

    ``memory`` (with the API key's ``scope``) puts back reasoning a client dropped, on routes
    that preserve thinking.
    """
    name = registry.resolve(chat.model)
    model = name.model
    _check_limits(chat, limits or Limits(), model)
    _check_choice(chat)
    route = select_route(chat.offers_tools, name.route)
    route_settings = model.routes[route]
    restored = 0
    if memory is not None and route_settings.preserve_thinking:
        chat.messages, restored = memory.restore(scope, chat.messages)
    resolved = resolve_sampling(
        chat.sampling,
        route,
        route_settings,
        model.backend.sampling_defaults,
        enable_thinking=chat.enable_thinking,
        clear_thinking=chat.clear_thinking,
    )
    thinking = resolved.enable_thinking
    shown = list(chat.tools or ()) if chat.offers_tools else None
    prompt = render_prompt(
        chat.messages,
        tools=shown,
        enable_thinking=thinking,
        clear_thinking=resolved.clear_thinking,
        add_generation_prompt=chat.add_generation_prompt,
    )
    parse_tools: list[Mapping[str, Any]] | None = None
    if shown is not None or chat.hidden_tools:
        parse_tools = [*(shown or ()), *(chat.hidden_tools or ())]
    grammar = _grammar(chat, parse_tools, thinking, model)
    answer_grammar = grammar
    if grammar is not None and thinking:
        answer_grammar = _grammar(chat, parse_tools, False, model)
    guard = route_settings.loop_guard
    sampling = resolved.sampling
    cap = model.settings.max_tokens_limit
    if cap is not None and (sampling.max_tokens is None or sampling.max_tokens > cap):
        sampling = replace(sampling, max_tokens=cap)
    return Plan(
        input=chat,
        model=model,
        route=route,
        prompt=prompt,
        sampling=sampling,
        thinking=thinking,
        parse_tools=parse_tools,
        grammar=grammar,
        thinking_budget=_thinking_budget(chat, route_settings, thinking),
        answer_grammar=answer_grammar,
        repeated_calls=(
            repeated_calls(chat.messages, guard.same_call_turns)
            if guard.enabled and parse_tools is not None
            else None
        ),
        restored_thinking=restored,
    )
