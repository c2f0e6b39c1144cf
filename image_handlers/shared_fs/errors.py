"""Errors of the shared_fs building blocks.

``Refused`` is the only error the security gate (``paths``) and verification
(``verdicts.verify_file``) raise: the handler turns it into its refusal, with
the reason, and the next handler gets its chance. The others name a broken
set-up (``PinError``) or a clone the kernel would not make (``ReflinkError``).
"""
from __future__ import annotations

import errno as _errno

from image_handlers import exceptions


class Refused(exceptions.Refused):
    """This location cannot be served by shared_fs; ``reason`` says why (the
    chain's one refusal, ``exceptions.Refused``, with the reason kept apart)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# The kernel's ways of saying "no copy-on-write clone here" (not "it broke"):
# EOPNOTSUPP (ext4, tmpfs, an XFS without reflink), EXDEV (another file system),
# EINVAL (btrfs nodatacow vs datacow files, unaligned or special files), ENOTTY
# and ENOSYS (a file system or FUSE daemon without the ioctl at all).
UNSUPPORTED_ERRNOS = frozenset({_errno.EOPNOTSUPP, _errno.EXDEV, _errno.EINVAL,
                                _errno.ENOTTY, _errno.ENOSYS})


class ReflinkError(exceptions.ImageHandlerError):
    """A reflink failed; ``errno`` is the kernel's answer. Nothing was left behind."""

    def __init__(self, message: str, errno: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno

    @property
    def unsupported(self) -> bool:
        """True when the file system cannot clone (the next strategy may work),
        False for a real failure (disk full, I/O error, permissions)."""
        return self.errno in UNSUPPORTED_ERRNOS


class ReflinkUnsupported(ReflinkError):
    """The file systems involved cannot make this clone (``unsupported`` is True)."""


class PinError(exceptions.ImageHandlerError):
    """A pin cannot be made or recorded: the message names the directory and the fix."""
