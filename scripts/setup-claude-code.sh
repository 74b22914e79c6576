#!/usr/bin/env bash
# Installs the Claude Code CLI from npm for the Anthropic Messages API tests
# (tests/gateway/test_claude_code.py, which fail under CI=1 without it).
#
# Idempotent: a prefix where the pinned version already runs is left alone. The npm package
# is a thin wrapper around a native binary (an optional dependency per platform), so nothing
# is downloaded when the tests run. Prints the binary's path on stdout, and nothing else
# there, so `CLAUDE_BIN=$(bash scripts/setup-claude-code.sh)` works; progress goes to stderr.
#
#   CLAUDE_CODE_PREFIX   where to install (default: ~/.cache/glm-gateway/npm/claude-code)
#   CLAUDE_CODE_VERSION  the version (default: 2.1.197, the newest that npm on node 20 picks)
set -euo pipefail

prefix=${CLAUDE_CODE_PREFIX:-$HOME/.cache/glm-gateway/npm/claude-code}
version=${CLAUDE_CODE_VERSION:-2.1.197}
bin="$prefix/node_modules/.bin/claude"

installed_version() {
  # `claude --version` prints e.g. "2.1.197 (Claude Code)".
  [ -x "$bin" ] && "$bin" --version 2>/dev/null | awk '{print $1}'
}

if [ "$(installed_version || true)" = "$version" ]; then
  echo "Claude Code $version is already installed in $prefix" >&2
  echo "$bin"
  exit 0
fi

if ! command -v npm >/dev/null 2>&1; then
  # As scripts/test.sh does for docker-compose: Debian's package, no recommends.
  echo "Installing nodejs and npm (Debian packages) ..." >&2
  apt-get update -qq >&2 && apt-get install -y -qq --no-install-recommends nodejs npm >&2
fi

echo "Installing @anthropic-ai/claude-code@$version into $prefix ..." >&2
mkdir -p "$prefix"
# A private package.json keeps npm from walking up into another project.
[ -f "$prefix/package.json" ] || echo '{"name": "glm-gateway-claude-code", "private": true}' \
  >"$prefix/package.json"
npm install --prefix "$prefix" --no-audit --no-fund --loglevel=error \
  "@anthropic-ai/claude-code@$version" >&2
got=$(installed_version || true)
if [ "$got" != "$version" ]; then
  echo "error: $bin does not run as Claude Code $version (got: ${got:-nothing})" >&2
  exit 1
fi
echo "$bin"
