"""SSH signing keys for the tests, made by the real ssh-keygen, and git's
allowed-signers file naming them."""

from __future__ import annotations

import subprocess
from pathlib import Path


def keygen(path: Path, comment: str, kind: str = "ed25519", passphrase: str = "") -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", kind, "-N", passphrase, "-C", comment,
                    "-f", str(path)], check=True, capture_output=True)
    return path


def allowed_file(path: Path, principal: str, key: Path) -> Path:
    """git's allowed signers format: `principal key-type key`."""
    kind, blob = (key.parent / (key.name + ".pub")).read_text().split()[:2]
    path.write_text(f'{principal} namespaces="git" {kind} {blob}\n')
    return path
