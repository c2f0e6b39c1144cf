"""The command line as OpenStack operators type it (issue 10): --config-file before
the command, a missing /etc/nova/nova.conf named, the progress bar's line (the
handler order per [libvirt] images_type: test_images_type_handlers.py)."""
from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys

import pytest
from oslo_config import cfg

from image_handlers import api, cli, cli_progress, exceptions
from image_handlers.copy import progress as copy_progress
from image_handlers.jobs import runner
from image_handlers.jobs.model import DONE, Job

MiB = 1 << 20


def _conf_file(tmp_path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


@pytest.fixture
def no_default_config(monkeypatch):
    """oslo.config finds none of Nova's default files, whatever this host has."""
    monkeypatch.setattr(cfg, 'find_config_files', lambda *a, **k: [])
    monkeypatch.setattr(cfg, 'find_config_dirs', lambda *a, **k: [])


# -- --config-file / --config-dir before and after the command -----------------

def test_config_files_before_the_command_come_first(tmp_path, monkeypatch, capsys):
    first = _conf_file(tmp_path, 'a.conf', '[image_handlers]\nhandlers = shared_fs\n')
    second = _conf_file(tmp_path, 'b.conf', '[image_handlers]\nhandlers = stream_copy\n')
    seen = []
    real = api.make_conf
    monkeypatch.setattr(api, 'make_conf',
                        lambda files, dirs: seen.append((files, dirs)) or real(files, dirs))
    (tmp_path / 'd').mkdir()
    assert cli.main(['--config-file', first, '--config-dir', str(tmp_path / 'd'),
                     'handlers', '--config-file', second, '--json']) == 0
    assert seen == [([first, second], [str(tmp_path / 'd')])]
    # oslo.config: a later file wins, so the one after the command does
    assert json.loads(capsys.readouterr().out)['enabled']['(default)'] == ['stream_copy']


def test_config_file_before_the_command_alone(tmp_path, capsys):
    path = _conf_file(tmp_path, 'a.conf', '[image_handlers]\nhandlers = shared_fs\n')
    assert cli.main(['--config-file', path, 'handlers', '--json']) == 0
    assert json.loads(capsys.readouterr().out)['enabled']['(default)'] == ['shared_fs']


# -- a missing or unreadable configuration ---------------------------------------

@pytest.mark.parametrize('command', ['fetch', 'explain'])
def test_no_configuration_is_named_for_commands_that_need_glance(
        command, no_default_config, tmp_path, capsys):
    rc = cli.main([command, 'some-image', str(tmp_path / 'disk'), '--json'])
    out, err = capsys.readouterr()
    assert rc == 2
    assert json.loads(out)['error_type'] == 'ConfigError'
    assert ('no configuration: /etc/nova/nova.conf does not exist; pass '
            '--config-file PATH (a nova.conf with [glance] and [image_handlers])') in err
    assert 'auth plugin' not in err


def test_commands_without_glance_need_no_configuration(no_default_config, capsys):
    assert cli.main(['handlers']) == 0
    assert 'installed handlers:' in capsys.readouterr().out


def test_a_found_default_config_is_enough(tmp_path, monkeypatch):
    """When oslo.config finds a nova.conf (e.g. ~/.nova/nova.conf) there is no
    "no configuration" error: what fails next is Glance's, not ours."""
    found = _conf_file(tmp_path, 'nova.conf', '[image_handlers]\n')
    monkeypatch.setattr(cfg, 'find_config_files', lambda *a, **k: [found])
    conf = api.make_conf()
    assert conf.config_file == [found]
    cli._require_config(conf)


def test_missing_and_unreadable_config_files_are_named(tmp_path, capsys):
    missing = str(tmp_path / 'nope.conf')
    assert cli.main(['handlers', '--config-file', missing]) == 2
    assert f'config file {missing} does not exist (--config-file)' in capsys.readouterr().err
    with pytest.raises(exceptions.ConfigError,
                       match=f'cannot read config file {tmp_path} .*Is a directory'):
        api.make_conf([str(tmp_path)])


@pytest.mark.skipif(os.geteuid() != 0, reason='needs root to become another user')
def test_a_config_file_the_user_may_not_read_is_named(tmp_path):
    path = _conf_file(tmp_path, 'secret.conf', '[glance]\n')
    os.chmod(path, 0o600)
    os.chmod(tmp_path, 0o755)
    code = ('from image_handlers import api, exceptions\n'
            'try:\n'
            f'    api.make_conf([{path!r}])\n'
            'except exceptions.ConfigError as e:\n'
            '    print(e)\n')
    try:
        proc = subprocess.run([sys.executable, '-c', code], capture_output=True,
                              text=True, user=65534, cwd='/', timeout=120)
    except PermissionError as exc:      # e.g. a checkout under a 0700 mktemp -d
        pytest.skip(f'nobody cannot execute this venv\'s python: {exc}')
    if 'Permission denied' not in proc.stdout and proc.returncode != 0:
        pytest.skip(f'cannot run the venv as nobody: {proc.stderr[-300:]}')
    assert proc.stdout.strip() == (f'cannot read config file {path} (--config-file): '
                                   f'Permission denied')


# -- the progress line -------------------------------------------------------------

def test_render_percent_rate_and_eta():
    line = cli_progress.render(25 * MiB, 100 * MiB, 5.0, label='image x', width=200)
    assert line.startswith('image x [#####               ]  25.0% ')
    assert '25.0 MiB of 100.0 MiB' in line
    assert '5.0 MiB/s' in line
    assert line.endswith('ETA 0:00:15')


def test_render_rate_counts_bytes_moved_not_resumed_ones():
    line = cli_progress.render(90 * MiB, 100 * MiB, 2.0, moved=10 * MiB, width=200)
    assert '5.0 MiB/s' in line and line.endswith('ETA 0:00:02')


def test_render_unknown_size_has_bytes_and_rate_only():
    line = cli_progress.render(3 * MiB, None, 3.0, label='copy of u', width=200)
    assert line == 'copy of u 3.0 MiB  1.0 MiB/s'
    assert '%' not in line and 'ETA' not in line


def test_render_zero_elapsed_and_nothing_moved():
    assert cli_progress.render(0, None, 0.0) == '0 B  -/s'
    line = cli_progress.render(0, 10 * MiB, 0.0, width=200)
    assert '  0.0%' in line and '-/s' in line and line.endswith('ETA -:--:--')
    stalled = cli_progress.render(MiB, 10 * MiB, 4.0, moved=0, width=200)
    assert stalled.endswith('ETA -:--:--')


def test_render_finished_says_how_long_it_took():
    line = cli_progress.render(10 * MiB, 10 * MiB, 61.0, width=200)
    assert '100.0%' in line and line.endswith('done in 0:01:01')
    resumed = cli_progress.render(10 * MiB, 10 * MiB, 6.0, moved=MiB, width=200)
    assert resumed.endswith('  done')


def test_render_fits_the_width():
    label = 'image 0123 from rbd://' + 'f' * 100 + '/images/0123/snap'
    line = cli_progress.render(MiB, 10 * MiB, 1.0, label=label, width=100)
    assert len(line) <= 100 and '...' in line and line.endswith('ETA 0:00:09')
    narrow = cli_progress.render(MiB, 10 * MiB, 1.0, label=label, width=50)
    assert len(narrow) <= 50 and '#' not in narrow and 'ETA' in narrow


def test_bar_off_when_the_stream_is_not_a_terminal():
    out = io.StringIO()
    with cli_progress.Bar(out) as bar:
        assert not bar.enabled
        bar.show('x', 1, 2, 1.0)
    assert out.getvalue() == ''


def test_bar_draws_in_place_and_leaves_the_last_line():
    clock = [0.0]
    out = io.StringIO()
    with cli_progress.Bar(out, enabled=True, clock=lambda: clock[0]) as bar:
        bar.show('x', 1, 4, 1.0)
        bar.show('x', 2, 4, 1.0)           # within REDRAW_INTERVAL: not drawn
        clock[0] = 1.0
        bar.show('x', 3, 4, 1.0)
    text = out.getvalue()
    assert text.count('\r') == 3 and text.endswith('\n')   # 1/4, 3/4, 3/4 again
    assert ' 50.0%' not in text and ' 75.0%' in text


def test_log_lines_never_land_inside_the_bar():
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        with cli_progress.Bar(out, enabled=True) as bar:
            bar.show('x', 1, 4, 1.0)
            logging.getLogger('image_handlers.test').warning('a log line')
        assert handler.stream is out            # given back
    finally:
        root.removeHandler(handler)
    assert '\r\x1b[Ka log line\n' in out.getvalue()


def test_bar_follows_the_copy_engine_progress():
    out = io.StringIO()
    clock = [100.0]
    with cli_progress.Bar(out, enabled=True, clock=lambda: clock[0]) as bar, \
            bar.copies():
        p = copy_progress.Progress('copy of u', 60.0)
        p.start(4 * MiB, 8 * MiB)              # resumed at 4 MiB
        clock[0] = 102.0
        p.update(8 * MiB, 4 * MiB)             # finished: always drawn
    assert not copy_progress._observers         # the hook is removed
    text = out.getvalue()
    assert 'copy of u [##########          ]  50.0%' in text
    assert '100.0% 8.0 MiB of 8.0 MiB  2.0 MiB/s  done\x1b[K' in text


def test_progress_observers_see_start_and_updates():
    seen = []
    with copy_progress.observe(lambda p: seen.append((p.done, p.total))):
        p = copy_progress.Progress('d', 60.0)
        p.start(0, None)
        p.total = 10
        p.update(5, 5)
    p.update(10, 10)
    assert seen == [(0, None), (5, 10)]


def test_jobs_wait_reports_each_read_of_the_record(tmp_path):
    conf = api.make_conf([_conf_file(tmp_path, 'n.conf', f'[image_handlers]\n'
                                     f'state_dir = {tmp_path / "state"}\n')])
    jobs = runner.store(conf)
    job = Job(id=jobs.new_id(), kind='overlay_fill', params={}, description='d',
              state=DONE, done_bytes=5, total_bytes=5)
    jobs.save(job)
    seen = []
    assert runner.wait(conf, job.id, watch=seen.append).state == DONE
    assert [(j.id, j.done_bytes) for j in seen] == [(job.id, 5)]
    out = io.StringIO()
    with cli_progress.Bar(out, enabled=True) as bar:
        runner.wait(conf, job.id, watch=bar.job())
    assert (f'overlay_fill job {job.id[:8]} [####################] 100.0% 5 B of 5 B'
            f'  -/s  done\x1b[K') in out.getvalue()


# -- --images-type ----------------------------------------------------------------

def test_cli_images_type_defaults_to_the_config(tmp_path, capsys):
    path = _conf_file(tmp_path, 'n.conf',
                      '[libvirt]\nimages_type = rbd\n[image_handlers]\n'
                      'images_type_handlers = rbd:rbd_clone+stream_copy,'
                      'qcow2:shared_fs\n')
    conf = api.make_conf([path])
    args = cli.build_parser().parse_args(['explain', 'i', 't'])
    assert cli._images_type(conf, args) == 'rbd'
    args = cli.build_parser().parse_args(['fetch', 'i', 't', '--images-type', 'qcow2'])
    assert cli._images_type(conf, args) == 'qcow2'
    assert cli.main(['handlers', '--config-file', path, '--json']) == 0
    enabled = json.loads(capsys.readouterr().out)['enabled']
    assert enabled['images_type rbd'] == ['rbd_clone', 'stream_copy']
    assert enabled['images_type qcow2'] == ['shared_fs']
