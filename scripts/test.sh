#!/usr/bin/env bash
# Sets up (idempotent), then runs the test suite. Extra arguments go to pytest, e.g. `-m slow` for the
# end-to-end tests of real models and several processes, or `-m "slow or not slow"` for everything.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
python -m pytest "$@"
