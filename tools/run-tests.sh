#!/usr/bin/env bash
# The test command (README, .ci/run): install everything, then run
#  1. the project's suite against the real lab services (the tests start and stop
#     them themselves), in the project's virtualenv;
#  2. the Nova integration tests, under the patched Nova 34 (.lab/venv-nova);
#  3. Nova 34's own unit tests around the patched code, on the patched Nova.
#   tools/run-tests.sh [pytest args...]     # args go to both pytest runs
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
"$top/tools/install-deps.sh"
cd "$top"
cleanup() { "$top/.venv/bin/python" -m tools.lab stop all >/dev/null 2>&1 || true; }
trap cleanup EXIT
"$top/.venv/bin/python" -m pytest -p no:cacheprovider -ra tests --ignore=tests/nova "$@"
# (-p no:warnings: Nova's dependencies warn about eventlet and cgi at import)
"$top/.lab/venv-nova/bin/python" -m pytest -p no:cacheprovider -p no:warnings -ra \
  tests/nova "$@"
echo "Nova 34's own unit tests, on the patched Nova:"
"$top/tools/run-nova-unit-tests.sh"
