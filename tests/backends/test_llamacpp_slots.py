"""Where a new request goes among the engine's sequences (``place``), without an engine."""

from __future__ import annotations

from backends.llamacpp.slots import MIN_USEFUL_PREFIX, Slot, place

SYSTEM = list(range(1000, 1000 + 4 * MIN_USEFUL_PREFIX))
QUESTION = [7, 8, 9]
ANSWER = list(range(2000, 2040))
# A sequence holding one exchange: the prompt and its answer.
HELD = SYSTEM + QUESTION + ANSWER


def test_a_prompt_a_sequence_holds_whole_goes_back_to_it() -> None:
    # A retry or a regenerated turn: the previous answer is replaced in place, not kept
    # beside a copy of the prompt in an empty sequence.
    held = Slot(0, tokens=HELD, last_used=1)
    placement = place([held, Slot(1), Slot(2)], SYSTEM + QUESTION, None, now=2)
    assert placement is not None
    assert placement.slot is held
    assert placement.common == len(SYSTEM + QUESTION)
    assert placement.share_from is None


def test_a_follow_up_turn_goes_to_its_conversation() -> None:
    held = Slot(0, tokens=HELD, last_used=1)
    prompt = [*HELD, 5, 6]
    placement = place([Slot(1), held], prompt, None, now=2)
    assert placement is not None and placement.slot is held
    assert placement.common == len(HELD)


def test_another_question_takes_a_free_sequence_and_shares_the_prefix() -> None:
    held = Slot(0, tokens=HELD, last_used=1)
    empty = Slot(1)
    placement = place([held, empty], [*SYSTEM, 4, 5, 6], None, now=2)
    assert placement is not None and placement.slot is empty
    assert placement.share_from is held
    assert placement.share_len == len(SYSTEM)


def test_a_busy_sequence_holding_the_prompt_is_not_taken() -> None:
    held = Slot(0, tokens=HELD, last_used=1, busy=True)
    empty = Slot(1)
    placement = place([held, empty], SYSTEM + QUESTION, None, now=2)
    assert placement is not None and placement.slot is empty
    assert placement.share_from is held
