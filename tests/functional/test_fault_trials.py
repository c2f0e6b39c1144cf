"""The seeded fault trials (tools/fault_trials.py), reduced: two trials of every
kind against the lab's nginx through the fault proxy. The full run (50 per kind)
is ``.venv/bin/python -m tools.fault_trials``; doc/reliability.rst reports it."""
from __future__ import annotations

import json

from tools import fault_trials
from tools.lab.fault_proxy import KINDS


def test_every_fault_kind_ends_verified_or_clear_and_nothing_is_published_wrongly(
        tmp_path, capsys):
    report_file = tmp_path / 'report.json'
    rc = fault_trials.main(['--trials', '2', '--size-mib', '2', '--seed', '7',
                            '--json', str(report_file)])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert 'goals: MET' in out
    report = json.loads(report_file.read_text())['report']
    assert set(report) == set(KINDS)
    for kind, r in report.items():
        assert r['trials'] == 2 and r['wrongly_published_bytes'] == 0, (kind, r)
        assert r['not_recovered'] == 0, (kind, r)
    # What each kind must do: retried in place, or refused clearly then resumed.
    assert report['reset']['outcomes'] == {'verified': 2}
    assert report['status']['outcomes'] == {'verified': 2}
    assert report['corrupt']['outcomes'] == {'ChecksumMismatch': 2}
    assert report['length']['outcomes'] == {'SizeMismatch': 2}
