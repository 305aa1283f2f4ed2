"""UDP reflection (issue 25 item 1): no answer to a reflector or to ourselves, and signals under any load.

A datagram whose source is the server's own port (forged with a raw socket,
or sent from the same port on another local address) or a port that answers
anything (0, 7, 13, 19, 37) made echo and daytime answer themselves, or a
sibling, for ever; under ``iterative`` (and a pre-forked worker) the loop
then never looked at SIGTERM.  Under every strategy that serves datagrams.
"""

from __future__ import annotations

import os
import socket
import struct

import pytest

from tests.support import missing_requirement, wait_for
from tests.test_udp import datagram_strategy, udp_client

#: The refusal a reflected datagram leaves in the log.
REFUSED = "refused: its source is"


def _port(address: str) -> int:
    return int(address.rpartition(":")[2])


def _assert_ignored(server, reflector: socket.socket, peer: str) -> None:  # type: ignore[no-untyped-def]
    """The server logged the refusal of *peer*'s datagram, still answers others, and never answered *reflector*."""
    assert wait_for(lambda: f"{peer} {REFUSED}" in server.log(), timeout=10), server.log()
    with udp_client(server.address) as sock:
        sock.send(b"an honest question")
        assert sock.recv(1000)
    with pytest.raises(BlockingIOError):
        reflector.recv(1000, socket.MSG_DONTWAIT)


@pytest.mark.parametrize("name", ["echo", "daytime"])
def test_a_datagram_from_our_own_port_elsewhere_is_not_answered(serve, strategy, name):
    # The same port on another local address: what a sibling server there, or our own socket, would send from.
    server = serve(name, strategy=datagram_strategy(strategy), bind="udp:127.0.0.1:0")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as reflector:
        reflector.bind(("127.0.0.2", _port(server.address)))
        reflector.sendto(b"answer yourself", ("127.0.0.1", _port(server.address)))
        _assert_ignored(server, reflector, f"127.0.0.2:{_port(server.address)}")


@pytest.mark.parametrize("port", [7, 13, 19, 37])
def test_a_datagram_from_a_reflector_port_is_not_answered(serve, strategy, port):
    if os.geteuid() != 0:
        missing_requirement("binding a reflector's port (below 1024) needs root")
    server = serve("echo", strategy=datagram_strategy(strategy), bind="udp:127.0.0.1:0")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as reflector:
        reflector.bind(("127.0.0.2", port))
        reflector.sendto(b"from a reflector", ("127.0.0.1", _port(server.address)))
        _assert_ignored(server, reflector, f"127.0.0.2:{port}")


def _forge_from_itself(port: int, payload: bytes) -> None:
    """Send a UDP datagram to 127.0.0.1:*port* whose source is 127.0.0.1:*port* (a raw socket)."""
    try:
        raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_UDP)
    except PermissionError:
        missing_requirement("forging a source address needs a raw socket (CAP_NET_RAW)")
    with raw:
        # The kernel writes the IP header (source 127.0.0.1); a zero UDP checksum means "none" over IPv4.
        raw.sendto(struct.pack("!HHHH", port, port, 8 + len(payload), 0) + payload, ("127.0.0.1", 0))


@pytest.mark.parametrize("name", ["echo", "daytime"])
def test_a_self_addressed_datagram_makes_no_loop_and_sigterm_stops_promptly(serve, strategy, name):
    # Was: 375,000 datagrams and 100 % CPU in 3 s; under iterative only SIGKILL ended it.
    server = serve(name, "--graceful-timeout", "120", strategy=datagram_strategy(strategy),
                   bind="udp:127.0.0.1:0")
    port = _port(server.address)
    _forge_from_itself(port, b"loop me")
    assert wait_for(lambda: f"127.0.0.1:{port} {REFUSED}" in server.log(), timeout=10), server.log()
    with udp_client(server.address) as sock:
        sock.send(b"still answering?")
        assert sock.recv(1000)
    # A loop would hold the stop until the 120 s graceful deadline (or for ever): 30 s is only a hang's limit.
    assert server.stop(timeout=30) == 0, server.log()
    assert server.log().count(REFUSED) == 1  # one datagram, one refusal: nothing came back


def test_sigterm_stops_a_server_whose_socket_never_empties(serve, strategy):
    server = serve("tests.udp_flood_server:SelfFeedingServer", "--graceful-timeout", "120",
                   strategy=datagram_strategy(strategy), bind="udp:127.0.0.1:0")
    with udp_client(server.address) as sock:
        for _ in range(8):
            sock.send(b"feed me")
    assert server.stop(timeout=30) == 0, server.log()
    assert "graceful timeout" not in server.log()
