#!/usr/bin/env bash
# Regenerate the documented configuration sample from the options' own help.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
"$top/.venv/bin/oslo-config-generator" --namespace image_handlers \
  --output-file "$top/doc/image_handlers.conf.sample"
