"""Running `ssh-keygen -Y`, the way git runs it for SSH signatures.

The calls are git's (gpg-interface.c), so that a commit signed or checked
here is signed or checked as `git commit -S` / `git verify-commit` with
`gpg.format=ssh` would:

    ssh-keygen -Y sign -n git -f KEY FILE                     -> FILE.sig
    ssh-keygen -Y find-principals -f ALLOWED -s SIG [-Overify-time=T]
    ssh-keygen -Y verify -n git -f ALLOWED -I PRINCIPAL -s SIG [-Overify-time=T] < PAYLOAD
    ssh-keygen -Y check-novalidate -n git -s SIG [-Overify-time=T] < PAYLOAD

`T` is the committer's date in local time (`%Y%m%d%H%M%S`), as git
passes it: a key of the allowed signers file with `valid-after` /
`valid-before` is judged at the date of the commit.

ssh-keygen never waits for anyone here: it runs in a new session with
stdin from /dev/null (a passphrase it would ask for is then refused at
once), $SSH_ASKPASS_REQUIRE=never, and it is tied to this process
(`children.start`). An encrypted key must be in ssh-agent (give its
public key as KEY, as git's user.signingKey allows).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from typing import TypeVar

from .. import children
from ..errors import DocteurError

_T = TypeVar("_T")

PROGRAM = "ssh-keygen"
NAMESPACE = "git"
HINT = "ssh-keygen (OpenSSH 8.2 or later; Debian: openssh-client) checks and makes SSH signatures"
TIMEOUT = 120  # seconds; a signature takes milliseconds


def program() -> str:
    """The ssh-keygen to run, or a one-line DocteurError saying it is missing."""
    found = shutil.which(PROGRAM)
    if found is None:
        raise DocteurError(f"{PROGRAM} not found on PATH: {HINT}")
    return found


def _environment() -> dict[str, str]:
    env = dict(os.environ)
    env["SSH_ASKPASS_REQUIRE"] = "never"
    return env


def run(args: list[str], payload: bytes | None = None) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of `ssh-keygen ARGS`, `payload` on stdin."""
    proc = children.start([program(), *args], hint=HINT,
                          stdin=subprocess.DEVNULL if payload is None else subprocess.PIPE,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_environment())
    try:
        out, err = proc.communicate(payload, timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        children.stop(proc)
        raise DocteurError(f"{PROGRAM} {args[1] if len(args) > 1 else ''}: no answer in "
                           f"{TIMEOUT} s") from None
    except BaseException:
        children.stop(proc)
        raise
    return (proc.returncode, out.decode("utf-8", "replace"), err.decode("utf-8", "replace"))


def last_line(text: str) -> str:
    """The last non-empty line of ssh-keygen's stderr (its reason), for one-line errors."""
    text = text.replace("Enter passphrase: ", "")  # its prompt, which nothing answered
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "no reason given"


def verify_time(timestamp: int | None) -> list[str]:
    """git's `-Overify-time=` option for a commit dated `timestamp` (local time)."""
    if timestamp is None:
        return []
    try:
        return ["-Overify-time=" + time.strftime("%Y%m%d%H%M%S", time.localtime(timestamp))]
    except (OverflowError, OSError, ValueError):
        return []


def sign(payload: bytes, key: str) -> bytes:
    """The armored signature of `payload` by `key` in namespace git (CRs removed, as git does)."""
    with tempfile.TemporaryDirectory(prefix="docteur-sign-") as tmp:
        buffer = os.path.join(tmp, "payload")
        with open(buffer, "wb") as f:
            f.write(payload)
        rc, _, err = run(["-Y", "sign", "-n", NAMESPACE, "-f", key, buffer])
        if rc != 0:
            if "usage:" in err:
                raise DocteurError(f"{PROGRAM} -Y sign is needed to sign (OpenSSH 8.2 or later)")
            raise DocteurError(f"{key}: cannot sign with this key ({last_line(err)}; an "
                               "encrypted key must be in ssh-agent, named by its public key)")
        try:
            with open(buffer + ".sig", "rb") as f:
                signature = f.read()
        except OSError as exc:
            raise DocteurError(f"{PROGRAM} -Y sign wrote no signature ({exc.strerror})") from None
    return signature.replace(b"\r", b"")


def fingerprint(key: str) -> str:
    """'ED25519 key SHA256:...' of a key file (private or public): checks that it is one."""
    rc, out, err = run(["-l", "-f", key])
    fields = out.split()
    if rc != 0 or len(fields) < 2:
        raise DocteurError(f"{key}: not an SSH key ({last_line(err or out)})")
    kind = fields[-1].strip("()") if fields[-1].startswith("(") else "SSH"
    return f"{kind} key {fields[1]}"


def usable_without_passphrase(key: str) -> None:
    """A private key file must open without a passphrase (nothing will type
    one): `ssh-keygen -y -P ''`, which reads it and prints its public half.
    A public key file is left to the agent."""
    try:
        with open(key, "rb") as f:
            private = f.read(64).lstrip().startswith(b"-----BEGIN")
    except OSError:
        return
    if not private:
        return
    rc, _, err = run(["-y", "-P", "", "-f", key])
    if rc != 0:
        raise DocteurError(f"{key}: cannot sign with this key ({last_line(err)}; an encrypted "
                           "key must be in ssh-agent, named by its public key)")


def with_signature_file(signature: bytes, work: Callable[[str], _T]) -> _T:
    """`work(path)` with `signature` in a temporary file named `path`."""
    with tempfile.TemporaryDirectory(prefix="docteur-sig-") as tmp:
        path = os.path.join(tmp, "signature")
        with open(path, "wb") as f:
            f.write(signature)
        return work(path)


def find_principals(allowed: str, sig_path: str, when: list[str]) -> list[str]:
    """The principals `allowed` lists for the signature's key (none: unknown key)."""
    rc, out, err = run(["-Y", "find-principals", "-f", allowed, "-s", sig_path, *when])
    if rc != 0 and "usage:" in err:
        raise DocteurError(f"{PROGRAM} -Y find-principals/verify is needed to check SSH "
                           "signatures (OpenSSH 8.2 or later)")
    if rc != 0:
        return []
    return [line.rstrip("\r") for line in out.split("\n") if line.rstrip("\r")]


def verify(allowed: str, principal: str, sig_path: str, payload: bytes,
           when: list[str]) -> tuple[bool, str]:
    """(good, ssh-keygen's first line: `Good "git" signature for P with K key F`, or why not)."""
    rc, out, err = run(["-Y", "verify", "-n", NAMESPACE, "-f", allowed, "-I", principal,
                        "-s", sig_path, *when], payload)
    good = rc == 0 and out.startswith("Good")
    return good, (out.split("\n", 1)[0] if good else last_line(err or out))


def check_novalidate(sig_path: str, payload: bytes, when: list[str]) -> tuple[bool, str]:
    """(the signature holds for `payload`, whoever made it; ssh-keygen's line)."""
    rc, out, err = run(["-Y", "check-novalidate", "-n", NAMESPACE, "-s", sig_path, *when],
                       payload)
    good = rc == 0 and out.startswith("Good")
    return good, (out.split("\n", 1)[0] if good else last_line(err or out))
