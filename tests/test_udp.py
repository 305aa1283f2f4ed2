"""UDP daytime and echo (RFC 867 and 862 over datagrams) under every strategy that serves datagrams."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys

import pytest

from framework.strategies import create_strategy
from tests.support import child_env
from tests.test_conformance import CTIME


def datagram_strategy(strategy: str) -> str:
    if not create_strategy(strategy).can_serve_datagrams():
        pytest.skip(f"strategy {strategy} refuses datagrams (tested in test_connection_strategies_refuse_udp)")
    return strategy


def udp_client(address: str) -> socket.socket:
    """A datagram socket connected to *address* (``udp:HOST:PORT`` or ``udp:[V6]:PORT``)."""
    text = address.removeprefix("udp:")
    if text.startswith("["):
        host, _, port = text[1:].partition("]:")
        family = socket.AF_INET6
    else:
        host, _, port = text.rpartition(":")
        family = socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.settimeout(10)
    sock.connect((host, int(port)))
    return sock


@pytest.mark.parametrize("bind", ["udp:127.0.0.1:0", "udp:[::1]:0"])
def test_udp_echo_byte_exact(serve, strategy, bind):
    server = serve("echo", strategy=datagram_strategy(strategy), bind=bind)
    assert server.address.startswith("udp:")
    largest = 65507 if bind.startswith("udp:1") else 65527  # the largest UDP payload over IPv4 / IPv6
    with udp_client(server.address) as sock:
        for payload in [b"", b"x", b"\0\r\n\xff", os.urandom(60 * 1024), os.urandom(largest)]:
            sock.send(payload)
            assert sock.recv(70000) == payload


def test_udp_echo_keeps_datagram_boundaries(serve, strategy):
    server = serve("echo", strategy=datagram_strategy(strategy), bind="udp:127.0.0.1:0")
    with udp_client(server.address) as sock:
        payloads = [bytes([index]) * (index * 100) for index in range(20)]
        for payload in payloads:
            sock.send(payload)
        answers = sorted((sock.recv(70000) for _ in payloads), key=len)
    assert answers == payloads


def test_udp_oversized_datagram_refused_at_sender_server_lives_on(serve, strategy):
    server = serve("echo", strategy=datagram_strategy(strategy), bind="udp:127.0.0.1:0")
    with udp_client(server.address) as sock:
        with pytest.raises(OSError):  # EMSGSIZE: no UDP datagram is larger than 65507 bytes over IPv4
            sock.send(b"x" * 65508)
        sock.send(b"still there?")
        assert sock.recv(100) == b"still there?"


@pytest.mark.parametrize("utc", [False, True])
def test_udp_daytime_answers_any_datagram(serve, strategy, utc):
    server = serve("daytime", *(["--utc"] if utc else []), strategy=datagram_strategy(strategy),
                   bind="udp:127.0.0.1:0")
    with udp_client(server.address) as sock:
        for request in [b"", b"what time is it?", os.urandom(60 * 1024)]:
            sock.send(request)
            assert CTIME.match(sock.recv(1000))


def test_udp_many_clients_at_once(serve, strategy):
    server = serve("echo", strategy=datagram_strategy(strategy), bind="udp:127.0.0.1:0")
    with contextlib.ExitStack() as stack:
        clients = [stack.enter_context(udp_client(server.address)) for _ in range(20)]
        for index, sock in enumerate(clients):  # all in flight at once, then all answers
            sock.send(b"client %d" % index)
        assert [sock.recv(100) for sock in clients] == [b"client %d" % index for index in range(20)]


def test_connection_strategies_refuse_udp(strategy):
    if create_strategy(strategy).can_serve_datagrams():
        pytest.skip(f"strategy {strategy} serves datagrams")
    result = subprocess.run(
        [sys.executable, "-m", "framework", "serve", "echo", "--bind", "udp:127.0.0.1:0", "--strategy", strategy],
        capture_output=True, text=True, env=child_env(), timeout=30,
    )
    assert result.returncode == 2
    assert f"strategy {strategy!r} cannot serve datagrams" in result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""


def test_stream_only_server_refuses_udp():
    result = subprocess.run(
        [sys.executable, "-m", "framework", "serve", "message", "--bind", "udp:127.0.0.1:0"],
        capture_output=True, text=True, env=child_env(), timeout=30,
    )
    assert result.returncode == 2
    assert result.stderr == "forkthread: error: server 'message' does not speak datagrams (UDP)\n"


def test_strategy_without_datagram_support_is_refused_in_code():
    from framework.strategies.base import Run, Strategy
    from servers.echo import EchoServer

    class ConnectionsOnlyRun(Run):
        def serve(self):
            raise AssertionError("never reached")

    class ConnectionsOnly(Strategy):
        name = "connections-only"

        def start(self, host):
            return ConnectionsOnlyRun(self, host)

    assert not ConnectionsOnly().can_serve_datagrams()
    with pytest.raises(ValueError, match="strategy 'connections-only' cannot serve datagrams"):
        EchoServer("udp:127.0.0.1:0", strategy=ConnectionsOnly())
    with pytest.raises(NotImplementedError, match="cannot serve datagrams"):
        ConnectionsOnly().start(None).serve_datagrams()
