"""GBNF grammars that force GLM-4.7 output into shape: tool calls, or JSON content.

Used for ``tool_choice`` ``required``/named and for ``response_format``. The grammar covers the
whole generated text, which begins inside the reasoning when thinking is on (the prompt already
opened ``<think>``), so it allows free reasoning up to ``</think>`` before the constrained part.

The grammars are GBNF as llama.cpp reads it; xgrammar (vLLM's structured outputs) reads the same
syntax. Tool-call arguments follow the parser's typing rules (``schema.py``): a string-only value
is raw text, any other value is JSON of the declared type.

Free text (reasoning, raw string values) is "any text that does not contain one of these tags".
Every tag starts with ``<`` and holds no other ``<``, so the language is regular and its
grammar is unambiguous: a ``<`` starts a walk down the trie of tag suffixes; each step either
leaves the trie on a character that continues no tag (back to plain text), goes one level deeper,
or restarts at a new ``<``. The last character of a tag is simply never allowed. One restriction
follows: free text cannot end with a proper prefix of a tag (such as a lone ``<``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from . import tokens
from .refs import UNRESOLVED, object_schema, resolve_ref
from .schema import JSON_STRING_LITERAL, allowed_types, enum_members, is_string_only

# The tags the parser treats as markup inside a tool call (see parser.py).
TOOL_TAGS: tuple[str, ...] = (
    tokens.TOOL_CALL_OPEN,
    tokens.TOOL_CALL_CLOSE,
    tokens.ARG_KEY_OPEN,
    tokens.ARG_KEY_CLOSE,
    tokens.ARG_VALUE_OPEN,
    tokens.ARG_VALUE_CLOSE,
)

_MAX_DEPTH = 24

_JSON_RULES = {
    "ws": '" "?',
    "json-string": r'"\"" json-char* "\""',
    "json-char": r'[^"\\\x00-\x1f] | "\\" (["\\/bfnrt] | "u" hex hex hex hex)',
    "hex": "[0-9a-fA-F]",
    # Digits are bounded: small models otherwise emit digits until the token limit.
    "json-integer": '"-"? ("0" | [1-9] [0-9]{0,15})',
    # (and the exponent: 1e999 is no float, the parser would keep it as a string)
    "json-number": 'json-integer ("." [0-9]{1,16})? ([eE] [-+]? [0-9]{1,2})?',
    "json-boolean": '"true" | "false"',
    "json-null": '"null"',
    "json-value": "json-object | json-array | json-string | json-number | json-boolean | json-null",
    "json-member": 'json-string ws ":" ws json-value',
    "json-object": '"{" ws ( json-member ( ws "," ws json-member )* )? ws "}"',
    "json-array": '"[" ws ( json-value ( ws "," ws json-value )* )? ws "]"',
}


def literal(text: str) -> str:
    """A GBNF string literal."""
    out = []
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 0x20:
            # \u with four digits: xgrammar (vLLM) reads \x greedily, so "\x01b" would be
            # U+001B there; llama.cpp reads both forms the same.
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _class_char(ch: str) -> str:
    if ch in "]\\^-[":
        return "\\" + ch
    if ch == "\n":
        return "\\n"
    return ch


@dataclass
class GrammarBuilder:
    """Collects named rules; identical definitions share one name."""

    rules: dict[str, str] = field(default_factory=dict)
    # Tags a JSON string may not contain: inside a tool call's arguments, the tool tags.
    string_without: tuple[str, ...] = ()
    _by_body: dict[str, str] = field(default_factory=dict)
    _refs: dict[tuple[int, str], str] = field(default_factory=dict)
    _expanding: dict[tuple[int, str], int] = field(default_factory=dict)
    _level: int = 0  # objects and arrays entered: a $ref met again deeper is a productive cycle

    def add(self, name: str, body: str) -> str:
        existing = self._by_body.get(body)
        if existing is not None:
            return existing
        unique = self._reserve(name)
        self.rules[unique] = body
        self._by_body[body] = unique
        return unique

    def _reserve(self, name: str) -> str:
        unique, n = name, 1
        while unique in self.rules:
            n += 1
            unique = f"{name}-{n}"
        self.rules[unique] = "json-value"  # (a placeholder until the body is known)
        return unique

    def json_base(self) -> None:
        if "json-string" in self.rules:
            return
        for name, body in _JSON_RULES.items():
            if name != "json-char" or not self.string_without:
                self.rules.setdefault(name, body)
        if self.string_without:
            # The parser would end a value at a tag in a JSON string that its position made
            # structural (FORMAT.md 2b), so such strings cannot hold the tags at all.
            chars = self.text_without(
                self.string_without, "json-chars", exclude=r'"\\\x00-\x1f', escape="json-escape"
            )
            self.rules["json-escape"] = r'"\\" (["\\/bfnrt] | "u" hex hex hex hex)'
            self.rules["json-string"] = rf'"\"" {chars} "\""'

    def render(self, root: str) -> str:
        lines = [f"root ::= {root}"]
        lines += [f"{name} ::= {body}" for name, body in self.rules.items()]
        return "\n".join(lines) + "\n"

    # -- free text -------------------------------------------------------------------------

    def text_without(
        self, tags: Iterable[str], name: str = "text", *, exclude: str = "", escape: str = ""
    ) -> str:
        """Rule for any text (possibly empty) that contains none of ``tags``.

        ``exclude``: characters (GBNF class syntax) the text may not hold either; ``escape``: a
        rule that may stand for a character anywhere (a JSON escape).
        """
        suffixes = sorted({t[1:] for t in tags})
        for tag in suffixes:
            if not tag or "<" in tag:
                raise ValueError(f"unsupported tag <{tag}")
        trie: dict[str, Any] = {}
        for suffix in suffixes:
            node = trie
            for ch in suffix[:-1]:
                node = node.setdefault(ch, {})
            node.setdefault(suffix[-1], None)  # None marks a tag's last character

        restart = f"{name}-lt"

        escapes = [escape] if escape else []

        def node_rule(node: dict[str, Any], path: str) -> str:
            excluded = "<" + "".join(node)
            leave = f"[^{exclude}{''.join(_class_char(c) for c in excluded)}]"
            alternatives = [leave, *escapes, f'"<" {restart}']
            for ch, child in sorted(node.items()):
                if child is None:
                    continue  # completing a tag is never allowed
                child_rule = node_rule(child, path + ch)
                alternatives.append(f"{literal(ch)} {child_rule}")
            rule_name = f"{name}-lt" if not path else f"{name}-lt-{len(path)}"
            if not path:
                self.rules[restart] = " | ".join(alternatives)
                return restart
            return self.add(rule_name, " | ".join(alternatives))

        node_rule(trie, "")
        plain = " | ".join([f"[^<{exclude}]", *escapes, f'"<" {restart}'])
        return self.add(name, f"( {plain} )*")

    # -- JSON by schema --------------------------------------------------------------------

    def json_for(self, schema: Any, depth: int = 0, root: Any = None) -> str:
        """Rule for a JSON value valid against ``schema`` (the common subset of JSON Schema).

        A ``$ref`` is resolved in ``root`` (by default ``schema``) and becomes a rule of its own,
        so a recursive schema gives a recursive rule.
        """
        self.json_base()
        if root is None:
            root = schema
        if depth > _MAX_DEPTH or not isinstance(schema, Mapping) or not schema:
            return "json-value"
        ref = schema.get("$ref")
        if isinstance(ref, str):
            return self._ref(ref, root, depth)
        if "const" in schema:
            return self.add("json-const", literal(_dumps(schema["const"])))
        if "enum" in schema and isinstance(schema["enum"], list) and schema["enum"]:
            body = " | ".join(literal(_dumps(v)) for v in schema["enum"])
            return self.add("json-enum", body)
        for key in ("anyOf", "oneOf"):
            options = schema.get(key)
            if isinstance(options, list) and options:
                body = " | ".join(self.json_for(o, depth + 1, root) for o in options)
                return self.add("json-union", body)
        allof = schema.get("allOf")
        if isinstance(allof, list) and len(allof) == 1:
            return self.json_for(allof[0], depth + 1, root)
        kind = schema.get("type")
        if isinstance(kind, list):
            body = " | ".join(self.json_for({**schema, "type": k}, depth + 1, root) for k in kind)
            return self.add("json-types", body)
        if kind == "object" or (kind is None and "properties" in schema):
            return self._object(schema, depth, root)
        if kind == "array":
            self._level += 1
            item = self.json_for(schema.get("items", {}), depth + 1, root)
            self._level -= 1
            body = f'"[" ws ( {item} ( ws "," ws {item} )* )? ws "]"'
            return self.add("json-array-of", body)
        return {
            "string": "json-string",
            "integer": "json-integer",
            "number": "json-number",
            "boolean": "json-boolean",
            "null": "json-null",
        }.get(str(kind), "json-value")

    def _ref(self, ref: str, root: Any, depth: int) -> str:
        key = (id(root), ref)
        name = self._refs.get(key)
        if name is not None:
            # Met again before any object or array: a cycle that never produces a value.
            return "json-value" if self._expanding.get(key) == self._level else name
        target = resolve_ref(ref, root)
        if target is UNRESOLVED:
            return "json-value"
        base = re.sub(r"[^a-zA-Z0-9]+", "-", ref.rsplit("/", 1)[-1]).strip("-").lower()
        name = self._reserve(f"ref-{base or 'root'}")
        self._refs[key] = name
        self._expanding[key] = self._level
        self.rules[name] = self.json_for(target, depth + 1, root)
        del self._expanding[key]
        return name

    def _object(self, schema: Mapping[str, Any], depth: int, root: Any) -> str:
        properties = schema.get("properties")
        if not isinstance(properties, Mapping) or not properties:
            return "json-object"
        required = set(schema.get("required") or ())
        self._level += 1
        members = [
            (
                key in required,
                f'{literal(json.dumps(key, ensure_ascii=False))} ws ":" ws '
                + self.json_for(sub, depth + 1, root),
            )
            for key, sub in properties.items()
        ]
        self._level -= 1
        return self.add("json-object-of", _sequence(members, '"{" ws', 'ws "}"', ' ws "," ws '))


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def _sequence(members: Sequence[tuple[bool, str]], open_: str, close: str, sep: str) -> str:
    """Members in schema order, required ones always present, optional ones optional.

    The separator goes before every member but the first present one. Which member comes
    first is not known in advance, so the rule branches on it: members before the first one
    present must all be optional.
    """
    if not members:
        return f"{open_} {close}"
    branches = []
    for first, (first_required, first_body) in enumerate(members):
        rest = []
        for required, body in members[first + 1 :]:
            item = f"{sep}{body}".strip()
            rest.append(f"( {item} )" if required else f"( {item} )?")
        branches.append(" ".join([first_body, *rest]))
        if first_required:
            break
    else:
        branches.append("")  # every member optional: the empty object
    alternatives = " | ".join(f"( {b} )" if b else '""' for b in branches)
    return f"{open_} ( {alternatives} ) {close}"


def _reasoning_prefix(builder: GrammarBuilder, thinking: bool, extra_tags: Sequence[str]) -> str:
    if not thinking:
        return ""
    text = builder.text_without((tokens.THINK_CLOSE, *extra_tags), "reasoning")
    return f"{text} {literal(tokens.THINK_CLOSE)} "


def _member_forms(members: Sequence[Any], nullable: bool) -> list[str] | None:
    """The verbatim texts of a string-only enum's members, or ``None`` if one cannot be written."""
    forms = []
    for member in members:
        if member is None and nullable:
            forms.append(literal("null"))
        elif not isinstance(member, str) or "<" in member:
            return None  # (tag text or a cut tag inside a raw value: left to the raw rule)
        elif nullable and (member == "null" or JSON_STRING_LITERAL.fullmatch(member)):
            forms.append(literal(_dumps(member)))  # written raw, it would be typed again
        else:
            forms.append(literal(member))
    return forms


