"""Reading a backend's event stream in the engine tests."""

from __future__ import annotations

from backends.base import BackendEvent, Chunk, Finished, Started


def text_of(events: list[BackendEvent]) -> str:
    return "".join(e.text for e in events if isinstance(e, Chunk))


def finish_of(events: list[BackendEvent]) -> Finished:
    last = events[-1]
    assert isinstance(last, Finished)
    return last


def started_of(events: list[BackendEvent]) -> Started:
    first = events[0]
    assert isinstance(first, Started)
    return first
