"""The asyncio NBD client and NbdDevice, against a real nbdkit (file plugin)."""

from __future__ import annotations

import asyncio
import random
import socket
import struct
import threading

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from docteur_core.blockdev.block import BlockDevice, ByteReader
from docteur_core.blockdev.device import open_device
from docteur_core.errors import DocteurError
from docteur_core.blockdev.nbd_client import (
    AsyncNbdClient, NbdAddress, NbdConnectionError, NbdDevice, NbdTimeout, list_exports,
    parse_nbd_uri,
)
from docteur_core.blockdev.nbd_protocol import (
    NbdCommandError, NbdError, NbdExportNotFound, NbdProtocolError,
)
from tests.helpers.support import NbdkitServer, free_port

pytestmark = [pytest.mark.nbdkit]

SIZE = 3 * 1024 * 1024 + 512 * 7  # a whole number of sectors, not of 4 KiB pages


# -- URIs (pure) ----------------------------------------------------------------

@pytest.mark.parametrize("uri,address", [
    ("nbd://example.com", NbdAddress("", "example.com", 10809)),
    ("nbd://example.com/", NbdAddress("", "example.com", 10809)),
    ("nbd://example.com:1234/disk", NbdAddress("disk", "example.com", 1234)),
    ("nbd://127.0.0.1:99//abs%20name", NbdAddress("/abs name", "127.0.0.1", 99)),
    ("nbd://[::1]:5000/x", NbdAddress("x", "::1", 5000)),
    ("NBD://h/e", NbdAddress("e", "h", 10809)),
    ("nbd+unix:///?socket=/tmp/s.sock", NbdAddress("", socket="/tmp/s.sock")),
    ("nbd+unix:///img?socket=/tmp/a%20b.sock", NbdAddress("img", socket="/tmp/a b.sock")),
])
def test_parse_uri(uri, address):
    assert parse_nbd_uri(uri) == address


@pytest.mark.parametrize("uri,message", [
    ("nbds://host/x", "TLS"),
    ("nbd+vsock:///x", "not supported"),
    ("http://host/x", "not supported"),
    ("nbd:///x", "no host"),
    ("nbd+unix:///x", "socket"),
    ("nbd+unix://host/x?socket=/s", "no host"),
    ("nbd://host:99999/", "bad NBD URI"),
])
def test_bad_uris(uri, message):
    with pytest.raises(NbdError, match=message):
        parse_nbd_uri(uri)


def test_address_names_itself():
    assert str(NbdAddress("e", "h", 1)) == "nbd://h:1/e"
    assert str(NbdAddress("e", socket="/s")) == "nbd+unix:///e?socket=/s"


# -- against nbdkit's file plugin -------------------------------------------------

@pytest.fixture(scope="module")
def image(tmp_path_factory):
    path = tmp_path_factory.mktemp("nbd") / "disk.img"
    data = random.Random(1).randbytes(SIZE)
    path.write_bytes(data)
    return path, data


@pytest.fixture(scope="module", params=["unix", "tcp"])
def server(request, image):
    path, _ = image
    with NbdkitServer("file", f"file={path}", unix=request.param == "unix") as srv:
        yield srv


def test_device_reads_the_file(server, image):
    _, data = image
    with NbdDevice(server.uri) as dev:
        assert isinstance(dev, BlockDevice)
        assert (dev.capacity, dev.block_size) == (SIZE, 512)
        assert dev.read(0, 512) == data[:512]
        assert dev.read(SIZE - 1024, 4096) == data[-1024:]  # short at the end
        assert dev.read(SIZE, 512) == b""
        assert dev.read(512, SIZE) == data[512:]  # many pieces in flight
        with pytest.raises(ValueError):
            dev.read(100, 512)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ranges=st.lists(st.tuples(st.integers(0, SIZE + 100), st.integers(0, 70_000)),
                       min_size=1, max_size=20))
def test_random_ranges_equal_the_file(server, image, ranges):
    _, data = image
    dev = open_device(server.uri)
    try:
        reader = ByteReader(dev)
        for offset, length in ranges:
            assert reader.pread(offset, length) == data[offset:offset + length]
    finally:
        dev.close()


