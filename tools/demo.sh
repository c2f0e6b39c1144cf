#!/usr/bin/env bash
# The main job: install everything, start the embedded lab (a real Glance and a plain
# web server on loopback), provide images through the handler chain, and print what
# each handler did and why. Stops the lab afterwards.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
"$top/tools/install-deps.sh"
cd "$top"
exec "$top/.venv/bin/python" -m tools.demo "$@"
