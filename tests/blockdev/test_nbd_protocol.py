"""The sans-IO NBD client protocol, byte by byte, without any socket."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings, strategies as st

from docteur_core.blockdev import nbd_protocol as P
from docteur_core.blockdev.nbd_protocol import (
    ClientHandshake, NbdCommandError, NbdError, NbdExportNotFound, NbdOptionError,
    NbdProtocolError, ReplyParser,
)

# -- what a server would send (written from the spec, independently of P) -----

NBDMAGIC = b"NBDMAGIC"
IHAVEOPT = b"IHAVEOPT"
REPLY_MAGIC = (0x3E889045565A9).to_bytes(8, "big")


def greeting(flags: int = 3) -> bytes:
    return NBDMAGIC + IHAVEOPT + struct.pack(">H", flags)


def opt_reply(option: int, reply_type: int, data: bytes = b"") -> bytes:
    return REPLY_MAGIC + struct.pack(">III", option, reply_type, len(data)) + data


def info_export(size: int, flags: int = 0x1 | 0x2) -> bytes:
    return opt_reply(7, 3, struct.pack(">HQH", 0, size, flags))


def info_block_size(minimum: int, preferred: int, maximum: int) -> bytes:
    return opt_reply(7, 3, struct.pack(">HIII", 3, minimum, preferred, maximum))


ACK_GO = opt_reply(7, 1)
ERR = 1 << 31


def go_request(name: bytes, infos=(3,)) -> bytes:
    data = struct.pack(">I", len(name)) + name + struct.pack(">H", len(infos))
    data += b"".join(struct.pack(">H", i) for i in infos)
    return IHAVEOPT + struct.pack(">II", 7, len(data)) + data


def run(handshake: ClientHandshake, server_bytes: bytes, chunk: int | None = None) -> bytes:
    """Feed the server's bytes; return everything the client sent."""
    sent = handshake.data_to_send()
    step = chunk or max(1, len(server_bytes))
    for i in range(0, len(server_bytes), step):
        handshake.receive_data(server_bytes[i:i + step])
        sent += handshake.data_to_send()
    return sent


# -- handshake ------------------------------------------------------------------

def test_go_handshake_bytes():
    hs = ClientHandshake("disk")
    assert hs.data_to_send() == b""  # the server speaks first
    assert hs.bytes_needed() == 18
    hs.receive_data(greeting(3))
    assert hs.data_to_send() == struct.pack(">I", 3) + go_request(b"disk")
    assert hs.bytes_needed() == 20
    hs.receive_data(info_export(123456789) + info_block_size(1, 4096, 1 << 25) + ACK_GO)
    assert hs.done and hs.bytes_needed() == 0
    assert hs.export == P.ExportInfo("disk", 123456789, 3, 1, 4096, 1 << 25)
    assert hs.export.read_only
    assert hs.export.max_payload == 1 << 25
    assert hs.trailing_data == b""


def test_no_zeroes_only_when_the_server_offers_it():
    hs = ClientHandshake("")
    sent = run(hs, greeting(1))
    assert sent[:4] == struct.pack(">I", 1)
    assert not hs.no_zeroes


def test_without_block_size_request():
    hs = ClientHandshake("x", request_block_size=False)
    sent = run(hs, greeting() + info_export(10) + ACK_GO)
    assert sent[4:] == go_request(b"x", infos=())
    assert hs.export.min_block is None and hs.export.max_payload == 32 << 20


@settings(max_examples=60, deadline=None)
@given(chunk=st.integers(1, 40))
def test_any_chunking_gives_the_same_result(chunk):
    stream = (greeting() + info_export(1 << 40) + opt_reply(7, 3, struct.pack(">H", 1) + b"name")
              + opt_reply(7, 3, struct.pack(">H", 2) + b"a description")
              + opt_reply(7, 99, b"unknown reply type, ignored") + ACK_GO + b"extra")
    hs = ClientHandshake("é")
    sent = run(hs, stream, chunk)
    assert sent == struct.pack(">I", 3) + go_request("é".encode())
    assert hs.done and hs.export.size == 1 << 40 and hs.export.description == "a description"
    assert hs.trailing_data == b"extra"


