"""``python -m image_handlers.jobs.worker --state-dir DIR JOB_ID``: run one job.

Started detached by ``runner.spawn``; reads the job's own nova.conf files (recorded
when it was submitted), logs to ``DIR/jobs/JOB_ID.log``.
"""
from __future__ import annotations

import argparse
import sys

from image_handlers import api
from image_handlers.jobs import runner
from image_handlers.jobs.store import JobStore


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog='image_handlers.jobs.worker')
    parser.add_argument('--state-dir', required=True)
    parser.add_argument('job_id')
    args = parser.parse_args(argv)
    job = JobStore(args.state_dir).get(args.job_id)
    conf = api.make_conf(job.config_files, job.config_dirs)
    conf.set_override('state_dir', args.state_dir, 'image_handlers')
    conf.set_override('use_stderr', True)
    from oslo_log import log as logging
    logging.setup(conf, 'image_handlers')
    done = runner.run(conf, args.job_id)
    return 0 if done.state == 'done' else 1


if __name__ == '__main__':
    sys.exit(main())
