"""The engine thread's hand-over of one job's output to the event loop."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from backends.base import Chunk, Finished
from backends.llamacpp.outbox import EAGER, Outbox


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Loop:
    """Stands in for ``call_soon_threadsafe``: records each hand-over (a loop wake-up)."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.wakes: list[list[Any]] = []
        self.times: list[float] = []
        self.closed = False

    def call_soon_threadsafe(self, deliver: Any, items: list[Any]) -> None:
        if self.closed:
            raise RuntimeError("Event loop is closed")
        self.times.append(self.clock.now)
        deliver(items)


def make(interval: float) -> tuple[Outbox, Loop, Clock, list[int]]:
    clock = Clock()
    loop, closed = Loop(clock), []
    box = Outbox(loop, loop.wakes.append, interval, lambda: closed.append(1), clock)  # type: ignore[arg-type]
    return box, loop, clock, closed


def tokens_every(box: Outbox, clock: Clock, dt: float, texts: str) -> None:
    for t in texts:
        box.put(Chunk(t))
        clock.now += dt


def test_the_first_chunks_go_one_by_one_and_the_rest_in_groups() -> None:
    box, loop, clock, _ = make(0.040)
    text = "abcdefghijklmnop"
    tokens_every(box, clock, 0.010, text)
    texts = [[c.text for c in w] for w in loop.wakes]
    assert texts[:EAGER] == [[t] for t in text[:EAGER]]
    # Every hand-over is one merged chunk; several tokens in each after the first ones.
    assert all(len(w) == 1 for w in loop.wakes)
    assert len(loop.wakes) - EAGER <= (len(text) - EAGER) / 3
    held = "".join(c.text for c in box._held)
    assert "".join(t for w in texts for t in w) + held == text
    assert sum(c.tokens for w in loop.wakes for c in w) + len(box._held) == len(text)


def test_held_text_never_waits_past_the_interval_at_a_steady_rate() -> None:
    interval, dt = 0.040, 0.0085
    box, loop, clock, _ = make(interval)
    tokens_every(box, clock, dt, "x" * 200)
    gaps = [b - a for a, b in zip(loop.times, loop.times[1:], strict=False)]
    assert max(gaps) <= interval + 1e-9
    # Several tokens per wake-up, which is the point.
    assert len(loop.times) <= 200 / 3


def test_anything_but_text_goes_at_once_and_takes_the_held_text_first() -> None:
    box, loop, clock, _ = make(0.040)
    tokens_every(box, clock, 0.001, "x" * EAGER + "abc")
    assert len(loop.wakes) == EAGER
    end = Finished("stop", 3, 3)
    box.put(end)
    assert [c.text for c in loop.wakes[-1][:-1]] == ["abc"]
    assert loop.wakes[-1][-1] is end
    assert box._held == []


def test_flush_hands_over_what_is_held() -> None:
    box, loop, clock, _ = make(1.0)
    tokens_every(box, clock, 0.001, "x" * EAGER + "bc")
    assert len(loop.wakes) == EAGER
    box.flush()
    assert [c.text for c in loop.wakes[EAGER]] == ["bc"]
    assert loop.wakes[EAGER][0].tokens == 2
    box.flush()  # nothing held: no wake-up
    assert len(loop.wakes) == EAGER + 1


def test_interval_zero_hands_over_every_token() -> None:
    box, loop, clock, _ = make(0.0)
    tokens_every(box, clock, 0.0, "abcd")
    assert [[c.text for c in w] for w in loop.wakes] == [["a"], ["b"], ["c"], ["d"]]


def test_a_closed_loop_is_reported_once_and_nothing_more_is_sent() -> None:
    box, loop, _, closed = make(0.0)
    loop.closed = True
    box.put(Chunk("a"))
    box.put(Chunk("b"))
    assert closed == [1]


@pytest.mark.parametrize("interval", [0.0, 0.005])
def test_a_real_loop_gets_every_item_in_order_from_another_thread(interval: float) -> None:
    async def main() -> list[Any]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()

        def deliver(items: list[Any]) -> None:
            for item in items:
                queue.put_nowait(item)

        box = Outbox(loop, deliver, interval, lambda: None)

        def engine() -> None:
            for i in range(300):
                box.put(Chunk(f"{i},"))
            box.put(Finished("length", 1, 300))

        thread = threading.Thread(target=engine)
        thread.start()
        got = []
        while not isinstance(item := await queue.get(), Finished):
            got.append(item)
        thread.join()
        return got

    got = asyncio.run(main())
    assert "".join(c.text for c in got) == "".join(f"{i}," for i in range(300))
    assert sum(c.tokens for c in got) == 300
