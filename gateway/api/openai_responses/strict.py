"""``strict: true`` function tools under ``tool_choice: auto``: enforced by grammar.

``required`` and named choices already get a grammar that holds every call to its schema (the
pipeline's). Under ``auto`` the model may answer or call; when a shown tool is strict and the
backend can constrain output, the grammar allows text, then calls, with strict tools' arguments
held to their schemas. Backends without grammars get the request unconstrained, as strict is a
guarantee only grammar-capable backends can give.
"""

from __future__ import annotations

from ...glm47.grammar import optional_calls_grammar
from ...pipeline.plan import Plan
from .tools import ToolSet


def constrain_strict_tools(plan: Plan, tools: ToolSet) -> None:
    chat = plan.input
    shown = list(chat.tools or ())
    strict = tools.strict & {str(t["function"]["name"]) for t in shown}
    if (
        not strict
        or plan.grammar is not None
        or not chat.offers_tools
        or chat.tool_choice.mode != "auto"
        or not plan.model.backend.supports_grammar
    ):
        return
    plan.grammar = optional_calls_grammar(
        shown, strict, thinking=plan.thinking, parallel=chat.parallel_tool_calls
    )
