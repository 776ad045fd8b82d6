#!/usr/bin/env bash
# Creates the environment if needed (scripts/setup_env.sh) and runs the test suite.
# Extra arguments go to pytest. GPU-only tests (marker gpu) are skipped off-GPU.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
bash scripts/setup_env.sh
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
