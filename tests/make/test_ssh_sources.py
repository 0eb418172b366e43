"""Images of repositories fetched over ssh, from a real sshd on 127.0.0.1.

The test starts its own OpenSSH server (Debian's openssh-server) on a free
port with a config, a host key and an authorized key made in a temporary
directory: no system configuration is read or touched. The client side is
configured through GIT_SSH_COMMAND only (`-F` an own config file or
/dev/null, `-i` the key, an own known_hosts), never ~/.ssh.

Covered: ssh:// URLs with a port, the scp form (`user@host:path`, port
from the ssh config file), unknown branch, not a repository, refused keys
and untrusted host keys (which must fail at once even with a terminal to
prompt on), and an unreachable port.
"""

from __future__ import annotations

import fcntl
import getpass
import os
import pty
import select
import shlex
import shutil
import signal
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

from docteur_core.make import make_image
from docteur_core.make.ssh import ssh_argv
from docteur_core.errors import BuildError
from tests.helpers.support import REPO_ROOT, free_port
from tests.helpers.gitoracle import check_image, image_listing
from tests.helpers.git_servers import wait_for_port

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
USER = getpass.getuser()


def keygen(path: Path, passphrase: str = "") -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", passphrase, "-C", "docteur-test",
                    "-f", str(path)], check=True)
    return path


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    """A private sshd on 127.0.0.1:port accepting one key; client-side files beside it."""
    if not os.path.exists(SSHD) or shutil.which("ssh") is None:
        pytest.fail("these tests need OpenSSH: apt-get install openssh-server openssh-client")
    d = tmp_path_factory.mktemp("sshd")
    host_key = keygen(d / "host_key")
    key = keygen(d / "user_key")
    wrong_key = keygen(d / "wrong_key")
    locked_key = keygen(d / "locked_key", passphrase="secret phrase")
    (d / "authorized_keys").write_text(key.with_suffix(".pub").read_text()
                                       + locked_key.with_suffix(".pub").read_text())
    port = free_port()
    (d / "sshd_config").write_text(f"""\
ListenAddress 127.0.0.1
Port {port}
HostKey {host_key}
PidFile none
AuthorizedKeysFile {d / 'authorized_keys'}
AuthenticationMethods publickey
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
PermitRootLogin prohibit-password
StrictModes no
AllowUsers {USER}
AcceptEnv GIT_PROTOCOL
LogLevel ERROR
""")
    if os.geteuid() == 0:
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privilege separation dir
    host_pub = " ".join(host_key.with_suffix(".pub").read_text().split()[:2])
    known = d / "known_hosts"
    known.write_text(f"[127.0.0.1]:{port} {host_pub}\n")
    (d / "empty_known_hosts").write_text("")
    (d / "ssh_config").write_text(f"""\
Host docteur-test
    HostName 127.0.0.1
    Port {port}
    User {USER}
    IdentityFile {key}
    IdentitiesOnly yes
    UserKnownHostsFile {known}
    GlobalKnownHostsFile /dev/null
    StrictHostKeyChecking yes
""")
    log = open(d / "sshd.log", "wb")
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(d / "sshd_config")],
                            stdout=log, stderr=log, stdin=subprocess.DEVNULL)
    try:
        try:
            wait_for_port(port, proc)
        except RuntimeError as exc:
            pytest.fail(f"sshd did not start: {exc}: {(d / 'sshd.log').read_text()}")
        yield {"dir": d, "port": port, "key": key, "wrong_key": wrong_key,
               "locked_key": locked_key, "known_hosts": known, "config": d / "ssh_config"}
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()


def ssh_command(sshd: dict, key: str = "key", known: Path | None = None,
                strict: str = "yes") -> str:
    """GIT_SSH_COMMAND for ssh:// URLs: no config file, our key, our known_hosts."""
    known = known or sshd["known_hosts"]
    return shlex.join(["ssh", "-F", "/dev/null", "-i", str(sshd[key]), "-o", "IdentitiesOnly=yes",
                       "-o", f"UserKnownHostsFile={known}", "-o", "GlobalKnownHostsFile=/dev/null",
                       "-o", f"StrictHostKeyChecking={strict}"])


def url(sshd: dict, repo: Path) -> str:
    return f"ssh://{USER}@127.0.0.1:{sshd['port']}{repo}"


