"""The lab cloud (tools/lab/cloud.py) for the real-boot tests: started once per
session, stopped at its end (a cloud someone else started is reused and left up).

Everything in it is real (Keystone, Glance, Placement, Nova's services from the
patched Nova, RabbitMQ, Ceph, libvirt with TCG guests) except Neutron, which the
issue's cloud does not have: tools/lab/neutron_standin.py answers the empty port
listings Nova reads when it deletes a server booted with networks 'none'.
"""
from __future__ import annotations

import pytest

from tools.lab.cloud import CloudService


@pytest.fixture(scope='session')
def cloud(tmp_path_factory):
    """The cloud; its parts' logs are copied under the session's tmp dir
    (cloud-logs/<part>/) before it stops, to read after a failure."""
    svc = CloudService(images_type='rbd').start()
    yield svc
    svc.copy_logs(tmp_path_factory.mktemp('cloud-logs'))
    if not svc.reused:
        svc.stop()
