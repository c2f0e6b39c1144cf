"""Attaching a LUN: one small interface, one class per initiator, a factory by name
(os-brick's shape).

- ``qemu``: qemu's userspace initiator (libiscsi). Nothing is attached on the host:
  whoever opens the disk (qemu-img, qemu-nbd, the guest's qemu) logs in to the
  target itself and logs out when it closes the disk. The overlay's backing file is
  the LUN's URL (or a ``json:`` name carrying only the CHAP secret's id).
- ``kernel``: os-brick's ISCSI connector logs the host in and gives a block device,
  which becomes the backing file; the fill job's end disconnects it. It needs the
  kernel's iscsi_tcp module (absent on the lab machine: its tests replace only
  os-brick's command execution).
"""
from __future__ import annotations

import abc
import dataclasses
import os
from typing import Any, Callable, ClassVar

from image_handlers import exceptions
from image_handlers.iscsi.lun import LunSpec


@dataclasses.dataclass(frozen=True)
class Attachment:
    connector: str
    backing: str                 # what the overlay records as its backing file
    description: str             # what keeps the LUN reachable, for the result
    device: dict[str, Any] | None = None     # os-brick's device_info
    properties: dict[str, Any] | None = None  # os-brick's connection properties

    def record(self) -> dict[str, Any]:
        """What a job keeps to detach later (never the CHAP password)."""
        props = dict(self.properties or {})
        props.pop('auth_password', None)
        return {'connector': self.connector, 'backing': self.backing,
                'device': self.device, 'properties': props}


class Connector(abc.ABC):
    name: ClassVar[str]

    @abc.abstractmethod
    def attach(self, spec: LunSpec) -> Attachment:
        """Make the LUN reachable as a backing file; raise with a clear message."""

    @abc.abstractmethod
    def detach(self, attachment: Attachment) -> None:
        """Undo ``attach``; safe to call twice."""


class QemuConnector(Connector):
    name = 'qemu userspace initiator'

    def attach(self, spec: LunSpec) -> Attachment:
        return Attachment(
            'qemu', spec.backing_name(),
            'no host attachment: qemu\'s userspace initiator logs in to '
            f'{spec.portal} while the disk is open')

    def detach(self, attachment: Attachment) -> None:
        return None


class OsBrickConnector(Connector):
    """os-brick's ISCSIConnector; ``execute`` replaces its command execution (the
    lab's tests do, since this kernel has no iSCSI initiator)."""

    name = 'os-brick ISCSI connector (kernel initiator)'

    def __init__(self, execute: Callable | None = None,
                 root_helper: str = 'sudo', **connector_args) -> None:
        try:
            from os_brick.initiator.connectors import iscsi
        except ImportError:
            raise exceptions.ConfigError(
                'iscsi_initiator = kernel needs os-brick: pip install os-brick') from None
        kwargs = {'execute': execute} if execute else {}
        self._connector = iscsi.ISCSIConnector(root_helper, **kwargs, **connector_args)

    def attach(self, spec: LunSpec) -> Attachment:
        props = {'target_portal': spec.portal, 'target_iqn': spec.iqn,
                 'target_lun': spec.lun, 'volume_id': f'{spec.iqn}-{spec.lun}'}
        if spec.user:
            with open(spec.secret_file, encoding='utf-8') as f:
                props.update(auth_method='CHAP', auth_username=spec.user,
                             auth_password=f.read())
        try:
            device = self._connector.connect_volume(props)
        except Exception as exc:  # noqa: BLE001 - os-brick raises many kinds
            raise exceptions.SourceError(f'os-brick could not attach {spec.url}: '
                                         f'{exc}') from None
        return Attachment('kernel', device['path'],
                          f'host logged in to {spec.portal}, LUN at {device["path"]}',
                          device=dict(device), properties=props)

    def detach(self, attachment: Attachment) -> None:
        props = dict(attachment.properties or {})
        self._connector.disconnect_volume(props, attachment.device or {},
                                          force=True, ignore_errors=True)


def kernel_initiator_present() -> bool:
    return os.path.isdir('/sys/module/iscsi_tcp')


def connector_for(choice: str) -> Connector:
    """The connector ``[image_handlers] iscsi_initiator`` asks for."""
    if choice == 'kernel' or (choice == 'auto' and kernel_initiator_present()):
        return OsBrickConnector()
    return QemuConnector()
