"""Images of remote repositories served for real on 127.0.0.1.

- git:// by `git daemon`;
- http:// by `git http-backend` (smart HTTP) behind a small threaded HTTP
  server, with and without basic authentication (credentials in the URL).
The image of a remote must be byte-identical to the image of the same
commit built from the local repository.
"""

from __future__ import annotations

import base64
import http.server
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

from docteur_core.make import make_image
from docteur_core.errors import BuildError
from tests.support import free_port, git
from tests.test_build_oracle import check_image, image_listing

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="needs git")


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> dict:
    """A bare repository with history, a branch and an annotated tag, under a served root."""
    root = tmp_path_factory.mktemp("served")
    work = root / "work"
    git("init", "-q", str(work))
    commits = []
    for i in range(3):
        (work / "notes.txt").write_text(f"revision {i}\n" + "shared line\n" * 200)
        (work / f"file{i}").write_text(f"{i}\n")
        git("add", "-A", ".", cwd=work)
        git("commit", "-q", "-m", f"commit {i}", cwd=work)
        commits.append(git("rev-parse", "HEAD", cwd=work).decode().strip())
    git("tag", "-a", "-m", "release", "v1", commits[0], cwd=work)
    git("branch", "old", commits[1], cwd=work)
    repo = root / "srv" / "project.git"
    git("clone", "-q", "--bare", str(work), str(repo))
    return {"root": root / "srv", "repo": repo, "commits": commits}


