"""Signing a commit object as `git commit -S` does with `gpg.format=ssh`.

The payload is the commit object as it is without a signature; its
signature (`ssh-keygen -Y sign -n git -f KEY`) is stored as the `gpgsig`
header where git stores it (`format.signed.add_signature`). An Ed25519
signature is deterministic (RFC 8032), so the same commit and key give
the same signed commit, hence the same image. ECDSA signatures are not (a
fresh random nonce each time); RSA ones (rsa-sha2-512, PKCS #1 v1.5) were
with OpenSSH 9.2 and a key file, but an agent or a token may do otherwise,
so only Ed25519 is promised.
"""

from __future__ import annotations

import os

from ..errors import DocteurError
from ..format.signed import add_signature, split_signed
from . import ssh


def key_path(key: str | os.PathLike[str]) -> str:
    """KEY as ssh-keygen gets it: `~` expanded (as git's user.signingKey), and
    readable, or a one-line DocteurError."""
    path = os.path.expanduser(os.fspath(key))
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise DocteurError(f"{key}: cannot read the signing key ({exc.strerror})") from None
    return path


def check_key(key: str | os.PathLike[str]) -> str:
    """Before any work: KEY is a readable SSH key and ssh-keygen is there.
    Returns 'TYPE key SHA256:...' (what `verify` will report)."""
    path = key_path(key)
    described = ssh.fingerprint(path)
    ssh.usable_without_passphrase(path)
    return described


def sign_commit(payload: bytes, key: str | os.PathLike[str]) -> bytes:
    """The commit object `payload` (unsigned) signed by `key`: a private key
    file, or a public key whose private half is in ssh-agent."""
    _, existing = split_signed(payload)
    if existing is not None:
        raise DocteurError("the commit is signed already")
    signature = ssh.sign(payload, key_path(key))
    return add_signature(payload, signature)
