"""The conformance matrix: every bundled server under every selected strategy, over real sockets."""

from __future__ import annotations

import os
import re
import signal
import socket
import time

import pytest

from framework.drivers.blocking import REQUESTS_BEFORE_RECV
from tests.reliability_support import workers_ready
from tests.support import echo_exchange, fd_count, open_descriptors, recv_all, recv_or_reset, wait_for, zombies_of

CTIME = re.compile(rb"^(Mon|Tue|Wed|Thu|Fri|Sat|Sun) (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) "
                   rb"[ \d]\d \d\d:\d\d:\d\d \d{4}\r\n$")


@pytest.mark.parametrize("bind", ["127.0.0.1:0", "[::1]:0", "unix"])
def test_echo_4mib_byte_exact(serve, strategy, bind, tmp_path):
    address = f"unix:{tmp_path}/echo.sock" if bind == "unix" else bind
    server = serve("echo", strategy=strategy, bind=address)
    payload = os.urandom(4 << 20)
    with server.connect() as sock:
        assert echo_exchange(sock, payload) == payload


def test_echo_empty_transfer(serve, strategy):
    server = serve("echo", strategy=strategy)
    with server.connect() as sock:
        sock.shutdown(socket.SHUT_WR)
        assert recv_all(sock) == b""


def test_echo_single_bytes_with_nul_cr_lf(serve, strategy):
    server = serve("echo", strategy=strategy)
    payload = b"\0\r\n\r\0a\n\xff"
    with server.connect() as sock:
        for byte in payload:
            sock.sendall(bytes([byte]))
            assert sock.recv(1) == bytes([byte])
        sock.shutdown(socket.SHUT_WR)
        assert recv_all(sock) == b""


@pytest.mark.parametrize("utc", [False, True])
def test_daytime_ctime_line_then_close(serve, strategy, utc):
    server = serve("daytime", *(["--utc"] if utc else []), strategy=strategy)
    with server.connect() as sock:
        line = recv_all(sock)
    assert CTIME.match(line), line
    if utc:
        stamp = time.strptime(line.decode().strip(), "%a %b %d %H:%M:%S %Y")
        assert abs(time.mktime(stamp) - time.mktime(time.gmtime())) < 5


def test_daytime_concurrent_clients(serve, strategy):
    server = serve("daytime", strategy=strategy)
    socks = [server.connect() for _ in range(10)]
    try:
        for sock in socks:
            assert CTIME.match(recv_all(sock))
    finally:
        for sock in socks:
            sock.close()


def test_sigterm_stops_promptly_with_status_0(serve, strategy):
    # A graceful timeout far beyond the stop's deadline: a server that waited it out (for a
    # connection already gone) would miss the deadline; a prompt one exits well inside it.
    server = serve("echo", "--graceful-timeout", "3600", strategy=strategy)
    with server.connect() as sock:
        sock.sendall(b"x")
        assert sock.recv(1) == b"x"
    assert server.stop(signal.SIGTERM, timeout=60) == 0


def test_sigint_stops_with_status_0(serve, strategy):
    server = serve("echo", strategy=strategy)
    assert server.stop(signal.SIGINT) == 0


@pytest.mark.parametrize("exchanges", [1, REQUESTS_BEFORE_RECV + 1], ids=["one-request", "staying"])
def test_signals_are_handled_while_a_connection_waits_for_its_peer(serve, strategy, exchanges):
    """SIGUSR1 logs and SIGTERM stops while a connection is open and idle (in poll, or, once it stays, in recv)."""
    server = serve("echo", "--graceful-timeout", "1", strategy=strategy)
    with server.connect() as sock:
        for _ in range(exchanges):
            sock.sendall(b"ping")
            assert sock.recv(4) == b"ping"  # the connection now waits for its peer
        server.send_signal(signal.SIGUSR1)
        assert wait_for(lambda: "status:" in server.log(), timeout=10), server.log()
        server.send_signal(signal.SIGTERM)
        assert server.proc.wait(30) == 0, server.log()  # the graceful deadline ended the connection
        assert recv_or_reset(sock) == b""


def test_sigusr1_logs_one_status_line(serve, strategy):
    server = serve("echo", strategy=strategy)
    with server.connect() as sock:
        sock.sendall(b"ping")
        assert sock.recv(4) == b"ping"
    server.send_signal(signal.SIGUSR1)
    assert wait_for(lambda: "status:" in server.log(), timeout=5), server.log()
    line = next(line for line in server.log().splitlines() if "status:" in line)
    assert f"strategy={strategy}" in line and "served=" in line and "active=" in line


def test_sigusr1_during_transfer_loses_nothing(serve, strategy):
    server = serve("echo", strategy=strategy)
    payload = os.urandom(1 << 20)
    with server.connect() as sock:
        for _ in range(20):
            server.send_signal(signal.SIGUSR1)
        assert echo_exchange(sock, payload, chunk=4096) == payload


def test_reset_clients_leave_no_descriptors_or_zombies(serve, strategy):
    server = serve("echo", strategy=strategy)
    # Sub-interpreter workers share this process's descriptors: count once every one is up.
    workers_ready(server)
    with server.connect() as sock:  # warm up lazily-opened descriptors before the baseline
        assert echo_exchange(sock, b"warm") == b"warm"
    wait_for(lambda: not zombies_of(server.pid), timeout=2)
    baseline = fd_count(server.pid)
    before = open_descriptors(server.pid)
    for index in range(60):
        sock = server.connect()
        sock.sendall(os.urandom(20000))
        if index % 2:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")  # close = RST
        else:
            sock.shutdown(socket.SHUT_WR)
            recv_all(sock)
        sock.close()
    if not wait_for(lambda: fd_count(server.pid) <= baseline, timeout=10):
        after = open_descriptors(server.pid)
        left = {fd: target for fd, target in after.items() if before.get(fd) != target}
        raise AssertionError(f"{len(after)} descriptors open, {baseline} before; new: {left}")
    assert wait_for(lambda: not zombies_of(server.pid), timeout=2)