def _argument_value(builder: GrammarBuilder, schema: Any, root: Any) -> str:
    """A value as the parser types it (``schema.py``): raw text for a string-only parameter,
    otherwise JSON of the schema, and raw text too where every way it types is allowed."""
    raw = builder.text_without(TOOL_TAGS, "raw-text")
    types = allowed_types(schema, root)
    members = enum_members(schema, root)
    if is_string_only(types):
        assert types is not None
        forms = None if members is None else _member_forms(members, "null" in types)
        return builder.add("arg-enum", " | ".join(forms)) if forms else raw
    value = builder.json_for(schema, root=root)
    # Raw text is kept as a string, or decodes to a type the schema allows: valid, unless the
    # schema constrains more than the type (members, or what an object or array holds).
    scalar_or_string = types is not None and "string" in types and not types & _CONTAINERS
    if members is None and (value == "json-value" or scalar_or_string):
        return builder.add("arg-value", f"{value} | {raw}")
    return value


_CONTAINERS = frozenset({"object", "array"})


def _call_rule(builder: GrammarBuilder, tool: Mapping[str, Any]) -> str:
    function = tool.get("function") or {}
    name = str(function.get("name", ""))
    root = function.get("parameters") or {}
    parameters = object_schema(root)  # (pydantic may put the whole model under $defs)
    if not isinstance(parameters, Mapping):
        parameters = {}
    properties = parameters.get("properties")
    required = set(parameters.get("required") or ())
    members: list[tuple[bool, str]] = []
    if isinstance(properties, Mapping):
        for key, sub in properties.items():
            opening = tokens.ARG_KEY_OPEN + key + tokens.ARG_KEY_CLOSE + tokens.ARG_VALUE_OPEN
            value = _argument_value(builder, sub, root)
            body = f"{literal(opening)} {value} {literal(tokens.ARG_VALUE_CLOSE)}"
            members.append((key in required, body))
    args = _sequence(members, "", "", " ").strip() if members else ""
    return builder.add(
        "call", f"{literal(tokens.TOOL_CALL_OPEN + name)} {args} {literal(tokens.TOOL_CALL_CLOSE)}"
    )


