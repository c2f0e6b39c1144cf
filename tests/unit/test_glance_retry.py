"""GlanceReader's retries of a Glance that does not answer: a real closed port (no
listener: connection refused), nova.conf [glance] with endpoint_override and no
auth. The waits are recorded through the injected sleep, not timed."""
from __future__ import annotations

import random

import pytest
from oslo_config import cfg

from image_handlers import conf as ih_conf
from image_handlers import exceptions
from image_handlers.glance import (RETRY_DELAY, RETRY_DELAY_MAX, GlanceReader,
                                   retry_delay)
from tools.lab.service import free_port


def _reader(retries: int, waits: list[float]) -> tuple[GlanceReader, str]:
    conf = cfg.ConfigOpts()
    ih_conf.register_opts(conf)
    endpoint = f'http://127.0.0.1:{free_port()}'
    conf([], project='nova', default_config_files=[])
    conf.set_override('auth_type', 'none', group='glance')
    conf.set_override('endpoint_override', endpoint, group='glance')
    conf.set_override('num_retries', retries, group='glance')
    return GlanceReader(conf, sleep=waits.append), endpoint


@pytest.mark.parametrize('retries', [0, 1, 3])
def test_a_glance_that_does_not_answer_is_retried_with_growing_waits(retries):
    waits: list[float] = []
    reader, endpoint = _reader(retries, waits)
    with pytest.raises(exceptions.SourceError) as err:
        reader.get_image('5f1c0f3e-0000-4000-8000-000000000001')
    assert f'Glance at {endpoint}' in str(err.value)
    assert f'after {retries + 1} attempts' in str(err.value)
    assert 'retry once it is back' in str(err.value)
    # One wait between attempts, none after the last; each doubles (within jitter).
    assert len(waits) == retries
    for attempt, wait in enumerate(waits):
        base = min(RETRY_DELAY_MAX, RETRY_DELAY * 2 ** attempt)
        assert 0.75 * base <= wait <= 1.25 * base, (attempt, waits)


def test_retry_delays_double_are_capped_and_spread():
    rand = random.Random(7)
    bases = [min(RETRY_DELAY_MAX, RETRY_DELAY * 2 ** a) for a in range(10)]
    assert bases[:5] == [0.5, 1.0, 2.0, 4.0, 8.0] and bases[-1] == RETRY_DELAY_MAX
    waits = [retry_delay(3, rand) for _ in range(200)]
    assert all(3.0 <= w <= 5.0 for w in waits)
    # Jitter: hosts that failed together do not retry together.
    assert max(waits) - min(waits) > 1.0
