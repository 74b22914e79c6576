#!/usr/bin/env bash
# Builds the llama-cpp-python wheel the project installs, with the flags of llama-cpp-build.sh
# (for this CPU, without llama.cpp's crashing AMX kernels), and prints its path. Idempotent:
# the wheel is cached under ~/.cache/glm-gateway/llama-cpp-python/<version>-<key>/, the key
# naming the CPU and flags it was built for. pip's own wheel cache is not used: it keys a
# build by the package alone, not by CMAKE_ARGS or the CPU. A few minutes on 2 cores the
# first time. Extra CMake arguments (a GPU build: -DGGML_CUDA=on) go in CMAKE_ARGS.
#
#   usage: build-llama-cpp-python.sh [PYTHON]   (the interpreter that runs pip; python3)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=llama-cpp-build.sh
. "$here/llama-cpp-build.sh"
python="${1:-python3}"
root="${GLM_GATEWAY_CACHE:-$HOME/.cache/glm-gateway}/llama-cpp-python/$llama_cpp_version-$(llama_cpp_key)"
find_wheel() { [ -d "$root" ] && find "$root" -maxdepth 1 -name 'llama_cpp_python-*.whl' | head -n1 || true; }
wheel=$(find_wheel)
if [ -n "$wheel" ]; then
  echo "$wheel"
  exit 0
fi
mkdir -p "$root"
exec 9>"$root/.lock"
flock 9
wheel=$(find_wheel)
if [ -n "$wheel" ]; then
  echo "$wheel"
  exit 0
fi
# In the cache directory, so that the wheel appears there whole (a rename, not a copy).
tmp=$(mktemp -d "$root/.build.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
echo "building llama-cpp-python $llama_cpp_version into $root ..." >&2
CMAKE_ARGS="-DCMAKE_C_FLAGS='$llama_cpp_cflags' -DCMAKE_CXX_FLAGS='$llama_cpp_cflags' ${CMAKE_ARGS:-}" \
  CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}" \
  "$python" -m pip wheel -q --no-deps --no-cache-dir --no-binary llama-cpp-python \
  -w "$tmp" "llama-cpp-python==$llama_cpp_version" >&2
built=$(find "$tmp" -maxdepth 1 -name 'llama_cpp_python-*.whl' | head -n1)
mv "$built" "$root/"
find_wheel
