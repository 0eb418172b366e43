"""What the caller trusts: a pinned commit, an allowed signers file.

Apart from the checks of the image's own consistency (the rest of this
package), `verify_image` can be told which commit the image must hold
(`commit=`, compared with the header before anything else is read) or
whose signature it must carry (`allowed_signers=`, checked on the commit's
bytes once they are read and hashed to the header's id). Either refusal
is a `WrongCommit`: the image may be perfectly intact, just not the one
wanted.

Describing a signature is pure (`format.signed`); checking it runs
ssh-keygen (`docteur_core.sign`), imported only when a file of allowed
signers is given, so that the guest and the nbdkit plugin never load it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import NotAnImage, WrongCommit
from ..format import layout
from ..format.pack import object_id

if TYPE_CHECKING:
    from ..blockdev.block import BlockDevice
    from .verifier import Verified


def ready(allowed_signers: str | None) -> None:
    """Before any work: the allowed signers file can be read, ssh-keygen is there."""
    if allowed_signers is not None:
        from ..sign import readable_signers

        readable_signers(allowed_signers)


def check_pin(device: BlockDevice, commit: str) -> None:
    """WrongCommit unless the header names `commit` (40 hex digits). A device
    that is no image at all is left to the verifier, which says so."""
    from ..blockdev.block import ByteReader

    reader = ByteReader(device)
    try:
        layout.check_is_image(reader.pread, reader.capacity)
    except NotAnImage:
        return
    held = bytes(reader.pread(0, layout.COMMIT_ID_SIZE)).hex()
    if held != commit.lower():
        raise WrongCommit(f"the image holds commit {held}, not the pinned {commit.lower()}")


def _intact_commit(v: Verified) -> bytes | None:
    """The commit's bytes if they hash to the header's id (quick mode reads
    them without hashing); None when the commit could not be read."""
    cid = v.commit_id
    if v.commit is None or cid is None or object_id("commit", v.commit.data) != cid:
        return None
    return v.commit.data


def judge_signature(v: Verified, allowed_signers: str | None) -> None:
    """Fill `Report.signature`; with `allowed_signers`, WrongCommit (with the
    report attached) unless the commit is signed by one of its keys."""
    report = v.report
    data = _intact_commit(v)
    if data is None:
        # Damage the report already names (or, quick, a commit that does not
        # hash to its id): nothing trustworthy to judge.
        if allowed_signers is not None and report.ok:
            exc = WrongCommit(f"commit {report.commit}: its bytes cannot be checked against "
                              "its id, so neither can its signature")
            exc.report = report
            raise exc
        return
    if allowed_signers is None:
        from ..format.signed import describe

        report.signature = describe(data)
        return
    from ..sign import refusal, signature_info

    report.signature = signature_info(data, allowed_signers)
    why = refusal(report.signature, report.commit or "", allowed_signers)
    if why is not None:
        exc = WrongCommit(why)
        exc.report = report
        raise exc
