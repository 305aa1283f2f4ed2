"""The poll strategy as a real server process: selectors, load, bounds, back-off and stopping."""

from __future__ import annotations

import inspect
import os
import re
import resource
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from framework.strategies import create_strategy
from framework.strategies.base import StrategyOptions
from framework.strategies.poll import PollStrategy
from servers.echo import EchoServer
from tests import test_conformance
from tests.support import assert_descriptor_backoff, echo_exchange, fd_count, wait_for

pytestmark = pytest.mark.only_strategies("poll")

SELECTORS = ["poll", "epoll", "select"]

#: The conformance tests that take just (serve, strategy): rerun under every other selector.
PLAIN_CONFORMANCE = [
    test for name, test in vars(test_conformance).items()
    if name.startswith("test_") and list(inspect.signature(test).parameters) == ["serve", "strategy"]
]


def status_line(server) -> str:
    """Ask for a status line with SIGUSR1 and return the newest one."""
    before = server.log().count("status:")
    server.send_signal(signal.SIGUSR1)
    assert wait_for(lambda: server.log().count("status:") > before, timeout=5), server.log()
    return [line for line in server.log().splitlines() if "status:" in line][-1]


def test_options_and_description():
    assert create_strategy("poll").describe() == "poll"
    strategy = create_strategy("poll", StrategyOptions(selector="epoll", max_connections=100))
    assert isinstance(strategy, PollStrategy)
    assert strategy.describe() == "poll(epoll,max=100)"
    with pytest.raises(ValueError, match="selector"):
        PollStrategy("kqueue")
    with pytest.raises(ValueError, match="max_connections"):
        PollStrategy(max_connections=0)


@pytest.mark.parametrize("selector", SELECTORS)
def test_every_selector_serves_echo_and_reports_status(serve, selector):
    echo = serve("echo", "--selector", selector, strategy="poll")
    payload = os.urandom(4 << 20)
    with echo.connect() as sock:
        assert echo_exchange(sock, payload) == payload
    with echo.connect() as held:
        held.sendall(b"hi")
        assert held.recv(2) == b"hi"
        line = status_line(echo)
    expected = "poll" if selector == "poll" else f"poll({selector})"
    assert f"strategy={expected} " in line and "served=2 active=1" in line, line


@pytest.mark.parametrize("selector", ["epoll", "select"])
@pytest.mark.parametrize("conformance", PLAIN_CONFORMANCE, ids=lambda test: test.__name__.removeprefix("test_"))
def test_conformance_under_each_selector(serve, selector, conformance):
    def serve_with_selector(server: str, *args: str, **kwargs: object):
        return serve(server, "--selector", selector, *args, **kwargs)

    conformance(serve_with_selector, "poll")


def test_fifty_concurrent_echo_clients_each_moving_one_mib(serve):
    server = serve("echo", strategy="poll")
    payloads = [os.urandom(1 << 20) for _ in range(50)]
    start = threading.Barrier(50, timeout=30)

    def client(payload: bytes) -> bool:
        with server.connect(timeout=60) as sock:
            start.wait()
            return echo_exchange(sock, payload) == payload

    with ThreadPoolExecutor(50) as pool:
        results = list(pool.map(client, payloads, timeout=120))
    assert results == [True] * 50
    assert "served=50 active=0" in status_line(server)


def test_max_connections_keeps_the_rest_waiting_then_serves_them(serve):
    server = serve("echo", "--max-connections", "2", strategy="poll")
    first, second = server.connect(), server.connect()
    for sock in (first, second):
        sock.sendall(b"ok")
        assert sock.recv(2) == b"ok"
    waiting = server.connect()
    try:
        waiting.sendall(b"3")
        waiting.settimeout(0.5)
        with pytest.raises(TimeoutError):
            waiting.recv(1)  # still in the backlog: the listener is out of the poll set
        assert "active=2" in status_line(server)
        first.close()
        waiting.settimeout(10)
        assert waiting.recv(1) == b"3"
    finally:
        for sock in (first, second, waiting):
            sock.close()


def test_out_of_descriptors_backs_off_without_spinning_and_recovers(serve):
    assert_descriptor_backoff(serve("echo", strategy="poll"), room=2)


def test_graceful_timeout_aborts_connections_still_open(serve):
    server = serve("echo", "--graceful-timeout", "0.5", strategy="poll")
    with server.connect() as sock:
        sock.sendall(b"x")
        assert sock.recv(1) == b"x"
        started = time.monotonic()
        server.send_signal(signal.SIGTERM)
        assert server.proc.wait(10) == 0
        assert time.monotonic() - started >= 0.4
        try:
            assert sock.recv(1) == b""
        except ConnectionResetError:
            pass
    assert re.search(r"graceful timeout passed: ending 1 connection\(s\) still in progress", server.log()), server.log()


