"""The shape the architecture promises: immutable strategies, one admission rule, framework-applied
socket options, and servers that declare a default strategy."""

from __future__ import annotations

import dataclasses
import socket
import subprocess
import sys

import pytest

from framework.strategies import available_strategies, create_strategy
from framework.strategies.base import StrategyOptions
from servers.echo import EchoServer
from tests.support import child_env, echo_exchange, pool_ready, serving_in_thread, wait_for


def http_get(sock: socket.socket, path: str = "/", keep_alive: bool = True) -> bytes:
    """Send one GET and read one whole response (Content-Length framed)."""
    connection = "keep-alive" if keep_alive else "close"
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: t\r\nConnection: {connection}\r\n\r\n".encode())
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(next(line.split(b":", 1)[1] for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:")))
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk
        body += chunk
    return head


@pytest.fixture
def site(tmp_path):
    (tmp_path / "index.html").write_bytes(b"<p>hello</p>\n")
    return tmp_path


@pytest.mark.needs_tool("ss")  # tests/conftest.py: a skip, but a failure under CI=true
def test_http_keepalive_option_reaches_accepted_sockets(serve, strategy, site):
    """``serve http --keepalive`` used to be dropped: the server overrode configure_connection."""
    server = serve("http", "--root", str(site), "--keepalive", "7,3,2", strategy=strategy)
    pool_ready(server, strategy)  # a connection waiting in the backlog for a worker ages its timer
    port = server.address.rpartition(":")[2]
    with server.connect() as sock:
        assert http_get(sock).startswith(b"HTTP/1.1 200")
        ss = subprocess.run(["ss", "-Htno", "state", "established", f"( sport = :{port} )"],
                            capture_output=True, text=True, timeout=10)
    # The server's end of the connection probes after 7 s of silence.
    assert "timer:(keepalive,6" in ss.stdout or "timer:(keepalive,7" in ss.stdout, ss.stdout


class RefuseFirst(EchoServer):
    """Refuses the first connection it is offered, serves the rest."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.offered = 0

    def verify_request(self, sock: socket.socket, peer: str) -> bool:
        self.offered += 1
        return self.offered > 1


def test_a_refused_connection_is_not_counted_as_served(strategy):
    """One admission rule for both drivers: refused connections never count (nor trigger --max-requests)."""
    if strategy == "forking":
        pytest.skip("the forking parent counts accepted connections; admission happens in each child")
    options = StrategyOptions(workers=1, threads=2, accept="passfd")
    with RefuseFirst("127.0.0.1:0", create_strategy(strategy, options), handle_signals=False) as server, \
            serving_in_thread(server):
        with socket.create_connection(server.address.sockaddr(), timeout=10) as refused:
            assert refused.recv(1) == b""  # closed without being served
        with socket.create_connection(server.address.sockaddr(), timeout=10) as sock:
            assert echo_exchange(sock, b"counted") == b"counted"
        assert wait_for(lambda: server.counts()[0] == 1, timeout=10), server.counts()


def test_strategies_are_immutable_and_reusable():
    for name in available_strategies():  # interpreters only from Python 3.13
        strategy = create_strategy(name, StrategyOptions(workers=1))
        with pytest.raises(dataclasses.FrozenInstanceError):
            strategy.max_connections = 3  # type: ignore[misc]
    strategy = create_strategy("threading")
    for _ in range(2):  # the same configuration serves twice: each serve is its own run
        with EchoServer("127.0.0.1:0", strategy, handle_signals=False) as server, serving_in_thread(server), \
                socket.create_connection(server.address.sockaddr(), timeout=10) as sock:
            assert echo_exchange(sock, b"again") == b"again"


def test_http_default_serves_a_second_client_while_a_first_holds_keepalive(serve, site):
    server = serve("http", "--root", str(site), strategy=None)
    with server.connect() as first:
        assert http_get(first).startswith(b"HTTP/1.1 200")  # first now holds an idle keep-alive connection
        with server.connect(timeout=10) as second:
            assert http_get(second, keep_alive=False).startswith(b"HTTP/1.1 200")


def test_list_shows_each_servers_default_strategy():
    result = subprocess.run([sys.executable, "-m", "framework", "list"], capture_output=True, text=True,
                            env=child_env(), timeout=30)
    assert result.returncode == 0
    lines = {line.split()[0]: line for line in result.stdout.splitlines() if line.startswith("  ")}
    assert "(poll)" in lines["http"] and "(poll)" in lines["chat"] and "(threading)" in lines["echo"]
    assert "(iterative)" in lines["daytime"]
