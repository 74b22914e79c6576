"""The default context: fitted to the memory left, from KV bytes per token measured on the model."""

from __future__ import annotations

from pathlib import Path

import pytest

from backends.llamacpp import LlamaCppBackend, LlamaCppOptions
from backends.llamacpp.fit import FIT_MIN_CTX, fit_context
from backends.llamacpp.model import LoadedModel
from backends.llamacpp.options import CacheType, FlashAttn

MIB = 1 << 20


def test_the_context_is_what_fits_aligned_and_bounded() -> None:
    per_token = 54_144  # GLM-4.7-Flash, f16 cache
    # A 24 GiB GPU with 18 GiB of weights loaded: 6 GiB free, 1 GiB kept.
    n = fit_context(per_token, 6 * 1024 * MIB, margin=1024 * MIB, n_ctx_train=202_752)
    assert n == 99_072 and n % 256 == 0 and n * per_token <= 5 * 1024 * MIB
    # A large card: the trained context is the cap.
    assert fit_context(per_token, 120 * 1024 * MIB, margin=1024 * MIB, n_ctx_train=202_752) == (
        202_752
    )
    # No room: the floor (llama-server's --fit-ctx), unless the model is trained for less.
    assert fit_context(per_token, 512 * MIB, margin=1024 * MIB, n_ctx_train=0) == FIT_MIN_CTX
    assert fit_context(per_token, 0, margin=0, n_ctx_train=2048) == 2048


@pytest.mark.parametrize(
    ("flash_attn", "cache_type", "row"),
    # glm-arch-tiny's README: 3 layers x 576 K values (MLA: no V), f16 or q8_0 blocks.
    [("off", "f16", 3456), ("on", "f16", 3456), ("on", "q8_0", 1836)],
)
def test_kv_bytes_per_token_are_measured_on_the_model(
    glm_arch_tiny_path: Path, flash_attn: FlashAttn, cache_type: CacheType, row: int
) -> None:
    options = LlamaCppOptions(
        model_path=str(glm_arch_tiny_path), flash_attn=flash_attn, cache_type_k=cache_type
    )
    model = LoadedModel(options)
    try:
        assert model.fit is not None
        # The saved state also carries each cell's position and sequences (a few bytes).
        assert row <= model.fit.kv_bytes_per_token <= row + 32
        # 4096 tokens at 3.4 KiB fit anywhere: the trained context is the cap.
        assert model.n_ctx == model.n_ctx_train == 4096
    finally:
        model.close()


async def test_a_fitted_context_is_reported(glm_tiny_path: Path) -> None:
    backend = LlamaCppBackend(LlamaCppOptions(model_path=str(glm_tiny_path), parallel=1))
    await backend.start()
    try:
        info = backend.info
        assert info.context_length == 2048  # glm-tiny's trained context
        fit = info.extra["n_ctx_fit"]
        assert isinstance(fit, dict)
        assert 4096 <= fit["kv_bytes_per_token"] <= 4096 + 32  # 4 layers, K and V of 256, f16
        assert fit["memory"] in ("host", "gpu")
    finally:
        await backend.aclose()
    pinned = LlamaCppBackend(LlamaCppOptions(model_path=str(glm_tiny_path), n_ctx=1024))
    await pinned.start()
    try:
        assert pinned.info.context_length == 1024 and "n_ctx_fit" not in pinned.info.extra
    finally:
        await pinned.aclose()
