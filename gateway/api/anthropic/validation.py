"""Request validation with Anthropic-style messages (``messages.0.content.1.type: ...``).

Pydantic reports every branch of a union that failed (``content`` is a string *or* a list of
blocks; a block is one of seven types), and names the branches in its locations. The error a
client needs is the one on the branch its data took: the deepest one, located by walking the
request itself, so that branch names (which are no keys of the data) drop out.
"""

from __future__ import annotations

from typing import Any, TypeVar

import pydantic

from ...errors import InvalidRequestError

M = TypeVar("M", bound=pydantic.BaseModel)


def _data_path(body: Any, loc: tuple[Any, ...]) -> list[str | int]:
    path: list[str | int] = []
    value = body
    for n, part in enumerate(loc):
        last = n == len(loc) - 1
        if isinstance(value, list) and isinstance(part, int) and 0 <= part < len(value):
            path.append(part)
            value = value[part]
        elif isinstance(value, dict) and isinstance(part, str) and (part in value or last):
            # A missing field is the last step; anything else that is no key is a branch name.
            path.append(part)
            value = value.get(part)
    return path


def validate(model: type[M], body: dict[str, Any]) -> M:
    try:
        return model.model_validate(body)
    except pydantic.ValidationError as exc:
        raise _error(body, exc) from None


def _error(body: dict[str, Any], exc: pydantic.ValidationError) -> InvalidRequestError:
    best: tuple[list[str | int], str] | None = None
    for error in exc.errors(include_url=False):
        path = _data_path(body, tuple(error.get("loc", ())))
        if error.get("type") == "invalid_block_type":
            path = [*path, "type"]
        if best is None or len(path) > len(best[0]):
            best = (path, str(error.get("msg", "invalid value")))
    assert best is not None
    path, message = best
    param = ".".join(str(p) for p in path) or None
    return InvalidRequestError(message, param=param)