@pytest.fixture
def ssh_env(sshd, monkeypatch):
    monkeypatch.delenv("GIT_SSH", raising=False)
    monkeypatch.delenv("GIT_SSH_VARIANT", raising=False)
    monkeypatch.setenv("GIT_SSH_COMMAND", ssh_command(sshd))
    return sshd


@pytest.mark.parametrize("ref, index", [(None, 2), ("old", 1), ("v1", 0)])
def test_ssh_url(ssh_env, served, local_images, tmp_path, ref, index):
    commit = served["commits"][index]
    result = make_image(url(ssh_env, served["repo"]), tmp_path / "s.img", branch=ref)
    assert result.commit == commit and result.kind == "remote"
    checked = check_image(tmp_path / "s.img", tmp_path)
    assert image_listing(checked.git_dir, commit) == image_listing(served["repo"], commit)
    assert (tmp_path / "s.img").read_bytes() == local_images[ref]


@pytest.mark.parametrize("user", [True, False])
def test_scp_form(sshd, served, local_images, tmp_path, monkeypatch, user):
    # The scp form has no port: it comes from the ssh config file (-F).
    monkeypatch.setenv("GIT_SSH_COMMAND", shlex.join(["ssh", "-F", str(sshd["config"])]))
    source = f"{USER + '@' if user else ''}docteur-test:{served['repo']}"
    result = make_image(source, tmp_path / "scp.img", branch="v1")
    assert result.commit == served["commits"][0] and result.kind == "remote"
    check_image(tmp_path / "scp.img", tmp_path)
    assert (tmp_path / "scp.img").read_bytes() == local_images["v1"]


def test_ssh_unknown_branch(ssh_env, served, tmp_path):
    with pytest.raises(BuildError, match=r"project.git: unknown branch or tag 'nope'$"):
        make_image(url(ssh_env, served["repo"]), tmp_path / "x.img", branch="nope")
    assert list(tmp_path.iterdir()) == []


def test_ssh_not_a_repository(ssh_env, served, tmp_path):
    with pytest.raises(BuildError, match=r"missing.git: not a Git repository"):
        make_image(url(ssh_env, served["repo"].parent / "missing.git"), tmp_path / "x.img")
    assert list(tmp_path.iterdir()) == []


def run_on_terminal(cmd: list[str], env: dict, timeout: float = 60) -> tuple[int, str, str]:
    """Run `cmd` with a pseudo-terminal as its controlling terminal and stdin.

    Whatever would prompt (ssh opens /dev/tty for passwords, passphrases and
    host keys) could, so a build that prompts blocks here: the test fails on
    the timeout instead of passing. Returns (exit code, stderr, terminal output).
    """
    master, slave = pty.openpty()

    def controlling_terminal() -> None:
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    proc = subprocess.Popen(cmd, env=env, stdin=slave, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True,
                            preexec_fn=controlling_terminal, cwd=REPO_ROOT)
    os.close(slave)
    terminal = b""
    try:
        deadline = time.monotonic() + timeout
        while proc.poll() is None:
            if time.monotonic() > deadline:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                pytest.fail(f"{cmd}: still running after {timeout} s (waiting for a prompt?); "
                            f"terminal: {terminal!r}")
            ready, _, _ = select.select([master], [], [], 0.1)
            if ready:
                try:
                    terminal += os.read(master, 4096)
                except OSError:
                    pass
        out, err = proc.communicate()
    finally:
        os.close(master)
    return proc.returncode, err.decode(), terminal.decode("utf-8", "replace")


def cli_env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GIT_SSH", "SSH_ASKPASS"))}
    env["PYTHONPATH"] = str(REPO_ROOT)
    env.update(extra)
    return env


@pytest.mark.parametrize("key", ["wrong_key", "locked_key"])
def test_ssh_authentication_refused_never_prompts(sshd, served, tmp_path, key):
    # locked_key is authorized but has a passphrase: asking for it is not allowed either.
    image = tmp_path / "x.img"
    source = url(sshd, served["repo"])
    code, err, terminal = run_on_terminal(
        [sys.executable, "-m", "docteur_core", "make", source, str(image)],
        cli_env(GIT_SSH_COMMAND=ssh_command(sshd, key)))
    assert code == 1
    assert err == f"docteur make: {source}: authentication refused\n"
    assert "passphrase" not in terminal.lower() and "password" not in terminal.lower()
    assert list(tmp_path.iterdir()) == []


