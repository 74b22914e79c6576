"""The backend requests of one run: the first leg, and continuations that extend it.

A continuation's prompt is the original prompt plus everything generated so far (plus, for a
thinking budget, the closing ``</think>``): an engine that reuses the longest common prefix,
generated tokens included, reads only the new suffix, so a continuation costs about what
forcing the text inside the engine would.
"""

from __future__ import annotations

from dataclasses import replace

from backends.base import GenerationRequest

from ..errors import ContextLengthExceededError
from .plan import Plan


def first_leg(plan: Plan) -> tuple[GenerationRequest, bool]:
    """The first request, and whether a thinking-budget continuation may follow it."""
    request = plan.generation_request()
    budget = plan.thinking_budget
    if budget is None:
        return request, False
    limit = request.sampling.max_tokens
    if limit is not None and limit <= budget:
        # The token limit comes first: no second leg can follow.
        return request, False
    return replace(request, sampling=replace(request.sampling, max_tokens=max(budget, 1))), True


def remaining_tokens(plan: Plan, used: int) -> int | None:
    limit = plan.sampling.max_tokens
    return None if limit is None else limit - used


def continuation(
    plan: Plan, generated: str, remaining: int | None, *, suffix: str = "", grammar: str | None
) -> GenerationRequest:
    return replace(
        plan.generation_request(),
        prompt=plan.prompt + generated + suffix,
        sampling=replace(plan.sampling, max_tokens=remaining),
        grammar=grammar,
    )


def check_room(plan: Plan, prompt_tokens: int, context: int | None) -> None:
    """A client that asked for more tokens than the context leaves gets a clear 400."""
    asked = plan.asked_max_tokens
    if asked is None or context is None or prompt_tokens <= 0:
        return
    if prompt_tokens + asked > context:
        param = plan.input.max_tokens_param
        raise ContextLengthExceededError(
            f"This model's maximum context length is {context} tokens. The prompt has "
            f"{prompt_tokens} tokens and {param} asks for {asked} more "
            f"({prompt_tokens + asked} in all). Reduce the messages or {param}.",
            param=param,
        )
