"""Images on an HTTP origin (issue 11): a real nginx on 127.0.0.1 serves a
folder of images; every reader verb over http:// must print what it prints
for the local file, and every way the origin can fail is one line.

The failures nginx cannot stage (a socket that accepts and never answers,
a body cut short, a stall mid-body) come from tiny servers on real loopback
sockets, written here.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from docteur_core.blockdev.http import HttpDevice
from docteur_core.blockdev.http_range import OriginChanged, RemoteError
from docteur_core.reader.image import Image
from tests.helpers.cli import DOCTEUR, docteur
from tests.helpers.cli import refusal as one_line
from tests.helpers.nginx import Nginx
from tests.helpers.origins import HEAD, TinyServer
from tests.helpers.plugin_support import make_source

pytestmark = [pytest.mark.nginx]

@pytest.fixture(scope="module")
def origin(tmp_path_factory):
    """nginx serving a folder with one image (and its local path)."""
    tmp = tmp_path_factory.mktemp("origin")
    root = tmp / "www"
    root.mkdir()
    src = make_source(tmp / "src", seed=11)
    (src / "link").symlink_to("docs/guide.md")
    made = subprocess.run([*DOCTEUR, "make", src, root / "image.img"], capture_output=True)
    assert made.returncode == 0, made.stderr
    with Nginx(root) as server:
        yield server, root / "image.img"


VERBS = [  # (verb, options..., "@", arguments...)
    ("ls", "@", "/"), ("ls", "-r", "@", "/"), ("ls", "--json", "-r", "@", "/"),
    ("ls", "-l", "@", "/docs"), ("cat", "@", "/random.bin"),
    ("cat", "@", "/docs/deep/er/note.txt"), ("stat", "@", "/link"),
    ("stat", "--json", "@", "/docs/guide.md"), ("tree", "@", "/"), ("info", "@"),
    ("info", "--json", "@"),
]


@pytest.mark.parametrize("verb", VERBS, ids=" ".join)
@pytest.mark.parametrize("mode", ["fast", "light"])
def test_every_reader_verb_over_http_equals_the_local_image(origin, verb, mode):
    server, image = origin
    cut = verb.index("@")
    options, rest = verb[:cut], verb[cut + 1:]
    local = docteur(*options, "--mode", mode, image, *rest)
    remote = docteur(*options, "--mode", mode, f"{server.url}/image.img", *rest)
    assert local.returncode == 0, local.stderr
    assert (remote.returncode, remote.stdout, remote.stderr) == (0, local.stdout, local.stderr)


def test_verify_and_extract_over_http(origin, tmp_path):
    server, image = origin
    for args in (("verify",), ("verify", "--quick"), ("verify", "--json")):
        local = docteur(*args, image)
        remote = docteur(*args, f"{server.url}/image.img")
        assert local.returncode == 0
        assert (remote.returncode, remote.stdout) == (0, local.stdout)
    assert docteur("extract", image, tmp_path / "a").returncode == 0
    got = docteur("extract", f"{server.url}/image.img", tmp_path / "b")
    assert got.returncode == 0, got.stderr
    listing = [sorted(str(p.relative_to(d)) for p in d.rglob("*"))
               for d in (tmp_path / "a", tmp_path / "b")]
    assert listing[0] == listing[1] and listing[0]
    for rel in listing[0]:
        a, b = tmp_path / "a" / rel, tmp_path / "b" / rel
        if a.is_file() and not a.is_symlink():
            assert a.read_bytes() == b.read_bytes()


def test_query_strings_and_a_redirect_are_followed_as_given(origin):
    server, image = origin
    local = docteur("cat", image, "/docs/guide.md").stdout
    url = f"{server.url}/hop/image.img?X-Amz-Signature=abc%2Bdef&b=1"
    assert docteur("cat", url, "/docs/guide.md").stdout == local
    requests = [r for _status, _sent, r, _rng in server.log_lines()]
    assert "GET /hop/image.img?X-Amz-Signature=abc%2Bdef&b=1 HTTP/1.1" in requests
    assert "GET /image.img?X-Amz-Signature=abc%2Bdef&b=1 HTTP/1.1" in requests


def test_reads_are_ranges_on_one_kept_alive_connection(origin):
    server, image = origin
    with Image.open(f"{server.url}/image.img") as img:
        device = img._device.device
        assert img.get("docs/guide.md") == (image.parent.parent / "src/docs/guide.md"
                                             ).read_bytes()
        assert device.bytes_fetched <= image.stat().st_size
        assert len(device._conns) == 1
        conn = next(iter(device._conns.values()))
        sock = conn.sock
        img.get("random.bin")
        assert conn.sock is sock  # the same socket: keep-alive


def test_an_image_replaced_while_open_is_one_error(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    for seed in (1, 2):
        src = make_source(tmp_path / f"src{seed}", seed=seed)
        made = subprocess.run([*DOCTEUR, "make", src, root / f"v{seed}.img"], capture_output=True)
        assert made.returncode == 0
    with Nginx(root) as server:
        shutil.copyfile(root / "v1.img", root / "current.img")
        device = HttpDevice(f"{server.url}/current.img", chunk=4096)
        with Image.open(device, "light") as img:
            assert img.get("README.txt") == b"docteur plugin test tree 1\n"
            os.replace(root / "v2.img", root / "current.img")  # same size, new content
            st = (root / "current.img").stat()
            os.utime(root / "current.img", (st.st_atime, st.st_mtime + 10))  # a new ETag
            with pytest.raises(OriginChanged, match="changed at the origin since it was "
                                                    "opened") as err:
                img.get("random.bin")
            assert "\n" not in str(err.value)
        device.close()
        assert (412, "bytes") in {(s, rng[:5]) for s, _n, _r, rng in server.log_lines()}


@pytest.mark.parametrize("where,words", [
    ("/norange/image.img", "the origin ignores range requests"),
    ("/nothing.img", "no such object at the origin (HTTP 404)"),
    ("/denied/image.img", "access denied (HTTP 403"),
    ("/loop/x", "more than 5 redirects"),
])
def test_origin_failures_are_one_line(origin, where, words):
    server, _image = origin
    line = one_line(docteur("ls", f"{server.url}{where}", "/"))
    assert line.startswith(f"docteur ls: {server.url}{where}") and words in line, line
    line = one_line(docteur("verify", f"{server.url}{where}"))
    assert words in line


def test_a_query_string_never_shows_in_a_message(origin):
    server, _image = origin
    line = one_line(docteur("cat", f"{server.url}/nothing.img?X-Amz-Signature=s3cr3t", "/x"))
    assert "s3cr3t" not in line and "nothing.img?..." in line


def test_a_silent_origin_times_out_in_one_line():
    # listen() without accept(): the kernel completes the connection, nobody answers
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/image.img"
        line = one_line(docteur("ls", url, "/", env={"DOCTEUR_HTTP_READ_TIMEOUT": "0.5"}))
    assert "the origin did not answer within 0.5 s" in line


@pytest.mark.parametrize("behave,words", [
    (lambda c: (c.sendall(HEAD + b"x" * 1000), c.close()), "short body: the origin sent 1000 of"),
    (lambda c: c.sendall(HEAD + b"x" * 1000), "stopped sending for 0.5 s (1000 of 131072"),
    (lambda c: c.close(), "closed the connection without an answer"),
    (lambda c: c.sendall(b"HTTP/1.1 206 OK\r\nContent-Length: 3\r\n\r\nabc"),
     "without a usable Content-Range"),
])
def test_broken_answers_are_one_line(behave, words):
    server = TinyServer(behave)
    try:
        # the canned answer is for a first read of 128 KiB
        line = one_line(docteur("info", server.url, env={"DOCTEUR_HTTP_READ_TIMEOUT": "0.5",
                                                         "DOCTEUR_HTTP_CHUNK": "131072"}))
    finally:
        server.close()
    assert words in line, line


def test_nothing_listening_is_one_line():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    line = one_line(docteur("ls", f"http://127.0.0.1:{port}/x.img", "/"))
    assert f"cannot reach 127.0.0.1 port {port}" in line


@pytest.mark.parametrize("name,value", [("DOCTEUR_HTTP_CONNECT_TIMEOUT", "soon"),
                                        ("DOCTEUR_HTTP_READ_TIMEOUT", "-1"),
                                        ("DOCTEUR_HTTP_CHUNK", "1000"),
                                        ("DOCTEUR_HTTP_CHUNK", "64k")])
def test_bad_settings_are_one_line(name, value):
    line = one_line(docteur("ls", "http://127.0.0.1:9/x.img", "/", env={name: value}))
    assert name in line


def test_the_chunk_setting_bounds_what_a_miss_fetches(origin):
    server, _image = origin
    before = len(server.log_lines())
    got = docteur("cat", f"{server.url}/image.img", "/README.txt",
                  env={"DOCTEUR_HTTP_CHUNK": "4096"})
    assert got.stdout == b"docteur plugin test tree 11\n"
    sent = [n for _s, n, _r, _g in server.log_lines()[before:]]
    assert sent and max(sent) <= 4096


def test_device_reads_match_the_file_for_any_aligned_span(origin):
    """Chunked, cached, bypassing: every path of HttpDevice.read returns the
    file's bytes."""
    import random

    server, image = origin
    data = image.read_bytes()
    rng = random.Random(5)
    with HttpDevice(f"{server.url}/image.img", chunk=4096, keep_bytes=64 << 10) as dev:
        assert dev.capacity == len(data)
        for _ in range(300):
            off = rng.randrange(0, len(data) + 4096) // 512 * 512
            n = rng.choice([512, 1024, 4096, 8192, 40960, 200 * 512])
            assert dev.read(off, n) == data[off:off + n]
    with pytest.raises(RemoteError, match="read after close"):
        dev.read(0, 512)