def test_pipelined_reads(server, image):
    _, data = image
    rng = random.Random(2)
    ranges = [(rng.randrange(0, SIZE // 512) * 512, rng.randrange(1, 64) * 512) for _ in range(200)]

    async def main():
        async with await AsyncNbdClient.connect(server.uri) as client:
            assert client.size == SIZE
            wanted = [(o, min(n, SIZE - o)) for o, n in ranges]
            one = await client.read_many(wanted)
            many = await asyncio.gather(*(client.read(o, n) for o, n in wanted))
            return wanted, one, many

    wanted, one, many = asyncio.run(main())
    expected = [data[o:o + n] for o, n in wanted]
    assert one == expected and list(many) == expected

    with NbdDevice(server.uri) as dev:
        assert dev.read_many(ranges) == [data[o:o + n] for o, n in ranges]


def test_threads_share_a_device(server, image):
    _, data = image
    errors = []
    with NbdDevice(server.uri) as dev:
        def work(seed):
            rng = random.Random(seed)
            try:
                for _ in range(50):
                    o = rng.randrange(0, SIZE // 512) * 512
                    assert dev.read(o, 1024) == data[o:o + 1024]
            except Exception as exc:  # pragma: no cover - reported below
                errors.append(exc)
        threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert errors == []


def test_read_after_close(server):
    dev = NbdDevice(server.uri)
    dev.close()
    dev.close()
    with pytest.raises(NbdConnectionError, match="after close"):
        dev.read(0, 512)


def test_sync_device_refuses_to_run_inside_a_coroutine(server):
    dev = NbdDevice(server.uri)
    try:
        async def inside():
            return dev.read(0, 512)
        with pytest.raises(RuntimeError, match="AsyncNbdClient"):
            asyncio.run(inside())
        assert len(dev.read(0, 512)) == 512  # still usable afterwards
    finally:
        dev.close()


def test_server_block_sizes_and_split_reads(image):
    """Block size from NBD_INFO_BLOCK_SIZE; reads beyond the maximum are split."""
    path, data = image
    with NbdkitServer("file", f"file={path}", "blocksize-minimum=512",
                      "blocksize-preferred=4096", "blocksize-maximum=65536",
                      extra_options=("--filter=blocksize-policy",), unix=True) as srv:
        with NbdDevice(srv.uri) as dev:
            assert dev.info.min_block == 512 and dev.info.max_block == 65536
            assert dev.block_size == 4096
            assert dev.read(4096, 1 << 20) == data[4096:4096 + (1 << 20)]
            with pytest.raises(ValueError):
                dev.read(512, 512)
        with NbdDevice(srv.uri, block_size=1024) as dev:
            assert dev.block_size == 1024
            assert dev.read(1024, 1024) == data[1024:2048]
        with pytest.raises(NbdError, match="below the server's minimum"):
            NbdDevice(srv.uri, block_size=256)


def test_exports_by_name(image, tmp_path):
    path, data = image
    (tmp_path / "a.img").write_bytes(data[:8192])
    (tmp_path / "b.img").write_bytes(data[8192:8192 + 4096])
    with NbdkitServer("file", f"dir={tmp_path}", unix=True) as srv:
        base = f"nbd+unix:///%s?socket={srv.socket}"
        with NbdDevice(base % "b.img") as dev:
            assert dev.capacity == 4096 and dev.read(0, 4096) == data[8192:8192 + 4096]
        with pytest.raises(NbdExportNotFound) as info:
            NbdDevice(base % "nope")
        message = str(info.value)
        assert "export 'nope' not found" in message and srv.socket in message and "\n" not in message
        names = sorted(name for name, _ in asyncio.run(list_exports(base % "")))
        assert names == ["a.img", "b.img"]


def test_unknown_export_with_strict_exportname_filter(image):
    path, _ = image
    with NbdkitServer("file", f"file={path}", "exportname=good", "exportname-strict=true",
                      extra_options=("--filter=exportname",)) as srv:
        with NbdDevice(f"nbd://127.0.0.1:{srv.port}/good") as dev:
            assert dev.capacity == SIZE
        with pytest.raises(NbdExportNotFound) as info:
            NbdDevice(f"nbd://127.0.0.1:{srv.port}/bad")
        assert str(info.value) == f"nbd://127.0.0.1:{srv.port}/bad: export 'bad' not found"


def test_server_read_errors_are_reported(image):
    path, _ = image
    with NbdkitServer("file", f"file={path}", "error-pread=EIO", "error-pread-rate=100%",
                      extra_options=("--filter=error",), unix=True) as srv:
        with NbdDevice(srv.uri) as dev:
            with pytest.raises(NbdCommandError, match=r"EIO.* at offset 4096"):
                dev.read(4096, 512)
            with pytest.raises(NbdCommandError):  # the connection survives an error reply
                dev.read(0, 512)


def test_server_killed_mid_session(image):
    path, data = image
    with NbdkitServer("file", f"file={path}", "delay-read=2",
                      extra_options=("--filter=delay",), unix=True) as srv:
        dev = NbdDevice(srv.uri, timeout=60)
        try:
            killer = threading.Timer(0.3, srv.proc.kill)
            killer.start()
            with pytest.raises(NbdConnectionError, match="closed the connection") as info:
                dev.read(0, 512)  # in flight (delayed) when the server dies
            killer.join()
            assert srv.socket in str(info.value)
            with pytest.raises(NbdConnectionError):  # and stays broken, without hanging
                dev.read(512, 512)
        finally:
            dev.close()


def test_connection_refused():
    """In the HTTP reader's words (`cannot reach HOST port N: REASON`), not
    asyncio's (`Connect call failed ('127.0.0.1', N)`)."""
    port = free_port()
    with pytest.raises(NbdConnectionError) as refused:
        NbdDevice(f"nbd://127.0.0.1:{port}/x")
    assert str(refused.value) == (f"nbd://127.0.0.1:{port}/x: cannot reach 127.0.0.1 "
                                  f"port {port}: Connection refused")
    with pytest.raises(NbdConnectionError) as both:  # ::1 and 127.0.0.1, one reason
        NbdDevice(f"nbd://localhost:{port}/x")
    assert str(both.value).endswith(f"cannot reach localhost port {port}: Connection refused")
    with pytest.raises(NbdConnectionError) as missing:
        open_device("nbd+unix:///?socket=/nonexistent/nbd.sock")
    assert str(missing.value) == ("nbd+unix:///?socket=/nonexistent/nbd.sock: cannot reach "
                                  "socket /nonexistent/nbd.sock: No such file or directory")
    assert issubclass(NbdConnectionError, DocteurError)


class RawServer:
    """A real TCP listener playing a script: (bytes to read first, bytes to send)."""

    def __init__(self, payload: bytes, close: bool, script=()) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.port = self.sock.getsockname()[1]
        self.script = [(0, payload), *script]
        self.close = close
        self.conns = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        try:
            conn, _ = self.sock.accept()
            self.conns.append(conn)
            for need, send in self.script:
                got = 0
                while got < need:
                    chunk = conn.recv(need - got)
                    if not chunk:
                        return
                    got += len(chunk)
                conn.sendall(send)
            if self.close:
                conn.close()
        except OSError:
            return

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.sock.close()
        for c in self.conns:
            c.close()
        self.thread.join(5)


GREETING = b"NBDMAGICIHAVEOPT" + struct.pack(">H", 3)
OPT_REPLY = (0x3E889045565A9).to_bytes(8, "big")
GO_DONE = (OPT_REPLY + struct.pack(">IIIHQH", 7, 3, 12, 0, 4096, 1)
           + OPT_REPLY + struct.pack(">III", 7, 1, 0))
CLIENT_GO = 4 + 24      # client flags, then NBD_OPT_GO for "" with one info request
REQUEST = 28


@pytest.mark.parametrize("reply,close,message", [
    (bytes(16), False, "bad reply magic"),
    (struct.pack(">IIQ", 0x67446698, 0, 999), False, "reply with unknown cookie"),
    (struct.pack(">IIQ", 0x668E33EF, 0, 1), False, "structured reply"),
    (struct.pack(">IIQ", 0x67446698, 0, 1) + b"x" * 100, True, "closed the connection during a read"),
])
def test_bad_replies_from_a_real_socket(reply, close, message):
    script = [(CLIENT_GO, GO_DONE), (REQUEST, reply)]
    with RawServer(GREETING, close=close, script=script) as srv:
        with NbdDevice(f"nbd://127.0.0.1:{srv.port}/", timeout=20) as dev:
            assert dev.capacity == 4096
            with pytest.raises(NbdError, match=message) as info:
                dev.read(0, 512)
            assert f"nbd://127.0.0.1:{srv.port}/" in str(info.value)
            with pytest.raises(NbdError, match=message):  # broken for good
                dev.read(0, 512)


def test_read_timeout():
    with RawServer(GREETING, close=False, script=[(CLIENT_GO, GO_DONE)]) as srv:
        with NbdDevice(f"nbd://127.0.0.1:{srv.port}/", timeout=0.3) as dev:
            with pytest.raises(NbdTimeout, match="no reply within 0.3s"):
                dev.read(0, 512)


def test_silent_server_times_out():
    with RawServer(b"", close=False) as srv:
        with pytest.raises(NbdTimeout, match="no answer within 0.5s during the handshake"):
            NbdDevice(f"nbd://127.0.0.1:{srv.port}/", connect_timeout=0.5)


def test_not_an_nbd_server():
    with RawServer(b"HTTP/1.1 400 Bad Request\r\n\r\n", close=True) as srv:
        with pytest.raises(NbdProtocolError, match=f"127.0.0.1:{srv.port}/: not an NBD server"):
            NbdDevice(f"nbd://127.0.0.1:{srv.port}/")


def test_server_hangs_up_during_handshake():
    with RawServer(b"NBDMAGIC", close=True) as srv:
        with pytest.raises(NbdConnectionError, match="closed the connection during the handshake"):
            NbdDevice(f"nbd://127.0.0.1:{srv.port}/")
