import logging

from image_handlers.copy.progress import Progress


class Clock:
    now = 0.0

    def __call__(self):
        return self.now


def test_logs_done_total_percent_rate_and_eta_every_interval(caplog):
    caplog.set_level(logging.INFO, logger='image_handlers.copy.progress')
    clock = Clock()
    progress = Progress('image 42', interval=10.0, clock=clock)
    progress.start(0, 1000 << 20)
    clock.now = 5.0
    progress.update(100 << 20, 100 << 20)           # before the interval: silent
    clock.now = 10.0
    progress.update(250 << 20, 250 << 20)
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ['image 42: 250.0 MiB of 1000.0 MiB (25.0%) at 25.0 MiB/s '
                     'ETA 0:00:30']
    assert progress.snapshot() == (250 << 20, 1000 << 20)


def test_resumed_copy_rate_counts_only_this_run():
    clock = Clock()
    progress = Progress('img', interval=1.0, clock=clock)
    progress.start(600 << 20, 1000 << 20)          # resumed at 600 MiB
    clock.now = 4.0
    line = progress.line(clock.now, 200 << 20)
    assert '800.0 MiB' not in line and '50.0 MiB/s' in line and 'ETA 0:00:08' in line


def test_unknown_size():
    clock = Clock()
    progress = Progress('img', interval=1.0, clock=clock)
    progress.start(0, None)
    clock.now = 2.0
    progress.done = 3 << 30
    assert progress.line(clock.now, 3 << 30) == 'img: 3.0 GiB of unknown size at 1.5 GiB/s'
