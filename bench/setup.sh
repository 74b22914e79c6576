#!/usr/bin/env bash
# Installs what the benchmarks compare against, each in its own cached environment, so that
# none of them changes the gateway's .venv. Idempotent: what is already there is kept.
#
#   ~/.cache/glm-gateway/litellm-venv          LiteLLM proxy: pip install 'litellm[proxy]'
#   ~/.cache/glm-gateway/llamacpp-server-venv  llama-cpp-python's own server: the project's
#                                              wheel (scripts/build-llama-cpp-python.sh) with
#                                              its [server] extra
#   ~/.cache/glm-gateway/vllm-venv             vLLM on CPU: scripts/setup-vllm.sh
#   ~/.cache/glm-gateway/models/SmolLM2-...    scripts/fetch-test-models.sh
#
# and matplotlib into the project's .venv (pip install -e '.[bench]').
set -euo pipefail
cd "$(dirname "$0")/.."
cache=${GLM_GATEWAY_CACHE:-$HOME/.cache/glm-gateway}
python=${PYTHON:-python3}
project_python=${PROJECT_PYTHON:-.venv/bin/python}
mkdir -p "$cache"

"$project_python" -c 'import matplotlib' 2>/dev/null || "$project_python" -m pip install -q 'matplotlib>=3.8'

if ! [ -x "$cache/litellm-venv/bin/litellm" ]; then
  echo "installing LiteLLM into $cache/litellm-venv" >&2
  "$python" -m venv "$cache/litellm-venv"
  "$cache/litellm-venv/bin/pip" install -q 'litellm[proxy]'
fi

llama_version=$("$project_python" -c 'import importlib.metadata as m; print(m.version("llama_cpp_python"))')
if ! "$cache/llamacpp-server-venv/bin/python" -c 'import llama_cpp.server.app' 2>/dev/null; then
  echo "installing llama-cpp-python[server]==$llama_version into $cache/llamacpp-server-venv" >&2
  "$python" -m venv "$cache/llamacpp-server-venv"
  wheel=$(LLAMA_CPP_PYTHON_VERSION=$llama_version bash scripts/build-llama-cpp-python.sh "$python")
  "$cache/llamacpp-server-venv/bin/pip" install -q "llama-cpp-python[server] @ file://$wheel"
fi

bash scripts/fetch-test-models.sh
bash scripts/setup-vllm.sh >/dev/null
echo "bench environments ready under $cache" >&2
