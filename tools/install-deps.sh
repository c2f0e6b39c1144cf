#!/usr/bin/env bash
# Install everything the project, its tests and its lab need on a fresh Debian 12
# machine, as root. Idempotent: every step is skipped when its stamp says it is done
# for the same inputs, so the demo and test commands can call it every time.
#
#   tools/install-deps.sh            # all
#   IH_SKIP_APT=1 tools/install-deps.sh   # virtualenvs only (apt packages already there)
set -euo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
state="$top/.lab"
mkdir -p "$state/stamps"

# Debian's own CPython 3.11: Glance needs >= 3.11, and Debian's rados/rbd bindings are
# built for exactly this interpreter (a pyenv or 3.12 interpreter cannot load them).
PY=/usr/bin/python3.11

APT_PACKAGES=(
  python3 python3-venv python3-dev build-essential pkg-config
  curl openssl nginx-light qemu-utils
  # Ceph (the lab's RBD cluster) and Debian's rados/rbd bindings: PyPI has none.
  ceph-mon ceph-osd ceph-common python3-rbd python3-rados
  # Shared file systems (shared_fs): XFS and btrfs loop mounts for reflink, and a
  # single-brick GlusterFS volume mounted through FUSE (no kernel NFS client here).
  xfsprogs btrfs-progs glusterfs-server glusterfs-client fuse3
  # iSCSI with copy-on-read (iscsi_cor): a userspace target, qemu's userspace
  # initiator (qemu-block-extra: libiscsi), libvirtd running TCG guests, and the
  # pieces of the lab's small guest (busybox; the kernel is unpacked, not installed).
  tgt libiscsi-bin qemu-block-extra qemu-system-x86 libvirt-daemon
  libvirt-daemon-driver-qemu libvirt-clients libvirt-dev busybox-static
  # The lab cloud (tools/lab/cloud.py): RabbitMQ and MariaDB for Nova's services, a ceph-mgr
  # (Nova's rbd image backend reads pool sizes from `ceph df`), and the tools that
  # make the bootable raw guest image (a syslinux FAT disk: tools/lab/boot_disk.py).
  rabbitmq-server mariadb-server ceph-mgr syslinux syslinux-common mtools dosfstools
  # libnbd's Python bindings (not on PyPI): reading a LUN through qemu-nbd at hash
  # speed, to verify it.
  python3-libnbd libnbd-bin
  # The cache tier of stream_copy and the fleet bench: a real HTTP cache (squid),
  # iproute2 for network namespaces, veth, a bridge and tc shaping.
  squid iproute2
  # The DevStack plugin's shell files are checked with shellcheck by the tests
  # (tests/devstack).
  shellcheck
)

stamp_ok() {  # stamp_ok NAME CONTENT -> true when the stamp holds CONTENT
  [ -f "$state/stamps/$1" ] && [ "$(cat "$state/stamps/$1")" = "$2" ]
}
stamp_set() { printf '%s' "$2" >"$state/stamps/$1"; }

log() { printf '[install-deps] %s\n' "$*" >&2; }

quiet() {  # quiet LOGNAME CMD...: run CMD, output to a log shown only on failure
  local logf="$state/install-$1.log"; shift
  if ! "$@" >>"$logf" 2>&1; then
    log "FAILED: $* (last lines of $logf follow)"; tail -n 40 "$logf" >&2; exit 1
  fi
}

if [ -z "${IH_SKIP_APT:-}" ]; then
  want="${APT_PACKAGES[*]}"
  missing=()
  for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    log "apt: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    quiet apt apt-get update
    quiet apt apt-get install -y --no-install-recommends "${missing[@]}"
  fi
  stamp_set apt "$want"
fi

make_venv() {  # make_venv DIR STAMPNAME REQFILE...
  local dir=$1 name=$2; shift 2
  local digest
  digest=$(cat "$@" | sha256sum | cut -c1-16)
  if stamp_ok "$name" "$digest" && [ -x "$dir/bin/python" ]; then
    return 0
  fi
  log "virtualenv $dir (from $*)"
  rm -rf "$dir"
  "$PY" -m venv "$dir"
  local args=()
  for r in "$@"; do args+=(-r "$r"); done
  quiet "$name" "$dir/bin/pip" install --upgrade pip wheel setuptools
  quiet "$name" "$dir/bin/pip" install "${args[@]}"
  stamp_set "$name" "$digest"
}

