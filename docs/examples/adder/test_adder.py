"""The adder's tests: the protocol alone first (sans-I/O), then the server as a process under every strategy."""

from __future__ import annotations

import socket

import pytest
from adder import MAX_LINE, AdderProtocol, AdderServer

from framework.testing import RecordingTransport, feed


def replies(data: bytes, **how: int) -> bytes:
    """What the protocol writes back for *data*, fed as *how* says (whole, ``chunk_size=1``, ``seed=N``)."""
    transport = RecordingTransport()
    protocol = AdderProtocol()
    protocol.connection_made(transport)
    feed(protocol, data, **how)
    return transport.output()


# -- the protocol alone: fast, no sockets ---------------------------------------------------------

def test_sums_each_line():
    assert replies(b"1 2 3\n-4 4\n\n") == b"6\n0\n0\n"


def test_one_byte_at_a_time():
    assert replies(b"10 20\n30\n", chunk_size=1) == b"30\n30\n"


@pytest.mark.parametrize("seed", range(100))
def test_any_split_gives_the_same_replies(seed):
    """Split at random points, reproducibly: a failing seed is the whole bug report."""
    assert replies(b"1 2\n30 4\n-5\n100\n", seed=seed) == b"3\n34\n-5\n100\n"


def test_a_bad_line_is_an_answer_not_a_crash():
    assert replies(b"1 two\n3\n") == b"error: whole numbers only\n3\n"


def test_an_endless_line_is_cut_off():
    transport = RecordingTransport()
    protocol = AdderProtocol()
    protocol.connection_made(transport)
    feed(protocol, b"1" * (MAX_LINE + 1))
    assert transport.output() == b"error: line too long\n" and transport.closed


# -- the server as a real process, once per strategy: test_x[iterative], test_x[forking], ... -------

def ask(sock: socket.socket, line: bytes) -> bytes:
    sock.sendall(line)
    reply = b""
    while not reply.endswith(b"\n"):
        chunk = sock.recv(64)
        assert chunk, "the server closed the connection"
        reply += chunk
    return reply


def test_serves_over_tcp(forkthread_server):
    server = forkthread_server(AdderServer)
    with server.connect() as sock:
        assert ask(sock, b"1 2\n") == b"3\n"
        assert ask(sock, b"oops\n") == b"error: whole numbers only\n"


def test_serves_over_a_unix_socket(forkthread_server):
    server = forkthread_server("adder:AdderServer", bind="unix")
    with server.connect() as sock:
        assert ask(sock, b"40 2\n") == b"42\n"


def test_serves_clients_at_once(forkthread_server, forkthread_strategy):
    if forkthread_strategy == "iterative":
        pytest.skip("iterative serves one client at a time, by design")
    server = forkthread_server(AdderServer, max_connections=3)
    first, second = server.connect(), server.connect()
    with first, second:
        assert ask(second, b"2 2\n") == b"4\n"  # while the first is still connected
        assert ask(first, b"1 1\n") == b"2\n"


def test_stops_gracefully(forkthread_server):
    server = forkthread_server(AdderServer)
    assert server.stop() == 0
