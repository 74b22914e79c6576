#!/usr/bin/env bash
# Sets the project up from scratch (idempotent: re-runs reuse .venv and the pip cache), then runs
# the linters, the type checker and the whole test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

# docker-compose validates the compose file without an engine (Debian's package; no recommends,
# which would pull in the whole Docker engine).
if ! command -v docker-compose >/dev/null 2>&1; then
  apt-get update -qq && apt-get install -y -qq --no-install-recommends docker-compose >/dev/null
fi

python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# llama-cpp-python is built from source for this CPU, without llama.cpp's crashing AMX kernels
# (scripts/build-llama-cpp-python.sh: minutes on 2 cores, cached), and installed before the
# project, whose requirement it then meets. The marker saves reinstalling the same wheel.
wheel=$(bash scripts/build-llama-cpp-python.sh .venv/bin/python)
if [ "$(cat .venv/.llama-cpp-wheel 2>/dev/null)" != "$wheel" ]; then
  .venv/bin/python -m pip install -q --force-reinstall --no-deps "$wheel"
  echo "$wheel" > .venv/.llama-cpp-wheel
fi
.venv/bin/python -m pip install -q -e '.[llamacpp,dev]'
bash scripts/fetch-test-models.sh
# vLLM on CPU in its own environment, for tests/backends/test_vllm_real.py (which fails under
# CI=1 without it). Idempotent: about 3 minutes the first time, instant after.
VLLM_PYTHON=$(bash scripts/setup-vllm.sh)
export VLLM_PYTHON
# llama-server built from the llama.cpp that llama-cpp-python vendors, for
# tests/backends/test_llama_server_real.py (which fails under CI=1 without it). Idempotent and
# cached: 10+ minutes on 2 cores the first time, instant after.
LLAMA_SERVER_BIN=$(bash scripts/build-llama-server.sh)
export LLAMA_SERVER_BIN
# The Claude Code CLI (npm, a native binary) for tests/gateway/anthropic/test_claude_code.py,
# which fails under CI=1 without it. Idempotent: seconds the first time, instant after.
CLAUDE_BIN=$(bash scripts/setup-claude-code.sh)
export CLAUDE_BIN
# The real Codex CLI from npm, for tests/clients/test_codex_cli.py (which fails under CI=1
# without it). Idempotent: seconds the first time, instant after.
CODEX_BIN=$(bash scripts/setup-codex.sh)
export CODEX_BIN

.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
.venv/bin/python -m pytest "$@"
