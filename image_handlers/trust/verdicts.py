"""What this host learnt of a source's bytes, kept so later disks are O(1): "the
source with this identity met this Expectation" (good) or "did not" (bad, refused
from then on).

Verdicts live under ``state_dir`` (host-local, owned by the service user, mode
0600, written whole by tmp + fsync + rename) and are sealed with an HMAC under a
host key (``state_dir/verdict.key``, 0600, made on first use): a verdict file
edited by hand, copied from another host or written by another user does not
unseal, is ignored with a warning, and the source is verified again. The key
proves a verdict was written by this service on this host; it is no defence
against someone who can read the key (root, the service user), who could as
well change the image handlers themselves.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import stat
import time

from oslo_log import log as logging

from image_handlers import statefile
from image_handlers.statefile import file_name_of

LOG = logging.getLogger(__name__)

KEY_FILE = 'verdict.key'
SEAL_VERSION = 1


def host_key(state_dir: str) -> bytes:
    """This host's verdict key, made (0600, O_EXCL) on first use."""
    path = os.path.join(os.path.abspath(state_dir), KEY_FILE)
    for _ in range(2):
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                             | os.O_CLOEXEC, 0o600)
            except FileExistsError:
                continue            # made by another process meanwhile: read it
            with os.fdopen(fd, 'wb') as f:
                f.write(secrets.token_bytes(32))
                f.flush()
                os.fsync(f.fileno())
            continue
        with os.fdopen(fd, 'rb') as f:
            st = os.fstat(f.fileno())
            if st.st_uid != os.geteuid() or st.st_mode & 0o077:
                raise ValueError(f'{path} is owned by uid {st.st_uid} with mode '
                                 f'{st.st_mode & 0o777:o}: it must be the service '
                                 f'user\'s, mode 0600')
            key = f.read()
        if len(key) >= 32:
            return key
        raise ValueError(f'{path} holds {len(key)} bytes, not a verdict key: remove '
                         f'it (every verdict is then verified again)')
    raise ValueError(f'cannot read or make {path}')


def seal(doc: dict, key: bytes) -> dict:
    body = json.dumps(doc, sort_keys=True, separators=(',', ':'))
    return {'seal': SEAL_VERSION, 'body': body,
            'hmac': hmac.new(key, body.encode(), hashlib.sha256).hexdigest()}


def unseal(sealed, key: bytes) -> dict:
    """The document; ValueError when it was not sealed with ``key`` as it is."""
    if not isinstance(sealed, dict) or sealed.get('seal') != SEAL_VERSION:
        raise ValueError('not a sealed verdict file')
    body, mac = sealed.get('body'), sealed.get('hmac')
    if not isinstance(body, str) or not isinstance(mac, str):
        raise ValueError('not a sealed verdict file')
    good = hmac.new(key, body.encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(good, mac):
        raise ValueError('its seal does not match its contents (edited by hand, or '
                         'written on another host)')
    doc = json.loads(body)
    if not isinstance(doc, dict):
        raise ValueError('not a verdict document')
    return doc


def read_sealed(path: str, state_dir: str) -> dict | None:
    """The unsealed document at ``path``, None when there is none; ValueError when
    it is not this service's own (owner, mode, seal)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ValueError(exc.strerror) from None
    with os.fdopen(fd, 'rb') as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise ValueError('not a regular file')
        if st.st_uid != os.geteuid() or st.st_mode & 0o077:
            raise ValueError(f'owned by uid {st.st_uid} with mode '
                             f'{st.st_mode & 0o777:o}: another user could have '
                             f'written it')
        raw = f.read(1 << 20)
    try:
        return unseal(json.loads(raw), host_key(state_dir))
    except json.JSONDecodeError as exc:
        raise ValueError(f'does not parse: {exc}') from None


def write_sealed(path: str, doc: dict, state_dir: str) -> None:
    statefile.write_json(path, seal(doc, host_key(state_dir)))


class SourceVerdicts:
    """Verdicts of one kind of source (an RBD snapshot, a LUN), per image, keyed
    by the source's identity string; each names what it proved (Expectation.key)."""

    def __init__(self, state_dir: str, kind: str) -> None:
        self.state_dir = state_dir
        self.directory = os.path.join(state_dir, kind)

    def path(self, image_id: str) -> str:
        return os.path.join(self.directory,
                            file_name_of(image_id, 'a verdict file') + '.json')

    def _load(self, image_id: str) -> dict:
        empty = {'good': {}, 'bad': {}}
        path = self.path(image_id)
        try:
            doc = read_sealed(path, self.state_dir)
        except ValueError as exc:
            LOG.warning('ignoring verdict file %s (%s): image %s is verified again',
                        path, exc, image_id)
            return empty
        if doc is None or doc.get('image_id') != image_id:
            return empty
        good, bad = doc.get('good'), doc.get('bad')
        return {'good': dict(good) if isinstance(good, dict) else {},
                'bad': dict(bad) if isinstance(bad, dict) else {}}

    def verified(self, image_id: str, key: str, identity: str) -> bool:
        """True when this source, as it is now, was found to meet ``key``."""
        entry = self._load(image_id)['good'].get(identity)
        return isinstance(entry, dict) and entry.get('checksum') == key

    def refused(self, image_id: str, identity: str) -> str | None:
        """Why this source was found not to hold the image, or None."""
        entry = self._load(image_id)['bad'].get(identity)
        return entry.get('reason') if isinstance(entry, dict) else None

    def record(self, image_id: str, key: str, identity: str,
               bad_reason: str | None = None) -> None:
        doc = self._load(image_id)
        entry = {'checksum': key, 'at': time.time()}
        if bad_reason is None:
            doc['good'][identity] = entry
            doc['bad'].pop(identity, None)
        else:
            doc['bad'][identity] = dict(entry, reason=bad_reason)
            doc['good'].pop(identity, None)
        write_sealed(self.path(image_id), {'image_id': image_id, **doc}, self.state_dir)
