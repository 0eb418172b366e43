"""`docteur http` against real clients (curl, http.client), every answer
checked against the source tree: bodies byte for byte, ETags against
`git hash-object`, dates against the commit, ranges and statuses against
nginx serving the same folder."""

from __future__ import annotations

import email.utils
import http.client
import mimetypes
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.helpers.nginx import Nginx
from tests.helpers.http_server import DOCTEUR, HttpServer

DATE = "2021-03-04T05:06:07+00:00"
EPOCH = 1614834367
LARGE = (17 << 20) + 12345  # over the reader's STREAM_THRESHOLD: spooled, sent from a file


def _tree(root: Path) -> None:
    (root / "index.html").write_text("<h1>home</h1>\n")
    (root / "style.css").write_text("body { color: red }\n")
    (root / "app.js").write_text("console.log(1)\n")
    (root / "data.json").write_text('{"a": 1}\n')
    (root / "notes.unknownext").write_bytes(b"\x00\x01raw")
    (root / "archive.tar.gz").write_bytes(b"\x1f\x8b" + bytes(range(256)) * 3)
    (root / "space name é.txt").write_text("spaces and accents\n")
    (root / "tool.sh").write_text("#!/bin/sh\necho hi\n")
    os.chmod(root / "tool.sh", 0o755)
    (root / "docs").mkdir()
    (root / "docs" / "index.html").write_text("<p>docs</p>\n")
    (root / "docs" / "page.html").write_text("<p>page</p>\n" * 500)
    (root / "empty").mkdir()
    (root / "empty" / "file.txt").write_text("no index here\n")
    (root / "deep" / "er").mkdir(parents=True)
    (root / "deep" / "er" / "leaf.txt").write_text("leaf\n")
    os.symlink("../index.html", root / "docs" / "home")
    os.symlink("docs", root / "docs-link")
    os.symlink("/etc/passwd", root / "docs" / "passwd")
    os.symlink("../../outside", root / "docs" / "climb")
    os.symlink("../.git/config", root / "docs" / "gitlink")
    (root / "empty.txt").write_bytes(b"")
    (root / "large.bin").write_bytes(os.urandom(LARGE))


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("site")
    src = root / "src"
    src.mkdir()
    _tree(src)
    image = root / "site.img"
    subprocess.run(DOCTEUR + ["make", "-q", "--date", DATE, str(src), str(image)], check=True)
    return src, image


@pytest.fixture(scope="module")
def server(site):
    _, image = site
    with HttpServer(image, "-q") as s:
        yield s


def _get(server, path: str, method: str = "GET", headers: dict | None = None):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
    try:
        conn.request(method, path, headers=headers or {})
        r = conn.getresponse()
        return r.status, dict(r.getheaders()), r.read()
    finally:
        conn.close()


def _blob_id(path: Path) -> str:
    return subprocess.run(["git", "hash-object", "--no-filters", str(path)], check=True,
                          capture_output=True, text=True).stdout.strip()


def _files(src: Path):
    for p in sorted(src.rglob("*")):
        if p.is_file() and not p.is_symlink():
            yield p


def _url_path(rel: str) -> str:
    from urllib.parse import quote

    return "/" + quote(rel)


def test_every_file_is_served_as_in_the_tree(site, server):
    src, _ = site
    types = mimetypes.MimeTypes()
    for p in _files(src):
        rel = p.relative_to(src).as_posix()
        status, headers, body = _get(server, _url_path(rel))
        assert status == 200, rel
        assert body == p.read_bytes(), rel
        assert headers["ETag"] == f'"{_blob_id(p)}"', rel
        assert int(headers["Content-Length"]) == p.stat().st_size
        assert email.utils.parsedate_to_datetime(headers["Last-Modified"]).timestamp() == EPOCH
        assert headers["Accept-Ranges"] == "bytes"
        kind, encoding = types.guess_type(rel, strict=False)
        if encoding == "gzip":
            assert headers["Content-Type"] == "application/gzip"
        else:
            assert headers["Content-Type"] == (kind or "application/octet-stream"), rel


