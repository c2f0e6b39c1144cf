"""A copy killed with SIGKILL resumes, in a new process, from its checkpoint."""
from __future__ import annotations

import os
import sys

from image_handlers.copy import copy
from tests.copy.helpers import kill_9_at_checkpoint, sha512

MiB = 1 << 20
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CHILD = '''
import sys
from image_handlers.copy import Checksum, CopyOptions, copy
opts = CopyOptions(buffer_size=256 << 10, checkpoint_interval=512 << 10)
copy(sys.argv[1], sys.argv[2], checksum=Checksum.parse(sys.argv[3]),
     options=opts).wait()
'''


def test_kill_9_then_a_new_process_resumes(servers, options, image, tmp_path):
    server = servers(image)
    server.faults.pause_after = 3 * MiB + 1234
    target = str(tmp_path / 'disk')
    env = dict(os.environ, PYTHONPATH=REPO)
    seen = kill_9_at_checkpoint([sys.executable, '-c', CHILD, server.url, target,
                                 str(sha512(image))], target, 3 * MiB, cwd=REPO,
                                env=env)
    assert seen == 3 * MiB      # the server paused there

    server.faults.pause_after = None
    server.resume.set()
    sent_before = server.bytes_sent
    result = copy(server.url, target, checksum=sha512(image), options=options).wait(60)

    assert result.resumed_from == 3 * MiB
    assert server.bytes_sent - sent_before == len(image) - 3 * MiB
    with open(target, 'rb') as f:
        assert f.read() == image
    assert os.listdir(tmp_path) == ['disk']
