"""Host-RAM copies of evicted sequences' KV state (llama-server's ``--cache-ram``).

When a sequence's cache is about to be dropped (evicted for room, or its sequence taken by
another prompt), its state is copied out with ``llama_state_seq_get_data``; a later prompt
continuing that conversation gets it back with ``llama_state_seq_set_data`` instead of
reading it again. A state is matched by its tokens only, like the sequences themselves: a
prompt gets the entries of the longest prefix it shares with a state, and the rest of that
state is trimmed, so no prompt ever sees entries computed from tokens it does not have.
States saved from the engine's unified cache restore into any sequence.

Within ``capacity`` bytes, the least valuable state goes first: its size discounted by age,
the measure the engine evicts sequences by.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .model import LoadedModel
from .slots import MIN_SHARED_PREFIX, MIN_USEFUL_PREFIX, Slot, common_prefix

# A state is restored for a prefix at least 1/16 of its length. Reading a token is a forward
# pass; copying it in is its KV bytes (53 KiB for GLM-4.7-Flash): saving and setting 961
# tokens of SmolLM2 took 15 ms against 3.6 s to read them on 2 cores, and a GPU, faster at
# reading, still copies tens of times faster. So a short conversation's follow-up gets its
# few tokens back, while a long state is not copied in whole for a chat-template header.
COPIED_PER_TOKEN_SAVED = 16


@dataclass(slots=True)
class SavedState:
    tokens: list[int]
    # The sequence's ``exact`` count when saved (restored bytes are the bytes saved).
    exact: int
    # A ctypes uint8 array and the bytes of it llama.cpp wrote.
    data: Any
    nbytes: int
    last_used: int

    def value(self, now: int) -> float:
        return len(self.tokens) / (1 + max(now - self.last_used, 0))


@dataclass(frozen=True, slots=True)
class Match:
    state: SavedState
    # Tokens of the prompt the state holds entries for.
    length: int


class StateCache:
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.nbytes = 0
        self.hits = 0
        self.misses = 0
        self.evictions = 0
        self._states: list[SavedState] = []

    @property
    def enabled(self) -> bool:
        return self.capacity > 0

    def __len__(self) -> int:
        return len(self._states)

    def covers(self, tokens: Sequence[int]) -> bool:
        """Whether a saved state already holds ``tokens`` (or more of the same)."""
        n = len(tokens)
        return any(
            len(s.tokens) >= n and common_prefix(s.tokens, tokens) == n for s in self._states
        )

    def add(
        self, tokens: Sequence[int], exact: int, data: Any, nbytes: int, last_used: int, now: int
    ) -> None:
        if nbytes > self.capacity:
            return
        new = SavedState(list(tokens), exact, data, nbytes, last_used)
        # States this one extends are no longer needed.
        for old in [
            s for s in self._states if common_prefix(s.tokens, new.tokens) == len(s.tokens)
        ]:
            self._drop(old)
        self._states.append(new)
        self.nbytes += nbytes
        while self.nbytes > self.capacity:
            self._drop(min(self._states, key=lambda s: s.value(now)))
            self.evictions += 1

    def match(self, prompt: Sequence[int], have: int) -> Match | None:
        """The state worth restoring for ``prompt`` when the KV cache offers ``have`` tokens.

        Worth it when it gives a few tokens more and is not too large for what it gives: the
        whole state is copied in (and needs the cells) before its tail is trimmed."""
        if not self._states:
            return None
        # The longest prefix; of states giving as much, the smallest to copy.
        best = max(
            (Match(s, common_prefix(s.tokens, prompt)) for s in self._states),
            key=lambda m: (m.length, -len(m.state.tokens)),
        )
        gain = best.length - have
        if gain < MIN_SHARED_PREFIX or len(best.state.tokens) > COPIED_PER_TOKEN_SAVED * gain:
            return None
        return best

    def save(self, model: LoadedModel, slot: Slot, now: int) -> None:
        """Copies a sequence's cache to host RAM before it is dropped, if worth keeping."""
        if not self.enabled or len(slot.tokens) < MIN_USEFUL_PREFIX or self.covers(slot.tokens):
            return
        size = model.state_size(slot.seq_id)
        saved = model.state_save(slot.seq_id, size) if 0 < size <= self.capacity else None
        if saved is not None:
            self.add(slot.tokens, slot.exact, *saved, slot.last_used, now)

    def restore(self, model: LoadedModel, slot: Slot, match: Match, now: int) -> int:
        """Puts a saved state into ``slot``; the prompt tokens it holds (0 if refused)."""
        state = match.state
        model.seq_rm(slot.seq_id, 0)
        if not model.state_load(slot.seq_id, state.data, state.nbytes):
            model.seq_rm(slot.seq_id, 0)
            slot.tokens, slot.exact = [], 0
            return 0
        slot.tokens, slot.exact = list(state.tokens), state.exact
        self.restored(match, now)
        return match.length

    def restored(self, match: Match, now: int) -> None:
        self.hits += 1
        state = match.state
        if match.length >= len(state.tokens):
            # The sequence holds all of it now and saves it again if evicted.
            self._drop(state)
        else:
            # The rest is another turn of that conversation: kept for it.
            state.last_used = now

    def _drop(self, state: SavedState) -> None:
        self._states.remove(state)
        self.nbytes -= state.nbytes


def _extends(longer: Sequence[int], shorter: Sequence[int]) -> bool:
    return common_prefix(longer, shorter) == len(shorter)
