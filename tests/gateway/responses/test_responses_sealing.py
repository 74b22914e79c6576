"""encrypted_content: only the gateway that sealed it (same key) reads it, and any change shows."""

from __future__ import annotations

import pytest

from gateway.api.openai_responses.sealing import Sealer, SealError


def test_round_trip_keeps_the_text_exactly() -> None:
    sealer = Sealer()
    for text in ("", "plain", '想一想 — München 🌤\n\t"quoted"', "x" * 100_000):
        token = sealer.seal(text)
        assert text[:20] not in token or not text
        assert sealer.open(token) == text


def test_each_seal_is_different() -> None:
    sealer = Sealer()
    assert sealer.seal("same") != sealer.seal("same")


def test_any_change_is_refused() -> None:
    sealer = Sealer()
    token = sealer.seal("the model's reasoning")
    for i in range(len("glmgw1."), len(token)):
        flipped = "A" if token[i] != "A" else "B"
        changed = token[:i] + flipped + token[i + 1 :]
        with pytest.raises(SealError):
            assert sealer.open(changed) == "the model's reasoning" and changed == token


def test_another_key_is_refused_and_a_configured_key_survives_a_restart() -> None:
    token = Sealer("configured secret").seal("thinking")
    assert Sealer("configured secret").open(token) == "thinking"
    with pytest.raises(SealError, match="another key"):
        Sealer("another secret").open(token)
    with pytest.raises(SealError):
        Sealer().open(Sealer().seal("random keys differ"))


def test_foreign_tokens_are_refused() -> None:
    sealer = Sealer()
    for token in ("gAAAAABopenai-style", "glmgw1.", "glmgw1.!!!", "glmgw1.AAAA"):
        with pytest.raises(SealError):
            sealer.open(token)
