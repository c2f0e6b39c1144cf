"""The copy engine's options (``[image_handlers]``), for stream_copy and ``copy``.

Core options: the ``copy`` command uses them without any handler. The engine itself
takes a plain CopyOptions; this module is the only place that reads nova.conf for it.
"""
from __future__ import annotations

import os

from oslo_config import cfg

from image_handlers.copy.options import CopyOptions

copy_opts = [
    cfg.IntOpt('partial_max_age', default=7 * 24 * 3600, min=0,
               help='Seconds after which a partial copy left behind (a copy that '
                    'stopped and was never resumed) and its checkpoint are removed by '
                    '"image-handlers cleanup" and by Nova\'s image cache manager pass; '
                    'a partial whose image is gone from Glance goes at once. Never '
                    'one a running copy holds. 0: only partials of deleted images.'),
    cfg.ListOpt('cleanup_dirs', default=[],
                help='Directories "image-handlers cleanup" sweeps when none is given '
                     '(Nova\'s pass sweeps its own image cache directory).'),
    cfg.IntOpt('copy_buffer_size', default=8 * 1024 * 1024, min=64 * 1024,
               help='Bytes per read from the source. Large buffers keep the copy '
                    'bound by the network and the hash, not by Python.'),
    cfg.IntOpt('bandwidth_limit', default=0, min=0,
               help='Maximum bytes per second of all the image traffic of this '
                    'host together: copies, iscsi_cor fill jobs and LUN '
                    'verification reads, in every process whose state_dir is this '
                    'one (nova-compute, its workers, the image-handlers command); 0 '
                    'means unlimited. A fill handed over to its guest is pulled by '
                    'libvirt at this rate on its own, outside the shared count. Use '
                    'it so downloads do not starve the instances on this host.'),
    cfg.IntOpt('copy_retries', default=5, min=0,
               help='How many times in a row a dropped or failed transfer is resumed '
                    'without receiving new bytes before giving up (a retry that '
                    'makes progress resets the count; the partial file is kept for '
                    'the next request).'),
    cfg.FloatOpt('copy_retry_backoff', default=0.5, min=0,
                 help='Seconds before the first retry; doubles on each retry.'),
    cfg.FloatOpt('copy_retry_backoff_max', default=30.0, min=0,
                 help='Longest wait between two retries, in seconds.'),
    cfg.IntOpt('checkpoint_interval', default=64 * 1024 * 1024, min=1024 * 1024,
               help='Bytes between two durable checkpoints of a copy: after a crash '
                    'or kill -9 at most twice this much is fetched again (a copy '
                    'waits for a checkpoint whose sync falls behind).'),
    cfg.FloatOpt('progress_interval', default=10.0, min=0.1,
                 help='Seconds between two progress lines of a copy in the log.'),
    cfg.FloatOpt('connect_timeout', default=10.0, min=0.1,
                 help='Seconds to wait for a source to accept a connection.'),
    cfg.FloatOpt('read_timeout', default=60.0, min=0.1,
                 help='Seconds to wait for the next bytes from a source. Also '
                      'bounds each Glance call when [glance] timeout is unset, '
                      'and an overlay_fill whose qemu-img reads and writes nothing '
                      'this long is stopped (the job fails, resumable).'),
    cfg.BoolOpt('sparse', default=True,
                help='Do not write blocks that are all zero (the file stays sparse).'),
    cfg.BoolOpt('direct_io', default=True,
                help='Write image data with O_DIRECT where the file system supports '
                     'it: the bytes bypass the page cache, so a large copy neither '
                     'evicts the pages instances on this host use nor spends about '
                     'a second of kernel CPU per GiB filling the cache. Unaligned '
                     'heads and tails, and file systems without O_DIRECT, are '
                     'written through the page cache.'),
]


def copy_options(group) -> CopyOptions:
    """CopyOptions from the ``[image_handlers]`` group (``conf.image_handlers``)."""
    return CopyOptions(
        buffer_size=group.copy_buffer_size,
        bandwidth_limit=group.bandwidth_limit,
        retries=group.copy_retries,
        retry_backoff=group.copy_retry_backoff,
        retry_backoff_max=group.copy_retry_backoff_max,
        checkpoint_interval=group.checkpoint_interval,
        progress_interval=group.progress_interval,
        connect_timeout=group.connect_timeout,
        read_timeout=group.read_timeout,
        sparse=group.sparse,
        direct_io=group.direct_io,
        lock_dir=os.path.join(group.state_dir, 'locks'))
