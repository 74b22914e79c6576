"""Random strings of a GBNF grammar, for testing what a constrained model may write.

Reads the subset of GBNF that ``gateway/glm47/grammar.py`` writes: literals, character classes,
rule references, groups, alternatives, and ``* + ? {m,n}``. Each sample is one random derivation;
past a depth budget every choice takes the shortest way out, so sampling always ends.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

_POOL = (
    "abcdefghijklmnopqrstuvwxyzABCDEFXYZ0123456789 _-+.,:;!?/\\\"'<>[]{}()=#"
    "\n\t\r\x00\x01\x1féü漢字😀\u3000\u00a0"
    "<<<<</arg_valuekytoc"  # (more of what starts and continues a tag: the tries get walked)
)
_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", "\\": "\\", '"': '"', "]": "]", "[": "[", "-": "-"}
_ESCAPES |= {"^": "^", "/": "/"}


@dataclass
class _Lit:
    text: str


@dataclass
class _Class:
    negated: bool
    ranges: list[tuple[str, str]]
    _choices: list[str] | None = None

    def matches(self, ch: str) -> bool:
        inside = any(lo <= ch <= hi for lo, hi in self.ranges)
        return inside != self.negated

    def choices(self) -> list[str]:
        if self._choices is None:
            self._choices = [ch for ch in _POOL if self.matches(ch)]
        return self._choices


@dataclass
class _Ref:
    name: str


@dataclass
class _Repeat:
    item: _Node
    low: int
    high: int | None


@dataclass
class _Alt:
    options: list[list[_Node]]


_Node = _Lit | _Class | _Ref | _Repeat | _Alt


class _Reader:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def skip(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos] in " \t":
            self.pos += 1

    def peek(self) -> str:
        self.skip()
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def char(self) -> str:
        ch = self.text[self.pos]
        self.pos += 1
        if ch != "\\":
            return ch
        code = self.text[self.pos]
        self.pos += 1
        if code == "x":
            value = int(self.text[self.pos : self.pos + 2], 16)
            self.pos += 2
            return chr(value)
        if code == "u":
            value = int(self.text[self.pos : self.pos + 4], 16)
            self.pos += 4
            return chr(value)
        return _ESCAPES[code]

    def alternatives(self) -> _Alt:
        options = [self.sequence()]
        while self.peek() == "|":
            self.pos += 1
            options.append(self.sequence())
        return _Alt(options)

    def sequence(self) -> list[_Node]:
        items: list[_Node] = []
        while self.peek() not in ("", "|", ")"):
            items.append(self.postfix(self.atom()))
        return items

    def atom(self) -> _Node:
        ch = self.peek()
        if ch == '"':
            self.pos += 1
            out = []
            while self.text[self.pos] != '"':
                out.append(self.char())
            self.pos += 1
            return _Lit("".join(out))
        if ch == "[":
            self.pos += 1
            negated = self.text[self.pos] == "^"
            self.pos += negated
            ranges = []
            while self.text[self.pos] != "]":
                lo = self.char()
                hi = lo
                if self.text[self.pos] == "-" and self.text[self.pos + 1] != "]":
                    self.pos += 1
                    hi = self.char()
                ranges.append((lo, hi))
            self.pos += 1
            return _Class(negated, ranges)
        if ch == "(":
            self.pos += 1
            inner = self.alternatives()
            assert self.peek() == ")"
            self.pos += 1
            return inner
        match = re.compile(r"[a-zA-Z0-9-]+").match(self.text, self.pos)
        assert match, self.text[self.pos :]
        self.pos = match.end()
        return _Ref(match.group())

    def postfix(self, node: _Node) -> _Node:
        ch = self.text[self.pos] if self.pos < len(self.text) else ""
        if ch and ch in "*+?":
            self.pos += 1
            return _Repeat(node, 1 if ch == "+" else 0, 1 if ch == "?" else None)
        if ch == "{":
            end = self.text.index("}", self.pos)
            low, _, high = self.text[self.pos + 1 : end].partition(",")
            self.pos = end + 1
            return _Repeat(node, int(low), int(high) if high else int(low))
        return node


class GBNFSampler:
    def __init__(self, grammar: str) -> None:
        self.rules: dict[str, _Alt] = {}
        for line in grammar.splitlines():
            if line.strip():
                name, _, body = line.partition(" ::= ")
                self.rules[name.strip()] = _Reader(body).alternatives()
        self._shortest = self._shortest_lengths()

    def _shortest_lengths(self) -> dict[str, int]:
        """The length of each rule's shortest string (a fixpoint over the rules)."""
        best = dict.fromkeys(self.rules, 10**9)
        changed = True
        while changed:
            changed = False
            for name, alt in self.rules.items():
                length = self._min_len(alt, best)
                if length < best[name]:
                    best[name] = length
                    changed = True
        return best

    def _min_len(self, node: _Node | list[_Node], best: dict[str, int]) -> int:
        if isinstance(node, list):
            return sum(self._min_len(item, best) for item in node)
        if isinstance(node, _Lit):
            return len(node.text)
        if isinstance(node, _Class):
            return 1
        if isinstance(node, _Ref):
            return best[node.name]
        if isinstance(node, _Repeat):
            return node.low * self._min_len(node.item, best) if node.low else 0
        return min(self._min_len(option, best) for option in node.options)

    def sample(self, rng: random.Random, start: str = "root", budget: int = 40) -> str:
        out: list[str] = []
        self._emit(_Ref(start), rng, budget, out)
        return "".join(out)

    def _emit(self, node: _Node, rng: random.Random, budget: int, out: list[str]) -> None:
        if isinstance(node, _Lit):
            out.append(node.text)
        elif isinstance(node, _Class):
            out.append(rng.choice(node.choices()))
        elif isinstance(node, _Ref):
            self._emit(self.rules[node.name], rng, budget - 1, out)
        elif isinstance(node, _Repeat):
            high = node.high if node.high is not None else node.low + 6
            count = node.low if budget <= 0 else rng.randint(node.low, high)
            for _ in range(count):
                self._emit(node.item, rng, budget - 1, out)
        else:
            options = node.options
            if budget <= 0:
                lengths = [self._min_len(option, self._shortest) for option in options]
                options = [o for o, n in zip(options, lengths, strict=True) if n == min(lengths)]
            for item in rng.choice(options):
                self._emit(item, rng, budget - 1, out)
