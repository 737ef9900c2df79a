# shellcheck shell=bash
# Sourced by scripts/test and scripts/demo (not run): makes sure .venv exists with python >= 3.11
# and holds this checkout installed with its dev extras, re-installing (which compiles the tile
# kernel, engine/kernel/*.pyx) only when pyproject.toml or a kernel source changed since the
# last install, or the compiled kernel is missing; then puts .venv/bin first on PATH.
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
  # The stamp hashes pyproject.toml and the Cython sources under engine/ (*.pyx, *.pxd, paths
  # included); `built` says every extension module pyproject.toml lists is built in place.
  read -r want built < <("$STREAMWISE_VENV/bin/python" -c '
import hashlib, pathlib, sys, tomllib
root, h = pathlib.Path(sys.argv[1]), hashlib.sha256()
for p in [root / "pyproject.toml", *sorted((root / "engine").rglob("*.p[yx][xd]"))]:
    h.update(str(p.relative_to(root)).encode() + b"\0" + p.read_bytes())
with open(root / "pyproject.toml", "rb") as f:
    modules = tomllib.load(f).get("tool", {}).get("setuptools", {}).get("ext-modules", [])
built = all(any((root / m["name"].replace(".", "/")).parent.glob(
    m["name"].rpartition(".")[2] + ".*.so")) for m in modules)
print(h.hexdigest(), int(built))' "$STREAMWISE_ROOT")
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ] || [ "$built" != 1 ]; then
    echo "bootstrap: pip install -e '.[dev]' (pyproject.toml or a compiled kernel changed, or" \
      "one is not built)" >&2
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
