"""The nbytes server (UNP ch. 30 benchmark): protocol unit tests and every strategy over real sockets."""

from __future__ import annotations

import socket

import pytest

from framework.testing import RecordingTransport
from servers.nbytes import MAX_REQUEST_LINE, SMALL_ANSWER, NBytesProtocol
from tests.support import recv_all


def run_protocol(request: bytes, chunk: int, max_bytes: int = 1 << 20) -> RecordingTransport:
    transport = RecordingTransport()
    protocol = NBytesProtocol(max_bytes)
    protocol.connection_made(transport)
    for start in range(0, len(request), chunk):
        protocol.data_received(request[start:start + chunk])
    return transport


@pytest.mark.parametrize("chunk", [1, 3, 100])
@pytest.mark.parametrize("count", [0, 1, 4000, SMALL_ANSWER, SMALL_ANSWER + 1, 65536, 65537, 200_000])
def test_answers_exactly_count_bytes_then_closes(count, chunk):
    transport = run_protocol(f"{count}\r\n".encode(), chunk)
    answer = transport.output()
    assert len(answer) == count
    assert answer[:26] == b"abcdefghijklmnopqrstuvwxyz"[:count]
    assert transport.closed


@pytest.mark.parametrize("request_line", [b"abc\n", b"-5\n", b"1e3\n", b"\n", b"12 34\n"])
def test_non_numbers_get_an_error_line(request_line):
    transport = run_protocol(request_line, 1)
    assert transport.output().startswith(b"error: ")
    assert transport.closed


def test_count_above_limit_is_refused():
    transport = run_protocol(b"1001\n", 5, max_bytes=1000)
    assert transport.output() == b"error: count 1001 above the limit of 1000\r\n"


def test_endless_line_is_refused_without_waiting_for_newline():
    transport = run_protocol(b"9" * MAX_REQUEST_LINE, 1)
    assert transport.output().startswith(b"error: request line longer")


def test_incomplete_line_waits():
    transport = run_protocol(b"123", 1)
    assert transport.output() == b"" and not transport.closed


def test_cli_max_bytes_option(serve):
    server = serve("nbytes", "--max-bytes", "10")
    with server.connect() as sock:
        sock.sendall(b"11\n")
        assert recv_all(sock).startswith(b"error: count 11")
    with server.connect() as sock:
        sock.sendall(b"10\n")
        assert recv_all(sock) == b"abcdefghij"


def test_every_strategy_answers_concurrent_clients(serve, strategy):
    server = serve("nbytes", strategy=strategy)
    counts = [0, 1, 4000, 1 << 20]
    socks = [server.connect() for _ in counts]
    try:
        for sock, count in zip(socks, counts, strict=True):
            sock.sendall(b"%d\n" % count)
        for sock, count in zip(socks, counts, strict=True):
            assert len(recv_all(sock)) == count
    finally:
        for sock in socks:
            sock.close()


def test_every_strategy_survives_a_client_that_leaves_early(serve, strategy):
    server = serve("nbytes", strategy=strategy)
    with server.connect() as sock:
        sock.sendall(b"50000000\n")
        sock.recv(10)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")  # close with RST
    with server.connect() as sock:
        sock.sendall(b"4000\n")
        assert len(recv_all(sock)) == 4000
