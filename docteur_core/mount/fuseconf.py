"""Whether `docteur mount --allow-other` may mount: /etc/fuse.conf's rule.

Only root may pass FUSE's allow_other freely; any other user needs a
`user_allow_other` line in /etc/fuse.conf, or fusermount3 refuses the mount
and libfuse reports it in words of its own after the work has started.
Checking first gives one line that says what to change. The reading of
the file is fusermount3's (libfuse util/fusermount.c, `read_conf`; checked
against the real fusermount3 by tests/mount/test_allow_other.py): only
lines ending in a newline count, a '#' starts a comment, blanks around are
stripped, and the rest must be exactly `user_allow_other`.
"""

from __future__ import annotations

FUSE_CONF = "/etc/fuse.conf"
# fusermount3 reads the file with fgets into 256 bytes: 255 at a time.
_CHUNK = 255
_BLANKS = b" \t\n\r\v\f"  # C's isspace


def allows_other(conf: bytes) -> bool:
    """Whether fuse.conf's bytes let a user other than root use allow_other.

    fusermount3's loop, step by step: a piece read that does not end in a
    newline (a line of 255 bytes or more, a last line without its newline,
    a NUL, where its strlen stops) is skipped, and so is everything up to
    the next newline. A line read whole loses what follows a '#' and its
    blanks around; `user_allow_other` alone allows."""
    pos, at_line_start = 0, True
    while pos < len(conf):
        end = conf.find(b"\n", pos, pos + _CHUNK)
        piece = conf[pos:end + 1] if end != -1 else conf[pos:pos + _CHUNK]
        pos += len(piece)
        seen = piece.split(b"\0", 1)[0]  # strlen
        complete = seen.endswith(b"\n")
        if at_line_start:
            if not complete:
                at_line_start = False
            elif seen.split(b"#", 1)[0].strip(_BLANKS) == b"user_allow_other":
                return True
        elif complete:
            at_line_start = True
    return False


def allow_other_refusal(uid: int, conf_path: str = FUSE_CONF) -> str | None:
    """Why a mount with allow_other by `uid` would be refused, or None."""
    if uid == 0:
        return None
    try:
        with open(conf_path, "rb") as f:
            conf = f.read()
    except FileNotFoundError:
        conf = b""
    except OSError:
        # fusermount3 reads it as root: what it says cannot be known here.
        return None
    if allows_other(conf):
        return None
    return (f"--allow-other needs a user_allow_other line in {conf_path} for a user other "
            "than root (ask an administrator), or mount without it")
