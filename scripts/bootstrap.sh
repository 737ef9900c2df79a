# shellcheck shell=bash
# Sourced by scripts/test and scripts/demo (not run): makes sure .venv exists with python >= 3.11
# and holds this checkout installed with its dev extras, re-installing only when pyproject.toml
# changed since the last install; then puts .venv/bin first on PATH.
# Env: PYTHON (interpreter used to create .venv), STREAMWISE_VENV (default <repo>/.venv).

STREAMWISE_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STREAMWISE_VENV="${STREAMWISE_VENV:-$STREAMWISE_ROOT/.venv}"

_streamwise_bootstrap() {
  local py stamp want
  if [ ! -x "$STREAMWISE_VENV/bin/python" ]; then
    for py in ${PYTHON:-} python3.13 python3.12 python3.11 python3; do
      command -v "$py" >/dev/null 2>&1 \
        && "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null && break
      py=""
    done
    [ -n "$py" ] || { echo "bootstrap: python >= 3.11 not found (set PYTHON=...)" >&2; return 1; }
    echo "bootstrap: creating $STREAMWISE_VENV with $py" >&2
    "$py" -m venv "$STREAMWISE_VENV"
  fi
  stamp="$STREAMWISE_VENV/.streamwise-pyproject.sha256"
  want="$("$STREAMWISE_VENV/bin/python" -c \
    'import hashlib, sys; print(hashlib.sha256(open(sys.argv[1], "rb").read()).hexdigest())' \
    "$STREAMWISE_ROOT/pyproject.toml")"
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "bootstrap: pip install -e '.[dev]' (pyproject.toml changed since the last install)" >&2
    if ! "$STREAMWISE_VENV/bin/python" -m pip install -q --disable-pip-version-check \
        -e "${STREAMWISE_ROOT}[dev]" >"$STREAMWISE_VENV/.streamwise-pip.log" 2>&1; then
      tail -n 40 "$STREAMWISE_VENV/.streamwise-pip.log" >&2
      echo "bootstrap: pip install failed (log: $STREAMWISE_VENV/.streamwise-pip.log)" >&2
      return 1
    fi
    echo "$want" >"$stamp"
  fi
}

_streamwise_bootstrap
unset -f _streamwise_bootstrap
export VIRTUAL_ENV="$STREAMWISE_VENV"
export PATH="$STREAMWISE_VENV/bin:$PATH"
