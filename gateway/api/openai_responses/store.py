"""The bounded in-memory store behind ``previous_response_id``, ``GET`` and ``item_reference``.

Each entry keeps the response object and the whole conversation up to and including its
output (as items, the dicts shared with the entries before it). Bounds: a count, a byte budget
(each entry is charged the JSON size of its whole conversation, an upper bound on what it
keeps alive) and an age. The oldest entries go first.
"""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .settings import ResponsesSettings


@dataclass(frozen=True, slots=True)
class StoredResponse:
    response: Mapping[str, Any]
    # Every item of the conversation: earlier turns, this request's input, this output.
    items: tuple[Mapping[str, Any], ...]
    size: int
    stored_at: float


class ResponseStore:
    def __init__(
        self, settings: ResponsesSettings, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._max_count = settings.store_max_responses
        self._max_bytes = settings.store_max_bytes
        self._max_age = settings.store_max_age
        self._clock = clock
        self._entries: OrderedDict[str, StoredResponse] = OrderedDict()
        self._bytes = 0
        # Item id -> the response whose conversation holds it (the newest such response).
        self._items: dict[str, str] = {}

    def __len__(self) -> int:
        self._expire()
        return len(self._entries)

    @property
    def bytes(self) -> int:
        return self._bytes

    def put(self, response: Mapping[str, Any], items: Sequence[Mapping[str, Any]]) -> bool:
        """Store ``response``; False when it alone exceeds a bound (nothing is stored)."""
        size = len(json.dumps(response, ensure_ascii=False)) + len(
            json.dumps(list(items), ensure_ascii=False)
        )
        if self._max_count == 0 or size > self._max_bytes:
            return False
        response_id = str(response["id"])
        self.delete(response_id)
        entry = StoredResponse(response, tuple(items), size, self._clock())
        self._entries[response_id] = entry
        self._bytes += size
        for item in entry.items:
            item_id = item.get("id")
            if isinstance(item_id, str) and item_id:
                self._items[item_id] = response_id
        self._expire()
        while len(self._entries) > self._max_count or self._bytes > self._max_bytes:
            self._evict_oldest()
        return True

    def get(self, response_id: str) -> StoredResponse | None:
        self._expire()
        return self._entries.get(response_id)

    def delete(self, response_id: str) -> bool:
        entry = self._entries.pop(response_id, None)
        if entry is None:
            return False
        self._bytes -= entry.size
        self._forget_items(response_id, entry)
        return True

    def item(self, item_id: str) -> Mapping[str, Any] | None:
        self._expire()
        response_id = self._items.get(item_id)
        entry = self._entries.get(response_id) if response_id is not None else None
        if entry is None:
            return None
        for item in entry.items:
            if item.get("id") == item_id:
                return item
        return None

    def _forget_items(self, response_id: str, entry: StoredResponse) -> None:
        for item in entry.items:
            item_id = item.get("id")
            if isinstance(item_id, str) and self._items.get(item_id) == response_id:
                # An older response still holding the item keeps it reachable.
                holder = self._find_holder(item_id)
                if holder is None:
                    del self._items[item_id]
                else:
                    self._items[item_id] = holder

    def _find_holder(self, item_id: str) -> str | None:
        for response_id in reversed(self._entries):
            if any(item.get("id") == item_id for item in self._entries[response_id].items):
                return response_id
        return None

    def _evict_oldest(self) -> None:
        response_id = next(iter(self._entries))
        self.delete(response_id)

    def _expire(self) -> None:
        cutoff = self._clock() - self._max_age
        while self._entries:
            oldest = next(iter(self._entries.values()))
            if oldest.stored_at > cutoff:
                break
            self._evict_oldest()