def test_head_gives_the_headers_of_get_without_the_body(site, server):
    for path in ("/index.html", "/large.bin", "/docs/", "/nothing"):
        s1, h1, _ = _get(server, path)
        s2, h2, body = _get(server, path, "HEAD")
        assert (s2, body) == (s1, b"")
        for name in ("Content-Length", "ETag", "Content-Type", "Last-Modified"):
            assert h1.get(name) == h2.get(name), (path, name)


def test_folders_index_and_redirects(site, server):
    src, _ = site
    assert _get(server, "/")[2] == (src / "index.html").read_bytes()
    status, headers, _ = _get(server, "/docs")
    assert status == 301 and headers["Location"] == "/docs/"
    status, headers, _ = _get(server, "/docs?x=1")
    assert status == 301 and headers["Location"] == "/docs/?x=1"
    status, headers, body = _get(server, "/docs/")
    assert status == 200 and body == (src / "docs" / "index.html").read_bytes()
    assert headers["ETag"] == f'"{_blob_id(src / "docs" / "index.html")}"'
    assert _get(server, "/empty/")[0] == 404  # no index, no --listing
    assert _get(server, "/deep/er/")[0] == 404
    assert _get(server, "/index.html/")[0] == 404  # a file is not a folder
    assert _get(server, "/missing.html")[0] == 404
    assert _get(server, "/docs/missing/deeper")[0] == 404
    assert _get(server, "/index.html/x")[0] == 404
    assert _get(server, "//docs//page.html")[2] == (src / "docs" / "page.html").read_bytes()


def test_links_are_redirects_inside_the_image_never_followed(server):
    status, headers, body = _get(server, "/docs/home")
    assert status == 302 and headers["Location"] == "/index.html"
    assert b"home" not in body
    status, headers, _ = _get(server, "/docs-link")
    assert status == 302 and headers["Location"] == "/docs"
    for outside in ("/docs/passwd", "/docs/climb", "/docs/gitlink"):
        status, headers, body = _get(server, outside)
        assert status == 404 and "Location" not in headers, outside
        assert b"root:" not in body


def test_paths_that_escape_are_404_with_curl(site, server):
    for path in ("/../etc/passwd", "/docs/../../etc/passwd", "/%2e%2e/etc/passwd",
                 "/docs/%2E%2E/%2e%2e/etc/passwd", "/docs%2Fpage.html", "/docs%2fpage.html",
                 "/docs%5C..%5C..%5Cetc%5Cpasswd", "/.git/config", "/.GIT/config", "/%2egit/HEAD",
                 "/docs/.git", "/git~1/config", "/a%00b", "/./index.html"):
        done = subprocess.run(["curl", "-s", "--path-as-is", "-o", "-", "-w", "\n%{http_code}",
                               server.url.rstrip("/") + path], capture_output=True,
                              timeout=120)
        body, _, code = done.stdout.rpartition(b"\n")
        assert code == b"404", path
        assert body == b"404 Not Found\n", path
    # A bad escape is the client's mistake.
    assert _get(server, "/%zz")[0] == 400
    assert _get(server, "/%e2%82%ac-not-there")[0] == 404
    src, _ = site
    assert _get(server, "/space%20name%20%C3%A9.txt")[2] == (src / "space name é.txt").read_bytes()


def test_methods_other_than_get_and_head_are_405(server):
    for method in ("POST", "PUT", "DELETE", "OPTIONS", "PATCH", "BREW"):
        status, headers, _ = _get(server, "/index.html", method)
        assert status == 405 and headers["Allow"] == "GET, HEAD", method


