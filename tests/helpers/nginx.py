"""A real nginx on 127.0.0.1 serving a folder: the HTTP origin of the tests
(and of bench/fleet.py).

Debian's nginx runs as the current user with a configuration written here:
`daemon off`, pid file, error and access logs in a temporary prefix, a free
port. `Nginx` is a context manager that always stops it (and its workers,
one process group) on exit, also when the test fails.

Locations (all serve the same `root` folder):
    /            range requests, ETag, keep-alive
    /norange/    `max_ranges 0`: nginx answers every Range with 200 and the
                 whole file, as an origin without range support does
    /denied/     403
    /loop/       a redirect to itself (a loop)
    /hop/NAME    a 302 to /NAME (one redirect, then ranges)
    /gethonly/   403 to HEAD, ranges to GET: an S3 URL presigned for GET only
The access log has one line per request: status, bytes sent, request,
range, user agent.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
# The request `log_records` sends to know every earlier one is logged.
SYNC = "/__docteur_log_sync__"
# A deadline against hangs only: nothing is asserted about how long things take.
PATIENCE = 60.0

CONFIG = """\
daemon off;
{user}master_process on;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 256; }}
http {{
    log_format fleet '$status $body_bytes_sent "$request" "$http_range" "$http_user_agent"';
    access_log {prefix}/access.log fleet;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    types {{ application/octet-stream img; }}
    default_type application/octet-stream;
    sendfile on;
    keepalive_timeout 60s;
    keepalive_requests 100000;
    server {{
        listen 127.0.0.1:{port};
        root {root};
        location /norange/ {{ alias {root}/; max_ranges 0; }}
        location /denied/ {{ return 403; }}
        location /loop/ {{ return 302 /loop/again; }}
        location ~ ^/hop/(.*)$ {{ return 302 /$1$is_args$args; }}
        location /gethonly/ {{
            alias {root}/;
            if ($request_method = HEAD) {{ return 403; }}
        }}
    }}
{tls_server}}}
"""

TLS_SERVER = """\
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {prefix}/cert.pem;
        ssl_certificate_key {prefix}/key.pem;
        root {root};
    }}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Nginx:
    """nginx serving `root` on a free loopback port until `stop()`."""

    def __init__(self, root: str | os.PathLike, tls: bool = False) -> None:
        """`tls`: also serve https on `tls_port` with a self-signed
        certificate for 127.0.0.1 (`cert`, for SSL_CERT_FILE)."""
        self.root = Path(root).resolve()
        self.tls = tls
        self.tls_port = 0
        self.proc: subprocess.Popen | None = None
        self._tmp: tempfile.TemporaryDirectory | None = None
        self.port = 0
        self._syncs = 0  # requests sent by log_records to know the log is complete

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def tls_url(self) -> str:
        return f"https://127.0.0.1:{self.tls_port}"

    @property
    def cert(self) -> Path:
        return Path(self._tmp.name) / "cert.pem"

    @property
    def access_log(self) -> Path:
        return Path(self._tmp.name) / "access.log"

    def start(self) -> "Nginx":
        self._tmp = tempfile.TemporaryDirectory(prefix="docteur-nginx-")
        prefix = Path(self._tmp.name)
        try:
            if self.tls:
                subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
                                "-days", "2", "-subj", "/CN=127.0.0.1",
                                "-addext", "subjectAltName=IP:127.0.0.1",
                                "-keyout", str(prefix / "key.pem"),
                                "-out", str(prefix / "cert.pem")],
                               check=True, capture_output=True)
            for _attempt in range(5):
                self.port = free_port()
                self.tls_port = free_port() if self.tls else 0
                tls_server = (TLS_SERVER.format(port=self.tls_port, prefix=prefix,
                                                root=self.root) if self.tls else "")
                conf = prefix / "nginx.conf"
                # as root, nginx's workers would drop to `nobody`, who cannot read
                # the test's temporary folders
                user = "user root;\n" if os.geteuid() == 0 else ""
                conf.write_text(CONFIG.format(prefix=prefix, port=self.port, root=self.root,
                                              user=user, tls_server=tls_server))
                errors = open(prefix / "stderr", "w+b")
                self.proc = subprocess.Popen([NGINX, "-c", str(conf), "-p", str(prefix)],
                                             stdin=subprocess.DEVNULL, stdout=errors,
                                             stderr=errors, start_new_session=True)
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline:
                    if self.proc.poll() is not None:
                        break
                    try:
                        socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                        return self
                    except OSError:
                        time.sleep(0.02)
                errors.seek(0)
                said = errors.read().decode(errors="replace")
                errors.close()
                self._kill()
                if "Address already in use" not in said:
                    raise RuntimeError(f"nginx did not start: {said.strip()}")
            raise RuntimeError("nginx found no free port")
        except BaseException:
            self.stop()
            raise

    def _kill(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(timeout=10)
                break
            except subprocess.TimeoutExpired:
                continue
        try:  # workers outliving the master
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def stop(self) -> None:
        self._kill()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def log_records(self) -> list[tuple[int, int, str, str, str]]:
        """(status, bytes sent, request line, Range header, User-Agent) per
        request so far ("-" for an absent header).

        nginx logs a request after its last byte is sent, so a client may
        read the log before the line of the request it just finished is
        there. The one worker handles requests in order: once the line of a
        request sent now is in the log, every earlier one is too. So each
        read first sends such a request (a 404 for `SYNC`, left out of the
        result) and waits for its line."""
        import re
        import urllib.error
        import urllib.request

        self._syncs += 1
        token = f"{SYNC}/{self._syncs}"
        try:
            urllib.request.urlopen(f"{self.url}{token}", timeout=PATIENCE).close()
        except urllib.error.HTTPError:
            pass  # the 404 expected
        deadline = time.monotonic() + PATIENCE
        while True:
            text = self.access_log.read_text() if self.access_log.exists() else ""
            if f'"GET {token} ' in text:
                break
            if time.monotonic() > deadline:
                raise AssertionError(f"nginx never logged {SYNC}")
            time.sleep(0.01)
        out = []
        for line in text.splitlines():
            m = re.fullmatch(r'(\d+) (\d+) "(.*)" "(.*)" "(.*)"', line)
            if m[3].startswith(f"GET {SYNC}/"):
                continue
            out.append((int(m[1]), int(m[2]), m[3], m[4], m[5]))
        return out

    def log_lines(self) -> list[tuple[int, int, str, str]]:
        """(status, bytes sent, request line, Range header) per request so far."""
        return [record[:4] for record in self.log_records()]

    def __enter__(self) -> "Nginx":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
