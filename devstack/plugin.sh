#!/bin/bash
#
# devstack/plugin.sh - DevStack plugin of image_handlers
#
# Called by stack.sh, unstack.sh and clean.sh as
#   source plugin.sh <mode> [phase]
# (devstack/doc/source/plugins.rst). The work is in lib/image_handlers.

# shellcheck source=devstack/lib/image_handlers
source "$IMAGE_HANDLERS_PLUGIN_DIR/lib/image_handlers"

if [[ "$1" == "stack" && "$2" == "pre-install" ]]; then
    echo_summary "[image_handlers] Checking the plugin's settings"
    check_image_handlers
elif [[ "$1" == "stack" && "$2" == "install" ]]; then
    echo_summary "[image_handlers] Installing image_handlers into Nova's environment"
    install_image_handlers
elif [[ "$1" == "stack" && "$2" == "post-config" ]]; then
    echo_summary "[image_handlers] Configuring Nova and Glance"
    configure_image_handlers
elif [[ "$1" == "stack" && "$2" == "extra" ]]; then
    # Nothing runs apart from nova-compute: the chain lives inside it.
    :
elif [[ "$1" == "stack" && "$2" == "test-config" ]]; then
    if is_service_enabled tempest; then
        echo_summary "[image_handlers] Configuring tempest"
        configure_tempest_image_handlers
    fi
elif [[ "$1" == "unstack" ]]; then
    echo_summary "[image_handlers] Reverting the configuration"
    revert_image_handlers_config
elif [[ "$1" == "clean" ]]; then
    echo_summary "[image_handlers] Removing image_handlers"
    cleanup_image_handlers
fi