def test_conditional_requests(site, server):
    src, _ = site
    etag = f'"{_blob_id(src / "style.css")}"'
    lm = _get(server, "/style.css")[1]["Last-Modified"]
    for value in (etag, "W/" + etag, f'"other", {etag}', "*"):
        status, headers, body = _get(server, "/style.css", headers={"If-None-Match": value})
        assert (status, body) == (304, b""), value
        assert headers["ETag"] == etag
    assert _get(server, "/style.css", headers={"If-None-Match": '"other"'})[0] == 200
    assert _get(server, "/style.css", headers={"If-Modified-Since": lm})[0] == 304
    assert _get(server, "/style.css",
                headers={"If-Modified-Since": "Sat, 01 Jan 2000 00:00:00 GMT"})[0] == 200
    # If-None-Match wins over If-Modified-Since.
    assert _get(server, "/style.css", headers={"If-None-Match": '"other"',
                                               "If-Modified-Since": lm})[0] == 200
    assert _get(server, "/style.css", headers={"If-Match": '"other"'})[0] == 412
    assert _get(server, "/style.css", headers={"If-Match": "W/" + etag})[0] == 412
    assert _get(server, "/style.css", headers={"If-Match": etag})[0] == 200
    assert _get(server, "/style.css", headers={
        "If-Unmodified-Since": "Sat, 01 Jan 2000 00:00:00 GMT"})[0] == 412
    assert _get(server, "/style.css", headers={"If-Unmodified-Since": lm})[0] == 200
    # curl's own conditional request
    done = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                           "-H", f"If-None-Match: {etag}", server.url + "style.css"],
                          capture_output=True, text=True, timeout=120)
    assert done.stdout == "304"


def _parts(content_type: str, body: bytes) -> list[tuple[str, bytes]]:
    """(Content-Range, data) of each part of a multipart/byteranges body."""
    boundary = content_type.split("boundary=", 1)[1].encode()
    parts = []
    for chunk in body.split(b"--" + boundary)[1:]:
        if chunk.startswith(b"--"):
            break
        head, _, data = chunk.partition(b"\r\n\r\n")
        assert data.endswith(b"\r\n")
        fields = dict(line.split(": ", 1) for line in head.decode().strip().split("\r\n"))
        parts.append((fields["Content-Range"], data[:-2]))
    return parts


RANGES = ["bytes=0-0", "bytes=0-9", "bytes=5-", "bytes=-7", "bytes=-100000000",
          "bytes=3-2", "bytes=100000000-", "bytes=0-4,10-14", "bytes=-3,0-1",
          "bytes=0-1,100000000-", "bytes=100000000-,200000000-", "items=0-1",
          "bytes=abc", "bytes=1-1,1-1,1-1", "bytes=0-0, 2-2 ,4-4"]


@pytest.mark.nginx
@pytest.mark.parametrize("name", ["docs/page.html", "large.bin"])
def test_ranges_answer_as_nginx_does(site, server, name):
    """Same statuses, same Content-Range, same bytes (parts of a multipart
    body compared once parsed: the boundaries differ) as nginx serving the
    source folder."""
    src, _ = site
    data = (src / name).read_bytes()
    with Nginx(src) as nginx:
        for value in RANGES:
            mine = _get(server, "/" + name, headers={"Range": value})
            host, port = nginx.url.split("//")[1].rstrip("/").split(":")
            c = http.client.HTTPConnection(host, int(port), timeout=120)
            c.request("GET", "/" + name, headers={"Range": value})
            r = c.getresponse()
            theirs = (r.status, dict(r.getheaders()), r.read())
            c.close()
            assert mine[0] == theirs[0], value
            if mine[0] == 206 and "multipart" in theirs[1]["Content-Type"]:
                assert _parts(mine[1]["Content-Type"], mine[2]) == \
                    _parts(theirs[1]["Content-Type"], theirs[2]), value
            elif mine[0] == 206:
                assert mine[1]["Content-Range"] == theirs[1]["Content-Range"], value
                assert mine[2] == theirs[2], value
                a, b = map(int, mine[1]["Content-Range"].split(" ")[1].split("/")[0].split("-"))
                assert mine[2] == data[a:b + 1]
            elif mine[0] == 416:
                assert mine[1]["Content-Range"] == theirs[1]["Content-Range"] == \
                    f"bytes */{len(data)}"
            else:
                assert mine[2] == theirs[2] == data, value


