"""The host-RAM store of sequence states: matching by tokens, budget, what goes first."""

from __future__ import annotations

from backends.llamacpp.slots import MIN_USEFUL_PREFIX
from backends.llamacpp.state_cache import StateCache

SYSTEM = list(range(100, 100 + MIN_USEFUL_PREFIX))


def test_a_state_is_offered_only_for_a_longer_useful_prefix() -> None:
    cache = StateCache(1000)
    conversation = [*SYSTEM, 1, 2, 3, 4, 5, 6, 7, 8]
    cache.add(conversation, 0, b"x", 10, last_used=1, now=1)
    follow_up = [*conversation, 9, 10]
    match = cache.match(follow_up, have=0)
    assert match is not None and match.length == len(conversation)
    # The KV cache already offers nearly as much: not worth a copy.
    assert cache.match(follow_up, have=len(conversation) - 1) is None
    # Another conversation with the same system prompt gets its prefix, never the rest.
    other = cache.match([*SYSTEM, 1, 2, 3, 4, 99, 98], have=0)
    assert other is not None and other.length == len(SYSTEM) + 4
    assert cache.match([7, *SYSTEM], have=0) is None


def test_a_state_is_copied_in_only_when_small_for_what_it_gives() -> None:
    cache = StateCache(10_000)
    short = [1, 2, 3, 4, 5, 6, *range(200, 240)]
    cache.add(short, 0, b"x", 10, last_used=1, now=1)
    # Six tokens of a 46-token state: a short conversation's follow-up gets them back.
    match = cache.match([*short[:6], 99], have=0)
    assert match is not None and match.length == 6
    assert cache.match([*short[:6], 99], have=3) is None  # only 3 more than the KV cache
    long = [7, 8, 9, 10, 11, 12, *range(300, 700)]
    cache.add(long, 0, b"y", 10, last_used=1, now=1)
    assert cache.match([*long[:6], 99], have=0) is None  # a header's worth of 406 tokens
    assert cache.match([*long[:25], 99], have=0) is None  # 25 * 16 < 406
    match = cache.match([*long[:26], 99], have=0)
    assert match is not None and match.length == 26 and match.state.tokens == long


def test_budget_keeps_the_most_valuable_states() -> None:
    cache = StateCache(30)
    old_long = [1, *SYSTEM, *range(40)]
    recent_short = [2, *SYSTEM]
    cache.add(old_long, 0, b"a", 10, last_used=1, now=1)
    cache.add(recent_short, 0, b"b", 10, last_used=9, now=9)
    cache.add([3, *SYSTEM, 5], 0, b"c", 10, last_used=10, now=10)
    assert cache.nbytes == 30 and len(cache) == 3
    cache.add([4, *SYSTEM, 6], 0, b"d", 10, last_used=11, now=11)
    # The old long state is worth least now (57 tokens / age 11 against 17 / age 3).
    assert cache.nbytes == 30 and len(cache) == 3
    assert not cache.covers(old_long) and cache.covers(recent_short)
    cache.add([5], 0, b"e", 31, last_used=12, now=12)  # larger than the budget: not kept
    assert len(cache) == 3


def test_a_longer_state_of_the_same_conversation_replaces_the_shorter() -> None:
    cache = StateCache(100)
    turn1 = [*SYSTEM, 1, 2]
    cache.add(turn1, 0, b"a", 10, last_used=1, now=1)
    assert cache.covers(turn1[:-1])
    cache.add([*turn1, 3, 4], 0, b"b", 12, last_used=2, now=2)
    assert len(cache) == 1 and cache.nbytes == 12


def test_a_state_restored_whole_leaves_the_store() -> None:
    cache = StateCache(100)
    conversation = [*SYSTEM, 1, 2]
    branch = [*SYSTEM, 7, 8]
    cache.add(conversation, 0, b"a", 10, last_used=1, now=1)
    cache.add(branch, 0, b"b", 10, last_used=1, now=1)
    partial = cache.match([*SYSTEM, 1, 5], have=0)
    assert partial is not None
    cache.restored(partial, now=3)
    assert len(cache) == 2  # the rest of it belongs to a turn still to come
    whole = cache.match([*conversation, 3], have=0)
    assert whole is not None
    cache.restored(whole, now=4)
    assert len(cache) == 1 and cache.hits == 2 and cache.nbytes == 10


def test_common_prefix_across_block_boundaries() -> None:
    from backends.llamacpp.slots import common_prefix

    base = list(range(1000))
    for cut in (0, 1, 255, 256, 257, 511, 512, 999):
        other = [*base[:cut], -1, *base[cut + 1 :]]
        assert common_prefix(base, other) == cut
    assert common_prefix(base, base[:700]) == 700
    assert common_prefix(base[:3], base) == 3
    assert common_prefix([], base) == 0
