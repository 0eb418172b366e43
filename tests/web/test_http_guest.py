"""End to end: `docteur boot IMAGE --http PORT` — a real QEMU guest (TCG)
runs the web server on the image it reads through its disk, the host port
forwarded to it; and the redeploy: a guest keeps serving the image it
booted on after the image is rebuilt, a restarted guest serves the new one.

Slow (each boot costs tens of seconds under TCG), as the other guest tests.
"""

from __future__ import annotations

import http.client
import os
import selectors
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.helpers.support import free_port
from tests.helpers.http_server import DOCTEUR

pytestmark = [pytest.mark.slow, pytest.mark.qemu, pytest.mark.nbdkit]

BOOT_PATIENCE = 600.0


class GuestServer:
    """A real `docteur boot IMAGE --http 127.0.0.1:PORT`, its stderr read
    line by line until the guest serves (a condition, not a clock)."""

    def __init__(self, image: Path, port: int, *options: str) -> None:
        self.port = port
        self.proc = subprocess.Popen(
            DOCTEUR + ["boot", str(image), "--http", f"127.0.0.1:{port}", "--timeout",
                       str(int(BOOT_PATIENCE)), *options],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.err = b""
        self.lines: list[str] = []

    def line(self, patience: float = BOOT_PATIENCE) -> str:
        deadline = time.monotonic() + patience
        fd = self.proc.stderr.fileno()
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            while b"\n" not in self.err:
                left = deadline - time.monotonic()
                if left <= 0 or not sel.select(left):
                    raise AssertionError(f"no line from docteur boot: {self.lines[-20:]}")
                chunk = os.read(fd, 65536)
                if not chunk:
                    raise AssertionError(f"docteur boot exited: {self.lines[-20:]} {self.err!r}")
                self.err += chunk
        raw, _, self.err = self.err.partition(b"\n")
        text = raw.decode(errors="replace")
        self.lines.append(text)
        return text

    def wait_serving(self) -> str:
        while True:
            text = self.line()
            if text.startswith("docteur boot: the guest serves"):
                return text

    def get(self, path: str, headers: dict | None = None):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=300)
        try:
            conn.request("GET", path, headers=headers or {})
            r = conn.getresponse()
            return r.status, dict(r.getheaders()), r.read()
        finally:
            conn.close()

    def finish(self, patience: float = 120.0) -> tuple[int, str]:
        try:
            self.proc.wait(timeout=patience)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        rest = self.proc.stderr.read()
        self.proc.stderr.close()
        return self.proc.returncode, "\n".join(self.lines) + (self.err + rest).decode(
            errors="replace")


def _qemu_forwarding(port: int) -> list[int]:
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"qemu-system" in cmd and f"hostfwd=tcp:127.0.0.1:{port}-".encode() in cmd:
            found.append(int(pid))
    return found


def _make(src: Path, image: Path, version: str) -> None:
    (src / "index.html").write_text(f"<h1>{version}</h1>\n")
    (src / "page.html").write_text(f"<p>page of {version}</p>\n" * 50)
    (src / "docs").mkdir(exist_ok=True)
    (src / "docs" / "index.html").write_text(f"docs {version}\n")
    subprocess.run(DOCTEUR + ["make", "-q", str(src), str(image)], check=True)


def test_a_guest_serves_the_site_and_keeps_it_across_a_rebuild(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    image = tmp_path / "site.img"
    _make(src, image, "v1")
    v1_commit = image.read_bytes()[:20].hex()
    port = free_port()
    first = GuestServer(image, port)
    second = None
    try:
        started = first.wait_serving()
        assert f"on http://127.0.0.1:{port}/" in started and v1_commit in started
        status, headers, body = first.get("/")
        assert (status, body) == (200, b"<h1>v1</h1>\n")
        etag = '"' + subprocess.run(
            ["git", "hash-object", str(src / "index.html")], capture_output=True,
            text=True, check=True).stdout.strip() + '"'
        assert headers["ETag"] == etag
        status, headers, _ = first.get("/docs")
        assert status == 301 and headers["Location"] == "/docs/"
        assert first.get("/", {"If-None-Match": etag})[:3:2] == (304, b"")
        status, headers, body = first.get("/page.html", {"Range": "bytes=0-6"})
        assert (status, body) == (206, b"<p>page")
        assert first.get("/%2e%2e/etc/passwd")[0] == 404
        # The access log comes through the console, one line per request.
        log = [first.line() for _ in range(5)]
        assert '"GET / HTTP/1.1" 200' in log[0] and '"GET / HTTP/1.1" 304' in log[2]
        assert '"GET /%2e%2e/etc/passwd HTTP/1.1" 404' in log[4]

        # Redeploy: the image is rebuilt in place.
        _make(src, image, "v2")
        assert image.read_bytes()[:20].hex() != v1_commit
        # The running guest keeps v1, pages it had not read included.
        assert first.get("/docs/")[2] == b"docs v1\n"
        assert first.get("/")[2] == b"<h1>v1</h1>\n"
        # A restarted guest serves v2.
        second = GuestServer(image, free_port())
        second.wait_serving()
        assert second.get("/")[2] == b"<h1>v2</h1>\n"
        assert second.get("/docs/")[2] == b"docs v2\n"
        assert first.get("/page.html")[2] == b"<p>page of v1</p>\n" * 50

        # `docteur boot --stop --http PORT` stops that one, and only it.
        done = subprocess.run(DOCTEUR + ["boot", "--stop", "--http", str(port)],
                              capture_output=True, text=True, timeout=180)
        assert done.returncode == 0, done.stderr
        assert f"stopped the guest serving {image} on http://127.0.0.1:{port}/" in done.stderr
        status, text = first.finish()
        assert status == 0 and "Traceback" not in text, text
        assert _qemu_forwarding(port) == []
        assert second.get("/")[2] == b"<h1>v2</h1>\n"
        # Ctrl-C stops the other.
        second.proc.send_signal(signal.SIGINT)
        status, text = second.finish()
        assert status == 0 and "Traceback" not in text, text
        assert _qemu_forwarding(second.port) == []
    finally:
        for guest in (first, second):
            if guest is not None and guest.proc.poll() is None:
                guest.proc.kill()
                guest.proc.wait()


def test_stop_with_no_guest_and_a_taken_port_are_one_line(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    image = tmp_path / "site.img"
    _make(src, image, "v1")
    done = subprocess.run(DOCTEUR + ["boot", "--stop", "--http", "1"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert done.stderr == ("docteur boot: no guest is serving port 1 (started with docteur "
                           "boot IMAGE --http PORT)\n")
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        done = subprocess.run(DOCTEUR + ["boot", str(image), "--http", f"127.0.0.1:{port}"],
                              capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert done.stderr.endswith(f"docteur boot: cannot listen on 127.0.0.1:{port}: the port is "
                                "taken (another server is on it); choose another with --http "
                                "[HOST:]PORT\n")
    assert "Traceback" not in done.stderr
