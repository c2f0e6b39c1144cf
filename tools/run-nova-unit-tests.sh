#!/usr/bin/env bash
# Nova 34's own unit tests for the code nova_patches/ touches and everything around
# it, run with stestr against the patched Nova in .lab/venv-nova (the patch must not
# change Nova's behaviour while [image_handlers] nova_integration is off).
#   tools/run-nova-unit-tests.sh [stestr filters...]
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
venv="$top/.lab/venv-nova"
site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
filters=("$@")
filters_given=("$@")
if [ ${#filters[@]} -eq 0 ]; then
  filters=(
    nova.tests.unit.virt.libvirt.test_driver       # _try_fetch_image_cache and callers
    nova.tests.unit.virt.libvirt.test_imagebackend
    nova.tests.unit.virt.libvirt.test_imagecache
    nova.tests.unit.virt.test_images               # fetch, fetch_to_raw
    nova.tests.unit.image.test_glance
    nova.tests.unit.storage.test_rbd
  )
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
# As Nova's tox.ini sets them for its unit tests.
export LANGUAGE=en_US LC_ALL=C.UTF-8 OS_STDOUT_CAPTURE=1 OS_STDERR_CAPTURE=1 \
       OS_TEST_TIMEOUT=160 NOVA_RAISE_ON_GREENLET_LEAK=True \
       OS_NOVA_DISABLE_EVENTLET_PATCHING=False PYTHONWARNINGS=ignore
log="$top/.lab/nova-unit-tests.log"
rc=0
"$venv/bin/stestr" --test-path "$site/nova/tests/unit" --top-dir "$site" \
  run "${filters[@]}" >"$log" 2>&1 || rc=$?
# The summary, and every failure (the full output stays in the log).
grep -E '^ - (Passed|Failed|Skipped):|\.\.\. FAILED' "$log" || true
[ $rc -eq 0 ] || echo "Nova unit tests FAILED (exit $rc); see $log" >&2
if [ ${#filters_given[@]} -eq 0 ]; then
  # Nova's own functional tests of aggregate image pre-caching (compute API 2.81:
  # ComputeManager.cache_images and the libvirt driver's cache_image, which the
  # patch hooks), on the patched Nova. They read etc/nova/api-paste.ini beside the
  # nova package, as in Nova's source tree: the wheel puts it in the venv's etc/.
  [ -e "$site/etc" ] || ln -s "$venv/etc" "$site/etc"
  flog="$top/.lab/nova-functional-tests.log"
  echo "Nova 34's own functional tests for image pre-caching:"
  frc=0
  "$venv/bin/stestr" --test-path "$site/nova/tests/functional" --top-dir "$site" \
    run nova.tests.functional.compute.test_cache_image \
    nova.tests.functional.test_aggregates >"$flog" 2>&1 || frc=$?
  grep -E '^ - (Passed|Failed|Skipped):|\.\.\. FAILED' "$flog" || true
  [ $frc -eq 0 ] || echo "Nova functional tests FAILED (exit $frc); see $flog" >&2
  [ $rc -ne 0 ] || rc=$frc
fi
exit $rc
