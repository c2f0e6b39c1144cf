"""CHAP secrets held on this host, found by the reference a location names.

``[image_handlers] iscsi_chap_secrets = REF:/etc/nova/chap/REF`` maps a reference to
a file holding the password. The file must be a regular file owned by this user and
readable by nobody else: a secret any user can read is a secret no more.
"""
from __future__ import annotations

import os
import stat

from image_handlers.exceptions import Refused


def secret_file(secrets: dict[str, str], ref: str) -> str:
    """The checked file of ``ref``; Refused naming what is wrong and what to do."""
    path = secrets.get(ref)
    if not path:
        raise Refused(f'iscsi: CHAP secret reference {ref!r} is not configured on this '
                      f'host ([image_handlers] iscsi_chap_secrets = {ref}:FILE)')
    try:
        st = os.lstat(path)
    except OSError as exc:
        raise Refused(f'iscsi: CHAP secret file {path} of {ref!r}: {exc.strerror}')
    if not stat.S_ISREG(st.st_mode):
        raise Refused(f'iscsi: CHAP secret file {path} of {ref!r} is not a regular file')
    if st.st_uid != os.geteuid() or st.st_mode & 0o077:
        raise Refused(f'iscsi: CHAP secret file {path} of {ref!r} must be owned by uid '
                      f'{os.geteuid()} and readable by nobody else (chmod 600 {path})')
    with open(path, 'rb') as f:
        body = f.read()
    if not body or body.endswith((b'\n', b'\r')):
        raise Refused(f'iscsi: CHAP secret file {path} of {ref!r} is empty or ends with '
                      f'a newline, which qemu would take as part of the password: '
                      f'write the password alone (printf %s PASSWORD > {path})')
    return path
