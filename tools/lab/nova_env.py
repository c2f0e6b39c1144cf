"""The real, patched Nova 34 (``.lab/venv-nova``) set up against the lab's Ceph and
Glance: Nova's CONF, a request context, instances, and Nova's own code path that
creates a root disk. Used by tests/nova and the demo.

Imports Nova, so it loads only under ``.lab/venv-nova/bin/python`` (unlike the rest
of tools.lab, which is stdlib-only). Nothing of Nova is mocked. Two things differ
from a compute host: the LibvirtDriver is not initialised (no libvirtd
connection; the image path never touches it), and Nova's privsep daemon is
started from this virtualenv's privsep-helper without sudo (as root).
"""
from __future__ import annotations

import os
import sys
import uuid
import warnings

warnings.filterwarnings('ignore', message='.*Eventlet is deprecated.*')

import nova.conf  # noqa: E402
from nova.compute import task_states, vm_states  # noqa: E402
from nova import context as nova_context  # noqa: E402
from nova import objects  # noqa: E402
from nova.virt.libvirt import driver as libvirt_driver  # noqa: E402
from nova.virt.libvirt import imagebackend  # noqa: E402
from nova.virt.libvirt import utils as libvirt_utils  # noqa: E402

from image_handlers.nova import hooks  # noqa: E402

CONF = nova.conf.CONF
objects.register_all()
CONF([], project='nova', default_config_files=[])

Overrides = dict[str, dict[str, object]]     # group ('DEFAULT' too) -> option -> value


def lab_overrides(instances_path: str, glance_endpoint: str, ceph_conf: str,
                  state_dir: str) -> Overrides:
    """nova.conf for the lab: Glance, RBD disks in pool vms, the chain on."""
    return {
        'DEFAULT': {'instances_path': instances_path},
        'glance': {'endpoint_override': glance_endpoint},
        'libvirt': {'images_type': 'rbd', 'images_rbd_pool': 'vms',
                    'images_rbd_ceph_conf': ceph_conf, 'rbd_user': 'admin'},
        'nova_sys_admin': {'helper_command': os.path.join(sys.prefix, 'bin',
                                                          'privsep-helper')},
        'image_handlers': {'nova_integration': True, 'state_dir': state_dir,
                           'progress_interval': 0.5},
    }


def keystone_overrides(keystone, instances_path: str, ceph_conf: str,
                       state_dir: str) -> Overrides:
    """nova.conf for a Nova in the lab's Keystone cloud, as devstack writes it
    (tools.lab.keystone.nova_conf_keystone_dict: [glance] and [service_user]
    password auth as nova, no endpoint_override, [key_manager] barbican), with
    RBD disks in pool vms and the chain on. The password plugin's options are
    registered first: keystoneauth registers them only when it loads the plugin."""
    from keystoneauth1 import loading as ks_loading
    from tools.lab.keystone import nova_conf_keystone_dict
    overrides: Overrides = {k: dict(v) for k, v in nova_conf_keystone_dict(keystone).items()
                            if k != 'keystone_authtoken'}
    password = [o._to_oslo_opt() for o in
                ks_loading.get_plugin_loader('password').get_options()]
    for group in ('glance', 'service_user'):
        known = set(CONF[group].keys())
        CONF.register_opts([o for o in password if o.dest not in known], group=group)
    base = lab_overrides(instances_path, '', ceph_conf, state_dir)
    del base['glance']
    for group, values in base.items():
        overrides.setdefault(group, {}).update(values)
    return overrides


def keystone_context(keystone, user: str, project: str) -> nova_context.RequestContext:
    """The request context nova-compute gets for ``user``: a real Keystone token
    and the service catalog in the v2 form keystonemiddleware passes on
    (X-Service-Catalog), which Nova's context auth plugin reads endpoints from."""
    token, body = keystone.password_token(user, project)
    catalog = [{'type': s['type'], 'name': s.get('name', ''),
                'endpoints': [{'region': e.get('region_id') or e.get('region'),
                               f'{e["interface"]}URL': e['url']}
                              for e in s['endpoints']]}
               for s in body.get('catalog', [])]
    return nova_context.RequestContext(
        user_id=body['user']['id'], project_id=body['project']['id'],
        project_name=project, auth_token=token,
        roles=[r['name'] for r in body['roles']], service_catalog=catalog)


class NovaConf:
    """Overrides of Nova's CONF that can all be undone (``clear``)."""

    def __init__(self) -> None:
        self._set: list[tuple[str, str | None]] = []

    def set(self, overrides: Overrides) -> None:
        for group, opts in overrides.items():
            group_name = None if group == 'DEFAULT' else group
            for name, value in opts.items():
                CONF.set_override(name, value, group=group_name)
                self._set.append((name, group_name))
        hooks.reset()       # the chain reads the configuration when next used

    def clear(self) -> None:
        for name, group in self._set:
            CONF.clear_override(name, group=group)
        self._set.clear()
        hooks.reset()


def request_context() -> nova_context.RequestContext:
    """A context carrying the lab Glance's admin token, as nova-compute's carries
    the user's."""
    return nova_context.RequestContext(
        user_id='lab-user', project_id='admin-project', auth_token='lab-admin',
        roles=['admin', 'member', 'reader'], is_admin=True)


def make_instance(context, image_id: str, **fields) -> objects.Instance:
    """A spawning instance with a 1 GiB root disk."""
    flavor = objects.Flavor(root_gb=1, ephemeral_gb=0, swap=0, name='m1.lab',
                            memory_mb=128, vcpus=1, extra_specs={})
    values = dict(context=context, uuid=str(uuid.uuid4()), flavor=flavor,
                  vm_state=vm_states.BUILDING, task_state=task_states.SPAWNING,
                  config_drive='', system_metadata={}, migration_context=None,
                  trusted_certs=None, image_ref=image_id,
                  project_id=context.project_id, user_id=context.user_id,
                  metadata={})
    values.update(fields)
    return objects.Instance(**values)


def create_root_disk(context, instance, image_id: str):
    """Nova's own LibvirtDriver._create_and_inject_local_root: the part of spawn
    that builds the image backend and Nova's clone-or-fetch function and calls
    _try_fetch_image_cache (where the patch hooks in). Returns the disk's backend."""
    # As LibvirtDriver._create_image does before it creates the root disk.
    os.makedirs(libvirt_utils.get_instance_path(instance), exist_ok=True)
    drv = libvirt_driver.LibvirtDriver.__new__(libvirt_driver.LibvirtDriver)
    drv.image_backend = imagebackend.Backend(CONF.use_cow_images)
    disk_mapping = {'disk': {'bus': 'virtio', 'dev': 'vda', 'type': 'disk'}}
    drv._create_and_inject_local_root(
        context, instance, disk_mapping, booted_from_volume=False, suffix='',
        disk_images={'image_id': image_id}, injection_info=None,
        fallback_from_host=None)
    return drv.image_backend.by_name(instance, 'disk')