def test_idle_timeout_closes_a_silent_connection(serve):
    server = serve("echo", "--timeout", "0.3", strategy="poll")
    with server.connect() as sock:
        sock.settimeout(10)
        assert sock.recv(1) == b""
    with server.connect() as sock:  # and the server still serves
        assert echo_exchange(sock, b"alive") == b"alive"


def test_500_connections_half_reset_mid_stream_leave_no_descriptors(serve):
    server = serve("echo", strategy="poll")
    with server.connect() as sock:
        assert echo_exchange(sock, b"warm") == b"warm"
    baseline = fd_count(server.pid)
    payload = os.urandom(200_000)
    for _ in range(10):
        socks = [server.connect() for _index in range(50)]
        for index, sock in enumerate(socks):
            sock.sendall(payload[:100_000])
            if index % 2:
                sock.recv(1000)  # mid-stream: part of the echo read, more queued on the server
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")  # close = RST
                sock.close()
        for sock in socks[::2]:
            assert echo_exchange(sock, payload[100_000:]) == payload
            sock.close()
    assert wait_for(lambda: fd_count(server.pid) <= baseline, timeout=10), (fd_count(server.pid), baseline)
    assert "served=501 active=0" in status_line(server)
    assert "Traceback" not in server.log()


def test_sigusr1_storm_during_four_echo_transfers(serve):
    server = serve("echo", strategy="poll")
    payloads = [os.urandom(1 << 20) for _ in range(4)]
    stop = threading.Event()
    sent = 0

    def storm() -> None:
        nonlocal sent
        deadline = time.monotonic() + 2.0
        while not stop.is_set() and time.monotonic() < deadline:
            os.kill(server.pid, signal.SIGUSR1)
            sent += 1
            time.sleep(0.001)

    def transfer(payload: bytes) -> bool:
        with server.connect(timeout=30) as sock:
            return echo_exchange(sock, payload, chunk=4096) == payload

    storming = threading.Thread(target=storm)
    storming.start()
    try:
        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(transfer, payloads, timeout=60))
    finally:
        storming.join(10)
    assert results == [True] * 4
    assert server.proc.poll() is None, server.log()
    assert sent > 100 and server.log().count("status:") > 0


def test_select_refuses_a_descriptor_beyond_fd_setsize():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard <= 1100:
        pytest.skip("the descriptor limit does not reach beyond FD_SETSIZE")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1200), hard))
    server_end, client_end = socket.socketpair()
    high = socket.socket(fileno=os.dup2(server_end.fileno(), 1100))
    server_end.close()
    try:
        with EchoServer("127.0.0.1:0", "poll") as server:
            assert start_one(server, high, "peer", check_fd_setsize=True) == 0
            assert high.fileno() == -1
            assert_closed(client_end)
    finally:
        client_end.close()
        high.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def start_one(server, sock: socket.socket, peer: str, *, check_fd_setsize: bool = False) -> int:
    """Hand *sock* to a fresh loop the way PollStrategy does; return how many connections it then serves."""
    run = PollStrategy("select" if check_fd_setsize else "poll").start(server)
    try:
        run.add_accepted(sock, peer)
        return len(run.loop.connections)
    finally:
        run.loop.close()


def assert_closed(sock: socket.socket) -> None:
    sock.settimeout(5)
    assert sock.recv(1) == b""


class PickyEcho(EchoServer):
    """Refuses the peer named "refused"; its protocol factory fails on demand; records errors."""

    fail_factory = False

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.errors: list[BaseException] = []

    def verify_request(self, sock: socket.socket, peer: str) -> bool:
        return peer != "refused"

    def protocol_factory(self):
        if self.fail_factory:
            raise RuntimeError("no protocol today")
        return super().protocol_factory()

    def handle_error(self, exc: BaseException, peer: str) -> None:
        self.errors.append(exc)


@pytest.mark.parametrize("case", ["refused", "factory fails", "served"])
def test_server_hooks_decide_what_the_loop_serves(case):
    server_end, client_end = socket.socketpair()
    with server_end, client_end, PickyEcho("127.0.0.1:0", "poll") as server:
        server.fail_factory = case == "factory fails"
        served = start_one(server, server_end, "refused" if case == "refused" else "peer")
        assert served == (1 if case == "served" else 0)
        assert [type(exc) for exc in server.errors] == ([RuntimeError] if case == "factory fails" else [])
        if case != "served":
            assert_closed(client_end)
