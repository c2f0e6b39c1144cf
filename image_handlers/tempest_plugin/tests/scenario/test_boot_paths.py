"""Boot a server from an image in each configured Glance store and show, from
the storage side, which handler provided its root disk.

Each scenario uploads ``[image_handlers] raw_image_file`` into one store, boots
a server from it (no network: microversion 2.37 ``networks='none'``) and then
looks at the storage, not at the API: the RBD disk's parent snapshot, the
``_base`` file's inode or extents, the overlay's backing file, or the reasons
nova-compute logged. The checks run on the compute host (single-node clouds).
A scenario whose store or handler is not configured is skipped, naming the
option to set.
"""
from __future__ import annotations

import os
from urllib.parse import unquote, urlsplit

from oslo_log import log as logging
from tempest.common import waiters
from tempest import config
from tempest.lib.common.utils import data_utils
from tempest.lib.common.utils import test_utils
from tempest.lib import decorators
from tempest.scenario import manager

from image_handlers.tempest_plugin import images, storage

CONF = config.CONF
LOG = logging.getLogger(__name__)


class BootPathBase(manager.ScenarioTest):
    """Upload into one store, boot, then ask the storage. Subclasses name what
    they need in ``needs`` (options of [image_handlers]) and ``handler``; the
    class is skipped before any credentials are made when one is missing."""

    compute_min_microversion = '2.37'      # networks='none'
    needs: tuple[str, ...] = ()
    handler: str | None = None

    @classmethod
    def skip_checks(cls):
        # Ours first: they say which [image_handlers] option is missing.
        image = CONF.image_handlers.raw_image_file
        if not image:
            raise cls.skipException('[image_handlers] raw_image_file is not set: no '
                                    'RAW image to boot')
        if not os.path.isfile(image):
            raise cls.skipException(f'[image_handlers] raw_image_file {image} does '
                                    f'not exist on this host')
        for option in cls.needs:
            if not getattr(CONF.image_handlers, option):
                raise cls.skipException(f'[image_handlers] {option} is not set')
        enabled = [h.strip() for h in CONF.image_handlers.enabled_handlers]
        if cls.handler and cls.handler not in enabled:
            raise cls.skipException(f'{cls.handler} is not in [image_handlers] '
                                    f'enabled_handlers ({enabled})')
        if not (CONF.service_available.nova and CONF.service_available.glance):
            raise cls.skipException('Nova and Glance are needed')
        super().skip_checks()

    @classmethod
    def setup_credentials(cls):
        # No Neutron resources: the servers boot with networks='none'.
        cls.set_network_resources()
        super(manager.ScenarioTest, cls).setup_credentials()

    @classmethod
    def setup_clients(cls):
        super().setup_clients()
        cls.admin_image_client = cls.os_admin.image_client_v2

    # -- helpers ----------------------------------------------------------------------

    def _upload(self, store: str) -> dict:
        """A private RAW image with the file's bytes, in Glance store ``store``
        (multi-store ``X-Image-Meta-Store``; '' lets Glance choose); the admin's
        view of its record. Deleted after the test."""
        name = data_utils.rand_name(prefix=CONF.resource_name_prefix,
                                    name=f'{self.__class__.__name__}-{store or "default"}')
        return images.upload_raw(
            self.image_client, self.admin_image_client,
            CONF.image_handlers.raw_image_file, store, name,
            on_created=lambda image_id: self.addCleanup(
                test_utils.call_and_ignore_notfound_exc,
                self.admin_image_client.delete_image, image_id))

    def _boot(self, image_id: str) -> dict:
        """A server from the image, ACTIVE within boot_timeout, deleted after."""
        name = data_utils.rand_name(prefix=CONF.resource_name_prefix,
                                    name=self.__class__.__name__ + '-server')
        server = self.servers_client.create_server(
            name=name, imageRef=image_id, flavorRef=CONF.compute.flavor_ref,
            networks='none')['server']
        self.addCleanup(waiters.wait_for_server_termination,
                        self.servers_client, server['id'])
        self.addCleanup(test_utils.call_and_ignore_notfound_exc,
                        self.servers_client.delete_server, server['id'])
        extra = max(0, CONF.image_handlers.boot_timeout
                    - self.servers_client.build_timeout)
        waiters.wait_for_server_status(self.servers_client, server['id'], 'ACTIVE',
                                       extra_timeout=extra)
        return server

    def _compute_log(self) -> str:
        path = CONF.image_handlers.compute_log_file
        try:
            with open(path, errors='replace') as f:
                return f.read()
        except OSError as exc:
            self.fail(f'[image_handlers] compute_log_file {path}: {exc}')


