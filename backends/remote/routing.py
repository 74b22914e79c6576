"""Which replica serves a request: conversation affinity under a bounded load, or least loaded.

Engines such as vLLM and SGLang cache prompt prefixes per replica. A conversation that hops
between replicas makes each one re-read its whole prompt, so with affinity the requests of one
conversation (one ``GenerationRequest.conversation_key``) go to the replica that served it
before. Two rules bound that:

- Load: a replica takes a request by affinity only while it stays within
  ``ceil((1 + balance) * (in flight + 1) / healthy replicas)``: the bounded-load rule of
  consistent hashing with bounded loads. A burst from one key spills to the least-loaded
  replica once its own is at the bound; the key keeps its replica for later requests.
- Health: a key whose replica is unhealthy (or already failed this request) moves to the
  least-loaded healthy one, which becomes its replica from then on.

Without a conversation key from the API layer, the key is a hash of the prompt's stable prefix
(``GenerationRequest.stable_prefix``: for GLM, the system prompt, the tools and the first user
message, which no later turn changes); a request with neither has no key.

A new key goes to the least-loaded replica. The table of keys is bounded (least recently used
keys are forgotten first); a forgotten key is simply a new key again.

Least loaded: the fewest requests in flight; ties are broken in turn so idle replicas share
the work.
"""

from __future__ import annotations

import hashlib
import itertools
import math
from collections import OrderedDict
from collections.abc import Collection, Sequence

from ..base import GenerationRequest
from .replicas import ReplicaState

# Enough for every live conversation of a busy deployment; an entry is a key and an int.
DEFAULT_KEYS = 65_536


class Router:
    def __init__(
        self,
        replicas: Sequence[ReplicaState],
        *,
        affinity: bool,
        balance: float = 0.25,
        max_keys: int = DEFAULT_KEYS,
    ) -> None:
        if balance < 0:
            raise ValueError("balance must be >= 0")
        self._replicas = replicas
        self.affinity = affinity
        self.balance = balance
        self._max_keys = max_keys
        self._owners: OrderedDict[str, int] = OrderedDict()
        self._turn = itertools.count()

    def pick(self, key: str | None, exclude: Collection[int] = ()) -> ReplicaState | None:
        """The replica for a request of conversation ``key``; None: no healthy replica left."""
        candidates = [s for s in self._replicas if s.healthy and s.index not in exclude]
        if not candidates:
            return None
        if not self.affinity or key is None:
            return self._least_loaded(candidates)
        owner = self._owners.get(key)
        if owner is not None:
            self._owners.move_to_end(key)
            preferred = next((s for s in candidates if s.index == owner), None)
            if preferred is not None:
                if self._within_bound(preferred):
                    preferred.affine += 1
                    return preferred
                # Over the bound: this request goes elsewhere, the conversation stays.
                return self._least_loaded(candidates)
        chosen = self._least_loaded(candidates)
        self._remember(key, chosen.index)
        return chosen

    def key(self, request: GenerationRequest) -> str | None:
        """The affinity key of ``request`` (None: affinity off, or nothing stable to go by)."""
        if not self.affinity:
            return None
        if request.conversation_key:
            return "c:" + request.conversation_key
        if request.stable_prefix > 0:
            head = request.prompt[: request.stable_prefix].encode("utf-8", "surrogatepass")
            return "p:" + hashlib.blake2b(head, digest_size=16).hexdigest()
        return None

    def owner(self, key: str) -> int | None:
        """The index of the replica ``key`` is bound to (for tests and info)."""
        return self._owners.get(key)

    def _within_bound(self, state: ReplicaState) -> bool:
        healthy = [s for s in self._replicas if s.healthy]
        total = sum(s.in_flight for s in healthy) + 1
        bound = math.ceil((1 + self.balance) * total / max(len(healthy), 1))
        return state.in_flight + 1 <= bound

    def _least_loaded(self, candidates: Sequence[ReplicaState]) -> ReplicaState:
        n = len(self._replicas)
        turn = next(self._turn) % n
        return min(candidates, key=lambda s: (s.in_flight, (s.index - turn) % n))

    def _remember(self, key: str, index: int) -> None:
        self._owners[key] = index
        self._owners.move_to_end(key)
        while len(self._owners) > self._max_keys:
            self._owners.popitem(last=False)