def test_unknown_export_is_a_clear_error():
    hs = ClientHandshake("nope")
    with pytest.raises(NbdExportNotFound, match=r"export 'nope' not found \(server says: no such export\)"):
        run(hs, greeting() + opt_reply(7, ERR | 6, b"no such export"))


@pytest.mark.parametrize("code,text", [
    (2, "refused by server policy"), (5, "requires TLS"), (7, "shutting down"),
    (8, "block size"), (1234, "error 1234"),
])
def test_option_errors(code, text):
    with pytest.raises(NbdOptionError, match=text) as info:
        run(ClientHandshake("e"), greeting() + opt_reply(7, ERR | code, b"\x00bad\nmessage"))
    assert info.value.code == ERR | code
    assert "\n" not in str(info.value) and "\x00" not in str(info.value)


def test_old_server_falls_back_to_export_name():
    hs = ClientHandshake("old")
    sent = run(hs, greeting(3) + opt_reply(7, ERR | 1) + struct.pack(">QH", 5000, 1))
    assert sent.endswith(IHAVEOPT + struct.pack(">II", 1, 3) + b"old")
    assert hs.done and hs.export.size == 5000
    hs = ClientHandshake("old")
    run(hs, greeting(1) + opt_reply(7, ERR | 1) + struct.pack(">QH", 7, 1))
    assert not hs.done and hs.bytes_needed() == 124  # the zeroes still to come
    hs.receive_data(bytes(124))
    assert hs.done and hs.export.size == 7


def test_list_exports():
    hs = ClientHandshake(list_exports=True)
    sent = run(hs, greeting() + opt_reply(3, 2, struct.pack(">I", 3) + b"oneFirst")
               + opt_reply(3, 2, struct.pack(">I", 3) + b"two") + opt_reply(3, 1))
    assert sent == struct.pack(">I", 3) + IHAVEOPT + struct.pack(">II", 3, 0) \
        + IHAVEOPT + struct.pack(">II", 2, 0)
    assert hs.done and hs.exports == [("one", "First"), ("two", "")]


@pytest.mark.parametrize("stream,message", [
    (b"NBDMAGIX" + IHAVEOPT + b"\0\3", "not an NBD server"),
    (NBDMAGIC + (0x00420281861253).to_bytes(8, "big") + b"\0\3", "oldstyle"),
    (NBDMAGIC + b"IHAVEOPX\0\3", "not an NBD newstyle server"),
    (greeting(0), "fixed newstyle"),
    (greeting() + b"\0" * 20, "bad option reply magic"),
    (greeting() + opt_reply(3, 1), "reply to NBD_OPT_LIST while waiting for NBD_OPT_GO"),
    (greeting() + REPLY_MAGIC + struct.pack(">III", 7, 3, 0xFFFFFFFF), "too long"),
    (greeting() + ACK_GO, "without NBD_INFO_EXPORT"),
    (greeting() + opt_reply(7, 1, b"x"), "ACK with a payload"),
    (greeting() + opt_reply(7, 3, b"\0"), "too short"),
    (greeting() + opt_reply(7, 3, struct.pack(">HQ", 0, 1)), "NBD_INFO_EXPORT of 10 bytes"),
    (greeting() + info_block_size(3, 4096, 4096), "minimum block size 3"),
    (greeting() + info_block_size(512, 256, 4096), "preferred block size 256"),
    (greeting() + info_block_size(512, 4096, 1024), "maximum block size 1024"),
    (greeting() + opt_reply(7, 3, struct.pack(">HIII", 3, 512, 512, 512) + b"x"),
     "NBD_INFO_BLOCK_SIZE of 15 bytes"),
])
def test_malformed_handshakes(stream, message):
    with pytest.raises(NbdProtocolError, match=message):
        run(ClientHandshake(""), stream)


def test_malformed_list_replies():
    with pytest.raises(NbdProtocolError, match="longer than its reply"):
        run(ClientHandshake(list_exports=True), greeting() + opt_reply(3, 2, struct.pack(">I", 9) + b"ab"))
    with pytest.raises(NbdProtocolError, match="too short"):
        run(ClientHandshake(list_exports=True), greeting() + opt_reply(3, 2, b"ab"))


