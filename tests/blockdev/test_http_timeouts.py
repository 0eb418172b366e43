"""The HTTP reader's two other limits, against real loopback sockets: the
connect timeout (an origin that never completes the TCP handshake) and the
whole-request deadline (an origin that trickles, never silent long enough
for the per-wait read timeout). Each must end in one line, exit status 1:
not a hang. The subprocess timeouts are safety nets, not speed assertions.
"""

from __future__ import annotations

import socket
import time

import pytest

from tests.helpers.cli import docteur
from tests.helpers.cli import refusal as one_line
from tests.helpers.origins import HEAD, TinyServer

SAFETY = 120  # seconds: only so that a regression fails instead of hanging the suite


def _full_listener() -> tuple[socket.socket, socket.socket]:
    """(listener, filler): a socket listening with backlog 0 whose accept
    queue already holds one unaccepted connection; Linux then drops further
    SYNs, so a connect() to it waits for ever."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    filler = socket.create_connection(listener.getsockname(), timeout=SAFETY)
    return listener, filler


def test_an_origin_that_never_completes_the_handshake_is_one_line_after_the_connect_timeout():
    listener, filler = _full_listener()
    try:
        port = listener.getsockname()[1]
        # the premise: a connect to it does hang here (else this test would
        # check nothing)
        with socket.socket() as probe:
            probe.settimeout(0.5)
            with pytest.raises(TimeoutError):
                probe.connect(("127.0.0.1", port))
        url = f"http://127.0.0.1:{port}/image.img"
        proc = docteur("ls", url, "/", env={"DOCTEUR_HTTP_CONNECT_TIMEOUT": "0.5",
                                            "DOCTEUR_HTTP_READ_TIMEOUT": "600",
                                            "DOCTEUR_HTTP_REQUEST_TIMEOUT": "600"})
    finally:
        filler.close()
        listener.close()
    line = one_line(proc)
    assert line.startswith(f"docteur ls: {url}: "), line
    assert "the origin did not connect within 0.5 s" in line, line


def _trickle(prefix: bytes):
    """A behaviour for TinyServer: `prefix`, then one byte every 0.2 s (far
    below the 30 s read timeout) until the client goes away."""
    def behave(conn: socket.socket) -> None:
        try:
            conn.sendall(prefix)
            while True:
                conn.sendall(b"x")
                time.sleep(0.2)
        except OSError:
            return
    return behave


@pytest.mark.parametrize("prefix,words", [
    (HEAD, "the origin sent only"),                                 # a trickled body
    (b"HTTP/1.1 206 Partial Content\r\nX-Pad: ", "did not send the headers for bytes 0-131071"),
])
@pytest.mark.slow  # seconds of CPU: out of the quick core (.ci/core), run by .ci/run
def test_a_trickling_origin_is_cut_short_by_the_request_deadline(prefix, words):
    server = TinyServer(_trickle(prefix))
    url = server.url
    try:
        proc = docteur("info", url, env={"DOCTEUR_HTTP_REQUEST_TIMEOUT": "2",
                                                "DOCTEUR_HTTP_CHUNK": "131072"})
    finally:
        server.close()
    line = one_line(proc)
    assert line.startswith(f"docteur info: {url}: "), line
    assert words in line and "2 s" in line and "DOCTEUR_HTTP_REQUEST_TIMEOUT" in line, line
    if prefix == HEAD:
        # some bytes did arrive: it was the deadline, not the read timeout
        got = int(line.split("sent only ")[1].split()[0])
        assert 0 < got < 131072, line


@pytest.mark.parametrize("value", ["soon", "0", "-2"])
def test_a_bad_request_timeout_is_one_line(value):
    line = one_line(docteur("ls", "http://127.0.0.1:9/x.img", "/",
                            env={"DOCTEUR_HTTP_REQUEST_TIMEOUT": value}))
    assert "DOCTEUR_HTTP_REQUEST_TIMEOUT" in line, line


@pytest.mark.nginx
def test_a_large_read_is_cut_into_requests_the_deadline_can_bound(tmp_path):
    """A read past the kept chunks (a large file) goes out as requests of at
    most MAX_REQUEST_BYTES, so the per-request deadline asks for a rate, not
    for the whole file in 120 s; the bytes are the file's, in order."""
    import random

    from docteur_core.blockdev.http import HttpDevice
    from docteur_core.blockdev.http_range import MAX_REQUEST_BYTES
    from tests.helpers.nginx import Nginx

    size = 2 * MAX_REQUEST_BYTES + 3 * 4096
    data = random.Random(7).randbytes(size)
    (tmp_path / "big.bin").write_bytes(data)
    with Nginx(tmp_path) as server:
        device = HttpDevice(f"{server.url}/big.bin")
        try:
            assert device.read(0, size) == data
        finally:
            device.close()
        ranges = [rng for _status, _sent, _request, rng in server.log_lines()]
    spans = [tuple(map(int, r.removeprefix("bytes=").split("-"))) for r in ranges]
    assert spans[1:] == [(0, MAX_REQUEST_BYTES - 1),
                         (MAX_REQUEST_BYTES, 2 * MAX_REQUEST_BYTES - 1),
                         (2 * MAX_REQUEST_BYTES, size - 1)], ranges
