"""Errors that name what was wrong and what to do about it.

Every error an operator can see carries a message written for them: which image,
location or path, what was found, and the next step. The CLI maps
``BadInput`` to exit status 2 and ``NoHandlerAvailable`` to 1.
"""


class ImageHandlerError(Exception):
    """Base class of every error raised by image_handlers."""


class BadInput(ImageHandlerError):
    """The request itself is wrong (bad id, bad target, bad URL): exit status 2."""


class InvalidLocation(BadInput):
    """A location URL does not parse or fails its scheme's validation."""


class InvalidTarget(BadInput):
    """The target is malformed, its directory is missing or not writable."""


class TargetExists(InvalidTarget):
    """The target already exists; we never overwrite or delete an existing disk."""


class TargetBusy(InvalidTarget):
    """Another copy is writing the same target right now (without a shared lock)."""


class Refused(Exception):
    """A handler's reasoned "no" for one request and location: the one way to refuse.

    Not an error: ``decide`` (or anything it calls, such as the location claim checks)
    raises it, the chain records ``str(exc)`` as the reason an operator reads, and
    the next (handler, location) pair is asked.
    """


class ImageNotFound(BadInput):
    """Glance does not know the image id (or the caller may not see it)."""


class ImageNotUsable(BadInput):
    """The image exists but cannot become a disk (not active, no data, ...)."""


class Untrusted(BadInput):
    """Nothing proves the image's bytes on any path: an unknown hash algorithm, a
    signature that is required but missing or malformed, a signing certificate the
    key manager does not have or the instance does not trust. No handler may
    provide it, and nobody may hand it to a path that skips the check."""


class ConfigError(BadInput):
    """nova.conf asks for something impossible (unknown handler, bad option value)."""


class SourceError(ImageHandlerError):
    """Reading from a location failed (HTTP error, connection refused, ...)."""


class RetriesExhausted(SourceError):
    """The source kept failing after the configured retries; the partial file and
    checkpoint are kept so the next attempt resumes."""


class ChecksumMismatch(ImageHandlerError):
    """The bytes received do not hash to the image's recorded value."""


class SignatureMismatch(ChecksumMismatch):
    """The bytes do not carry the image's signature (img_signature)."""


class SizeMismatch(ImageHandlerError):
    """The source delivered more or fewer bytes than the image's recorded size."""


class DiskFull(ImageHandlerError):
    """The target file system ran out of space; nothing was published."""


class CopyCancelled(ImageHandlerError):
    """The copy task was cancelled by its caller."""


class NoHandlerAvailable(ImageHandlerError):
    """No enabled handler could provide the image: exit status 1.

    ``result`` holds every attempt with its reason, so the operator sees why.
    """

    def __init__(self, message: str, result=None):
        super().__init__(message)
        self.result = result
