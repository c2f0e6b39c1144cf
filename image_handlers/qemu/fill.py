"""Job kind ``overlay_fill``: make a qcow2 overlay independent of what backs it.

Used when a disk was handed out as an overlay (on a shared file, on a LUN) and
should stop depending on that source. Offline only: qemu's image lock refuses the
fill while a guest has the disk open (that fill goes through the guest's qemu).
Rerunning after a kill resumes: copied blocks stay copied.

Params: ``disk`` (the overlay), ``backing_format`` (raw, qcow2), and optionally
``expect_backing`` (the backing file the overlay must have; anything else is
refused, so a job record cannot be turned against another file).
"""
from __future__ import annotations

import os

from image_handlers import exceptions
from image_handlers.jobs.kinds import JobContext, JobKind
from image_handlers.jobs.model import Job
from image_handlers.qemu import img


class OverlayFill(JobKind):
    name = 'overlay_fill'

    def run(self, job: Job, ctx: JobContext) -> dict:
        disk = job.params['disk']
        details = img.info(disk)
        backing = details.get('full-backing-filename') or details.get('backing-filename')
        if not backing:
            return {'disk': disk, 'backing_file': None, 'note': 'already independent'}
        expected = job.params.get('expect_backing')
        # The same string needs no resolving: realpath's lstat of a path on a hung
        # mount (a stopped brick) would block this worker in the kernel.
        if expected and backing != expected and \
                os.path.realpath(backing) != os.path.realpath(expected):
            raise exceptions.BadInput(
                f'{disk} is backed by {backing}, not {expected} as the job says: '
                f'refusing to fill it')
        size = int(details.get('virtual-size') or 0) or None
        try:
            img.make_standalone(
                disk, job.params.get('backing_format', 'raw'),
                progress=lambda f: ctx.report(int(f * size) if size else 0, size),
                cancelled=ctx.cancelled, backing=backing,
                stall_timeout=ctx.conf.image_handlers.read_timeout)
        except exceptions.CopyCancelled:
            raise
        except exceptions.ImageHandlerError as exc:
            # e.g. the shared volume's brick died under it: say how to go on.
            raise exceptions.ImageHandlerError(
                f'{exc}; the blocks copied so far stay, and "image-handlers jobs '
                f'resume {ctx.job_id}" continues once {backing} is readable '
                f'again') from exc
        after = img.info(disk)
        if after.get('backing-filename'):
            raise exceptions.ImageHandlerError(
                f'{disk} still has backing file {after["backing-filename"]} after '
                f'the fill')
        ctx.report(size or 0, size)
        return {'disk': disk, 'backing_file_was': backing,
                'actual_size': after.get('actual-size')}
