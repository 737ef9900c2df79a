#!/usr/bin/env bash
# Install the compiled HTTP load generator `streamwise bench --online` drives its open-loop
# rows with: vegeta (a Go module, pinned), built with `go install` into .tools/bin. A Python
# load generator shares the two cores with the server it measures and becomes the bottleneck
# first; vegeta sends at a fixed rate whatever the answers' latency and reports its own CPU.
# Idempotent: skipped when the pinned version is already in .tools.
# Usage: scripts/load-tools.sh [--quiet]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

VEGETA_VERSION=v12.12.0
STEP_TIMEOUT_S=600

quiet=0
[ "${1:-}" = "--quiet" ] && quiet=1
say() { [ "$quiet" -eq 1 ] || echo "load-tools: $*" >&2; }

TOOLS="$PWD/.tools"
mkdir -p "$TOOLS/bin"
if [ -x "$TOOLS/bin/vegeta" ] && [ -f "$TOOLS/vegeta.version" ] && \
   [ "$(cat "$TOOLS/vegeta.version")" = "$VEGETA_VERSION" ]; then
  say "vegeta $VEGETA_VERSION already in .tools/bin"
  exit 0
fi
if ! command -v go >/dev/null; then
  echo "load-tools: needs Go (go install builds vegeta from its module)" >&2
  exit 1
fi
say "building vegeta $VEGETA_VERSION (go install, about 20 s)"
GOBIN="$TOOLS/bin" GOFLAGS=-buildvcs=false timeout "$STEP_TIMEOUT_S" \
  go install "github.com/tsenart/vegeta/v12@$VEGETA_VERSION"
echo "$VEGETA_VERSION" > "$TOOLS/vegeta.version"
say "vegeta in .tools/bin"
