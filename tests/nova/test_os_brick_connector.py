"""iscsi_cor's kernel-initiator connector, driving os-brick's real ISCSIConnector
(os-brick 7 from Nova's environment) with os-brick's COMMAND EXECUTION REPLACED:
this machine's kernel has no iSCSI initiator (no iscsi_tcp), so iscsiadm cannot
log in here. Everything above the commands is os-brick's own code.

What the tests show: the connector hands os-brick the LUN's portal, target, LUN and
CHAP account; os-brick drives iscsiadm accordingly (discovery-less node entry,
CHAP, login); when no device appears (none can here), the error is ours and clear and os-brick has
logged out and removed the node again; detaching a recorded attachment logs out.
"""
from __future__ import annotations

import pytest
from oslo_concurrency import lockutils

from image_handlers import exceptions
from image_handlers.iscsi import connectors
from image_handlers.iscsi.lun import LunSpec

IQN = 'iqn.2026-12.lab.image-handlers:brick'


class FakeIscsiadm:
    """Answers os-brick's iscsiadm calls as open-iscsi would on a host whose kernel
    never shows the LUN (as here): the login works, no SCSI device appears. Records
    every command."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, ...]] = []
        self.sessions: set[tuple[str, str]] = set()

    def __call__(self, *cmd, **kwargs):
        cmd = tuple(str(c) for c in cmd)
        self.calls.append(cmd)
        if cmd[:1] != ('iscsiadm',):
            return '', ''
        if cmd[1:3] == ('-m', 'session'):
            return ''.join(f'tcp: [{i}] {portal},1 {iqn} (non-flash)\n'
                           for i, (portal, iqn) in enumerate(sorted(self.sessions), 1)
                           ), ''
        target = cmd[cmd.index('-T') + 1] if '-T' in cmd else None
        portal = cmd[cmd.index('-p') + 1] if '-p' in cmd else None
        if '--login' in cmd:
            self.sessions.add((portal, target))
        if '--logout' in cmd:
            self.sessions.discard((portal, target))
        if 'node.session.scan' in cmd:
            return '', 'iscsiadm: manual scan not supported'   # os-brick then waits
        return '', ''                                          # for the kernel's scan

    def iscsiadm(self, *words: str) -> list[tuple[str, ...]]:
        return [c for c in self.calls if c[0] == 'iscsiadm'
                and all(w in c for w in words)]


@pytest.fixture
def brick(tmp_path):
    lockutils.set_defaults(str(tmp_path / 'locks'))
    import os_brick.privileged as privileged
    privileged.default.set_client_mode(False)     # root here: no privsep daemon
    fake = FakeIscsiadm()
    return fake, connectors.OsBrickConnector(execute=fake, root_helper='true',
                                             device_scan_attempts=0)


def test_os_brick_with_command_execution_replaced_logs_in_with_chap_and_cleans_up(
        brick, tmp_path):
    fake, connector = brick
    secret = tmp_path / 'chap'
    secret.write_text('brick-secret')
    spec = LunSpec('127.0.0.1:3260', IQN, 1, user='imguser', secret_file=str(secret),
                   secret_ref='images')

    with pytest.raises(exceptions.SourceError, match=f'os-brick could not attach '
                                                     f'iscsi://127.0.0.1:3260/{IQN}/1'):
        connector.attach(spec)        # no kernel initiator: no device ever appears

    assert fake.iscsiadm('-m', 'node', '-T', IQN, '-p', '127.0.0.1:3260')
    assert fake.iscsiadm('node.session.auth.authmethod', 'CHAP')
    assert fake.iscsiadm('node.session.auth.username', 'imguser')
    assert fake.iscsiadm('node.session.auth.password', 'brick-secret')
    assert fake.iscsiadm('-T', IQN, '--login')
    # os-brick undid what it did: logged out and removed the node entry.
    assert fake.iscsiadm('-T', IQN, '--logout') and fake.iscsiadm('-T', IQN, 'delete')
    assert fake.sessions == set()


def test_os_brick_with_command_execution_replaced_detaches_a_recorded_attachment(
        brick):
    fake, connector = brick
    record = connectors.Attachment(
        'kernel', '/dev/sdx', 'host logged in',
        device={'type': 'block', 'path': '/dev/sdx', 'scsi_wwn': 'w'},
        properties={'target_portal': '127.0.0.1:3260', 'target_iqn': IQN,
                    'target_lun': 1, 'auth_password': 'never-kept'})
    kept = record.record()
    assert 'auth_password' not in kept['properties']      # jobs never keep secrets
    connector.detach(record)
    assert fake.calls, 'os-brick ran no command to detach'
