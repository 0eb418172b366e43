"""A commit's signature, as git stores it: the `gpgsig` header.

`git commit -S` signs the commit object as it would be without a
signature (the *payload*) and stores the armored signature as a header
after the others (after `committer`, before the blank line), its first
line after `gpgsig `, every further line after one space:

    tree ...
    author ...
    committer ...
    gpgsig -----BEGIN SSH SIGNATURE-----
     U1NIU0lHAAAAAQAAADMAAAALc3NoLWVkMjU1MTkAAAAg...
     -----END SSH SIGNATURE-----

    message

`split_signed` takes a commit apart exactly as git's
`parse_buffer_signed_by_header` does (commit.c: every `gpgsig` header
line and its continuations is signature, everything else payload, a
`gpgsig-sha256` header is left out of both), and `add_signature` puts one
in exactly where git's `sign_with_header` does, so a commit signed here
is one `git verify-commit` checks, and one signed by git is checked here.
`SignatureInfo` is what a check found, as `verify` reports it; running
ssh-keygen is the host's business (`docteur_core.sign`).

Pure: bytes in, values out, standard library only.
"""

from __future__ import annotations

from dataclasses import dataclass

HEADER = b"gpgsig"  # the SHA-1 repositories' signature header (gpgsig-sha256: SHA-256's)

# The armors git recognises (gpg-interface.c), by the format git names.
_ARMORS = (
    (b"-----BEGIN SSH SIGNATURE-----", "ssh"),
    (b"-----BEGIN PGP SIGNATURE-----", "openpgp"),
    (b"-----BEGIN PGP MESSAGE-----", "openpgp"),
    (b"-----BEGIN SIGNED MESSAGE-----", "x509"),
)
_SSH_BEGIN = b"-----BEGIN SSH SIGNATURE-----"
_SSH_END = b"-----END SSH SIGNATURE-----"


def split_signed(raw_commit: bytes) -> tuple[bytes, bytes | None]:
    """(payload, signature): the commit without its `gpgsig` header, and that
    header's value with the continuation spaces removed (None: not signed).

    Line by line as git does it: the header lines end at the first empty
    line, after which everything is payload.
    """
    payload = bytearray()
    signature = bytearray()
    saw = in_signature = other = False
    pos, end = 0, len(raw_commit)
    while pos < end:
        nl = raw_commit.find(b"\n", pos)
        nxt = end if nl < 0 else nl + 1
        line = raw_commit[pos:nxt]
        sig = None
        if in_signature and line[:1] == b" ":
            sig = line[1:]
        elif line.startswith(HEADER + b" "):
            sig = line[len(HEADER) + 1:]
            other = False
        elif line.startswith(HEADER):
            other = True  # gpgsig-sha256 and the like: neither signature nor payload
        elif other and line[:1] != b" ":
            other = False
        if sig is not None:
            signature += sig
            saw = in_signature = True
        else:
            if line[:1] == b"\n":  # the blank line: the rest is the message
                nxt = end
            if not other:
                payload += raw_commit[pos:nxt]
            in_signature = False
        pos = nxt
    return bytes(payload), bytes(signature) if saw else None


def add_signature(payload: bytes, signature: bytes) -> bytes:
    """The signed commit: `signature` stored in `payload` as git's
    `sign_with_header` stores it (at the end of the header lines, the first
    line after `gpgsig `, each line after a space)."""
    if not signature:
        raise ValueError("an empty signature")
    eoh = payload.find(b"\n\n")
    at = len(payload) if eoh < 0 else eoh + 1
    lines = signature.splitlines(keepends=True)
    header = HEADER + b"".join(b" " + line for line in lines)
    if not header.endswith(b"\n"):
        header += b"\n"  # git's too: strchrnul, then the next header starts on a new line
    return payload[:at] + header + payload[at:]


def signature_format(signature: bytes) -> str | None:
    """'ssh', 'openpgp' or 'x509' by the armor git looks for; None: none of them."""
    for armor, name in _ARMORS:
        if signature.startswith(armor):
            return name
    return None


def _ssh_string(data: bytes, pos: int) -> tuple[bytes, int]:
    if pos + 4 > len(data):
        raise ValueError("truncated")
    n = int.from_bytes(data[pos:pos + 4], "big")
    if pos + 4 + n > len(data):
        raise ValueError("truncated")
    return data[pos + 4:pos + 4 + n], pos + 4 + n


