"""Checking a commit's signature against an allowed signers file, as git does.

`git verify-commit` with `gpg.ssh.allowedSignersFile=FILE`: the principals
FILE lists for the signature's key (`ssh-keygen -Y find-principals`), then
`ssh-keygen -Y verify -n git -I PRINCIPAL` for each until one holds; a key
FILE does not list is looked at with `-Y check-novalidate` only, to tell a
signature that holds (unknown key) from one that does not (bad). FILE is
in git's format (ssh-keygen(1), ALLOWED SIGNERS): `principals [options]
key-type key`, `namespaces="git"`, `valid-after`, `valid-before` and
`cert-authority` included; validity is judged at the committer's date.
"""

from __future__ import annotations

import os

from ..errors import DocteurError, WrongCommit
from ..format.pack import object_id
from ..format.signed import (BAD, GOOD, NONE, UNKNOWN, SignatureInfo, committer_time, describe,
                             split_signed)
from . import ssh


def readable_signers(allowed_signers: str | os.PathLike[str]) -> str:
    """The allowed signers file's path if it can be read (and ssh-keygen is
    there): checked before any work, a one-line DocteurError otherwise."""
    path = os.path.expanduser(os.fspath(allowed_signers))
    try:
        with open(path, "rb") as f:
            f.read(1)
    except OSError as exc:
        raise DocteurError(f"{allowed_signers}: cannot read the allowed signers file "
                           f"({exc.strerror})") from None
    ssh.program()
    return path


def _principal_and_key(line: str) -> tuple[str | None, str | None]:
    """From `Good "git" signature for P with T key F` (P may hold spaces and
    " with ", as git's parse_ssh_output allows: the last one ends it)."""
    principal = None
    rest = line
    prefix = 'Good "git" signature for '
    if line.startswith(prefix):
        body = line[len(prefix):]
        cut = body.rfind(" with ")
        if cut > 0:
            principal, rest = body[:cut], body[cut + len(" with "):]
    elif " with " in line:
        rest = line.split(" with ", 1)[1]
    key = rest.strip() if " key " in rest else None
    return principal, key


def signature_info(raw_commit: bytes, allowed_signers: str | os.PathLike[str] | None = None
                   ) -> SignatureInfo:
    """What the commit's signature is: NONE, GOOD (principal, key), BAD, or
    UNKNOWN (signed, signer not checked: no `allowed_signers`, a key it does
    not list, or a signature that is not SSH). Without `allowed_signers`
    nothing is run (`format.signed.describe`)."""
    info = describe(raw_commit)
    if allowed_signers is None or info.state == NONE:
        return info
    if info.format != "ssh":
        return SignatureInfo(UNKNOWN, info.format, key=info.key,
                             why=f"{info.format or 'unrecognised'} signature: only SSH "
                             "signatures are checked")
    allowed = readable_signers(allowed_signers)
    payload, signature = split_signed(raw_commit)
    assert signature is not None  # describe found it (NONE is answered above)
    when = ssh.verify_time(committer_time(payload))

    def run(sig_path: str) -> SignatureInfo:
        principals = ssh.find_principals(allowed, sig_path, when)
        why = ""
        for principal in principals:
            good, line = ssh.verify(allowed, principal, sig_path, payload, when)
            if good:
                who, key = _principal_and_key(line)
                return SignatureInfo(GOOD, "ssh", principal=who or principal,
                                     key=key or info.key)
            why = line
        if principals:
            return SignatureInfo(BAD, "ssh", key=info.key, why=why)
        holds, line = ssh.check_novalidate(sig_path, payload, when)
        if holds:
            return SignatureInfo(UNKNOWN, "ssh", key=info.key,
                                 why=f"key not in {allowed_signers}")
        return SignatureInfo(BAD, "ssh", key=info.key, why=line)

    return ssh.with_signature_file(signature, run)


def refusal(info: SignatureInfo, commit_hex: str,
            allowed_signers: str | os.PathLike[str]) -> str | None:
    """Why a commit with this signature is refused under `allowed_signers`
    (the text of a WrongCommit), or None when it is accepted."""
    if info.state == GOOD:
        return None
    if info.state == NONE:
        return (f"commit {commit_hex} is not signed (the allowed signers of "
                f"{allowed_signers} accept only commits signed by their keys)")
    what = "bad signature" if info.state == BAD else "signed by an unknown key"
    detail = ", ".join(p for p in (info.key, info.why) if p)
    return f"commit {commit_hex}: {what}" + (f" ({detail})" if detail else "")


def check_signature(raw_commit: bytes, allowed_signers: str | os.PathLike[str]) -> str:
    """The principal `allowed_signers` names for the commit's signer; a
    one-line WrongCommit when the commit is unsigned, signed by a key the
    file does not list, or its signature does not hold. A missing
    ssh-keygen or an unreadable file: a one-line DocteurError."""
    readable_signers(allowed_signers)
    info = signature_info(raw_commit, allowed_signers)
    why = refusal(info, object_id("commit", raw_commit).hex(), allowed_signers)
    if why is not None:
        raise WrongCommit(why)
    return info.principal or ""
