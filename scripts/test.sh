#!/usr/bin/env bash
# Sets up (idempotent), then runs the test suite. Extra arguments go to pytest, e.g. `-m slow` for the
# end-to-end tests of real models and several processes, or `-m "slow or not slow"` for everything.
# Without arguments the default suite runs its test files on two pytest workers (pytest-xdist, a file per worker at
# a time): most of its time is tiny training subprocesses starting Python and importing torch on one core each.
# With arguments it runs as asked, in one process: the slow suite's distributed tests time their own processes.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
if [ "$#" -eq 0 ]; then
    set -- -n "${TEST_WORKERS:-2}" --dist loadfile
fi
python -m pytest "$@"