def test_bad_export_names():
    with pytest.raises(NbdError):
        ClientHandshake("a\0b")
    with pytest.raises(NbdError):
        ClientHandshake("x" * 4097)


@settings(max_examples=400, deadline=None)
@given(garbage=st.binary(max_size=200), prefix=st.sampled_from([b"", 18, 38]))
def test_garbage_from_the_server_never_crashes_or_stalls(garbage, prefix):
    """Any bytes: an NbdError, a finished handshake, or a bounded need for more."""
    good = greeting() + info_export(100)
    stream = (good[:prefix] if isinstance(prefix, int) else prefix) + garbage
    hs = ClientHandshake("x")
    try:
        run(hs, stream)
    except NbdError:
        return
    assert hs.done or 0 < hs.bytes_needed() <= P.MAX_OPTION_REPLY + 20


# -- transmission -----------------------------------------------------------------

def reply(cookie: int, error: int = 0, data: bytes = b"") -> bytes:
    return struct.pack(">IIQ", 0x67446698, error, cookie) + data


def test_request_bytes():
    assert P.encode_read(0x0102030405060708, 4096, 512) == (
        bytes.fromhex("25609513" "0000" "0000" "0102030405060708") + struct.pack(">QI", 4096, 512))
    assert P.encode_disconnect() == bytes.fromhex("25609513" "0000" "0002") + bytes(20)
    with pytest.raises(ValueError):
        P.encode_read(1, -1, 512)
    with pytest.raises(ValueError):
        P.encode_read(1, 0, 1 << 32)


def test_reply_header():
    assert P.parse_reply_header(reply(7, 5)) == (5, 7)
    with pytest.raises(NbdProtocolError, match="structured reply"):
        P.parse_reply_header(struct.pack(">IHHQI", 0x668E33EF, 0, 1, 7, 0)[:16])
    with pytest.raises(NbdProtocolError, match="bad reply magic"):
        P.parse_reply_header(bytes(16))
    with pytest.raises(NbdProtocolError):
        P.parse_reply_header(bytes(15))


@settings(max_examples=60, deadline=None)
@given(chunk=st.integers(1, 50), order=st.permutations([1, 2, 3]))
def test_replies_in_any_order_and_chunking(chunk, order):
    payloads = {1: b"a" * 10, 2: b"", 3: bytes(range(40))}
    parser = ReplyParser()
    for cookie, data in payloads.items():
        parser.expect(cookie, cookie * 100, len(data))
    stream = b"".join(reply(c, data=payloads[c]) for c in order)
    got = []
    for i in range(0, len(stream), chunk):
        assert parser.bytes_needed() > 0
        parser.receive_data(stream[i:i + chunk])
        while (r := parser.next_reply()) is not None:
            got.append(r)
    assert [r.cookie for r in got] == list(order)
    assert all(r.check() == payloads[r.cookie] and r.offset == r.cookie * 100 for r in got)
    assert parser.pending == 0


def test_error_reply_has_no_payload():
    parser = ReplyParser()
    parser.expect(1, 4096, 512)
    parser.expect(2, 0, 3)
    parser.receive_data(reply(1, error=5) + reply(2, data=b"abc"))
    r1, r2 = parser.next_reply(), parser.next_reply()
    with pytest.raises(NbdCommandError, match=r"EIO \(5\) reading 512 bytes at offset 4096") as info:
        r1.check()
    assert info.value.code == 5
    assert r2.check() == b"abc"


def test_reply_to_unknown_cookie():
    parser = ReplyParser()
    parser.expect(1, 0, 4)
    with pytest.raises(NbdProtocolError, match="unknown cookie"):
        parser.receive_data(reply(2, data=b"abcd"))
    with pytest.raises(ValueError):
        parser.expect(1, 0, 4)


@settings(max_examples=200, deadline=None)
@given(garbage=st.binary(max_size=100))
def test_garbage_replies_never_crash(garbage):
    parser = ReplyParser()
    parser.expect(1, 0, 8)
    try:
        parser.receive_data(garbage)
    except NbdError:
        return
    assert parser.bytes_needed() > 0 or parser.next_reply() is not None
