#!/usr/bin/env bash
# Install what tests/deploy and tests/integration/test_prometheus.py need to check deploy/
# offline, each pinned, from the package registries (no downloads from anywhere else):
#   prometheus + promtool   Debian's `prometheus` package (apt-get; as root only)
#   kustomize, kubeconform  Go modules, built with `go install` into .tools/bin
#   compose-config          deploy/tools/compose-config (compose-go, what `docker compose
#                           config` uses), built into .tools/bin
#   dockerfile-check        deploy/tools/dockerfile-check (BuildKit's Dockerfile parser and
#                           linter, what `docker build` runs first), built into .tools/bin
#   Kubernetes JSON schemas  taken from the PyPI wheel kubernetes-validate into .tools/k8s-schemas
# Idempotent and cache-friendly: a step whose pinned result is already in .tools is skipped
# (Go's module cache and pip's cache make a rebuild after `rm -rf .tools` cheap too).
# Usage: scripts/deploy-tools.sh [--quiet]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

KUBECONFORM_VERSION=v0.7.0
KUSTOMIZE_VERSION=v5.7.1
KUBERNETES_VALIDATE_VERSION=1.37.0   # ships schemas of Kubernetes 1.25 ... 1.37
K8S_SCHEMA_VERSIONS="1.30.0 1.37.0"  # the manifests are checked against the oldest and newest
STEP_TIMEOUT_S=600

quiet=0
[ "${1:-}" = "--quiet" ] && quiet=1
say() { [ "$quiet" -eq 1 ] || echo "deploy-tools: $*" >&2; }
# Run a bounded step; with --quiet its output is shown only when it fails.
step() {
  local log rc=0
  log="$(mktemp)"
  timeout "$STEP_TIMEOUT_S" "$@" >"$log" 2>&1 || rc=$?
  if [ "$rc" -ne 0 ] || [ "$quiet" -eq 0 ]; then cat "$log" >&2; fi
  rm -f "$log"
  return "$rc"
}

TOOLS="$PWD/.tools"
mkdir -p "$TOOLS/bin"
export GOBIN="$TOOLS/bin" GOFLAGS=-buildvcs=false

stamp_ok() { [ -f "$TOOLS/$1.version" ] && [ "$(cat "$TOOLS/$1.version")" = "$2" ]; }
stamp() { echo "$2" > "$TOOLS/$1.version"; }

# -- prometheus and promtool (Debian) -------------------------------------------------------
if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null; then
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
    say "installing Debian's prometheus package (about 10 s)"
    export DEBIAN_FRONTEND=noninteractive
    # The package's service is never started here (no systemd in CI); tests start their own.
    # A new machine's package lists may be stale: update once if the first try fails.
    timeout "$STEP_TIMEOUT_S" apt-get install -y -qq --no-install-recommends prometheus \
      >/dev/null 2>&1 \
      || { step apt-get update -qq \
           && step apt-get install -y -qq --no-install-recommends prometheus; }
  else
    echo "deploy-tools: prometheus/promtool missing; as root: apt-get install -y prometheus" >&2
  fi
fi

# -- Go tools -------------------------------------------------------------------------------
if ! command -v go >/dev/null; then
  echo "deploy-tools: no Go toolchain; kustomize, kubeconform and deploy/tools need one" >&2
  exit 1
fi
if ! stamp_ok kubeconform "$KUBECONFORM_VERSION" || [ ! -x "$TOOLS/bin/kubeconform" ]; then
  say "go install kubeconform@$KUBECONFORM_VERSION"
  step go install "github.com/yannh/kubeconform/cmd/kubeconform@$KUBECONFORM_VERSION"
  stamp kubeconform "$KUBECONFORM_VERSION"
fi
if ! stamp_ok kustomize "$KUSTOMIZE_VERSION" || [ ! -x "$TOOLS/bin/kustomize" ]; then
  say "go install kustomize@$KUSTOMIZE_VERSION"
  step go install "sigs.k8s.io/kustomize/kustomize/v5@$KUSTOMIZE_VERSION"
  stamp kustomize "$KUSTOMIZE_VERSION"
fi
ours_sum="$(cat deploy/tools/go.mod deploy/tools/go.sum deploy/tools/*/*.go | sha256sum)"
if ! stamp_ok deploy-tools "$ours_sum" || [ ! -x "$TOOLS/bin/compose-config" ] \
    || [ ! -x "$TOOLS/bin/dockerfile-check" ]; then
  say "go build deploy/tools (compose-config, dockerfile-check)"
  (cd deploy/tools && step go build -o "$TOOLS/bin/" ./compose-config ./dockerfile-check)
  stamp deploy-tools "$ours_sum"
fi

# -- Kubernetes JSON schemas ----------------------------------------------------------------
# kubernetes-validate's schemas refer to "/api/_definitions.json" under an https $id; kubeconform
# reads plain files, so each copy drops the $id and refers to _definitions.json beside it.
schemas_id="$KUBERNETES_VALIDATE_VERSION $K8S_SCHEMA_VERSIONS"
if ! stamp_ok k8s-schemas "$schemas_id"; then
  say "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION (PyPI) -> .tools/k8s-schemas"
  python="${PYTHON:-$(command -v python3)}"
  rm -rf "$TOOLS/k8s-schemas" "$TOOLS/wheels"
  step "$python" -m pip download -q --no-deps --only-binary=:all: \
    --disable-pip-version-check -d "$TOOLS/wheels" \
    "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
  "$python" - "$TOOLS" $K8S_SCHEMA_VERSIONS <<'PY'
import glob, json, os, sys, zipfile
tools, versions = sys.argv[1], sys.argv[2:]
wheel = zipfile.ZipFile(glob.glob(f"{tools}/wheels/kubernetes_validate-*.whl")[0])
for version in versions:
    prefix = f"kubernetes_validate/kubernetes-json-schema/v{version}-local-strict/"
    out = f"{tools}/k8s-schemas/v{version}-local-strict"
    os.makedirs(out)
    names = [n for n in wheel.namelist() if n.startswith(prefix) and n.endswith(".json")]
    if not names:
        sys.exit(f"deploy-tools: the wheel has no schemas for Kubernetes {version}")
    for name in names:
        doc = json.loads(wheel.read(name))
        doc.pop("$id", None)
        text = json.dumps(doc).replace('"/api/_definitions.json#', '"_definitions.json#')
        with open(f"{out}/{name[len(prefix):]}", "w") as fh:
            fh.write(text)
PY
  rm -rf "$TOOLS/wheels"
  stamp k8s-schemas "$schemas_id"
fi
say "ready in .tools/bin: $(ls "$TOOLS/bin" | tr '\n' ' ')"