class RbdCloneBootTest(BootPathBase):
    needs = ('rbd_store',)
    handler = 'rbd_clone'

    @decorators.idempotent_id('6f0f8a2e-5c1b-4a4e-9d0e-1b7e3a9c2d01')
    def test_rbd_clone_root_disk(self):
        """The root disk ``<server>_disk`` in Nova's pool is an RBD clone whose
        parent is the image's protected snapshot ``<image>@snap``."""
        ih = CONF.image_handlers
        image = self._upload(ih.rbd_store)
        source = storage.parse_rbd_url(storage.location_of(image, 'rbd'))
        self.assertEqual(image['id'], source.image)
        server = self._boot(image['id'])
        disk = f'{server["id"]}_disk'
        parent = storage.rbd_parent(ih.ceph_conf, ih.ceph_user, ih.ceph_keyring,
                                    ih.rbd_instances_pool, disk)
        self.assertIsNotNone(parent, f'{ih.rbd_instances_pool}/{disk} has no parent: '
                                     f'its bytes were copied, not cloned')
        self.assertEqual((source.pool, image['id'], 'snap'),
                         (parent.pool, parent.image, parent.snapshot),
                         f'{ih.rbd_instances_pool}/{disk} is not a clone of the '
                         f'image\'s snapshot')


class SharedFsBootTest(BootPathBase):
    needs = ('shared_fs_store', 'instances_path')
    handler = 'shared_fs'

    @decorators.idempotent_id('0a7d4c55-2f5e-4d0c-8b77-3c2e9f1a6b02')
    def test_shared_fs_root_disk(self):
        """The root disk comes from Glance's file without a copy: ``_base`` is a
        hard link or reflink of it, or the disk is an overlay on a pin of it."""
        ih = CONF.image_handlers
        image = self._upload(ih.shared_fs_store)
        glance_file = unquote(urlsplit(storage.location_of(image, 'file')).path)
        server = self._boot(image['id'])
        evidence = storage.shared_fs_evidence(ih.instances_path, image['id'],
                                              server['id'], glance_file)
        LOG.info('image %s: root disk of server %s: %s', image['id'], server['id'],
                 evidence)


class NoZeroCopyBootTest(BootPathBase):
    needs = ('compute_log_file',)

    @decorators.idempotent_id('c3b1e9d4-7a26-4f8e-a5d3-9e0b2c4f7a03')
    def test_no_zero_copy_reason_logged(self):
        """An image only a copy can serve (a store no zero-copy handler reads):
        the server boots, and nova-compute's log gives every enabled zero-copy
        handler's reason and a full copy."""
        ih = CONF.image_handlers
        store = ih.fallback_store or self._default_store()
        zero_copy = [h for h in ih.enabled_handlers if h in storage.ZERO_COPY_HANDLERS]
        image = self._upload(store)
        self._boot(image['id'])
        path = storage.logged_path(self._compute_log(), image['id'])
        self.assertTrue(path.lines, f'nova-compute logged nothing about image '
                                    f'{image["id"]} in {ih.compute_log_file}')
        for handler in zero_copy:
            self.assertIn(handler, path.refusals,
                          f'no reason logged for {handler}: {path.lines}')
            self.assertTrue(all(path.refusals[handler]))
        self.assertTrue(path.full_copy, f'no full copy logged: {path.lines}')
        self.assertFalse(set(path.provided_by) & set(storage.ZERO_COPY_HANDLERS),
                         f'a zero-copy handler provided it: {path.lines}')

    def _default_store(self) -> str:
        """Glance's default store, when no zero-copy store is it; else skip."""
        ih = CONF.image_handlers
        stores = self.admin_image_client.info_stores().get('stores') or []
        default = next((s['id'] for s in stores if s.get('default')), None)
        if default is None:
            raise self.skipException('[image_handlers] fallback_store is not set and '
                                     'Glance names no default store')
        if default in (ih.rbd_store, ih.shared_fs_store):
            raise self.skipException(f'[image_handlers] fallback_store is not set and '
                                     f'Glance\'s default store {default} is served '
                                     f'zero-copy')
        return default
