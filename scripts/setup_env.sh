#!/usr/bin/env bash
# Creates .venv with Python >= 3.12 and installs onerec-jax (editable) with the extras named
# in $EXTRAS (default "test"). Idempotent: a venv whose install stamp matches pyproject.toml
# is reused.
#
# Interpreter choice, first hit wins:
#   1. $PYTHON, if set;
#   2. for 3.12, then 3.13: `python3.X` on PATH if it runs (a bare pyenv shim does not),
#      else the newest 3.X that `pyenv` has installed, run through its prefix.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
extras=${EXTRAS:-test}

pick_python() {
  if [ -n "${PYTHON:-}" ]; then echo "$PYTHON"; return; fi
  local minor cand v
  for minor in 12 13; do  # 3.12 first: the GPU machine runs 3.12
    cand=$(command -v "python3.$minor" 2>/dev/null || true)
    if [ -n "$cand" ] && "$cand" -c 'import sys' 2>/dev/null; then echo "$cand"; return; fi
    if command -v pyenv >/dev/null 2>&1; then
      v=$(pyenv versions --bare 2>/dev/null | grep -E "^3\.$minor(\.[0-9]+)?$" | sort -V | tail -n 1 || true)
      if [ -n "$v" ]; then echo "$(pyenv prefix "$v")/bin/python3"; return; fi
    fi
  done
  echo "setup_env: no Python 3.12 or 3.13 found; set PYTHON=/path/to/python3.12" >&2
  exit 1
}

# The stamp names what the venv was built from: pyproject, extras and interpreter version.
py=$(pick_python)
pyver=$("$py" -c 'import sys; print(sys.version_info[:2])')
stamp=.venv/.onerec-install-stamp
want="$(sha256sum pyproject.toml | cut -c1-16) $extras $pyver"
if [ -x .venv/bin/python ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
echo "setup_env: using $py ($("$py" --version 2>&1))" >&2
if [ -x .venv/bin/python ] && [ "$(.venv/bin/python -c 'import sys; print(sys.version_info[:2])')" != "$pyver" ]; then
  rm -rf .venv  # made by another interpreter
fi
[ -x .venv/bin/python ] || "$py" -m venv .venv
quiet_pip() {  # pip, minus the machine's notes about missing local index folders
  .venv/bin/python -m pip "$@" 2>&1 | { grep -v "is ignored: it is neither" || true; } >&2
}
quiet_pip install -q --upgrade pip
# The editable install maps kernels/ and checkpoints/ to other import names, which
# setuptools serves through a meta path finder and announces with an informational
# UserWarning box on every install; the mapping is intended.
PYTHONWARNINGS=ignore::UserWarning quiet_pip install -q -e ".[${extras}]"
.venv/bin/python -c "import jax, flax, onerec_jax, onerec_kernels" >&2
echo "$want" > "$stamp"
