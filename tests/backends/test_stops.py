"""Stop strings for backends without their own: the text up to the first stop string, fed in
any pieces; nothing that may still become a stop string goes out early."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from backends.stops import StopMatcher

ALPHABET = "<|ab>u/"


def _reference(text: str, stops: list[str]) -> tuple[str, str | None]:
    hits = [(text.find(s), i, s) for i, s in enumerate(stops) if s and s in text]
    if not hits:
        return text, None
    at, _, stop = min(hits)
    return text[:at], stop


@settings(max_examples=1500, deadline=None, derandomize=True, database=None)
@given(
    pieces=st.lists(st.text(alphabet=ALPHABET, max_size=6), max_size=30),
    stops=st.lists(st.text(alphabet=ALPHABET, min_size=1, max_size=8), max_size=4),
)
def test_fed_in_pieces_it_matches_a_search_of_the_whole_text(
    pieces: list[str], stops: list[str]
) -> None:
    matcher = StopMatcher(stops)
    text = "".join(pieces)
    expected, stop = _reference(text, stops)
    out = ""
    for piece in pieces:
        out += matcher.feed(piece)
        # What went out is final: it is a prefix of the answer.
        assert expected.startswith(out), (out, expected)
    out += matcher.flush()
    assert out == expected
    assert matcher.stopped == (stop is not None)
    if stop is not None:
        # The one that starts first (of those starting there, the first listed).
        assert matcher.matched is not None and text[len(expected) :].startswith(matcher.matched)


def test_text_without_a_stop_character_is_released_at_once() -> None:
    matcher = StopMatcher(["<|user|>", "<|observation|>"])
    assert matcher.feed("Hello, world") == "Hello, world"
    assert matcher.feed(" <|us") == " "
    assert matcher.feed("er|> more") == ""
    assert matcher.stopped and matcher.matched == "<|user|>"


def test_the_longest_partial_stop_is_held_whatever_came_before() -> None:
    for before in ("", "x", "xyz", "a much longer piece of text"):
        matcher = StopMatcher(["<|user|>", "</x>"])
        assert matcher.feed(before + "<|user|") == before
        assert matcher.feed("!") == "<|user|!"
        assert not matcher.stopped


def test_a_partial_stop_shorter_than_the_longest_is_held_from_the_start() -> None:
    matcher = StopMatcher(["<|user|>"])
    assert matcher.feed("<|") == ""
    assert matcher.feed("us") == ""
    assert matcher.feed("er|>") == ""
    assert matcher.stopped
