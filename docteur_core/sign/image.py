"""An open image's commit, checked against an allowed signers file."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from ..errors import WrongCommit
from ..format.pack import object_id
from .check import check_signature, readable_signers

if TYPE_CHECKING:
    from ..reader.image import Image


def check_image(image: Image, allowed_signers: str | os.PathLike[str]) -> str:
    """The principal who signed the commit of `image` (an open
    `reader.image.Image`), or WrongCommit (unsigned, unknown key, bad
    signature). The commit's bytes are hashed against the header's id here,
    whether or not the image was opened with verify=True: a signature over
    other bytes than the commit named would prove nothing."""
    readable_signers(allowed_signers)
    store = image.store
    cid = store.commit_id
    _, raw = store.read_object(cid, "commit")
    actual = object_id("commit", raw)
    if actual != cid:
        raise WrongCommit(f"the commit's bytes hash to {actual.hex()}, not to {cid.hex()} "
                          "that the header names")
    return check_signature(raw, allowed_signers)
