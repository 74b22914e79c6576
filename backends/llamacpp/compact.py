"""Moving short sequences' KV cells down into the holes dropped caches leave.

Every step attends over the unified cache's cells up to the highest one in use, the others'
masked. A sequence's cells are wherever its tokens were decoded: short streams running beside
a long prompt end up with cells above it, so once that prompt's cache is dropped (to the RAM
cache, or overwritten) they keep every step as wide as before: +21% per token for one stream
on SmolLM2 after three such streams were left above a dropped 4k prompt. llama.cpp has no call
that moves cells, but a sequence's state saved and set again lands in the lowest free cells
(``llama_state_seq_set_data`` searches from the cache's head, which dropping cells lowered),
bit for bit the same entries, so it is still reused in place.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .model import LoadedModel
from .slots import Slot

# Sequences shorter than this are moved, once this many cells were dropped: moving copies a
# sequence's entries out and back, which for a few hundred tokens takes less than a step.
COMPACT_BELOW = 256


def compact(model: LoadedModel, slots: Sequence[Slot]) -> list[Slot]:
    """Saves, drops and sets again each slot's state; the slots whose state did not go back.

    Those have an empty cache. A slot whose state cannot be saved stays where it is. All are
    dropped before any is set again, so each lands as low as the others leave room for."""
    saved: list[tuple[Slot, Any, int]] = []
    for slot in slots:
        size = model.state_size(slot.seq_id)
        state = model.state_save(slot.seq_id, size) if size > 0 else None
        if state is not None:
            saved.append((slot, *state))
    for slot, _, _ in saved:
        model.seq_rm(slot.seq_id, 0)
    lost: list[Slot] = []
    for slot, data, nbytes in saved:
        if not model.state_load(slot.seq_id, data, nbytes):
            model.seq_rm(slot.seq_id, 0)
            slot.tokens = []
            slot.exact = 0
            lost.append(slot)
    return lost
