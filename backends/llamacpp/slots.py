"""The engine's sequences and where a new request goes.

Each sequence (a llama.cpp seq id in the one unified KV cache) remembers exactly the tokens
whose KV entries it holds, prompt and generated tokens alike, so a follow-up turn reuses the
longest common prefix token for token. Placement never trusts anything but that match: the
conversation key only breaks ties.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

# A prefix shorter than this is not worth a sequence of its own (a shared "[gMASK]<sop>" or
# chat-template header): such a request is placed as unrelated.
MIN_USEFUL_PREFIX = 16
# Sharing another sequence's entries costs no compute in a unified cache (the cells gain a
# sequence id), so a few tokens are worth it.
MIN_SHARED_PREFIX = 4
_BLOCK = 256


@dataclass(slots=True)
class Slot:
    seq_id: int
    # Tokens whose KV entries this sequence holds, in position order from 0.
    tokens: list[int] = field(default_factory=list)
    # How many of ``tokens`` were read as prompt in whole n_batch-aligned chunks, each in a
    # step of its own: entries a fresh read would compute bit for bit the same (see engine).
    exact: int = 0
    # The engine's request counter when this sequence last served one (recency).
    last_used: int = 0
    conversation_key: str | None = None
    busy: bool = False

    def value(self, now: int) -> float:
        """What evicting this sequence's cache would cost: its size, discounted by age."""
        return len(self.tokens) / _age_discount(now - self.last_used)


@dataclass(frozen=True, slots=True)
class Placement:
    slot: Slot
    # Tokens of the slot's own cache that match the prompt.
    common: int
    # Another sequence holding a longer prefix, to copy it from (llama_memory_seq_cp).
    share_from: Slot | None = None
    share_len: int = 0


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    # Whole blocks first, compared at C speed (lists against lists): an agent's prompts share
    # a system prompt and tools of many thousand tokens with every cached sequence and state.
    while i + _BLOCK <= n and a[i : i + _BLOCK] == b[i : i + _BLOCK]:
        i += _BLOCK
    while i < n and a[i] == b[i]:
        i += 1
    return i


def place(
    slots: Sequence[Slot], prompt: Sequence[int], key: str | None, now: int
) -> Placement | None:
    """The free sequence for ``prompt``, or None when every sequence is busy.

    Every free sequence can offer the longest prefix any sequence holds (its own, or shared
    from the one holding it), so the choice is by what it would throw away: the tokens past
    its own match, discounted by age. An empty or stale sequence takes a side request; a long
    conversation is kept while a cheaper sequence exists, and a follow-up turn finds its own
    conversation, which loses nothing. A prompt a sequence holds whole goes back to it. The
    conversation key only breaks ties.
    """
    free = [s for s in slots if not s.busy]
    if not free:
        return None
    matches = {s.seq_id: common_prefix(s.tokens, prompt) for s in slots}
    donor = max(slots, key=lambda s: matches[s.seq_id])
    longest = matches[donor.seq_id]

    def cost(s: Slot) -> tuple[bool, float, bool, int]:
        own = matches[s.seq_id]
        # A sequence holding the whole prompt is this request asked again (a retry, a turn
        # regenerated, a rewind): it goes back there, its previous answer replaced (and kept
        # in the RAM cache), rather than to another sequence that would copy the prompt and
        # leave that answer resident: every step attends over all resident cells, and four
        # copies of one short exchange made a single stream 4-20% slower.
        again = own == len(prompt)
        useful = own if own >= MIN_USEFUL_PREFIX else 0
        lost = (len(s.tokens) - useful) / _age_discount(now - s.last_used)
        return (not again, lost, not _same(s, key), -own)

    best = min(free, key=cost)
    common = matches[best.seq_id]
    if longest >= max(common + 1, MIN_SHARED_PREFIX):
        return Placement(best, common, donor, longest)
    return Placement(best, common)


def pending_overlap(prompt: Sequence[int], reading: Sequence[Sequence[int]]) -> int:
    """The longest prefix ``prompt`` shares with a prompt another sequence is still reading."""
    return max((common_prefix(p, prompt) for p in reading), default=0)


def _age_discount(age: int) -> float:
    """Squared, so the conversation served last outweighs an older one several times its size:
    a side request must not land on the turn an agent is about to continue, while a long
    conversation idle for a few requests still beats a short stale one."""
    return float((1 + max(age, 0)) ** 2)


def _same(slot: Slot, key: str | None) -> bool:
    return key is not None and slot.conversation_key == key