def test_if_range(site, server):
    src, _ = site
    etag = f'"{_blob_id(src / "style.css")}"'
    lm = _get(server, "/style.css")[1]["Last-Modified"]
    assert _get(server, "/style.css", headers={"Range": "bytes=0-3", "If-Range": etag})[0] == 206
    assert _get(server, "/style.css", headers={"Range": "bytes=0-3", "If-Range": lm})[0] == 206
    status, _, body = _get(server, "/style.css", headers={"Range": "bytes=0-3",
                                                          "If-Range": '"other"'})
    assert status == 200 and body == (src / "style.css").read_bytes()
    assert _get(server, "/style.css", headers={"Range": "bytes=0-3",
                                               "If-Range": "W/" + etag})[0] == 200
    # A HEAD ignores Range.
    assert _get(server, "/style.css", "HEAD", headers={"Range": "bytes=0-3"})[0] == 200


def test_curl_resumes_a_large_download(site, server, tmp_path):
    src, _ = site
    data = (src / "large.bin").read_bytes()
    part = tmp_path / "large.part"
    part.write_bytes(data[:1000003])
    subprocess.run(["curl", "-s", "-f", "-C", "-", "-o", str(part), server.url + "large.bin"],
                   check=True, timeout=300)
    assert part.read_bytes() == data


