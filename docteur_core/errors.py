"""One small exception hierarchy for the whole project.

Every error a user can cause (bad image, bad path, bad source) derives from
`DocteurError`, so the command line can print one line and exit non-zero
without ever showing a traceback.
"""

from __future__ import annotations


class DocteurError(Exception):
    """Base of every error docteur reports to a user."""


class NotFound(DocteurError):
    """A path does not exist in the image."""


class NotAFile(DocteurError):
    """A path names a directory where file contents were asked for."""


class NotADirectory(DocteurError):
    """A path names a file (or link) where a directory was expected."""


class DamagedImage(DocteurError):
    """The image's bytes are not what they must be.

    `where` says where the damage was found (an offset, an object id, a
    region) so that the message is actionable on its own: text, or any
    object whose str() is (the reader's hot path passes places it formats
    only when an error is raised: reader/store.py's `_Where`).
    """

    def __init__(self, what: str, where: object = None) -> None:
        self.what = what
        self.where = where
        super().__init__(f"damaged image: {what}" + (f" (at {where})" if where else ""))


class NotAnImage(DamagedImage):
    """The bytes are not a docteur image at all (a text, a tar, random
    bytes, an empty file), as opposed to an image with damage in it: the
    rule is `format.layout.not_an_image`. A DamagedImage still, so every
    handler of damage handles it; only the words differ."""

    def __init__(self, what: str, where: object = None) -> None:
        super().__init__(what, where)
        DocteurError.__init__(self, f"not a docteur image ({what})")


class LimitExceeded(DamagedImage):
    """The image asks for more memory, work or paths than a limit allows
    (`format/limits.py`): refused before anything is spent. Raising the
    limit (the keyword argument or option named in `limit`) may let a
    genuine but huge image through; a hostile one stays refused."""

    def __init__(self, what: str, where: object = None, limit: str = "") -> None:
        self.limit = limit
        super().__init__(what, where)
        DocteurError.__init__(self, "image over a limit: " + what
                              + (f" (at {where})" if where else "")
                              + (f"; raise {limit} to allow it" if limit else ""))


class WrongCommit(DamagedImage):
    """The image does not hold the commit it was pinned to (`--commit`,
    an `ID.img` URL, or a signer that did not sign it): refused before
    any of its files is read. A DamagedImage still, so that every reader
    (a mount's EIO, a guest's error) treats it as untrusted bytes."""

    # The verify.Report that refused it, when a verification did (its command
    # prints the report before the refusal). `object`: errors know no stage.
    report: object = None

    def __init__(self, what: str, where: object = None) -> None:
        super().__init__(what, where)
        DocteurError.__init__(self, "wrong image: " + what + (f" (at {where})" if where else ""))


class DeviceError(DocteurError):
    """A block device cannot be opened or read (missing file, I/O error,
    lost NBD connection...)."""


class BuildError(DocteurError):
    """An image could not be built (bad source, unknown ref, I/O error...)."""


class UsageError(DocteurError):
    """A command line that would do something other than what was meant
    (`extract IMAGE PATH` with no DEST): one line saying what to type
    instead, exit status 2 as for argparse's usage errors."""
