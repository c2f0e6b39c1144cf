#!/usr/bin/env bash
# The test command (README, .ci/run): install everything, then run the whole suite
# against the real lab services, which the tests start and stop themselves.
#   tools/run-tests.sh [pytest args...]
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
"$top/tools/install-deps.sh"
cd "$top"
cleanup() { "$top/.venv/bin/python" -m tools.lab stop all >/dev/null 2>&1 || true; }
trap cleanup EXIT
"$top/.venv/bin/python" -m pytest -p no:cacheprovider -ra tests "$@"
