"""serve/refusal.py against docteur's own client handshake (sans-IO) over a
real socket pair: a refused client learns why from NBD_OPT_GO's error
message and from the export list, and nothing hangs."""

from __future__ import annotations

import socket
import threading

import pytest

from docteur_core.blockdev.nbd_protocol import ClientHandshake, NbdExportNotFound
from docteur_core.serve.refusal import refuse

REASON = "/srv/disk.img: the image was replaced by one that cannot be served: bad PACK"


def _handshake(handshake: ClientHandshake) -> ClientHandshake:
    ours, theirs = socket.socketpair()
    server = threading.Thread(target=refuse, args=(theirs, REASON, 30.0))
    server.start()
    try:
        ours.settimeout(30)
        ours.sendall(handshake.data_to_send())
        while not handshake.done:
            data = ours.recv(65536)
            assert data, "the refusal closed the connection early"
            handshake.receive_data(data)
            ours.sendall(handshake.data_to_send())
        return handshake
    finally:
        ours.close()
        server.join(30)
        assert not server.is_alive()


def test_go_is_refused_with_the_reason_as_the_servers_message():
    with pytest.raises(NbdExportNotFound) as info:
        _handshake(ClientHandshake(""))
    assert str(info.value) == f"export '' not found (server says: {REASON})"


def test_the_export_list_says_refused_and_why():
    assert _handshake(ClientHandshake(list_exports=True)).exports == [("", "refused: " + REASON)]


def test_a_silent_client_costs_only_the_timeout():
    ours, theirs = socket.socketpair()
    with ours:
        refuse(theirs, REASON, timeout=0.2)  # returns: the client never answered the greeting
        assert ours.recv(18)[:8] == b"NBDMAGIC"