# -- docteur serve URL: nbdkit's curl plugin and cache filter ----------------------


class Served:
    """`docteur serve -f --unix SOCK URL ...` for the time of a test."""

    def __init__(self, url: str, sock: Path, *extra) -> None:
        self.sock = sock
        self.uri = f"nbd+unix:///?socket={sock}"
        self.proc = subprocess.Popen([*DOCTEUR, "serve", "-f", "--unix", sock, *extra, url],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     start_new_session=True)
        # the URI on stdout means nbdkit listens
        line = self.proc.stdout.readline().decode().strip()
        if line != self.uri:
            self.stop()
            raise AssertionError(f"serve said {line!r}: {self.proc.stderr.read().decode()}")

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            _out, err = self.proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, 9)
            _out, err = self.proc.communicate()
        return err.decode()


@pytest.mark.nbdkit
def test_serve_url_copies_and_reads_as_the_local_image(origin, tmp_path):
    import json

    server, image = origin
    cache_dir = tmp_path / "cache"
    cache_dir.mkdir()
    served = Served(f"{server.url}/image.img", tmp_path / "s.sock", "--cache-dir", cache_dir,
                    "--cache-size", "64M")
    try:
        copy = tmp_path / "copy.img"
        done = subprocess.run(["nbdcopy", served.uri, copy], capture_output=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert copy.read_bytes() == image.read_bytes()
        for args in (("ls", "-r", "@", "/"), ("cat", "@", "/random.bin"), ("info", "@")):
            cut = args.index("@")
            local = docteur(*args[:cut], image, *args[cut + 1:])
            remote = docteur(*args[:cut], served.uri, *args[cut + 1:])
            assert (remote.returncode, remote.stdout) == (0, local.stdout)
        info = json.loads(subprocess.run(["nbdinfo", "--json", served.uri], capture_output=True,
                                         check=True, timeout=60).stdout)
        commit = json.loads(docteur("info", "--json", image).stdout)["commit"]
        assert f"docteur image: commit {commit}" in info["exports"][0]["description"]
        # nbdkit's cache file lives in --cache-dir (unlinked at once, held open)
        pids = subprocess.run(["pgrep", "-P", str(served.proc.pid), "nbdkit"],
                              capture_output=True, text=True).stdout.split()
        held = [os.readlink(f"/proc/{pid}/fd/{fd}") for pid in pids
                for fd in os.listdir(f"/proc/{pid}/fd")]
        assert any(h.startswith(str(cache_dir)) for h in held), held
    finally:
        err = served.stop()
    assert "Traceback" not in err
    assert not served.sock.exists()


@pytest.mark.nbdkit
def test_serve_url_check_reads_a_few_kib_not_the_image(origin, tmp_path):
    server, image = origin
    before = len(server.log_lines())
    served = Served(f"{server.url}/image.img", tmp_path / "s.sock")
    try:
        checked = [sent for _s, sent, _r, _g in server.log_lines()[before:]]
    finally:
        served.stop()
    assert sum(checked) < 64 << 10 < image.stat().st_size


@pytest.mark.nbdkit
@pytest.mark.parametrize("where,words", [
    ("/nothing.img", "no such object at the origin (HTTP 404)"),
    ("/norange/image.img", "ignores range requests"),
    ("/denied/image.img", "access denied (HTTP 403"),
])
def test_serve_url_refuses_in_one_line(origin, tmp_path, where, words):
    server, _image = origin
    proc = docteur("serve", "--unix", tmp_path / "s.sock", f"{server.url}{where}")
    line = one_line(proc)
    assert line.startswith("docteur serve: ") and words in line, line
    assert not (tmp_path / "s.sock").exists()


@pytest.mark.nbdkit
def test_serve_url_refuses_what_is_not_an_image(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    (root / "junk.img").write_bytes(os.urandom(8192))
    with Nginx(root) as server:
        line = one_line(docteur("serve", "--unix", tmp_path / "s.sock",
                                f"{server.url}/junk.img"))
    assert "damaged image" in line or "image" in line, line


@pytest.mark.nbdkit
def test_serve_url_pins_the_checked_object(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    for seed in (1, 2):
        src = make_source(tmp_path / f"src{seed}", seed=seed)
        made = subprocess.run([*DOCTEUR, "make", src, root / f"v{seed}.img"], capture_output=True)
        assert made.returncode == 0
    shutil.copyfile(root / "v1.img", root / "current.img")
    with Nginx(root) as server:
        served = Served(f"{server.url}/current.img", tmp_path / "s.sock", "--no-cache")
        try:
            assert docteur("cat", served.uri, "/README.txt").stdout == \
                b"docteur plugin test tree 1\n"
            os.replace(root / "v2.img", root / "current.img")
            st = (root / "current.img").stat()
            os.utime(root / "current.img", (st.st_atime, st.st_mtime + 10))
            got = docteur("cat", served.uri, "/README.txt")
            assert got.returncode != 0 and got.stdout == b""
        finally:
            served.stop()
        assert 412 in {s for s, _n, _r, _g in server.log_lines()}


@pytest.mark.nbdkit  # its curl plugin
@pytest.mark.qemu
@pytest.mark.slow
def test_boot_url_reads_a_file_in_a_guest(origin):
    server, image = origin
    proc = subprocess.run([*DOCTEUR, "boot", f"{server.url}/image.img", "cat",
                           "/docs/deep/er/note.txt"], capture_output=True, timeout=600)
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    assert proc.stdout == b"seed 11\n"
    assert any(r.startswith("GET /image.img") for _s, _n, r, _g in server.log_lines())


def test_https_reads_with_the_system_trust_and_refuses_an_unknown_certificate(origin, tmp_path):
    _server, image = origin
    with Nginx(image.parent, tls=True) as server:
        url = f"{server.tls_url}/image.img"
        local = docteur("ls", "-r", image, "/")
        trusted = docteur("ls", "-r", url, "/", env={"SSL_CERT_FILE": str(server.cert)})
        assert (trusted.returncode, trusted.stdout) == (0, local.stdout), trusted.stderr
        line = one_line(docteur("ls", url, "/"))
    assert line.startswith(f"docteur ls: {url}: TLS failed") and "certificate" in line, line


@pytest.mark.nbdkit
def test_the_curl_command_line_pins_describes_and_bounds_the_cache(tmp_path):
    from docteur_core.blockdev.http_range import Validator
    from docteur_core.serve.nbdkit import Listen
    from docteur_core.serve.remote import RemoteImage, cache_env, curl_command, pin_header

    image = RemoteImage("https://b.example/c.img?sig=a%2Bb", 2 << 30, "c" * 40, "d" * 40,
                        pin_header(Validator('"e"')), 0, 0)
    argv = curl_command(image, Listen(unix=tmp_path / "s"), cache_size="auto")
    assert argv[:2] == ["nbdkit", "--readonly"]
    assert argv.index("--filter=exportname") < argv.index("--filter=cache") < argv.index("curl")
    assert "url=https://b.example/c.img?sig=a%2Bb" in argv
    assert 'header=If-Match: "e"' in argv and "protocols=https" in argv  # no redirect to http
    assert f"exportdesc=fixed:docteur image: commit {'c' * 40} tree {'d' * 40}" in argv
    assert "cache-max-size=1024M" in argv  # auto: 1G for an image over 1G
    assert "--filter=cache" not in curl_command(image, Listen(), cache_size=None)
    assert pin_header(Validator(None, 'W/"x"', "Tue, 01 Dec 2026 10:00:00 GMT")) == \
        "If-Unmodified-Since: Tue, 01 Dec 2026 10:00:00 GMT"
    assert pin_header(Validator()) is None
    assert cache_env(tmp_path)["TMPDIR"] == str(tmp_path) and cache_env(None) is None


@pytest.mark.nbdkit
def test_serve_refuses_a_missing_cache_dir_in_one_line(origin, tmp_path):
    server, _image = origin
    line = one_line(docteur("serve", "--unix", tmp_path / "s.sock", "--cache-dir",
                            tmp_path / "absent", f"{server.url}/image.img"))
    assert "--cache-dir" in line and "no such folder" in line


def test_a_full_verify_over_http_fetches_each_byte_about_once(tmp_path):
    """`docteur verify URL` and `serve --verify full`'s check read the pack
    twice (the plan of delta bases, then the scan); over HTTP each byte
    must cross the network about once (nginx's own count of bytes sent),
    not twice. The image is larger than the reader's 4 MiB of kept chunks,
    so those cannot hide a second pass."""
    from docteur_core.serve.remote import check_remote

    root = tmp_path / "www"
    root.mkdir()
    src = make_source(tmp_path / "src", seed=15)
    (src / "0-first.bin").write_bytes(os.urandom(6 << 20))  # early in the pack
    for i in range(300):
        (src / "docs" / f"page{i}.txt").write_text(f"page {i}\n" + "some words again\n" * (i * 7))
    made = subprocess.run([*DOCTEUR, "make", "-q", src, root / "image.img"], capture_output=True)
    assert made.returncode == 0, made.stderr
    size = (root / "image.img").stat().st_size
    assert size > 6 << 20
    with Nginx(root) as server:
        url = f"{server.url}/image.img"
        local = docteur("verify", root / "image.img")
        before = len(server.log_lines())
        remote = docteur("verify", url)
        assert (remote.returncode, remote.stdout) == (0, local.stdout), remote.stderr
        sent = sum(line[1] for line in server.log_lines()[before:])
        assert size <= sent <= 1.2 * size, (sent, size)

        before = len(server.log_lines())
        checked = check_remote(url, "full")
        sent = sum(line[1] for line in server.log_lines()[before:])
        assert checked.commit_hex in local.stdout.decode()
        assert size <= sent <= 1.2 * size, (sent, size)


def test_a_spooled_device_reads_each_byte_once():
    from docteur_core.blockdev.block import MemoryDevice
    from docteur_core.blockdev.spool import SpooledDevice

    data = bytes(range(256)) * 40_000 + b"tail"  # not a multiple of anything
    inner = MemoryDevice(data, block_size=512)
    with SpooledDevice(inner, chunk=64 << 10) as dev:
        assert dev.capacity == len(data)
        for offset, length in [(0, 512), (1 << 20, 3 << 20), (0, len(data) + 508),
                               (len(data) - len(data) % 512, 1024), (512, 4096)]:
            assert dev.read(offset, length) == data[offset:offset + length]
        assert sum(n for _, n in inner.reads) <= len(data) + (64 << 10)
        assert dev.read(len(data) + 1024 - (len(data) + 1024) % 512, 512) == b""
    assert inner.closed