def wait_for_port(port: int, proc: subprocess.Popen | None = None, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")


@pytest.fixture(scope="module")
def git_daemon(served):
    port = free_port()
    proc = subprocess.Popen(
        ["git", "daemon", "--reuseaddr", "--export-all", "--informative-errors",
         f"--base-path={served['root']}", "--listen=127.0.0.1", f"--port={port}",
         str(served["root"])],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, proc)
        yield f"git://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


class GitHttpBackend(http.server.BaseHTTPRequestHandler):
    """Smart HTTP: each request is handed to `git http-backend` as CGI."""

    project_root: str = ""
    credentials: str | None = None  # "user:password" required, if set

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        self._cgi()

    def do_POST(self) -> None:
        self._cgi()

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            body = b""
            while True:
                size = int(self.rfile.readline().strip().split(b";")[0], 16)
                if size == 0:
                    self.rfile.readline()
                    return body
                body += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _cgi(self) -> None:
        user = ""
        if self.credentials is not None:
            expected = "Basic " + base64.b64encode(self.credentials.encode()).decode()
            if self.headers.get("Authorization") != expected:
                self.send_response(401)
                self.send_header("WWW-Authenticate", 'Basic realm="git"')
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            user = self.credentials.split(":")[0]
        url = urlsplit(self.path)
        env = {
            "PATH": os.environ["PATH"], "GIT_PROJECT_ROOT": self.project_root,
            "GIT_HTTP_EXPORT_ALL": "1", "REQUEST_METHOD": self.command,
            "PATH_INFO": unquote(url.path), "QUERY_STRING": url.query,
            "CONTENT_TYPE": self.headers.get("Content-Type", ""),
            "REMOTE_ADDR": "127.0.0.1", "REMOTE_USER": user,
            "GIT_CONFIG_NOSYSTEM": "1", "HOME": "/nonexistent",
        }
        if self.headers.get("Git-Protocol"):
            env["GIT_PROTOCOL"] = self.headers["Git-Protocol"]
        if self.headers.get("Content-Encoding"):
            env["HTTP_CONTENT_ENCODING"] = self.headers["Content-Encoding"]
        body = self._read_body() if self.command == "POST" else b""
        env["CONTENT_LENGTH"] = str(len(body))
        out = subprocess.run(["git", "http-backend"], input=body, env=env,
                             capture_output=True).stdout
        sep = b"\r\n\r\n" if b"\r\n\r\n" in out.split(b"\n\n")[0] + b"\r\n\r\n" else b"\n\n"
        head, _, payload = out.partition(sep)
        status, headers = 200, []
        for line in head.decode("latin-1").splitlines():
            key, _, value = line.partition(":")
            if key.lower() == "status":
                status = int(value.split()[0])
            elif key:
                headers.append((key, value.strip()))
        self.send_response(status)
        for key, value in headers:
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


def start_http(root: Path, credentials: str | None):
    handler = type("Handler", (GitHttpBackend,), {"project_root": str(root),
                                                  "credentials": credentials})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server, f"127.0.0.1:{server.server_address[1]}"


@pytest.fixture(scope="module")
def http_open(served):
    server, hostport = start_http(served["root"], None)
    try:
        yield f"http://{hostport}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def http_auth(served):
    server, hostport = start_http(served["root"], "alice:s3cret")
    try:
        yield hostport
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def local_images(served, tmp_path_factory) -> dict:
    """Images built from the served repository directly, to compare remote ones with."""
    out = tmp_path_factory.mktemp("local")
    images = {}
    for ref in (None, "old", "v1"):
        path = out / f"{ref}.img"
        make_image(served["repo"], path, branch=ref)
        images[ref] = path.read_bytes()
    return images


def check_remote(url: str, tmp: Path, served: dict, local_images: dict, ref, commit: str):
    result = make_image(url, tmp / "remote.img", branch=ref)
    assert result.commit == commit and result.kind == "remote"
    checked = check_image(tmp / "remote.img", tmp)
    assert image_listing(checked.git_dir, commit) == image_listing(served["repo"], commit)
    assert (tmp / "remote.img").read_bytes() == local_images[ref]


@pytest.mark.parametrize("ref, index", [(None, 2), ("old", 1), ("v1", 0)])
def test_git_daemon(git_daemon, served, local_images, tmp_path, ref, index):
    check_remote(f"{git_daemon}/project.git", tmp_path, served, local_images, ref,
                 served["commits"][index])


@pytest.mark.parametrize("ref, index", [(None, 2), ("refs/heads/old", 1), ("v1", 0)])
def test_smart_http(http_open, served, local_images, tmp_path, ref, index):
    key = "old" if ref == "refs/heads/old" else ref
    result = make_image(f"{http_open}/project.git", tmp_path / "h.img", branch=ref)
    assert result.commit == served["commits"][index]
    check_image(tmp_path / "h.img", tmp_path)
    assert (tmp_path / "h.img").read_bytes() == local_images[key]


def test_http_credentials_in_url(http_auth, served, local_images, tmp_path):
    check_remote(f"http://alice:s3cret@{http_auth}/project.git", tmp_path, served,
                 local_images, None, served["commits"][2])


@pytest.mark.parametrize("userinfo", ["alice:wrong@", ""])
def test_http_authentication_refused(http_auth, tmp_path, userinfo):
    url = f"http://{userinfo}{http_auth}/project.git"
    with pytest.raises(BuildError) as err:
        make_image(url, tmp_path / "x.img")
    assert str(err.value).endswith(": authentication refused")
    assert "wrong" not in str(err.value)  # the password is not printed
    assert not (tmp_path / "x.img").exists()


def test_remote_unknown_branch(git_daemon, tmp_path):
    with pytest.raises(BuildError, match=r"project.git: unknown branch or tag 'nope'$"):
        make_image(f"{git_daemon}/project.git", tmp_path / "x.img", branch="nope")


def test_remote_not_a_repository(git_daemon, http_open, tmp_path):
    for url in (f"{git_daemon}/missing.git", f"{http_open}/missing.git"):
        with pytest.raises(BuildError, match=r"missing.git: not a Git repository"):
            make_image(url, tmp_path / "x.img")


def test_remote_unreachable(tmp_path):
    port = free_port()  # nothing listens there
    for url in (f"git://127.0.0.1:{port}/project.git", f"http://127.0.0.1:{port}/project.git"):
        with pytest.raises(BuildError, match=r": unreachable \("):
            make_image(url, tmp_path / "x.img")
    assert not (tmp_path / "x.img").exists()


def test_cli_remote_error_is_one_line(tmp_path):
    port = free_port()
    proc = subprocess.run([sys.executable, "-m", "docteur_core", "make",
                           f"git://127.0.0.1:{port}/p.git", str(tmp_path / "x.img")],
                          capture_output=True, text=True)
    assert proc.returncode == 1
    assert proc.stderr.startswith(f"docteur make: git://127.0.0.1:{port}/p.git: unreachable (")
    assert proc.stderr.count("\n") == 1