# The project's own virtualenv: the package (editable) and its test tools. The
# editable install only needs redoing when setup.cfg (entry points) changes.
make_venv "$top/.venv" venv "$top/requirements.txt" "$top/test-requirements.txt"
cfg_digest=$(cat "$top/setup.cfg" "$top/requirements.txt" | sha256sum | cut -c1-16)
# Checked from / and by its metadata: from the checkout, "import image_handlers"
# would succeed even when the package (and its entry points) is not installed.
installed() {  # installed PYTHON -> the project is installed into that environment
  (cd / && "$1" -c 'import importlib.metadata as m; m.distribution("image_handlers")') \
    2>/dev/null
}
if ! stamp_ok venv-project "$cfg_digest" || ! installed "$top/.venv/bin/python"; then
  log "installing image_handlers (editable) into .venv"
  PBR_VERSION=${PBR_VERSION:-0.1.0} quiet venv-project "$top/.venv/bin/pip" install --no-deps -e "$top"
  stamp_set venv-project "$cfg_digest"
fi

# The lab's Glance server lives in a virtualenv of its own, as a service would.
make_venv "$state/venv-glance" venv-glance "$top/tools/lab/glance-requirements.txt"

# The lab's Keystone and Barbican (tools/lab/keystone.py, barbican.py): one virtualenv
# for both services, apart from Glance's, as separate services would be.
make_venv "$state/venv-identity" venv-identity "$top/tools/lab/identity-requirements.txt"

# Nova 34 from PyPI with nova_patches/ applied and image_handlers installed beside it:
# Nova's own unit tests and our Nova integration tests run there. A changed patch
# (or a new package version) reinstalls Nova first, so the patch always applies to
# a pristine Nova.
make_venv "$state/venv-nova" venv-nova "$top/tools/lab/nova-requirements.txt"
nova_digest=$(cat "$top"/nova_patches/nova-*/*.patch "$top/setup.cfg" | sha256sum | cut -c1-16)
if ! stamp_ok nova-patched "$nova_digest" || ! installed "$state/venv-nova/bin/python"; then
  log "applying nova_patches to .lab/venv-nova"
  quiet venv-nova "$state/venv-nova/bin/pip" install --force-reinstall --no-deps \
    "$(grep -E '^nova==' "$top/tools/lab/nova-requirements.txt")"
  PBR_VERSION=${PBR_VERSION:-0.1.0} quiet venv-nova "$state/venv-nova/bin/pip" install \
    --no-deps -e "$top"
  quiet venv-nova "$top/tools/nova-patch.sh" apply "$state/venv-nova/bin/python"
  stamp_set nova-patched "$nova_digest"
fi

# Tempest 47 with this project beside it: tempest's plugin manager and runner load
# image_handlers.tempest_plugin from here (tests/tempest_plugin; the lab cloud runs
# the scenarios with it). The editable install is redone when setup.cfg (the
# tempest.test_plugins entry point) changes.
make_venv "$state/venv-tempest" venv-tempest "$top/tools/lab/tempest-requirements.txt" \
  "$top/requirements.txt"
if ! stamp_ok venv-tempest-project "$cfg_digest" || ! installed "$state/venv-tempest/bin/python"; then
  log "installing image_handlers (editable) into .lab/venv-tempest"
  PBR_VERSION=${PBR_VERSION:-0.1.0} quiet venv-tempest "$state/venv-tempest/bin/pip" install \
    --no-deps -e "$top"
  stamp_set venv-tempest-project "$cfg_digest"
fi

# Debian's rados/rbd/nbd bindings are built for /usr/bin/python3.11; every virtualenv
# uses that interpreter, so linking the modules in makes them importable.
link_ceph_bindings() {  # link_ceph_bindings VENV
  local site
  site=$("$1/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  for so in /usr/lib/python3/dist-packages/rados.cpython-311-*.so \
            /usr/lib/python3/dist-packages/rbd.cpython-311-*.so \
            /usr/lib/python3/dist-packages/nbd.py \
            /usr/lib/python3/dist-packages/libnbdmod.cpython-311-*.so; do
    [ -e "$so" ] && ln -sf "$so" "$site/$(basename "$so")"
  done
  return 0
}
link_ceph_bindings "$top/.venv"
link_ceph_bindings "$state/venv-glance"
link_ceph_bindings "$state/venv-nova"
link_ceph_bindings "$state/venv-tempest"

log "done"
