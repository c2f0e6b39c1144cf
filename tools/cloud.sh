#!/usr/bin/env bash
# The lab cloud for a person (tools/lab/cloud.py; tests/cloud/README.rst):
#
#   tools/cloud.sh start            # Keystone, Glance, Placement, Nova, RabbitMQ, Ceph,
#                                   # libvirt (~1-2 min); prints the endpoints
#   tools/cloud.sh boot ceph|xfs    # boot the lab guest through the APIs, show where its
#                                   # root disk came from (tools/lab/cloud_boot.py)
#   tools/cloud.sh tempest [REGEX]  # the tempest plugin's scenarios with tempest's own
#                                   # runner: the RBD compute, then the qcow2 one
#   tools/cloud.sh env              # OS_* exports (admin) for clients
#   tools/cloud.sh status | stop
#
# IH_LAB_RUN_DIR selects the run dir (default .lab/run), as for every lab service.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
py="$top/.venv/bin/python"
tempest="$top/.lab/venv-tempest/bin/tempest"
run_dir=${IH_LAB_RUN_DIR:-$top/.lab/run}
scenarios=image_handlers.tempest_plugin.tests.scenario.test_boot_paths

cloud_py() {  # cloud_py 'python statements using c (the CloudService)'
  "$py" -c "from tools.lab.cloud import CloudService
c = CloudService()
$1"
}

case "${1:-}" in
  start)
    "$py" -m tools.lab start cloud
    cloud_py 'import json; s = c._load_state()
print("compute API:", s["endpoint"]); print("identity:", c.keystone.auth_url)
print("nova-compute log:", c.compute_log); print("images_type:", s["images_type"])
print("start timings (s):", json.dumps(s.get("timings"), sort_keys=True))' ;;
  stop) "$py" -m tools.lab stop cloud ;;
  status) cloud_py 'import json; print(json.dumps(c.status(), indent=2, default=str))' ;;
  env) cloud_py 'print(c.keystone.shell_env(), end="")
print("export OS_COMPUTE_API_VERSION=2.37")' ;;
  boot) "$py" -m tools.lab.cloud_boot --store "${2:-ceph}" ;;
  tempest)
    regex=${2:-$scenarios}
    ws="$run_dir/cloud/tempest"  # inside the cloud's dir: removed with it
    if [ ! -f "$ws/etc/tempest.conf" ]; then
      rm -rf "$ws"
      "$tempest" init --workspace-path "$run_dir/cloud/tempest-workspaces.yaml" \
        --name lab-cloud "$ws" >/dev/null
    fi
    rc=0
    for images_type in rbd qcow2; do
      echo "== nova-compute with images_type $images_type"
      cloud_py "c.set_images_type('$images_type'); c.tempest_conf('$ws/etc/tempest.conf')"
      (cd "$ws" && "$tempest" run --serial --config-file "$ws/etc/tempest.conf" \
        --regex "$regex") || rc=1
    done
    exit $rc ;;
  *) sed -n '2,13p' "$0"; exit 2 ;;
esac
