"""How `docteur make` runs ssh for ssh:// and scp-form (`user@host:path`) sources.

The ssh program is chosen the way git chooses it: $GIT_SSH_COMMAND (a
command line), else $GIT_SSH (a program), else `ssh`, so keys, ports,
known_hosts files and jump hosts are configured exactly as for git.

A build must fail, never wait for someone to type: ssh is told
`BatchMode=yes` (no password, passphrase or host-key question: an unknown
host key or a refused key is an error) with a connect timeout and
keep-alives, and it is started in a new session, without a controlling
terminal, so that even another ssh-like program cannot open /dev/tty to
ask. The OpenSSH options are only added when the program is OpenSSH
(named `ssh`, or $GIT_SSH_VARIANT=ssh), as git does; options the user
gives in $GIT_SSH_COMMAND come first, and ssh keeps the first value it
sees, so they win.
"""

from __future__ import annotations

import os
import shlex
import subprocess
from typing import TYPE_CHECKING, Mapping

from .. import children
from ..errors import BuildError

if TYPE_CHECKING:  # (dulwich.client is imported only when ssh runs)
    from dulwich.client import SubprocessWrapper

CONNECT_TIMEOUT = 60


def batch_options(connect_timeout: int = CONNECT_TIMEOUT) -> list[str]:
    return ["-o", "BatchMode=yes", "-o", f"ConnectTimeout={connect_timeout}",
            "-o", "ServerAliveInterval=15", "-o", "ServerAliveCountMax=4"]


def ssh_argv(environ: Mapping[str, str], connect_timeout: int = CONNECT_TIMEOUT) -> list[str]:
    """The ssh program and its leading options, from git's environment variables."""
    command = environ.get("GIT_SSH_COMMAND")
    if command:
        try:
            argv = shlex.split(command)
        except ValueError as exc:
            raise BuildError(f"GIT_SSH_COMMAND: cannot parse ({exc})") from None
        if not argv:
            argv = ["ssh"]
    else:
        argv = [environ.get("GIT_SSH") or "ssh"]
    variant = environ.get("GIT_SSH_VARIANT", "auto").lower()
    program = os.path.basename(argv[0]).lower().removesuffix(".exe")
    if variant == "ssh" or (variant == "auto" and program == "ssh"):
        argv += batch_options(connect_timeout)
    return argv


class _NoSSH(BuildError):
    pass


class BatchSSHVendor:
    """A dulwich SSH vendor: runs `argv` with no terminal to prompt on.

    Builds the same command line as dulwich's SubprocessSSHVendor (`-x`,
    `-p PORT`, `-i KEY`, the protocol-version SetEnv, `[user@]host`,
    the remote command) after our `argv`.
    """

    def __init__(self, argv: list[str]) -> None:
        self.argv = list(argv)

    def run_command(self, host: str, command: bytes, username: str | None = None,
                    port: int | None = None, password: str | None = None,
                    key_filename: str | None = None, ssh_command: str | None = None,
                    protocol_version: int | None = None) -> SubprocessWrapper:
        from dulwich.client import SubprocessWrapper
        from dulwich.protocol import DEFAULT_GIT_PROTOCOL_VERSION_FETCH

        if password is not None:
            raise BuildError("passwords in ssh URLs are not supported: use a key")
        args: list[str | bytes] = [*self.argv, "-x"]  # (the remote command is bytes)
        if port:
            args += ["-p", str(port)]
        if key_filename:
            args += ["-i", str(key_filename)]
        if protocol_version is None:
            protocol_version = DEFAULT_GIT_PROTOCOL_VERSION_FETCH
        if protocol_version > 0:
            args += ["-o", f"SetEnv GIT_PROTOCOL=version={protocol_version}"]
        target = f"{username}@{host}" if username else host
        if target.startswith("-"):
            raise BuildError(f"{target}: not a host name")
        try:
            # A new session (no terminal to prompt on), tied to the builder:
            # a killed build does not leave ssh running.
            proc = children.start(
                [*args, target, command], error=_NoSSH, bufsize=0, stdin=subprocess.PIPE,
                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        except _NoSSH:
            raise BuildError(f"the ssh program '{self.argv[0]}' was not found "
                             "(install openssh-client, or set GIT_SSH_COMMAND)") from None
        except OSError as exc:
            raise BuildError(f"cannot run the ssh program '{self.argv[0]}' "
                             f"({exc.strerror})") from None
        return SubprocessWrapper(proc)
