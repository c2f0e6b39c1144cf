"""The real ``image-handlers`` command as operators type it (issue 10): the
progress bar only on a terminal, never in piped output or --json; --config-file
before the command; a missing nova.conf named. No lab: a local HTTP server
serves the image."""
from __future__ import annotations

import fcntl
import functools
import hashlib
import http.server
import json
import os
import pty
import struct
import subprocess
import termios
import threading

import pytest

from tests.functional.conftest import VENV_BIN

MiB = 1 << 20


@pytest.fixture(scope='module')
def http_image(tmp_path_factory):
    """(url, sha256) of a 24 MiB file on a loopback HTTP server."""
    root = tmp_path_factory.mktemp('srv')
    data = b''.join(hashlib.sha512(str(i).encode()).digest() for i in range(24 * MiB // 64))
    (root / 'img.raw').write_bytes(data)
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield (f'http://127.0.0.1:{server.server_address[1]}/img.raw',
           hashlib.sha256(data).hexdigest())
    server.shutdown()
    server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def conf_file(tmp_path):
    path = tmp_path / 'nova.conf'
    # slow enough (8 MiB/s) that the bar is redrawn a few times
    path.write_text(f'[image_handlers]\nstate_dir = {tmp_path / "state"}\n'
                    'bandwidth_limit = 8388608\ncopy_buffer_size = 1048576\n')
    return str(path)


def _on_a_terminal(*args: str, timeout: float = 120) -> tuple[int, str, str]:
    """Run the command with stderr on a pseudo-terminal, stdout on a pipe:
    (exit status, stdout, what the terminal showed)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack('HHHH', 40, 160, 0, 0))
    proc = subprocess.Popen([os.path.join(VENV_BIN, 'image-handlers'), *args],
                            stdout=subprocess.PIPE, stderr=slave, text=True)
    os.close(slave)
    shown = bytearray()
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:             # EIO: the command closed the terminal
            break
        if not chunk:
            break
        shown += chunk
    out = proc.stdout.read()
    rc = proc.wait(timeout)
    os.close(master)
    return rc, out, shown.decode(errors='replace')


def test_copy_on_a_terminal_draws_the_bar_on_stderr_only(http_image, conf_file,
                                                         tmp_path):
    url, sha = http_image
    rc, out, shown = _on_a_terminal('--config-file', conf_file, 'copy', url,
                                    str(tmp_path / 'a.raw'), '--checksum',
                                    f'sha256:{sha}', '--json')
    assert rc == 0, shown
    assert json.loads(out)['bytes_copied'] == 24 * MiB      # stdout: the object only
    assert f'copy of {url} [' in shown
    assert '%' in shown and 'MiB/s' in shown and 'ETA' in shown
    assert '100.0% 24.0 MiB of 24.0 MiB' in shown
    assert shown.count('\r') > 3
    # a log line never lands inside the bar: each starts on a clean line
    for line in shown.replace('\r\x1b[K', '\n').splitlines():
        assert 'INFO' not in line or line.lstrip('\r').startswith('20'), line


def test_no_bar_when_stderr_is_not_a_terminal(cli, http_image, conf_file, tmp_path):
    url, sha = http_image
    res = cli('copy', url, str(tmp_path / 'b.raw'), '--checksum', f'sha256:{sha}',
              '--json', '--config-file', conf_file)
    assert res.rc == 0, res
    assert json.loads(res.out)['bytes_copied'] == 24 * MiB
    assert '\r' not in res.err and '\x1b[K' not in res.err and '[#' not in res.err
    assert 'copied to' in res.err                            # the logs are there


def test_no_progress_on_a_terminal(http_image, conf_file, tmp_path):
    url, sha = http_image
    rc, out, shown = _on_a_terminal('copy', url, str(tmp_path / 'c.raw'),
                                    '--config-file', conf_file, '--no-progress')
    assert rc == 0, shown
    assert '\x1b[K' not in shown and '[#' not in shown
    assert 'used: stream_copy' in out


def test_config_file_before_the_command(cli, tmp_path):
    path = tmp_path / 'nova.conf'
    path.write_text('[image_handlers]\nhandlers = shared_fs,stream_copy\n')
    res = cli('--config-file', str(path), 'handlers')
    assert res.rc == 0, res
    assert 'enabled for (default): shared_fs -> stream_copy' in res.out


def test_missing_nova_conf_is_named(cli, tmp_path):
    if os.path.exists('/etc/nova/nova.conf') or os.path.exists(
            os.path.expanduser('~/.nova/nova.conf')):
        pytest.skip('this host has a nova.conf')
    res = cli('fetch', 'any-image', str(tmp_path / 'disk'))
    assert res.rc == 2, res
    assert 'no configuration: /etc/nova/nova.conf does not exist; pass ' \
           '--config-file PATH' in res.err
    assert 'auth plugin' not in res.err
    res = cli('fetch', 'any-image', str(tmp_path / 'disk'), '--config-file',
              str(tmp_path))
    assert res.rc == 2 and f'cannot read config file {tmp_path}' in res.err
