"""Responses tools -> GLM function tools, and the way back for the calls the model makes.

- ``function`` tools render as they are (``{"type": "function", "function": {...}}``).
- ``namespace`` tools (Codex's groups of function tools) are flattened to
  ``<namespace>__<name>``, Codex's own flattening for APIs without namespaces; a call comes back
  as a ``function_call`` with ``name`` and ``namespace`` apart, as Codex reads it.
- ``custom`` (freeform) tools render as a function taking one raw string, ``input``; a call
  comes back as a ``custom_tool_call`` whose ``input`` is that string.
- Hosted tools the gateway cannot run are left out of the prompt (Codex always sends
  ``web_search``); a tool type nobody knows is a 400.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from ...errors import InvalidRequestError, UnsupportedParameterError

NAMESPACE_SEPARATOR = "__"

HOSTED_TOOLS = frozenset(
    {
        "web_search",
        "web_search_preview",
        "web_search_preview_2025_03_11",
        "web_search_2025_08_26",
        "file_search",
        "code_interpreter",
        "computer_use",
        "computer_use_preview",
        "computer",
        "image_generation",
        "tool_search",
        "mcp",
        "local_shell",
        "shell",
        "apply_patch",
    }
)

CUSTOM_INPUT = "input"


@dataclass(frozen=True, slots=True)
class ToolTarget:
    """What a prompt-level tool name stands for on the wire."""

    kind: Literal["function", "custom"]
    name: str
    namespace: str | None = None


@dataclass(slots=True)
class ToolSet:
    #: GLM function tools, in the client's order.
    tools: list[dict[str, Any]] = field(default_factory=list)
    #: Prompt name -> what the client calls it.
    targets: dict[str, ToolTarget] = field(default_factory=dict)
    #: Prompt names of ``strict: true`` function tools.
    strict: set[str] = field(default_factory=set)

    def target(self, prompt_name: str) -> ToolTarget:
        return self.targets.get(prompt_name) or ToolTarget("function", prompt_name)

    def subset(self, names: Sequence[str]) -> list[dict[str, Any]]:
        keep = set(names)
        return [t for t in self.tools if t["function"]["name"] in keep]


def prompt_name(name: str, namespace: str | None) -> str:
    return f"{namespace}{NAMESPACE_SEPARATOR}{name}" if namespace else name


def _require_name(tool: Mapping[str, Any], param: str) -> str:
    name = tool.get("name")
    if not isinstance(name, str) or not name.strip():
        raise InvalidRequestError(
            "A tool must have a non-empty string 'name'.", param=f"{param}.name"
        )
    return name


def _function(tool: Mapping[str, Any], param: str, namespace: str | None) -> dict[str, Any]:
    name = _require_name(tool, param)
    parameters = tool.get("parameters")
    if parameters is not None and not isinstance(parameters, Mapping):
        raise InvalidRequestError(
            "A function tool's 'parameters' must be a JSON schema object.",
            param=f"{param}.parameters",
        )
    description = tool.get("description")
    if description is not None and not isinstance(description, str):
        raise InvalidRequestError(
            "A tool's 'description' must be a string.", param=f"{param}.description"
        )
    function: dict[str, Any] = {"name": prompt_name(name, namespace)}
    if description:
        function["description"] = description
    function["parameters"] = (
        dict(parameters) if parameters is not None else {"type": "object", "properties": {}}
    )
    return {"type": "function", "function": function}


def _custom(tool: Mapping[str, Any], param: str) -> dict[str, Any]:
    name = _require_name(tool, param)
    description = tool.get("description")
    what = "The raw input, verbatim (not JSON)."
    fmt = tool.get("format")
    if isinstance(fmt, Mapping) and fmt.get("type") == "grammar":
        definition = fmt.get("definition")
        if isinstance(definition, str) and definition:
            what += f" It must match this {fmt.get('syntax', 'lark')} grammar:\n{definition}"
    function: dict[str, Any] = {"name": name}
    if isinstance(description, str) and description:
        function["description"] = description
    function["parameters"] = {
        "type": "object",
        "properties": {CUSTOM_INPUT: {"type": "string", "description": what}},
        "required": [CUSTOM_INPUT],
    }
    return {"type": "function", "function": function}


def translate_tools(tools: Sequence[Any] | None) -> ToolSet:
    out = ToolSet()
    if not tools:
        return out

    def add(glm_tool: dict[str, Any], target: ToolTarget, param: str) -> None:
        name = glm_tool["function"]["name"]
        if name in out.targets:
            raise InvalidRequestError(f"Two tools are named {name!r}.", param=param)
        out.tools.append(glm_tool)
        out.targets[name] = target

    for i, tool in enumerate(tools):
        param = f"tools[{i}]"
        if not isinstance(tool, Mapping):
            raise InvalidRequestError("A tool must be an object.", param=param)
        kind = tool.get("type")
        if kind == "function":
            glm = _function(tool, param, None)
            add(glm, ToolTarget("function", glm["function"]["name"]), param)
            if tool.get("strict") is True:
                out.strict.add(glm["function"]["name"])
        elif kind == "namespace":
            namespace = _require_name(tool, param)
            members = tool.get("tools")
            if not isinstance(members, list):
                raise InvalidRequestError(
                    "A namespace tool must list its 'tools'.", param=f"{param}.tools"
                )
            for j, member in enumerate(members):
                member_param = f"{param}.tools[{j}]"
                if not isinstance(member, Mapping) or member.get("type") != "function":
                    raise InvalidRequestError(
                        "A namespace holds function tools only.", param=f"{member_param}.type"
                    )
                glm = _function(member, member_param, namespace)
                add(glm, ToolTarget("function", str(member["name"]), namespace), member_param)
                if member.get("strict") is True:
                    out.strict.add(glm["function"]["name"])
        elif kind == "custom":
            glm = _custom(tool, param)
            add(glm, ToolTarget("custom", glm["function"]["name"]), param)
        elif isinstance(kind, str) and kind in HOSTED_TOOLS:
            continue  # hosted: the gateway cannot run it, so the model is not offered it
        else:
            raise UnsupportedParameterError(
                f"Tools of type {kind!r} are not supported; supported: function, namespace, "
                "custom (hosted tools such as web_search are accepted and not offered).",
                param=f"{param}.type",
            )
    return out


def custom_input(arguments: str) -> str:
    """The raw input of a custom tool call from the GLM call's arguments JSON."""
    try:
        decoded = json.loads(arguments) if arguments.strip() else {}
    except ValueError:
        return arguments
    if isinstance(decoded, dict):
        value = decoded.get(CUSTOM_INPUT)
        if isinstance(value, str):
            return value
        strings = [v for v in decoded.values() if isinstance(v, str)]
        if len(decoded) == 1 and strings:
            return strings[0]
        if not decoded:
            return ""
    return arguments
