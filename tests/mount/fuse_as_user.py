"""Run inside `unshare -m` by tests/mount/test_allow_other.py (as root): a
private mount namespace where /etc/fuse.conf is a file of the test's and
/dev/fuse is a node every user may open (this machine's is root's only,
and libfuse and fusermount3 open it as the user), so FUSE can be tried as
an unprivileged user without touching the machine's own files.

    python fuse_as_user.py DIR oracle MOUNTPOINT   < JSON list of confs (latin-1)
        for each conf: write it, run fusermount3 -o allow_other as nobody;
        print a JSON list of [status, stderr]
    python fuse_as_user.py DIR run CONF -- COMMAND...
        CONF as /etc/fuse.conf, then COMMAND (as root: it drops privileges
        itself, with setpriv); its status is this script's
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


def setup(work: str, conf: str) -> None:
    dev = os.path.join(work, "dev")
    os.makedirs(dev, exist_ok=True)
    for cmd in (["mount", "--bind", conf, "/etc/fuse.conf"],
                ["mount", "-t", "tmpfs", "none", dev],
                ["mknod", "-m", "666", os.path.join(dev, "fuse"), "c", "10", "229"],
                ["mount", "--bind", os.path.join(dev, "fuse"), "/dev/fuse"]):
        subprocess.run(cmd, check=True)


def oracle(work: str, mountpoint: str) -> None:
    conf = os.path.join(work, "fuse.conf")
    open(conf, "wb").close()
    setup(work, conf)
    verdicts = []
    for text in json.load(sys.stdin):
        with open(conf, "r+b") as f:  # the same inode: the bind mount follows it
            f.truncate(0)
            f.write(text.encode("latin-1"))
        ours, theirs = socket.socketpair()  # fusermount3 hands the FUSE fd over it
        proc = subprocess.run([*NOBODY, "fusermount3", "-o", "allow_other,ro", mountpoint],
                              env={"_FUSE_COMMFD": str(theirs.fileno()),
                                   "PATH": os.environ["PATH"]},
                              pass_fds=[theirs.fileno()], capture_output=True, text=True,
                              timeout=60)
        ours.close()
        theirs.close()
        if proc.returncode == 0:
            subprocess.run(["umount", "-l", mountpoint], check=True)
        verdicts.append([proc.returncode, proc.stderr])
    json.dump(verdicts, sys.stdout)


def main() -> int:
    work, verb = sys.argv[1], sys.argv[2]
    if verb == "oracle":
        oracle(work, sys.argv[3])
        return 0
    setup(work, sys.argv[3])
    assert sys.argv[4] == "--"
    return subprocess.run(sys.argv[5:]).returncode


if __name__ == "__main__":
    sys.exit(main())
