"""Weight repacking (llama.cpp's extra CPU buffer types): on by default, off on request, and
off by itself for a llama.cpp built with its AMX kernels, which crash on some machines
(llama.cpp #20824: SIGSEGV in ggml_backend_amx_mul_mat on the first product)."""

from __future__ import annotations

import ctypes
import importlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from backends.llamacpp import LlamaCppOptions
from backends.llamacpp.model import LoadedModel, use_repack
from tests.backends.lowlevel import decode_all
from tests.conftest import GLM_TINY_GGUF

TEXT = "The capital of France is Paris. The capital of Norway is Oslo. One, two, three,"


class _Lib:
    def __init__(self, info: str) -> None:
        self.info = info

    def llama_print_system_info(self) -> bytes:
        return self.info.encode()


AVX512 = "CPU : SSE3 = 1 | AVX2 = 1 | AVX512 = 1 | AVX512_VNNI = 1 | OPENMP = 1 | REPACK = 1 | "
AMX = "CPU : SSE3 = 1 | AVX2 = 1 | AVX512 = 1 | AMX_INT8 = 1 | OPENMP = 1 | REPACK = 1 | "


def test_repacking_is_on_for_a_build_without_amx(caplog: pytest.LogCaptureFixture) -> None:
    assert use_repack(_Lib(AVX512), None) is True
    assert not caplog.records


def test_a_build_with_amx_kernels_runs_without_them_and_says_why(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="glm_gateway.llamacpp"):
        assert use_repack(_Lib(AMX), None) is False
    (record,) = caplog.records
    assert "#20824" in record.getMessage()
    assert "build-llama-cpp-python.sh" in record.getMessage()


@pytest.mark.parametrize("info", [AVX512, AMX])
def test_an_explicit_choice_wins(info: str, caplog: pytest.LogCaptureFixture) -> None:
    assert use_repack(_Lib(info), True) is True
    assert use_repack(_Lib(info), False) is False
    assert not caplog.records


def _logits(model: LoadedModel) -> list[list[float]]:
    lib: Any = model.lib
    n_vocab = int(lib.llama_vocab_n_tokens(model.vocab))
    rows = []
    for row in range(decode_all(model, TEXT)):
        logits = lib.llama_get_logits_ith(model.ctx, row)
        rows.append([float(logits[i]) for i in range(n_vocab)])
    return rows


@pytest.fixture(scope="module")
def with_repack(smollm_path: Path) -> Iterator[list[list[float]]]:
    model = LoadedModel(
        LlamaCppOptions(model_path=str(smollm_path), n_ctx=512, parallel=1, repack=True)
    )
    try:
        assert model.repack is True
        yield _logits(model)
    finally:
        model.close()


@pytest.mark.engine
def test_without_repacking_the_model_computes_the_same_tokens(
    smollm_path: Path, with_repack: list[list[float]]
) -> None:
    model = LoadedModel(
        LlamaCppOptions(model_path=str(smollm_path), n_ctx=512, parallel=1, repack=False)
    )
    try:
        assert model.repack is False
        without = _logits(model)
    finally:
        model.close()
    # Other kernels, other rounding: the clear winners must be the same, and the logits close.
    clear = 0
    for a, b in zip(with_repack, without, strict=True):
        top = sorted(range(len(a)), key=a.__getitem__, reverse=True)[:2]
        if a[top[0]] - a[top[1]] > 1.0:
            clear += 1
            assert max(range(len(b)), key=b.__getitem__) == top[0]
        assert max(abs(x - y) for x, y in zip(a, b, strict=True)) < 1.0
    assert clear >= 3


@pytest.mark.engine
def test_the_setting_reaches_llama_cpp(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # glm-tiny quantized to Q4_0, a type llama.cpp repacks on AVX2 CPUs: its load log names
    # the repacked buffer only when repacking is on.
    lib: Any = importlib.import_module("llama_cpp")
    q4_0 = tmp_path / "glm-tiny-q4_0.gguf"
    params = lib.llama_model_quantize_default_params()
    params.ftype = 2  # LLAMA_FTYPE_MOSTLY_Q4_0
    rc = lib.llama_model_quantize(
        str(GLM_TINY_GGUF).encode(), str(q4_0).encode(), ctypes.byref(params)
    )
    assert rc == 0
    avx2 = "AVX2 = 1" in bytes(lib.llama_print_system_info()).decode()
    try:
        for repack in (False, True):
            capsys.readouterr()
            options = LlamaCppOptions(
                model_path=str(q4_0), n_ctx=256, parallel=1, repack=repack, verbose=True
            )
            LoadedModel(options).close()
            log = capsys.readouterr().err
            assert "model buffer size" in log  # the load log was captured
            assert ("CPU_REPACK" in log) is (repack and avx2)
    finally:
        importlib.import_module("llama_cpp._logger").set_verbose(False)