_KEY_NAMES = {b"ssh-ed25519": "ED25519", b"ssh-rsa": "RSA",
              b"ecdsa-sha2-nistp256": "ECDSA", b"ecdsa-sha2-nistp384": "ECDSA",
              b"ecdsa-sha2-nistp521": "ECDSA", b"sk-ssh-ed25519@openssh.com": "ED25519-SK",
              b"sk-ecdsa-sha2-nistp256@openssh.com": "ECDSA-SK"}


def ssh_signature_key(signature: bytes) -> tuple[str, str, str] | None:
    """(key type as ssh-keygen names it, its SHA256 fingerprint, namespace)
    of an armored SSH signature (OpenSSH's PROTOCOL.sshsig), read without
    checking anything; None when it is not one."""
    import base64
    import binascii
    import hashlib

    text = signature.strip()
    if not (text.startswith(_SSH_BEGIN) and text.endswith(_SSH_END)):
        return None
    body = b"".join(text[len(_SSH_BEGIN):-len(_SSH_END)].split())
    try:
        blob = base64.b64decode(body, validate=True)
        if blob[:6] != b"SSHSIG":
            return None
        key, pos = _ssh_string(blob, 10)  # magic, uint32 version
        namespace, pos = _ssh_string(blob, pos)
        key_type, _ = _ssh_string(key, 0)
    except (ValueError, binascii.Error):
        return None
    digest = base64.b64encode(hashlib.sha256(key).digest()).rstrip(b"=").decode()
    kind = _KEY_NAMES.get(key_type, key_type.decode("ascii", "replace"))
    return kind, "SHA256:" + digest, namespace.decode("utf-8", "replace")


def committer_time(payload: bytes) -> int | None:
    """The committer's timestamp (seconds since the epoch), as git's
    `parse_payload_metadata` takes it to check a key's validity dates."""
    head = payload.split(b"\n\n", 1)[0]
    for line in head.split(b"\n"):
        if line.startswith(b"committer "):
            gt = line.rfind(b">")
            fields = line[gt + 1:].split()
            if gt >= 0 and fields and fields[0].isdigit():
                return int(fields[0])
            return None
    return None


# What a check of a commit's signature found (SignatureInfo.state).
NONE = "none"  # not signed
GOOD = "good"  # signed by a key of the allowed signers, and the signature holds
BAD = "bad"  # the signature does not hold for this commit
UNKNOWN = "unknown"  # signed, the signer not checked (no allowed signers given,
# a key they do not list, or a format other than SSH)


@dataclass(frozen=True)
class SignatureInfo:
    state: str  # NONE, GOOD, BAD or UNKNOWN
    format: str | None = None  # "ssh", "openpgp", "x509" (None: unsigned or unrecognised)
    principal: str | None = None  # who the allowed signers file says signed it (GOOD)
    key: str | None = None  # "ED25519 key SHA256:..." when known
    why: str = ""  # a short reason for BAD and UNKNOWN

    def text(self) -> str:
        """One line, as `verify` prints it after `signature\\t: `."""
        if self.state == NONE:
            return NONE
        parts = [p for p in (self.principal, self.key) if p]
        if self.state != GOOD and self.why:
            parts.append(self.why)
        return self.state + (f" ({', '.join(parts)})" if parts else "")

    def to_json(self) -> dict[str, str | None]:
        return {"state": self.state, "format": self.format, "principal": self.principal,
                "key": self.key, "why": self.why or None}


def describe(raw_commit: bytes) -> SignatureInfo:
    """What can be said of a commit's signature without checking it: NONE,
    or UNKNOWN with its format and, for SSH, the key it names."""
    _, signature = split_signed(raw_commit)
    if signature is None:
        return SignatureInfo(NONE)
    fmt = signature_format(signature)
    key = ssh_signature_key(signature) if fmt == "ssh" else None
    return SignatureInfo(UNKNOWN, fmt, key=None if key is None else f"{key[0]} key {key[1]}",
                         why="not checked" if fmt == "ssh" else
                         f"{fmt or 'unrecognised'} signature, not checked")
