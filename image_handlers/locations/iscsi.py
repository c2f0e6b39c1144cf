"""iscsi://HOST[:PORT]/IQN/LUN locations (qemu's libiscsi URL form).

Strict: a portal host, an iqn./eui. target name, a decimal LUN, nothing else. A
location never carries a CHAP secret (Glance shows locations to whoever may read
them): credentials in the URL are refused. Location metadata may name the CHAP
user (``chap_user``) and a *reference* to a secret held in this host's config
(``chap_secret``), never the secret itself.
"""
from __future__ import annotations

import dataclasses
import re
import urllib.parse

from image_handlers.locations.base import Location

_IQN = re.compile(r'^(iqn\.\d{4}-\d{2}\.[a-z0-9.-]+(:[A-Za-z0-9.:_-]+)?|eui\.[0-9A-Fa-f]{16})$')
_REF = re.compile(r'^[A-Za-z0-9_.-]{1,64}$')
_USER = re.compile(r'^[A-Za-z0-9_.@-]{1,255}$')


@dataclasses.dataclass(frozen=True)
class IscsiLocation(Location):
    scheme = 'iscsi'
    host: str = ''
    port: int = 3260
    iqn: str = ''
    lun: int = 0
    chap_user: str | None = None
    chap_secret_ref: str | None = None

    @classmethod
    def from_url(cls, url, metadata=None, index=0):
        metadata = metadata or {}
        loc = cls(url=url, metadata=metadata, index=index)
        try:
            parts = urllib.parse.urlsplit(url)
            port = parts.port or 3260
        except ValueError as exc:
            raise loc.invalid(str(exc))
        if '@' in parts.netloc:
            raise loc.invalid('credentials in a location URL are refused (anyone who '
                              'can read the image sees them): give "chap_user" and a '
                              '"chap_secret" reference in the location metadata')
        if not parts.hostname:
            raise loc.invalid('no portal host')
        if parts.query or parts.fragment:
            raise loc.invalid('query or fragment not allowed')
        segs = parts.path.strip('/').split('/')
        if len(segs) != 2:
            raise loc.invalid('expected iscsi://HOST[:PORT]/IQN/LUN')
        iqn = urllib.parse.unquote(segs[0])
        if not _IQN.fullmatch(iqn):
            raise loc.invalid(f'{iqn!r} is not an iqn. or eui. name')
        if not segs[1].isdigit() or not segs[1].isascii() or int(segs[1]) > 16383:
            raise loc.invalid(f'LUN {segs[1]!r} is not a number from 0 to 16383')
        user, ref = metadata.get('chap_user'), metadata.get('chap_secret')
        if (user is None) != (ref is None):
            raise loc.invalid('metadata must give both chap_user and chap_secret, or '
                              'neither')
        if user is not None and not (isinstance(user, str) and _USER.fullmatch(user)):
            raise loc.invalid(f'chap_user {user!r} is not a plain user name')
        if ref is not None and not (isinstance(ref, str) and _REF.fullmatch(ref)):
            raise loc.invalid(f'chap_secret {ref!r} is not a secret reference (a name '
                              f'configured on the host, [image_handlers] '
                              f'iscsi_chap_secrets)')
        return cls(url=url, metadata=metadata, index=index, host=parts.hostname.lower(),
                   port=port, iqn=iqn, lun=int(segs[1]), chap_user=user,
                   chap_secret_ref=ref)

    @property
    def portal(self) -> str:
        return f'{self.host}:{self.port}'

    @property
    def endpoint_key(self) -> str:
        return f'iscsi://{self.portal}'
