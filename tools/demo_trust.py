"""The demo's trust part: a signed image in a cloud with a real Keystone and
Barbican. The signing certificate goes to Barbican, the image into Glance's rbd
store (Glance behind Keystone); with ``verify_glance_signatures`` the first clone
reads the snapshot once, the second is O(1), and an image whose signature was
made over other bytes is refused by the clone and by the copy."""
from __future__ import annotations

import io
import os
import subprocess
from pathlib import Path
from typing import Callable

from tools.lab import BarbicanService, GlanceService, KeystoneService, signing
from tools.lab.keystone import nova_conf_keystone


def demo_trust(banner: Callable[[str], None], run: Callable, ceph, work: Path,
               data: bytes) -> None:
    keystone = KeystoneService(name='demo-keystone')
    barbican = BarbicanService(keystone, name='demo-barbican')
    glance = GlanceService(name='demo-glance-ks', keystone=keystone, ceph=ceph)
    try:
        banner('signatures on every path: a real Keystone, Barbican, and a Glance '
               'behind Keystone')
        keystone.start()
        barbican.start()
        glance.start()
        ca, ca_key = signing.make_ca('demo CA')
        cert, key = signing.make_signing_cert(ca, ca_key, 'demo signer')
        cert_uuid = signing.store_certificate(
            cert, signing.request_context(keystone, 'nova', 'service'),
            signing.private_conf(keystone))
        print(f'signing certificate stored in Barbican as {cert_uuid}')
        client = glance.keystone_client('nova', 'service')
        conf = work / 'nova-trust.conf'
        conf.write_text(nova_conf_keystone(keystone).replace(
            '[glance]\n', '[glance]\nverify_glance_signatures = true\n', 1) + f"""
[libvirt]
images_rbd_pool = vms
images_rbd_ceph_conf = {ceph.conf_path}
rbd_user = admin

[image_handlers]
handlers = rbd_clone, stream_copy
state_dir = {work}/state-trust
""")
        print(f'nova.conf as devstack writes it (catalog, service user, barbican): '
              f'{conf}')
        made = []
        for name, signed in (('demo-signed', data), ('demo-badly-signed', data[1:])):
            img = client.images.create(name=name, disk_format='raw',
                                       container_format='bare')
            client.images.upload(img['id'], io.BytesIO(data), image_size=len(data),
                                 backend='ceph')
            client.images.update(img['id'], **signing.sign(
                signed, key, certificate_uuid=cert_uuid))
            made.append(img['id'])
        c = ['--config-file', str(conf)]
        banner('a signed image: the first clone reads the snapshot once')
        run('explain', made[0], 'rbd:vms/demo-signed-1', *c)
        run('fetch', made[0], 'rbd:vms/demo-signed-1', *c)
        banner('the second clone of it: the verdict is reused, O(1)')
        run('explain', made[0], 'rbd:vms/demo-signed-2', *c)
        run('fetch', made[0], 'rbd:vms/demo-signed-2', *c)
        banner('a signature made over other bytes: refused by clone and copy (exit 1)')
        run('fetch', made[1], 'rbd:vms/demo-badly-signed', *c)
        run('fetch', made[1], str(work / 'badly-signed.raw'), *c)
        for disk in ('vms/demo-signed-1', 'vms/demo-signed-2'):
            subprocess.run(['rbd', 'rm', disk], env={**os.environ, **ceph.env()},
                           capture_output=True)
        for image_id in made:
            client.images.delete(image_id)
    finally:
        glance.stop()
        barbican.stop()
        keystone.stop()

