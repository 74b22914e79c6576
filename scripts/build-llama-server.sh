#!/usr/bin/env bash
# Builds llama-server from the llama.cpp that the pinned llama-cpp-python vendors (its sdist's
# vendor/llama.cpp), with the same flags as the in-process engine's wheel
# (llama-cpp-build.sh), so benchmarks compare the same kernels. Idempotent: the binary is
# cached under ~/.cache/glm-gateway/llama-server/<version>-<key>/ and its path printed on
# stdout. About 10+ minutes on 2 cores the first time; a lock lets two developers share one
# build. With --path it only prints where the binary is (or would be), building nothing.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=llama-cpp-build.sh
. "$here/llama-cpp-build.sh"
version="$llama_cpp_version"
root="${GLM_GATEWAY_CACHE:-$HOME/.cache/glm-gateway}/llama-server/$version-$(llama_cpp_key)"
binary="$root/bin/llama-server"
if [ "${1:-}" = "--path" ] || [ -x "$binary" ]; then
  echo "$binary"
  exit 0
fi
mkdir -p "$root"
exec 9>"$root/.lock"
flock 9
if [ -x "$binary" ]; then
  echo "$binary"
  exit 0
fi
src="$root/src"
if [ ! -d "$src/vendor/llama.cpp/tools/server" ]; then
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  python3 -m pip download -q --no-deps --no-binary :all: --dest "$tmp" "llama-cpp-python==$version" >&2
  rm -rf "$src"
  mkdir -p "$src"
  tar -xzf "$tmp"/llama_cpp_python-*.tar.gz -C "$src" --strip-components=1
fi
build="$root/build"
cmake -S "$src/vendor/llama.cpp" -B "$build" -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON -DGGML_NATIVE=ON \
  -DBUILD_SHARED_LIBS=OFF "-DCMAKE_C_FLAGS=$llama_cpp_cflags" "-DCMAKE_CXX_FLAGS=$llama_cpp_cflags" >&2
jobs="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}"
nice -n 10 cmake --build "$build" --target llama-server -j "$jobs" >&2
mkdir -p "$root/bin"
cp "$build/bin/llama-server" "$binary.part"
mv "$binary.part" "$binary"
echo "$binary"
