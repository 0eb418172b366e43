"""SSH signatures on commits, as git makes and checks them (host only).

    sign_commit(payload, key) -> bytes        # git commit -S, gpg.format=ssh
    check_signature(raw_commit, allowed_signers) -> str   # the signer's principal
    check_image(image, allowed_signers) -> str            # an open Image's commit
    signature_info(raw_commit, allowed_signers=None) -> SignatureInfo  # for reports

A signer is a root of trust for images whose commit changes every build:
instead of pinning an id (`--commit`), a reader given `--allowed-signers
FILE` accepts any commit signed by a key FILE lists. What is signed is the
commit object, which names its tree by id: the signature covers every byte
reachable from it, as far as SHA-1 can be trusted to (no collision
detection here).

The modules: ssh.py (running ssh-keygen as git does), commit.py (signing),
check.py (checking), image.py (an open image's commit). The pure parts,
the `gpgsig` header and what a check found, are `format.signed`.
"""

from __future__ import annotations

from ..format.signed import SignatureInfo, split_signed
from .check import check_signature, readable_signers, refusal, signature_info
from .commit import check_key, sign_commit
from .image import check_image

__all__ = ["SignatureInfo", "check_image", "check_key", "check_signature", "readable_signers",
           "refusal", "sign_commit", "signature_info", "split_signed"]
