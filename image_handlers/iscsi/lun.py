"""One LUN as qemu opens it: portal, target, LUN, and CHAP by reference.

The CHAP password never reaches a command line (``ps`` shows those), a log, a
result or a qcow2 header: qemu reads it from a 0600 file through a secret object
(``--object secret,id=...,file=...``), and headers and results carry only the id.
"""
from __future__ import annotations

import dataclasses
import json
import re

from image_handlers.locations import IscsiLocation

_ID_SAFE = re.compile(r'[^A-Za-z0-9_-]')


@dataclasses.dataclass(frozen=True)
class LunSpec:
    portal: str                  # host:port
    iqn: str
    lun: int
    user: str | None = None
    secret_file: str | None = None   # 0600 file holding the CHAP password
    secret_ref: str | None = None

    @classmethod
    def of(cls, location: IscsiLocation, secret_file: str | None) -> 'LunSpec':
        return cls(portal=location.portal, iqn=location.iqn, lun=location.lun,
                   user=location.chap_user, secret_file=secret_file,
                   secret_ref=location.chap_secret_ref)

    @property
    def url(self) -> str:
        """The LUN's URL, without credentials (safe to print and to record)."""
        return f'iscsi://{self.portal}/{self.iqn}/{self.lun}'

    @property
    def secret_id(self) -> str | None:
        if not self.user:
            return None
        return 'ih-chap-' + _ID_SAFE.sub('_', self.secret_ref or 'lun')

    def objects(self) -> list[str]:
        """qemu command line arguments defining the CHAP secret, if any."""
        if not self.user:
            return []
        return ['--object', f'secret,id={self.secret_id},file={self.secret_file},'
                            f'format=raw']

    def blockdev(self) -> dict:
        """The LUN as a qemu block node (json: backing strings, --image-opts)."""
        node = {'driver': 'iscsi', 'transport': 'tcp', 'portal': self.portal,
                'target': self.iqn, 'lun': self.lun}
        if self.user:
            node.update(user=self.user, **{'password-secret': self.secret_id})
        return node

    def image_opts(self, prefix: str = '') -> str:
        """``--image-opts`` form (``prefix`` e.g. ``file.`` nests it)."""
        return ','.join(f'{prefix}{k}={v}' for k, v in self.blockdev().items())

    def backing_name(self) -> str:
        """What a qcow2 overlay records as its backing file: the URL without CHAP, a
        ``json:`` name with only the secret's id with CHAP."""
        if not self.user:
            return self.url
        return 'json:' + json.dumps({'file': self.blockdev()}, sort_keys=True)
