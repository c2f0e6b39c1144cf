#!/usr/bin/env bash
# Apply nova_patches/ to an installed Nova, check that they apply, tell whether
# they are applied, or revert them (devstack's plugin re-stacks and cleans).
#
#   tools/nova-patch.sh apply|check|applied|revert [PYTHON]
#                               # PYTHON: the one Nova runs under
#
# Refuses a Nova whose version has no patch directory here, and refuses to apply
# (or revert) a patch that does not apply (or reverse) cleanly: nothing is
# changed then. "applied" exits 0 when every patch is applied, 1 otherwise.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
mode=${1:?usage: tools/nova-patch.sh apply|check|applied|revert [PYTHON]}
case $mode in apply|check|applied|revert) ;; *)
  echo "nova-patch: unknown mode '$mode' (apply, check, applied, revert)" >&2; exit 2;; esac
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
if [ "$mode" = applied ] || [ "$mode" = revert ]; then
  # Reversed in the opposite order; every reversal is tried before any is made.
  mapfile -t patches < <(printf '%s\n' "$dir"/*.patch | sort -r)
  for p in "${patches[@]}"; do
    if ! patch -p1 -d "$site" --dry-run --reverse --force --quiet <"$p" >/dev/null; then
      [ "$mode" = applied ] && exit 1
      echo "nova-patch: $(basename "$p") is not applied to Nova $version in $site" \
           "(or Nova was changed since); nothing was reverted" >&2
      exit 1
    fi
  done
  [ "$mode" = applied ] && exit 0
  for p in "${patches[@]}"; do
    patch -p1 -d "$site" --reverse --force --quiet <"$p"
    echo "nova-patch: reverted $(basename "$p") in $site"
  done
  exit 0
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
