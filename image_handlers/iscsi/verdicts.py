"""What this host learnt of a LUN: its bytes hash to the image (verified), or they
do not (refused from then on). Kept in ``state_dir/lun-verdicts/<image_id>.json``
(sealed: trust.verdicts) and keyed by the LUN's identity (URL, SCSI serial, size),
so a re-exported or resized LUN is verified again."""
from __future__ import annotations

from image_handlers.trust.verdicts import SourceVerdicts


class LunVerdicts(SourceVerdicts):
    def __init__(self, state_dir: str) -> None:
        super().__init__(state_dir, 'lun-verdicts')