def test_keep_alive_and_pipelining(site, server):
    src, _ = site
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=120)
    conn.request("GET", "/index.html")
    r = conn.getresponse()
    r.read()
    sock = conn.sock
    assert r.getheader("Connection") is None and not r.will_close
    for path in ("/style.css", "/docs/page.html", "/missing", "/docs", "/large.bin"):
        conn.request("GET", path)
        r = conn.getresponse()
        r.read()
        assert conn.sock is sock, path  # the same connection all along
    conn.close()
    # Two requests in one packet, two answers in order.
    with socket.create_connection(("127.0.0.1", server.port), timeout=120) as s:
        s.sendall(b"GET /style.css HTTP/1.1\r\nHost: x\r\n\r\n"
                  b"GET /app.js HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        got = b""
        while chunk := s.recv(65536):
            got += chunk
    first, second = got.split(b"HTTP/1.1 200 OK")[1:]
    assert first.endswith((src / "style.css").read_bytes())
    assert second.endswith((src / "app.js").read_bytes()) and b"Connection: close" in second
    # HTTP/1.0 closes unless asked.
    with socket.create_connection(("127.0.0.1", server.port), timeout=120) as s:
        s.sendall(b"GET /app.js HTTP/1.0\r\n\r\n")
        got = b""
        while chunk := s.recv(65536):
            got += chunk
    assert got.startswith(b"HTTP/1.1 200 OK") and b"Connection: close" in got


def test_bad_requests_are_refused(server):
    for raw, status in ((b"GARBAGE\r\n\r\n", 400), (b"GET / HTTP/2.0\r\nHost: x\r\n\r\n", 505),
                        (b"GET / HTTP/1.1\r\n\r\n", 400),
                        (b"GET / HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n", 400),
                        (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
                        (b"GET / HTTP/1.1\r\nHost: x\r\nX: " + b"y" * 20000 + b"\r\n\r\n", 431),
                        (b"GET x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 400)):
        with socket.create_connection(("127.0.0.1", server.port), timeout=120) as s:
            s.sendall(raw)
            got = b""
            while chunk := s.recv(65536):
                got += chunk
        assert got.startswith(b"HTTP/1.1 %d " % status), raw[:40]
        assert b"Connection: close" in got  # the server closes after a broken request


def test_concurrent_clients_get_the_right_bytes(site, server):
    """Clients at once, on cold and warm paths, a large file among them;
    one slow client that never finishes its request holds up no one."""
    src, _ = site
    files = [p for p in _files(src)]
    errors = []
    slow = socket.create_connection(("127.0.0.1", server.port), timeout=120)
    slow.sendall(b"GET /index.html HTTP/1.1\r\nHost: x\r\n")  # never ends its head

    def client(k):
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=300)
        try:
            for i in range(len(files)):
                p = files[(i + k) % len(files)]
                rel = p.relative_to(src).as_posix()
                conn.request("GET", _url_path(rel))
                r = conn.getresponse()
                body = r.read()
                if r.status != 200 or body != p.read_bytes():
                    errors.append((k, rel, r.status))
        except Exception as exc:  # reported below, with the others
            errors.append((k, repr(exc)))
        finally:
            conn.close()

    threads = [threading.Thread(target=client, args=(k,)) for k in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    slow.close()
    assert errors == []


def test_listing(site):
    src, image = site
    with HttpServer(image, "-q", "--listing") as s:
        status, headers, body = _get(s, "/empty/")
        assert status == 200 and headers["Content-Type"] == "text/html; charset=utf-8"
        assert headers["ETag"].startswith('W/"')
        assert b'<a href="file.txt">file.txt</a>' in body
        status, _, body = _get(s, "/deep/")
        assert b'<a href="er/">er/</a>' in body
        # A folder with an index is still its index.
        assert _get(s, "/docs/")[2] == (src / "docs" / "index.html").read_bytes()
        text = _get(s, "/")[2]
        assert text == (src / "index.html").read_bytes()


def test_access_log_has_one_line_per_request(site):
    _, image = site
    with HttpServer(image) as s:
        paths = ["/index.html", "/missing", "/docs", "/%2e%2e/x", "/style.css"]
        for path in paths:
            _get(s, path)
        lines = s.log_lines(len(paths))
        for path, line in zip(paths, lines):
            assert f'"GET {path} HTTP/1.1"' in line
        assert [line.split('" ')[1].split(" ")[0] for line in lines] == \
            ["200", "404", "301", "404", "200"]
        # A hostile request line is logged on one line, escaped.
        with socket.create_connection(("127.0.0.1", s.port), timeout=120) as c:
            c.sendall(b"GET /a\"b HTTP/1.1\r\nHost: x\r\nUser-Agent: x\x1b[31m\r\n"
                      b"Connection: close\r\n\r\n")
            while c.recv(65536):
                pass
        (line,) = s.log_lines(1)
        assert '\\x22' in line and "\x1b" not in line and "\\x1B" in line


def test_a_taken_port_is_one_line(site):
    _, image = site
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        done = subprocess.run(DOCTEUR + ["http", str(image), "--listen", f"127.0.0.1:{port}"],
                              capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert done.stderr == (f"docteur http: cannot listen on 127.0.0.1:{port}: the port is "
                           "taken (another server is on it); choose another with --listen "
                           "HOST:PORT\n")


def test_bad_arguments_are_usage_errors(site):
    _, image = site
    for listen in ("nope", "1.2.3.4:99999", "host:"):
        done = subprocess.run(DOCTEUR + ["http", str(image), "--listen", listen],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 2 and "is not HOST:PORT" in done.stderr
    done = subprocess.run(DOCTEUR + ["http", str(image), "--commit", "a" * 40],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert done.stderr.startswith(f"docteur http: {image}: wrong image: the image holds commit")
    assert done.stderr.count("\n") == 1
    done = subprocess.run(DOCTEUR + ["http", str(image) + ".none"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and done.stderr.count("\n") == 1


def test_pinned_to_its_commit(site):
    _, image = site
    commit = image.read_bytes()[:20].hex()
    with HttpServer(image, "-q", "--commit", commit) as s:
        assert _get(s, "/style.css")[0] == 200


@pytest.mark.nbdkit
def test_an_image_over_nbd(site):
    """IMAGE may be an NBD URI, as for the other reading verbs: the site
    served through a real nbdkit is the same site."""
    from tests.helpers.support import NbdkitServer

    src, image = site
    with NbdkitServer("file", f"file={image}", extra_options=("--readonly",)) as nbd:
        with HttpServer(nbd.uri, "-q") as s:
            status, headers, body = _get(s, "/docs/page.html")
            assert status == 200 and body == (src / "docs" / "page.html").read_bytes()
            assert headers["ETag"] == f'"{_blob_id(src / "docs" / "page.html")}"'
            assert _get(s, "/large.bin")[2] == (src / "large.bin").read_bytes()


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_ctrl_c_and_sigterm_stop_it_cleanly(site, sig):
    import signal

    _, image = site
    s = HttpServer(image, "-q").start()
    try:
        assert _get(s, "/style.css")[0] == 200
        s.proc.send_signal(getattr(signal, sig))
        s.proc.wait(timeout=60)
    finally:
        status = s.stop()
    assert status == 0
    assert s.stderr_rest == "docteur http: stopped\n"
