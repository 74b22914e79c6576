"""Local ``$ref`` resolution for tool parameter schemas (FORMAT.md section 2, rule 6).

Pydantic and most client SDKs put every nested model and enum under ``$defs`` (or ``definitions``)
and point at it with ``{"$ref": "#/$defs/Name"}``, sometimes from the root of the parameters
schema itself. A ``$ref`` is resolved against the document it appears in: for a tool, its
``parameters`` object. Only local references (``#...``) exist for us: the gateway never fetches
anything, so a remote one is left unresolved, which the callers treat as "unconstrained".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Final
from urllib.parse import unquote

__all__ = ["UNRESOLVED", "follow_refs", "object_schema", "resolve_ref"]


class _Unresolved:
    __slots__ = ()

    def __repr__(self) -> str:
        return "UNRESOLVED"


UNRESOLVED: Final = _Unresolved()

# A chain of ``$ref`` to ``$ref`` this long is a cycle in all but name.
_MAX_CHAIN = 64


def resolve_ref(ref: str, root: object) -> object:
    """The schema that ``ref`` points at inside ``root``, or ``UNRESOLVED``.

    A fragment is a JSON pointer (RFC 6901) inside a URI fragment (RFC 3986), so it is
    percent-decoded first and ``~1``/``~0`` are unescaped per token, in that order.
    """
    if not ref.startswith("#"):
        return UNRESOLVED
    pointer = unquote(ref[1:])
    if not pointer:
        return root
    if not pointer.startswith("/"):
        return UNRESOLVED  # a named anchor ("#node"): not used by the schemas we get
    node = root
    for raw in pointer[1:].split("/"):
        token = raw.replace("~1", "/").replace("~0", "~")
        if isinstance(node, Mapping):
            if token not in node:
                return UNRESOLVED
            node = node[token]
        elif isinstance(node, Sequence) and not isinstance(node, str):
            if not token.isdigit() or int(token) >= len(node):
                return UNRESOLVED
            node = node[int(token)]
        else:
            return UNRESOLVED
    return node


def follow_refs(schema: object, root: object) -> object:
    """``schema`` with a ``$ref`` at its top followed to the end of the chain.

    Siblings of a ``$ref`` are not merged: this is for finding the ``properties`` and ``required``
    of a tool's parameters, which live in the referenced object. A cycle or a dangling reference
    gives ``UNRESOLVED``.
    """
    seen: set[str] = set()
    while isinstance(schema, Mapping):
        ref = schema.get("$ref")
        if not isinstance(ref, str):
            return schema
        if ref in seen or len(seen) >= _MAX_CHAIN:
            return UNRESOLVED
        seen.add(ref)
        schema = resolve_ref(ref, root)
    return schema


def object_schema(parameters: object) -> object:
    """The schema that holds a tool's ``properties``: ``parameters``, or what its root ``$ref``
    points at when it has none of its own."""
    if isinstance(parameters, Mapping) and "properties" in parameters:
        return parameters
    return follow_refs(parameters, parameters)
