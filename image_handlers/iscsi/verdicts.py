"""What this host learnt of a LUN: its bytes hash to the image (verified), or they
do not (refused from then on). Kept in ``state_dir/lun-verdicts/<image_id>.json``
and keyed by the LUN's identity (URL, SCSI serial, size), so a re-exported or
resized LUN is verified again."""
from __future__ import annotations

import os
import time

from oslo_log import log as logging

from image_handlers import statefile
from image_handlers.shared_fs.names import file_name_of

LOG = logging.getLogger(__name__)


class LunVerdicts:
    def __init__(self, state_dir: str) -> None:
        self.directory = os.path.join(state_dir, 'lun-verdicts')

    def _path(self, image_id: str) -> str:
        return os.path.join(self.directory,
                            file_name_of(image_id, 'a LUN verdict') + '.json')

    def _load(self, image_id: str) -> dict:
        try:
            doc = statefile.read_json(self._path(image_id)) or {}
        except ValueError as exc:
            LOG.warning('ignoring unreadable LUN verdicts of image %s: %s', image_id, exc)
            return {'good': {}, 'bad': {}}
        if not isinstance(doc, dict):
            return {'good': {}, 'bad': {}}
        return {'good': dict(doc.get('good') or {}), 'bad': dict(doc.get('bad') or {})}

    def verified(self, image_id: str, checksum: str, identity: str) -> bool:
        entry = self._load(image_id)['good'].get(identity)
        return isinstance(entry, dict) and entry.get('checksum') == checksum

    def refused(self, image_id: str, identity: str) -> str | None:
        """Why this LUN was found not to hold the image, or None."""
        entry = self._load(image_id)['bad'].get(identity)
        return entry.get('reason') if isinstance(entry, dict) else None

    def record(self, image_id: str, checksum: str, identity: str,
               bad_reason: str | None = None) -> None:
        doc = self._load(image_id)
        if bad_reason is None:
            doc['good'][identity] = {'checksum': checksum, 'at': time.time()}
            doc['bad'].pop(identity, None)
        else:
            doc['bad'][identity] = {'checksum': checksum, 'reason': bad_reason,
                                    'at': time.time()}
            doc['good'].pop(identity, None)
        statefile.write_json(self._path(image_id), doc)
