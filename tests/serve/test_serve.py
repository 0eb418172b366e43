"""`docteur serve` and `docteur plugin-path`: real nbdkit, real clients, the
command run as users run it (`python -m docteur_core serve ...`).

Background servers are always started with --pidfile and killed at the end
of their test; foreground ones are stopped with a signal, as Ctrl-C would.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.plugin_support import SYSTEM_PYTHON
from tests.helpers.serving import cmdline, copy_image, nbdkits_of
from tests.helpers.support import alive, free_port, one_line, wait_gone

pytestmark = [pytest.mark.nbdkit]

DOCTEUR = [sys.executable, "-m", "docteur_core"]
# A deadline against hangs only: nothing is asserted about how long things take.
PATIENCE = 60.0


# -- helpers ---------------------------------------------------------------------------


def docteur(*args: str, cwd: Path | None = None, timeout: float = 120
            ) -> subprocess.CompletedProcess:
    return subprocess.run([*DOCTEUR, *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=timeout)


def docteur_bytes(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*DOCTEUR, *map(str, args)], capture_output=True, timeout=120)


def connection_nbdkits(server: int) -> list[int]:
    """The nbdkit processes `docteur serve` (pid `server`) runs, one per client."""
    proc = subprocess.run(["pgrep", "-P", str(server), "-x", "nbdkit"], capture_output=True,
                          text=True)
    return [pid for pid in map(int, proc.stdout.split()) if alive(pid)]


def wait_for(condition, what: str) -> None:
    """Until `condition()` holds (a deadline against hangs only)."""
    import time
    deadline = time.monotonic() + PATIENCE
    while not condition():
        assert time.monotonic() < deadline, f"still waiting for {what}"
        time.sleep(0.05)


def cat(uri: str, path: str) -> subprocess.CompletedProcess:
    return docteur_bytes("cat", uri, path)


def description(uri: str) -> str:
    proc = subprocess.run(["nbdinfo", "--json", uri], capture_output=True, text=True,
                          check=True, timeout=60)
    return json.loads(proc.stdout)["exports"][0]["description"]


def whole_export(uri: str) -> bytes:
    return subprocess.run(["nbdcopy", uri, "-"], capture_output=True, check=True,
                          timeout=120).stdout




def _sigint_default() -> None:
    # A shell's `cmd &` ignores SIGINT, and Python then keeps ignoring it;
    # a terminal's Ctrl-C reaches a foreground command with the default.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Foreground:
    """`docteur serve -f ...` in its own process group, as a shell runs it."""

    def __init__(self, *args: str, cwd: Path | None = None) -> None:
        self.proc = subprocess.Popen([*DOCTEUR, "serve", "--foreground", *map(str, args)],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     cwd=cwd, start_new_session=True,
                                     preexec_fn=_sigint_default)

    def uri(self) -> str:
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait(timeout=PATIENCE)
            raise AssertionError(f"docteur serve -f exited {self.proc.returncode}: "
                                 f"{self.proc.stderr.read()}")
        return line.rstrip("\n")

    def stop(self, sig: int) -> tuple[int, str, str]:
        """Send `sig` to the whole group (as a terminal's Ctrl-C does)."""
        os.killpg(self.proc.pid, sig)
        out, err = self.proc.communicate(timeout=PATIENCE)
        return self.proc.returncode, out, err

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate(timeout=PATIENCE)


def readme(images, name: str) -> bytes:
    return (images[name]["src"] / "README.txt").read_bytes()


# -- background (the default) ----------------------------------------------------------


def test_background_prints_the_uri_and_serves(images, tmp_path, daemons):
    image = copy_image(images, "one", tmp_path / "disk.img")
    port = free_port()
    pidfile = tmp_path / "nbdkit.pid"
    daemons.append(pidfile)
    proc = docteur("serve", "--port", port, "--pidfile", pidfile, image)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"nbd://127.0.0.1:{port}/\n"
    uri = proc.stdout.strip()
    pid = int(pidfile.read_text())
    assert alive(pid)
    # docteur serve itself stays in the background, and runs one nbdkit per
    # client (front.py): none before the first one connects
    assert cmdline(pid)[1:4] == ["-m", "docteur_core", "serve"]
    assert connection_nbdkits(pid) == []
    assert "(pid " in proc.stderr and f"kill {pid}" in proc.stderr

    got = cat(uri, "docs/guide.md")
    assert got.returncode == 0, got.stderr
    assert got.stdout == (images["one"]["src"] / "docs" / "guide.md").read_bytes()
    assert description(uri) == \
        f"docteur image: commit {images['one']['commit']} tree {images['one']['tree']}"
    assert whole_export(uri) == images["one"]["data"]
    wait_for(lambda: connection_nbdkits(pid) == [], "the clients' nbdkits to exit")

    os.kill(pid, signal.SIGTERM)
    assert wait_gone(pid)
    assert nbdkits_of(image) == []


def test_background_on_a_unix_socket(images, tmp_path, daemons):
    image = copy_image(images, "one", tmp_path / "disk.img")
    pidfile = tmp_path / "nbdkit.pid"
    daemons.append(pidfile)
    # A relative socket path: the URI names it absolutely.
    proc = docteur("serve", "--unix", "nbd.sock", "--pidfile", pidfile, image, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    sock = tmp_path / "nbd.sock"
    assert proc.stdout == f"nbd+unix:///?socket={sock}\n"
    assert sock.is_socket()
    got = cat(proc.stdout.strip(), "README.txt")
    assert got.returncode == 0 and got.stdout == readme(images, "one")
    pid = int(pidfile.read_text())
    os.kill(pid, signal.SIGTERM)
    assert wait_gone(pid)
    assert nbdkits_of(image) == []


def test_a_folder_is_served_without_cache_every_image_by_name(images, tmp_path, daemons):
    folder = tmp_path / "images"
    folder.mkdir()
    copy_image(images, "one", folder / "a.img")
    copy_image(images, "two", folder / "b.img")
    port = free_port()
    pidfile = tmp_path / "nbdkit.pid"
    daemons.append(pidfile)
    proc = docteur("serve", "--port", port, "--pidfile", pidfile, folder)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"nbd://127.0.0.1:{port}/\n"
    argv = cmdline(int(pidfile.read_text()))
    assert not any("cache" in part for part in argv), argv
    assert f"dir={folder}" in argv
    for export, name in (("a", "one"), ("b", "two")):
        uri = f"nbd://127.0.0.1:{port}/{export}"
        got = cat(uri, "README.txt")
        assert got.returncode == 0, got.stderr
        assert got.stdout == readme(images, name)
        assert images[name]["commit"] in description(uri)
    os.kill(int(pidfile.read_text()), signal.SIGTERM)
    assert wait_gone(int(pidfile.read_text()))


# -- foreground ------------------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_foreground_stops_cleanly_on_a_signal(images, tmp_path, sig):
    image = copy_image(images, "one", tmp_path / "disk.img")
    sock = tmp_path / "nbd.sock"
    pidfile = tmp_path / "serve.pid"
    server = Foreground("--unix", sock, "--pidfile", pidfile, image)
    try:
        assert server.uri() == f"nbd+unix:///?socket={sock}"
        nbdkit = int(pidfile.read_text())
        assert nbdkit == server.proc.pid  # docteur serve, which runs an nbdkit per client
        got = cat(f"nbd+unix:///?socket={sock}", "random.bin")
        assert got.returncode == 0
        assert got.stdout == (images["one"]["src"] / "random.bin").read_bytes()
        status, out, err = server.stop(sig)
    finally:
        server.kill()
    assert status == 0, err
    assert err.splitlines()[-1] == "docteur serve: stopped", err
    assert "Traceback" not in err
    assert out == ""  # the URI line was all
    assert wait_gone(nbdkit)
    assert nbdkits_of(image) == []
    assert not pidfile.exists()
    assert not sock.exists()
    # The same socket can be served again at once.
    again = Foreground("--unix", sock, image)
    try:
        assert again.uri() == f"nbd+unix:///?socket={sock}"
        assert again.stop(signal.SIGTERM)[0] == 0
    finally:
        again.kill()
    assert not sock.exists()


def test_foreground_on_tcp(images, tmp_path):
    image = copy_image(images, "two", tmp_path / "disk.img")
    port = free_port()
    pidfile = tmp_path / "serve.pid"
    server = Foreground("--port", port, "--pidfile", pidfile, image)
    try:
        assert server.uri() == f"nbd://127.0.0.1:{port}/"
        got = cat(f"nbd://127.0.0.1:{port}/", "README.txt")
        assert got.returncode == 0 and got.stdout == readme(images, "two")
        nbdkit = int(pidfile.read_text())
        status, _, err = server.stop(signal.SIGINT)
    finally:
        server.kill()
    assert status == 0, err
    assert wait_gone(nbdkit)
    with socket.socket() as s:  # nobody listens there any more (TIME_WAIT aside)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        s.listen()


# -- refusals: one line, exit status 1 -------------------------------------------------


@pytest.mark.parametrize("foreground", [False, True], ids=["background", "foreground"])
def test_a_taken_port_is_one_line(images, tmp_path, foreground):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        args = ["serve", "--port", port, *(["-f"] if foreground else []), images["one"]["image"]]
        proc = docteur(*args)
    assert proc.returncode == 1
    assert proc.stdout == ""
    line = one_line(proc.stderr)
    assert line.startswith("docteur serve: ")
    assert f"port {port} is already in use" in line
    assert nbdkits_of(images["one"]["image"]) == []


def test_a_second_server_on_the_same_port_is_refused(images, tmp_path, daemons):
    first = copy_image(images, "one", tmp_path / "first.img")
    second = copy_image(images, "two", tmp_path / "second.img")
    port = free_port()
    pidfile = tmp_path / "first.pid"
    daemons.append(pidfile)
    assert docteur("serve", "--port", port, "--pidfile", pidfile, first).returncode == 0
    proc = docteur("serve", "--port", port, "--pidfile", tmp_path / "second.pid", second)
    assert proc.returncode == 1 and proc.stdout == ""
    assert f"port {port} is already in use" in one_line(proc.stderr)
    assert nbdkits_of(second) == []
    got = cat(f"nbd://127.0.0.1:{port}/", "README.txt")  # the first one still serves
    assert got.returncode == 0 and got.stdout == readme(images, "one")


def test_a_missing_image_is_one_line(tmp_path):
    missing = tmp_path / "nothere.img"
    proc = docteur("serve", "--port", free_port(), missing)
    assert proc.returncode == 1 and proc.stdout == ""
    line = one_line(proc.stderr)
    assert line.startswith("docteur serve: ") and str(missing) in line
    assert "no such image" in line


def _pack_signature_damaged(images, dest: Path) -> Path:
    data = bytearray(images["one"]["data"])
    data[28:32] = b"PACX"  # the PACK signature, right after the 28-byte header
    dest.write_bytes(bytes(data))
    return dest


@pytest.mark.parametrize("foreground", [False, True], ids=["background", "foreground"])
def test_a_damaged_image_is_refused_with_verify_quicks_words(images, tmp_path, foreground):
    bad = _pack_signature_damaged(images, tmp_path / "bad.img")
    check = docteur("verify", "--quick", bad)
    assert check.returncode == 1
    first_problem = [line for line in check.stderr.splitlines()
                     if not line.startswith("docteur ")][0]
    assert "PACK" in first_problem
    proc = docteur("serve", "--port", free_port(), *(["-f"] if foreground else []), bad)
    assert proc.returncode == 1 and proc.stdout == ""
    line = one_line(proc.stderr)
    assert line.startswith("docteur serve: ")
    assert str(bad) in line and first_problem in line
    assert nbdkits_of(bad) == []


def test_verify_none_serves_what_verify_quick_refuses(images, tmp_path, daemons):
    bad = _pack_signature_damaged(images, tmp_path / "bad.img")
    port = free_port()
    refused = docteur("serve", "--port", port, "--verify", "quick", bad)
    assert refused.returncode == 1 and "PACK" in one_line(refused.stderr)
    pidfile = tmp_path / "nbdkit.pid"
    daemons.append(pidfile)
    proc = docteur("serve", "--port", port, "--verify", "none", "--pidfile", pidfile, bad)
    assert proc.returncode == 0, proc.stderr
    assert whole_export(proc.stdout.strip()) == bad.read_bytes()


# -- a replaced image: pinned behind the cache, followed without it --------------------

# A connection that stays open across a replacement of the image: it reads
# the first half (512-aligned: the plugin's minimum block size), waits for a
# line on stdin, then reads everything.
HOLD_OPEN = r"""
import hashlib, json, sys, nbd
h = nbd.NBD()
h.connect_uri(sys.argv[1])
size = h.get_size()
first = h.pread(size // 2 // 512 * 512, 0)
print(json.dumps({"size": size}), flush=True)
sys.stdin.readline()
step = 64 << 10
whole = b"".join(h.pread(min(step, size - o), o) for o in range(0, size, step))
print(json.dumps({"size": h.get_size(), "sha": hashlib.sha256(whole).hexdigest(),
                  "first_same": whole.startswith(first)}), flush=True)
h.shutdown()
"""


def _hold_open(uri: str) -> subprocess.Popen:
    """A client that reads the first half now and everything when told to."""
    holder = subprocess.Popen([SYSTEM_PYTHON, "-c", HOLD_OPEN, uri], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = holder.stdout.readline()
    assert line, holder.communicate(timeout=PATIENCE)[1]
    json.loads(line)
    return holder


def _finish(holder: subprocess.Popen) -> dict:
    out, err = holder.communicate("go\n", timeout=PATIENCE)
    assert holder.returncode == 0, err
    return json.loads(out.strip().splitlines()[-1])


def _replace(images, live: Path, name: str) -> None:
    staged = live.with_name("staged.img")
    copy_image(images, name, staged)
    os.rename(staged, live)  # `mv staged.img disk.img`: atomic


@pytest.mark.parametrize("front", [True, False], ids=["default", "no-cache"])
def test_a_replaced_image(images, tmp_path, front):
    """`mv staged.img disk.img` under a server: by default (one nbdkit per
    client, front.py) and with --no-cache (the plugin opens the path per
    connection), new clients get the new image, the open one the old."""
    live = copy_image(images, "one", tmp_path / "disk.img")
    sock = tmp_path / "nbd.sock"
    pidfile = tmp_path / "serve.pid"
    old, new = images["one"]["data"], images["two"]["data"]
    server = Foreground("--unix", sock, "--pidfile", pidfile,
                        *([] if front else ["--no-cache"]), live)
    holder = None
    try:
        uri = server.uri()
        pid = int(pidfile.read_text())
        assert (pid == server.proc.pid) == front
        assert cat(uri, "README.txt").stdout == readme(images, "one")
        holder = _hold_open(uri)  # has read the first half
        _replace(images, live, "two")
        got = cat(uri, "README.txt")
        assert got.returncode == 0 and got.stdout == readme(images, "two")
        assert whole_export(uri) == new
        assert images["two"]["commit"] in description(uri)
        final = _finish(holder)  # the rest of the image, after the replacement
        holder = None
        status, _, err = server.stop(signal.SIGTERM)
    finally:
        if holder is not None:
            holder.kill()
            holder.communicate()
        server.kill()
    # The connection opened before the replacement read the old image, all of it.
    assert final == {"size": len(old), "sha": hashlib.sha256(old).hexdigest(),
                     "first_same": True}
    assert status == 0, err
    assert wait_gone(pid)
    if front:
        assert f"{live} was replaced: new clients get commit {images['two']['commit']}" in err


def test_a_rebuild_while_serving(images, tmp_path):
    """The README's loop: `docteur serve disk.img`, then `docteur make SRC
    disk.img` again and again. A client connected before each rebuild reads
    its image to the end, consistently, through nbdkit (in C: the nbdkit of
    its own connection); a client connecting after reads the new one; a
    damaged rebuild is refused with the reason and what to do, and a good
    one after it is served; each old image's nbdkit exits with its last
    client."""
    live = tmp_path / "disk.img"
    src = tmp_path / "site"
    shutil.copytree(images["one"]["src"], src)
    assert docteur("make", "-q", src, live).returncode == 0
    first = live.read_bytes()
    sock = tmp_path / "nbd.sock"
    server = Foreground("--unix", sock, live)
    holders = []
    try:
        uri = server.uri()
        pid = server.proc.pid
        holders.append(_hold_open(uri))  # connected to the first image
        (src / "README.txt").write_bytes(b"second build\n")
        made = docteur("make", "-q", src, live)  # rebuilds in place, by rename
        assert made.returncode == 0, made.stderr
        second = live.read_bytes()
        assert second != first
        got = cat(uri, "README.txt")
        assert got.returncode == 0 and got.stdout == b"second build\n", got.stderr
        assert whole_export(uri) == second
        holders.append(_hold_open(uri))  # connected to the second image
        # one per connected client (those of the clients gone exit with them)
        wait_for(lambda: len(connection_nbdkits(pid)) == 2, "the two holders' nbdkits alone")

        # A damaged rebuild: new clients are told why and what to do.
        damaged = tmp_path / "staged.img"
        damaged.write_bytes(second[:len(second) // 2])
        os.rename(damaged, live)
        refused = cat(uri, "README.txt")
        said = refused.stderr.decode()
        assert refused.returncode == 1 and refused.stdout == b"" and said.count("\n") == 1
        assert f"export '' refused by the server: {live}: the image was replaced by one that " \
               "cannot be served: " in said, said
        assert "new ones are refused until a valid image is put at" in said
        qemu = subprocess.run(["qemu-img", "info", uri], capture_output=True, text=True,
                              timeout=PATIENCE)
        assert qemu.returncode != 0 and "cannot be served" in qemu.stderr, qemu.stderr

        (src / "README.txt").write_bytes(b"third build\n")
        assert docteur("make", "-q", src, live).returncode == 0
        third = live.read_bytes()
        got = cat(uri, "README.txt")
        assert got.returncode == 0 and got.stdout == b"third build\n", got.stderr

        finals = [_finish(holder) for holder in holders]
        holders = []
        for final, data in zip(finals, (first, second)):
            assert final == {"size": len(data), "sha": hashlib.sha256(data).hexdigest(),
                             "first_same": True}
        # the old images' nbdkits are gone with their clients
        wait_for(lambda: connection_nbdkits(pid) == [], "the clients' nbdkits to exit")
        assert whole_export(uri) == third
        status, _, err = server.stop(signal.SIGTERM)
    finally:
        for holder in holders:
            holder.kill()
            holder.communicate()
        server.kill()
    assert status == 0, err
    assert "a client was refused: " in err and "cannot be served" in err


def test_a_rebuild_of_another_commit_under_commit_is_refused(images, tmp_path):
    """--commit pins what is served: a replacement holding another commit
    is refused with both commits named, and the open client keeps reading."""
    from docteur_core.blockdev.block import ByteReader
    from docteur_core.blockdev.nbd_client import NbdDevice

    live = copy_image(images, "one", tmp_path / "disk.img")
    one, two = images["one"]["commit"], images["two"]["commit"]
    server = Foreground("--unix", tmp_path / "nbd.sock", "--commit", one, live)
    try:
        uri = server.uri()
        with NbdDevice(uri) as before:
            _replace(images, live, "two")
            got = cat(uri, "README.txt")
            assert ByteReader(before).pread(0, before.capacity) == images["one"]["data"]
        assert got.returncode == 1
        assert (f"export '' refused by the server: {live}: the image was replaced by one that "
                f"cannot be served: wrong image: it holds commit {two}, not {one} "
                "(pinned by --commit)"
                in got.stderr.decode()), got.stderr
        server.stop(signal.SIGTERM)
    finally:
        server.kill()


def test_a_replacement_of_another_commit_is_refused_with_the_reason(images, tmp_path):
    """commit= pins the image: a rebuilt image holding another commit is not
    served, and the client's error names both commits (not `export ''
    not found`); a server that lists no reason keeps NBD's own words."""
    from docteur_core.blockdev.block import ByteReader
    from docteur_core.blockdev.nbd_client import NbdDevice
    from docteur_core.blockdev.nbd_protocol import NbdExportNotFound
    from docteur_core.serve.nbdkit import PLUGIN
    from tests.helpers.support import NbdkitServer

    live = copy_image(images, "one", tmp_path / "disk.img")
    one, two = images["one"]["commit"], images["two"]["commit"]
    with NbdkitServer("python", str(PLUGIN), f"image={live}", f"commit={one}",
                      unix=True) as srv:
        with NbdDevice(srv.uri) as before:
            _replace(images, live, "two")
            with pytest.raises(NbdExportNotFound) as info:
                NbdDevice(srv.uri)
            # the connection opened before keeps reading the image it opened
            assert ByteReader(before).pread(0, before.capacity) == images["one"]["data"]
    message = str(info.value)
    assert message == (f"{srv.uri}: export '' refused by the server: {live}: wrong image: it holds "
                       f"commit {two}, not {one} (pinned by commit=)"), message
    with NbdkitServer("file", f"dir={tmp_path}", unix=True) as srv:
        with pytest.raises(NbdExportNotFound, match=r"export 'nope' not found$"):
            NbdDevice(f"nbd+unix:///nope?socket={srv.socket}")


# -- help and plugin-path --------------------------------------------------------------


def test_help_names_the_options():
    proc = docteur("serve", "--help")
    assert proc.returncode == 0
    for word in ("cache", "--cache-size", "--no-cache", "--port", "--unix", "--foreground",
                 "Ctrl-C", "--pidfile", "--verify"):
        assert word in proc.stdout, word


def test_plugin_path_is_a_plugin_nbdkit_accepts():
    proc = docteur("plugin-path")
    assert proc.returncode == 0, proc.stderr
    path = Path(proc.stdout.strip())
    assert proc.stdout == f"{path}\n" and path.is_absolute() and path.is_file()
    dump = subprocess.run(["nbdkit", "python", str(path), "--dump-plugin"],
                          capture_output=True, text=True, timeout=60)
    from docteur_core import __version__
    lines = dump.stdout.splitlines()
    assert f"docteur_version={__version__}" in lines
    # Exits cleanly, having printed every docteur_ line (nbdkit 1.32 crashes
    # when the plugin's dump_plugin raises).
    assert dump.returncode == 0, (dump.returncode, dump.stdout, dump.stderr)
    assert f"docteur_package={path.resolve().parents[1]}" in lines


def test_auto_cache_size_bounds_only_images_over_1_gib(tmp_path):
    from docteur_core.serve.nbdkit import Listen, auto_cache_size, command
    assert auto_cache_size(5632) == ""
    assert auto_cache_size(1 << 30) == ""
    assert auto_cache_size((1 << 30) + 1) == "1024M"
    big = tmp_path / "big.img"
    with open(big, "wb") as f:
        f.truncate((2 << 30))
    assert "cache-max-size=1024M" in command(big, Listen())
    assert "cache-max-size=64M" in command(big, Listen(), cache_size="64M")


def test_a_stale_socket_left_by_a_killed_server_is_reused(images, tmp_path, daemons):
    """nbdkit killed in the background leaves its socket: the next serve takes the path."""
    image = copy_image(images, "one", tmp_path / "disk.img")
    sock = tmp_path / "s.sock"
    for _ in range(2):
        pidfile = tmp_path / "nbdkit.pid"
        daemons.append(pidfile)
        proc = docteur("serve", "--unix", sock, "--pidfile", pidfile, image)
        assert proc.returncode == 0, proc.stderr
        got = cat(proc.stdout.strip(), "docs/guide.md")
        assert got.returncode == 0
        assert got.stdout == (images["one"]["src"] / "docs" / "guide.md").read_bytes()
        pid = int(pidfile.read_text())
        os.kill(pid, signal.SIGKILL)
        assert wait_gone(pid)
        assert sock.exists()  # what the kill left behind


def test_a_live_socket_is_not_taken(images, tmp_path, daemons):
    image = copy_image(images, "one", tmp_path / "disk.img")
    sock = tmp_path / "s.sock"
    pidfile = tmp_path / "nbdkit.pid"
    daemons.append(pidfile)
    assert docteur("serve", "--unix", sock, "--pidfile", pidfile, image).returncode == 0
    again = docteur("serve", "--unix", sock, image)
    assert again.returncode == 1 and "already exists" in again.stderr
    assert len(again.stderr.strip().splitlines()) == 1


def test_without_nbdkit_it_says_which_packages_to_install(images, tmp_path):
    """A machine without nbdkit: PATH holding python but not nbdkit."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python3").symlink_to(sys.executable)
    proc = subprocess.run([sys.executable, "-m", "docteur_core", "serve", images["one"]["image"]],
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PATH": str(bin_dir)})
    assert proc.returncode == 1
    assert proc.stderr == ("docteur serve: nbdkit not found: install Debian's nbdkit and "
                           "nbdkit-plugin-python\n")


def test_a_missing_python_plugin_names_its_package(tmp_path):
    """What nbdkit says when its Python plugin's .so is absent (made real by
    naming a plugin file that does not exist), as docteur serve words it."""
    from docteur_core.serve.nbdkit import reason
    said = subprocess.run(["nbdkit", "--run", "true", str(tmp_path / "nbdkit-python-plugin.so")],
                          capture_output=True, text=True, timeout=60)
    assert said.returncode != 0
    assert reason(said.stderr) == ("nbdkit's Python plugin is missing: install Debian's nbdkit "
                                   "and nbdkit-plugin-python")
