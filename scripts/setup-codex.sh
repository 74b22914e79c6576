#!/usr/bin/env bash
# Installs the real Codex CLI from npm for tests/clients/test_codex_cli.py. The npm package
# ships a static musl binary (the platform package @openai/codex-linux-x64 or -arm64) behind a
# small node launcher, so nothing is downloaded when the tests run.
#
# Idempotent: a prefix whose binary already reports the pinned version is left alone. Prints the
# binary's path on stdout, and nothing else there, so `CODEX_BIN=$(bash scripts/setup-codex.sh)`
# works; progress goes to stderr.
#
#   CODEX_PREFIX  where to install it (default: ~/.cache/glm-gateway/npm/codex)
set -euo pipefail

version=0.171.0
prefix=${CODEX_PREFIX:-$HOME/.cache/glm-gateway/npm/codex}

# The npm launcher (node) execs the native binary with the environment that lets it find its
# bundled resources (bwrap for the Linux sandbox, rg), so tests run the launcher.
find_binary() {
  local launcher="$prefix/node_modules/.bin/codex"
  [ -x "$launcher" ] && echo "$launcher"
}

binary=$(find_binary || true)
if [ -n "$binary" ] && "$binary" --version 2>/dev/null | grep -q " $version\$"; then
  echo "Codex $version is already installed in $prefix" >&2
  echo "$binary"
  exit 0
fi

if ! command -v npm >/dev/null 2>&1; then
  echo "error: npm is needed to install @openai/codex" >&2
  exit 1
fi
echo "Installing @openai/codex@$version into $prefix ..." >&2
mkdir -p "$prefix"
npm install --prefix "$prefix" --no-audit --no-fund --loglevel=error \
  "@openai/codex@$version" >&2
binary=$(find_binary || true)
if [ -z "$binary" ]; then
  echo "error: the Codex binary was not found under $prefix after npm install" >&2
  exit 1
fi
"$binary" --version >&2
echo "$binary"
