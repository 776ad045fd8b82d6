#!/usr/bin/env bash
# Creates the environment if needed (scripts/setup_env.sh) and runs the main job: beam-search
# recommendations from the shipped demo checkpoint for sample users. Extra arguments go to
# `onerec-jax generate`.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
bash scripts/setup_env.sh
exec .venv/bin/onerec-jax generate "$@"
