"""A copy killed with SIGKILL resumes, in a new process, from its checkpoint."""
from __future__ import annotations

import os
import signal
import subprocess
import sys

from image_handlers.copy import copy
from tests.copy.helpers import checkpoint_offset, partial_of, sha512, wait_for

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
    child = subprocess.Popen([sys.executable, '-c', CHILD, server.url, target,
                              str(sha512(image))], cwd=REPO, env=env)
    try:
        wait_for(lambda: checkpoint_offset(target) == 3 * MiB or child.poll() is not None,
                 'the child to checkpoint 3 MiB')
        child.send_signal(signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
    assert child.returncode == -signal.SIGKILL
    assert os.path.exists(partial_of(target)) and not os.path.exists(target)

    server.faults.pause_after = None
    server.resume.set()
    sent_before = server.bytes_sent
    result = copy(server.url, target, checksum=sha512(image), options=options).wait(60)

    assert result.resumed_from == 3 * MiB
    assert server.bytes_sent - sent_before == len(image) - 3 * MiB
    assert result.checksum == sha512(image)
    with open(target, 'rb') as f:
        assert f.read() == image
    assert os.listdir(tmp_path) == ['disk']