def tool_call_grammar(
    tools: Sequence[Mapping[str, Any]], *, thinking: bool, parallel: bool = True
) -> str:
    """Output that is (optional reasoning, then) one or more GLM tool calls of ``tools``."""
    if not tools:
        raise ValueError("a tool-call grammar needs at least one tool")
    builder = GrammarBuilder(string_without=TOOL_TAGS)
    calls = builder.add("any-call", " | ".join(_call_rule(builder, t) for t in tools))
    repeat = f"{calls}+" if parallel else calls
    return builder.render(_reasoning_prefix(builder, thinking, TOOL_TAGS[:1]) + repeat)


def json_grammar(schema: Mapping[str, Any] | None, *, thinking: bool) -> str:
    """Output that is (optional reasoning, then) one JSON value: an object, or per ``schema``."""
    builder = GrammarBuilder()
    builder.json_base()
    value = builder.json_for(schema) if schema else "json-object"
    return builder.render(_reasoning_prefix(builder, thinking, ()) + value)


def _lax_call_rule(builder: GrammarBuilder, tool: Mapping[str, Any]) -> str:
    """A well-formed call of ``tool`` with any arguments (a tool that is not strict)."""
    name = str((tool.get("function") or {}).get("name", ""))
    raw = builder.text_without(TOOL_TAGS, "raw-text")
    between = literal(tokens.ARG_KEY_CLOSE + tokens.ARG_VALUE_OPEN)
    arg = builder.add(
        "any-arg",
        f"{literal(tokens.ARG_KEY_OPEN)} {raw} {between} {raw} {literal(tokens.ARG_VALUE_CLOSE)}",
    )
    return builder.add(
        "call", f"{literal(tokens.TOOL_CALL_OPEN + name)} {arg}* {literal(tokens.TOOL_CALL_CLOSE)}"
    )


def optional_calls_grammar(
    tools: Sequence[Mapping[str, Any]],
    strict: Iterable[str],
    *,
    thinking: bool,
    parallel: bool = True,
) -> str:
    """What ``tool_choice: auto`` allows, with ``strict`` tools held to their schemas: (optional
    reasoning, then) text, then any number of calls (at most one unless ``parallel``)."""
    if not tools:
        raise ValueError("a tool-call grammar needs at least one tool")
    strict_names = set(strict)
    builder = GrammarBuilder()
    rules = [
        _call_rule(builder, t)
        if str((t.get("function") or {}).get("name")) in strict_names
        else _lax_call_rule(builder, t)
        for t in tools
    ]
    calls = builder.add("any-call", " | ".join(rules))
    text = builder.text_without(TOOL_TAGS[:1], "content")
    repeat = f"{calls}*" if parallel else f"{calls}?"
    return builder.render(_reasoning_prefix(builder, thinking, TOOL_TAGS[:1]) + f"{text} {repeat}")
