"""Driving a loaded model through llama.cpp's own calls in the engine tests."""

from __future__ import annotations

from typing import Any

from backends.llamacpp.model import LoadedModel


def decode_all(model: LoadedModel, text: str) -> int:
    """Decodes ``text`` in sequence 0 with logits for every token; the number of rows."""
    lib: Any = model.lib
    tokens = model.tokenize(text)
    batch = lib.llama_batch_init(len(tokens), 0, 1)
    try:
        for i, token in enumerate(tokens):
            batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, i, 1
            batch.seq_id[i][0] = 0
            batch.logits[i] = True
        batch.n_tokens = len(tokens)
        assert lib.llama_decode(model.ctx, batch) == 0
    finally:
        lib.llama_batch_free(batch)
    return len(tokens)