def test_ssh_unknown_host_key_never_prompts(sshd, served, tmp_path):
    # StrictHostKeyChecking=ask would ask "Are you sure you want to continue
    # connecting (yes/no)?" on the terminal; in batch mode it is an error.
    image = tmp_path / "x.img"
    source = url(sshd, served["repo"])
    code, err, terminal = run_on_terminal(
        [sys.executable, "-m", "docteur_core", "make", source, str(image)],
        cli_env(GIT_SSH_COMMAND=ssh_command(sshd, known=sshd["dir"] / "empty_known_hosts",
                                            strict="ask")))
    assert code == 1
    assert err.startswith(f"docteur make: {source}: host key verification failed")
    assert err.count("\n") == 1
    assert "yes/no" not in terminal
    assert list(tmp_path.iterdir()) == []


def test_ssh_unreachable(sshd, tmp_path):
    port = free_port()  # nothing listens there
    source = f"ssh://{USER}@127.0.0.1:{port}/srv/project.git"
    proc = subprocess.run([sys.executable, "-m", "docteur_core", "make", source,
                           str(tmp_path / "x.img")],
                          env=cli_env(GIT_SSH_COMMAND=ssh_command(sshd)), capture_output=True,
                          text=True, timeout=120, cwd=REPO_ROOT)
    assert proc.returncode == 1
    assert proc.stderr.startswith(f"docteur make: {source}: unreachable (")
    assert "Connection refused" in proc.stderr
    assert proc.stderr.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


def test_ssh_program_missing(served, tmp_path, monkeypatch):
    monkeypatch.setenv("GIT_SSH_COMMAND", str(tmp_path / "no-such-ssh"))
    with pytest.raises(BuildError, match=r"ssh program '.*no-such-ssh' was not found"):
        make_image(f"ssh://127.0.0.1:1{served['repo']}", tmp_path / "x.img")
    assert not (tmp_path / "x.img").exists()


def test_help_says_batch_mode():
    proc = subprocess.run([sys.executable, "-m", "docteur_core", "make", "--help"],
                          capture_output=True, text=True, check=True, cwd=REPO_ROOT,
                          env=cli_env())
    assert "BatchMode=yes" in " ".join(proc.stdout.split())


# -- choosing the ssh program, as git does --------------------------------

def test_argv_default_is_batch_ssh():
    argv = ssh_argv({})
    assert argv[0] == "ssh"
    assert "BatchMode=yes" in argv and any(a.startswith("ConnectTimeout=") for a in argv)


def test_argv_git_ssh_command_wins_and_comes_first():
    argv = ssh_argv({"GIT_SSH_COMMAND": "/usr/bin/ssh -F '/a b/config' -o BatchMode=no",
                     "GIT_SSH": "/opt/other"})
    assert argv[:5] == ["/usr/bin/ssh", "-F", "/a b/config", "-o", "BatchMode=no"]
    assert "BatchMode=yes" in argv[5:]  # ssh keeps the first value: the user's


def test_argv_git_ssh_program():
    assert ssh_argv({"GIT_SSH": "/opt/my ssh/ssh"})[0] == "/opt/my ssh/ssh"
    assert "BatchMode=yes" in ssh_argv({"GIT_SSH": "/opt/my ssh/ssh"})


@pytest.mark.parametrize("environ, openssh", [
    ({"GIT_SSH": "/usr/bin/plink"}, False),
    ({"GIT_SSH_COMMAND": "my-wrapper --x"}, False),
    ({"GIT_SSH_COMMAND": "my-wrapper", "GIT_SSH_VARIANT": "ssh"}, True),
    ({"GIT_SSH_COMMAND": "ssh", "GIT_SSH_VARIANT": "simple"}, False),
])
def test_argv_openssh_options_only_for_openssh(environ, openssh):
    assert ("BatchMode=yes" in ssh_argv(environ)) == openssh


def test_argv_unparsable_command():
    with pytest.raises(BuildError, match="GIT_SSH_COMMAND: cannot parse"):
        ssh_argv({"GIT_SSH_COMMAND": "ssh -o 'unterminated"})
