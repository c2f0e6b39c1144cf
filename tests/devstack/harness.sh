#!/bin/bash
#
# A small stand-in for DevStack that runs one phase of the image_handlers plugin
# the way stack.sh, unstack.sh and clean.sh do (source settings, then
# "source plugin.sh MODE PHASE" from a function, under errexit and nounset).
#
#   IH_HARNESS_ROOT=DIR tests/devstack/harness.sh MODE [PHASE...]
#
# "stack" with no phase runs all five (pre-install, install, post-config, extra,
# test-config) in one shell, in order, as stack.sh does.
# DevStack's own functions are sourced from devstack-funcs/ (copied from
# DevStack, Apache-2.0: ini-config whole, and trueorfalse, die, err, warn,
# is_service_enabled, define_plugin, plugin_requires from functions-common).
# inc/python's setup_develop, pip_install and pip_uninstall are reduced here to
# the pip command lines they run. The only things stubbed are the commands that
# would change Python environments: pip (the venv's bin/pip) and
# tools/nova-patch.sh, both stand-ins that record their arguments in
# $IH_HARNESS_ROOT/calls.log (the real nova-patch.sh is tested on its own).
# Every path devstack would use lives under IH_HARNESS_ROOT; the plugin's
# backend settings (IMAGE_HANDLERS_*, GLANCE_ENABLE_MULTIPLE_STORES,
# ENABLED_SERVICES, ...) come from the environment, as local.conf gives them.

set -o errexit
set -o nounset

HARNESS_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PLUGIN_SRC=$(cd "$HARNESS_DIR/../../devstack" && pwd)
root=${IH_HARNESS_ROOT:?set IH_HARNESS_ROOT to the directory the fake devstack lives in}
mode=${1:?usage: harness.sh MODE [PHASE...]}
shift
phases=("$@")
if [[ "$mode" == stack && ${#phases[@]} -eq 0 ]]; then
    phases=(pre-install install post-config extra test-config)
elif [[ ${#phases[@]} -eq 0 ]]; then
    phases=("")
fi

# shellcheck source=/dev/null  # DevStack's own code, not linted here
source "$HARNESS_DIR/devstack-funcs/functions-common"
# shellcheck source=/dev/null
source "$HARNESS_DIR/devstack-funcs/ini-config"

# Globals of stackrc, lib/nova, lib/glance, lib/tempest and inc/python.
# shellcheck disable=SC2034
{
    DEST=$root/opt/stack
    DATA_DIR=$DEST/data
    FILES=$root/files
    LOGDIR=""
    STACK_USER=$(id -un)
    PYTHON=python3
    ENABLED_SERVICES=${ENABLED_SERVICES:-n-api,n-cpu,n-cond,n-sch,g-api,placement-api,tempest}
    GLOBAL_VENV=${GLOBAL_VENV:-True}
    USE_VENV=${USE_VENV:-False}
    DEVSTACK_VENV=$DATA_DIR/venv
    declare -A -g PROJECT_VENV
    NOVA_BIN_DIR=$DEVSTACK_VENV/bin
    REQUIREMENTS_DIR=$DEST/requirements
    NOVA_CONF_DIR=$root/etc/nova
    NOVA_CONF=$NOVA_CONF_DIR/nova.conf
    NOVA_CPU_CONF=$NOVA_CONF_DIR/nova-cpu.conf
    NOVA_INSTANCES_PATH=$DATA_DIR/nova/instances
    GLANCE_CONF_DIR=$root/etc/glance
    GLANCE_API_CONF=$GLANCE_CONF_DIR/glance-api.conf
    GLANCE_ENABLE_MULTIPLE_STORES=${GLANCE_ENABLE_MULTIPLE_STORES:-False}
    TEMPEST_CONFIG=$DEST/tempest/etc/tempest.conf
    BUILD_TIMEOUT=${BUILD_TIMEOUT:-196}
    DEFAULT_IMAGE_FILE_NAME=${DEFAULT_IMAGE_FILE_NAME:-cirros-0.6.3-x86_64-disk.img}
}

# stack.sh's echo_summary writes to its saved stdout (fd 6); here: stdout.
function echo_summary {
    echo -e "$@"
}

function _harness_pip {
    if [[ -n ${PIP_VIRTUAL_ENV:=} && -d ${PIP_VIRTUAL_ENV} ]]; then
        echo "$PIP_VIRTUAL_ENV/bin/pip"
    elif [[ "${GLOBAL_VENV}" == "True" && -d ${DEVSTACK_VENV} ]]; then
        echo "$DEVSTACK_VENV/bin/pip"
    else
        die $LINENO "harness: no virtualenv to install into"
    fi
}

# inc/python: pip_install runs "pip install -c upper-constraints.txt ARGS" in
# PIP_VIRTUAL_ENV, else in the global venv.
function pip_install {
    local cmd_pip
    cmd_pip=$(_harness_pip)
    "$cmd_pip" install -c "$REQUIREMENTS_DIR/upper-constraints.txt" "$@"
}

# inc/python: setup_develop project_dir [extras] is "pip install -e project_dir".
function setup_develop {
    local project_dir=$1
    pip_install -e "$project_dir"
}

# inc/python: pip_uninstall name, never failing.
function pip_uninstall {
    local cmd_pip
    cmd_pip=$(_harness_pip)
    "$cmd_pip" uninstall -y "$1" || /bin/true
}

# The fake tree: a checkout of image_handlers whose devstack/ is the real plugin
# and whose tools/nova-patch.sh is a recorder, and a venv whose pip records.
function _harness_setup {
    local checkout=$DEST/image_handlers
    mkdir -p "$checkout/tools" "$DEVSTACK_VENV/bin" "$REQUIREMENTS_DIR"
    [[ -e $checkout/devstack ]] || ln -s "$PLUGIN_SRC" "$checkout/devstack"
    [[ -e $DEVSTACK_VENV/bin/python3 ]] || ln -s "$(command -v python3)" "$DEVSTACK_VENV/bin/python3"
    cat >"$DEVSTACK_VENV/bin/pip" <<EOF
#!/bin/bash
# stand-in for pip: records its arguments
echo "pip \$*" >>"$root/calls.log"
EOF
    # stand-in for tools/nova-patch.sh: records its arguments and keeps whether
    # the patches are applied in a file, as the real one finds it out of Nova.
    cat >"$checkout/tools/nova-patch.sh" <<EOF
#!/bin/bash
echo "nova-patch.sh \$*" >>"$root/calls.log"
state="$root/nova-patched"
case "\$1" in
    applied) [ -e "\$state" ] ;;
    apply) [ ! -e "\$state" ] && touch "\$state" ;;
    revert) [ -e "\$state" ] && rm "\$state" ;;
    check) [ ! -e "\$state" ] ;;
    *) exit 2 ;;
esac
EOF
    chmod +x "$DEVSTACK_VENV/bin/pip" "$checkout/tools/nova-patch.sh"
}

_harness_setup

function load_plugin_settings {
    # shellcheck source=devstack/settings
    source "$DEST/image_handlers/devstack/settings"
}

function run_plugins {
    local mode=$1
    local phase=$2
    # Unquoted as in devstack's run_plugins: no phase means no $2 at all.
    # shellcheck source=devstack/plugin.sh disable=SC2086
    source "$DEST/image_handlers/devstack/plugin.sh" $mode $phase
}

load_plugin_settings
for phase in "${phases[@]}"; do
    run_plugins "$mode" "$phase"
done
