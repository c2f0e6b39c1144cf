"""The full-copy engine: stream an image from a ranged source to a local file.

Resumable (checkpoints beside a ``.part`` file), verified (hash computed while
streaming), sparse (zero blocks become holes), atomic (published by hard link,
never overwriting), host-friendly (bandwidth limit, one transfer per image).

    task = copy(HttpSource(url), path, checksum=Checksum.parse('sha512:...'))
    result = task.wait()
"""
from image_handlers.copy.checksum import Checksum
from image_handlers.copy.fsutil import check_target_path, publish_new
from image_handlers.copy.http_source import HttpSource
from image_handlers.copy.options import CopyOptions, CopyResult
from image_handlers.copy.source import Source, Stream
from image_handlers.copy.task import CopyTask, copy

__all__ = ['copy', 'CopyTask', 'CopyOptions', 'CopyResult', 'Checksum',
           'HttpSource', 'Source', 'Stream', 'check_target_path', 'publish_new']
