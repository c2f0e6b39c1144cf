#!/usr/bin/env bash
# Apply nova_patches/ to an installed Nova, or check that they apply.
#
#   tools/nova-patch.sh apply|check [PYTHON]   # PYTHON: the one Nova runs under
#
# Refuses a Nova whose version has no patch directory here, and refuses to apply
# a patch that does not apply cleanly (nothing is changed then).
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
mode=${1:?usage: tools/nova-patch.sh apply|check [PYTHON]}
py=${2:-python3}
read -r version site < <("$py" -c '
import os, nova.version
print(nova.version.version_info.release_string(),
      os.path.dirname(os.path.dirname(os.path.abspath(nova.__file__))))')
dir="$top/nova_patches/nova-$version"
if [ ! -d "$dir" ]; then
  echo "nova-patch: no patches for Nova $version in nova_patches/ (have:" \
       "$(cd "$top/nova_patches" && ls -d nova-* | tr '\n' ' '))" >&2
  exit 2
fi
for p in "$dir"/*.patch; do
  if ! patch -p1 -d "$site" --dry-run --forward --quiet <"$p" >/dev/null; then
    echo "nova-patch: $(basename "$p") does not apply to Nova $version in $site" \
         "(already applied, or Nova was changed); nothing was changed" >&2
    exit 1
  fi
  if [ "$mode" = apply ]; then
    patch -p1 -d "$site" --forward --quiet <"$p"
    echo "nova-patch: applied $(basename "$p") to $site"
  else
    echo "nova-patch: $(basename "$p") applies cleanly to $site"
  fi
done
