# Sourced by build-llama-cpp-python.sh and build-llama-server.sh: one llama.cpp version and one
# set of compiler flags for both, so the in-process engine and llama-server run the same
# kernels, and one cache key that says which machine a build is for.
#
# Both build for this CPU (llama.cpp's default -march=native), but without the AMX kernels
# that -march=native turns on where the CPU has AMX: in this llama.cpp they crash in
# ggml_backend_amx_mul_mat on the first matrix product of a quantized model on some AMX
# machines (llama.cpp #20824, still open; PR #26954 names an invalid tile config as the
# cause), this project's CI machines among them. Without them the AVX-512 kernels and the
# weight repacking run as on any other AVX-512 CPU.

llama_cpp_version="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
llama_cpp_cflags=""
if [ "$(uname -m)" = "x86_64" ]; then
  llama_cpp_cflags="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
fi

# -march=native ties a build to the CPU it was built on (another one may lack an instruction
# and die with SIGILL): the key holds the CPU's feature flags with the version and the flags,
# so a cache shared between machines never hands one machine another's build.
llama_cpp_key() {
  local cpu
  cpu=$(grep -m1 -E '^(flags|Features)' /proc/cpuinfo 2>/dev/null || uname -m)
  printf '%s\n%s\n%s\n%s\n' "$llama_cpp_version" "$llama_cpp_cflags" "${CMAKE_ARGS:-}" "$cpu" |
    sha256sum | cut -c1-12
}
