"""The response store's bounds: count, bytes and age, oldest first; item lookups follow."""

from __future__ import annotations

from typing import Any

from gateway.api.openai_responses.settings import ResponsesSettings
from gateway.api.openai_responses.store import ResponseStore


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def response(i: int, text: str = "") -> dict[str, Any]:
    return {"id": f"resp_{i}", "object": "response", "output": [], "text": text}


def item(item_id: str, text: str = "hi") -> dict[str, Any]:
    return {"id": item_id, "type": "message", "role": "user", "content": text}


def test_count_bound_evicts_the_oldest() -> None:
    store = ResponseStore(ResponsesSettings(store_max_responses=2))
    for i in range(3):
        assert store.put(response(i), [item(f"msg_{i}")])
    assert store.get("resp_0") is None
    assert store.get("resp_1") is not None and store.get("resp_2") is not None
    assert store.item("msg_0") is None and store.item("msg_2") is not None
    assert len(store) == 2


def test_byte_bound_evicts_until_it_fits_and_refuses_what_never_fits() -> None:
    store = ResponseStore(ResponsesSettings(store_max_bytes=2000))
    for i in range(5):
        assert store.put(response(i, "x" * 500), [])
    assert store.bytes <= 2000
    assert store.get("resp_0") is None and store.get("resp_4") is not None
    assert not store.put(response(9, "x" * 5000), [])
    assert store.get("resp_9") is None


def test_age_bound() -> None:
    clock = Clock()
    store = ResponseStore(ResponsesSettings(store_max_age=60), clock=clock)
    store.put(response(0), [item("msg_0")])
    clock.now += 30
    store.put(response(1), [])
    clock.now += 31
    assert store.get("resp_0") is None and store.item("msg_0") is None
    assert store.get("resp_1") is not None


def test_delete_and_shared_items() -> None:
    store = ResponseStore(ResponsesSettings())
    shared = item("msg_a")
    store.put(response(0), [shared])
    store.put(response(1), [shared, item("msg_b")])
    assert store.delete("resp_1")
    assert not store.delete("resp_1")
    # resp_0 still holds msg_a.
    assert store.item("msg_a") == shared
    assert store.item("msg_b") is None
    assert store.bytes > 0
    store.delete("resp_0")
    assert store.bytes == 0 and store.item("msg_a") is None


def test_zero_count_stores_nothing() -> None:
    store = ResponseStore(ResponsesSettings(store_max_responses=0))
    assert not store.put(response(0), [])
    assert store.get("resp_0") is None
