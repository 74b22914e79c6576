"""Replica choice: conversation affinity under a bounded load (``backends.remote.routing``),
on the router alone and through the backend against fake replicas (the real-server evidence is
in ``test_vllm_real.py``: prefix-cache hits on two real vLLM replicas)."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncGenerator

import pytest

from backends.base import BackendEvent, GenerationRequest, SamplingParams, Started
from backends.remote import RemoteBackend, RemoteBackendSettings
from backends.remote.replicas import RemoteReplica, ReplicaState
from backends.remote.routing import Router
from gateway.glm47.render import render_prompt, stable_prefix_length
from gateway.settings import Settings
from tests.backends.test_remote_errors import PROMPT, FakeVllm, Opener, event, open_fake, sse


def states(n: int) -> list[ReplicaState]:
    return [ReplicaState(i, RemoteReplica(f"http://r{i}:8000"), healthy=True) for i in range(n)]


__all__ = ["open_fake"]  # the fixture, shared with test_remote_errors


def request(key: str | None = None, prompt: str = PROMPT, prefix: int = 0) -> GenerationRequest:
    return GenerationRequest(
        prompt=prompt, sampling=SamplingParams(), conversation_key=key, stable_prefix=prefix
    )


# -- the router ----------------------------------------------------------------------------


def test_a_conversation_stays_on_its_replica() -> None:
    replicas = states(3)
    router = Router(replicas, affinity=True)
    first = {k: router.pick(k) for k in ("a", "b", "c")}
    # New keys go to the least loaded in turn: three conversations, three replicas.
    assert sorted(s.index for s in first.values() if s) == [0, 1, 2]
    for _ in range(5):
        for key, state in first.items():
            assert router.pick(key) is state


def test_burst_from_one_key_spreads_at_the_bound() -> None:
    for balance in (0.0, 0.25, 1.0):
        replicas = states(2)
        router = Router(replicas, affinity=True, balance=balance)
        picks = []
        for n in range(1, 21):
            chosen = router.pick("hot")
            assert chosen is not None
            chosen.in_flight += 1
            picks.append(chosen.index)
            mean = n / len(replicas)
            # Nobody above (1 + e) x the mean in flight (rounded up: requests are whole).
            assert max(s.in_flight for s in replicas) <= math.ceil((1 + balance) * mean)
        owner = router.owner("hot")
        assert owner == picks[0]
        # The first requests stay on the conversation's replica (with any slack at all);
        # later ones spill over.
        if balance > 0:
            assert picks[:2] == [owner, owner]
        # With e = 1 two replicas never hit the bound: (1 + 1) x the mean is everything.
        assert len(set(picks)) == (1 if balance >= 1 else 2)


def test_unhealthy_replica_moves_its_conversations() -> None:
    replicas = states(2)
    router = Router(replicas, affinity=True)
    home = router.pick("a")
    assert home is not None
    home.healthy = False
    moved = router.pick("a")
    assert moved is not None and moved is not home
    # It stays on its new replica, even once the old one is back.
    home.healthy = True
    assert router.pick("a") is moved


def test_a_retry_goes_elsewhere_and_the_conversation_follows() -> None:
    replicas = states(2)
    router = Router(replicas, affinity=True)
    home = router.pick("a")
    assert home is not None
    retry = router.pick("a", exclude={home.index})
    assert retry is not None and retry is not home
    assert router.owner("a") == retry.index
    assert router.pick("a", exclude={0, 1}) is None


def test_affinity_off_is_least_loaded() -> None:
    replicas = states(2)
    router = Router(replicas, affinity=False)
    replicas[0].in_flight = 3
    assert all(router.pick("a") is replicas[1] for _ in range(3))
    assert router.key(request("a")) is None


def test_key_table_is_bounded() -> None:
    router = Router(states(2), affinity=True, max_keys=3)
    for key in "abcd":
        router.pick(key)
    assert router.owner("a") is None
    assert router.owner("d") is not None


def test_key_is_the_conversation_key_else_the_stable_prefix() -> None:
    router = Router(states(2), affinity=True)
    tools = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
    turn1 = [{"role": "system", "content": "S"}, {"role": "user", "content": "Plan a trip."}]
    turn2 = [
        *turn1,
        {"role": "assistant", "content": "Where to?", "reasoning_content": "Ask."},
        {"role": "user", "content": "Oslo."},
    ]
    other = [turn1[0], {"role": "user", "content": "Write a poem."}]
    p1, p2, p3 = (render_prompt(m, tools=tools) for m in (turn1, turn2, other))
    k1, k2, k3 = (
        router.key(request(prompt=p, prefix=stable_prefix_length(p))) for p in (p1, p2, p3)
    )
    assert k1 is not None and k1 == k2 != k3
    # The prefix ends with the first user message; later turns only append.
    assert p1[: stable_prefix_length(p1)].endswith("Plan a trip.")
    assert router.key(request("sess-1", prompt=p1, prefix=10)) == "c:sess-1"
    assert router.key(request(prompt=p1)) is None
    assert stable_prefix_length("[gMASK]<sop>") == 0


# -- through the backend, on fake replicas -------------------------------------------------


def hanging(fake: FakeVllm) -> None:
    for name in fake.replicas:
        fake[name].completion = lambda r: fake[r.url.host].stream(
            sse(event("Hi", ids=1)), hang=True
        )


def served_by(fake: FakeVllm) -> list[int]:
    return [len(fake[n].completions()) for n in fake.replicas]


async def test_default_routing_is_affinity_with_several_replicas() -> None:
    assert FakeVllm(2).backend().router.affinity
    assert not FakeVllm(1).backend().router.affinity
    config = {"type": "vllm", "model": "m", "replicas": [{"url": "http://a"}, {"url": "http://b"}]}
    off = RemoteBackend.from_settings(
        RemoteBackendSettings(**{**config, "routing": "least-loaded"})
    )
    assert not off.router.affinity
    # The old type name still reads, as the remote backend on vLLM.
    settings = Settings.model_validate({"models": [{"id": "x", "backend": config}]})
    backend = settings.models[0].backend
    assert isinstance(backend, RemoteBackendSettings) and backend.engine == "vllm"


async def test_conversations_stick_to_replicas_through_the_backend(open_fake: Opener) -> None:
    fake = await open_fake(2)
    backend = fake.backend()
    await backend.start()
    homes: dict[str, int] = {}
    for _ in range(3):
        for key in ("a", "b", "c", "d"):
            before = served_by(fake)
            events = [e async for e in backend.generate(request(key))]
            assert isinstance(events[0], Started)
            (where,) = [
                i for i, (x, y) in enumerate(zip(before, served_by(fake), strict=True)) if x != y
            ]
            assert homes.setdefault(key, where) == where
    # Four conversations over two idle replicas: two each.
    assert sorted(homes.values()) == [0, 0, 1, 1]
    await backend.aclose()


async def test_burst_spreads_through_the_backend(open_fake: Opener) -> None:
    fake = await open_fake(2)
    hanging(fake)
    backend = fake.backend()
    await backend.start()
    gens: list[AsyncGenerator[BackendEvent, None]] = []
    for _ in range(8):
        gen = backend.generate(request("hot"))
        assert await anext(gen) == Started(0)
        gens.append(gen)
    loads = [r.in_flight for r in backend.replicas]
    assert sum(loads) == 8
    assert max(loads) <= math.ceil(1.25 * 8 / 2)
    assert min(loads) > 0
    await asyncio.gather(*(g.aclose() for g in gens))
    assert [r.in_flight for r in backend.replicas] == [0, 0]
    await backend.aclose()


async def test_dead_home_replica_moves_the_conversation_without_a_failure(
    open_fake: Opener,
) -> None:
    fake = await open_fake(2)
    backend = fake.backend()
    await backend.start()
    events = [e async for e in backend.generate(request("a"))]
    assert isinstance(events[0], Started)
    home = backend.router.owner("c:a")
    assert home is not None
    await fake[f"r{home}"].refuse()  # refuses connections from now on
    events = [e async for e in backend.generate(request("a"))]
    assert isinstance(events[0], Started)
    assert backend.router.owner("c:a") == 1 - home
    assert not backend.replicas[home].healthy
    await backend.aclose()


@pytest.mark.parametrize("engine", ["vllm", "llama-server", "sglang"])
def test_engine_names_replicas(engine: str) -> None:
    backend = RemoteBackend([RemoteReplica("http://a")], model="m", engine=engine)  # type: ignore[arg-type]
    assert backend.info.extra["engine"] == engine
