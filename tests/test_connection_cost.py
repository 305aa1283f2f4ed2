"""What a short connection costs: work that is not the model stays off its path (issue 23).

Each test pins one cut of the per-connection path down by what it changed,
so that it fails if the work comes back: a default hook called anyway, a
timer pushed for a connection that ended at once, a thread started through
the enum wrappers of :mod:`signal`, a ``recv`` that raises to learn that
nothing is left to drain.  (Figures: ``docs/lab.md``, "What a short
connection costs".)
"""

from __future__ import annotations

import array
import os
import resource
import signal
import socket
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from types import FrameType
from typing import Any

import pytest

from framework import Protocol
from framework.drivers import common
from framework.drivers.blocking import BlockingConnection
from framework.drivers.common import has_unread_input
from framework.drivers.nonblocking import EventLoop
from framework.lifecycle import Lifecycle
from framework.signals import SERVER_SIGNALS, raw_sigmask, start_thread_without_signals
from servers.nbytes import NBytesServer
from tests.support import child_env, open_fds_unchanged, recv_all
from tests.test_blocking_driver import drive

HOOKS = ("verify_request", "configure_connection", "_apply_socket_options")


def calls_during(action: Any, names: tuple[str, ...]) -> dict[str, int]:
    """How often functions named *names* are called (as Python frames) while *action()* runs."""
    counts = dict.fromkeys(names, 0)

    def profile(frame: FrameType, event: str, arg: object) -> None:
        if event == "call" and frame.f_code.co_name in counts:
            counts[frame.f_code.co_name] += 1

    sys.setprofile(profile)
    try:
        action()
    finally:
        sys.setprofile(None)
    return counts


@pytest.fixture
def lifecycle() -> Iterator[Lifecycle]:
    life = Lifecycle(graceful_timeout=5)
    yield life
    life.close()


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    with open_fds_unchanged():
        server_side, client = socket.socketpair()
        yield server_side, client
        server_side.close()
        client.close()


class Verifying(NBytesServer):
    def verify_request(self, sock: socket.socket, peer: str) -> bool:
        return True


class Configuring(NBytesServer):
    def configure_connection(self, sock: socket.socket) -> None:
        pass


@pytest.mark.parametrize(("server_class", "options", "called"), [
    (NBytesServer, {}, set()),
    (Verifying, {}, {"verify_request"}),
    (Configuring, {}, {"configure_connection"}),
    (NBytesServer, {"nodelay": True}, {"_apply_socket_options"}),
    (NBytesServer, {"keepalive": (30, 5, 3)}, {"_apply_socket_options"}),
])
def test_admission_calls_only_the_hooks_a_class_overrides_and_options_only_when_set(pair, server_class, options,
                                                                                    called):
    # The one admission rule of every strategy: a default hook does nothing, so it is not called at all.
    server = server_class("127.0.0.1:0", bind=False, handle_signals=False, **options)
    try:
        protocols = []
        counts = calls_during(lambda: protocols.append(server.admit(pair[0], "peer")), HOOKS)
    finally:
        server.server_close()
    assert protocols[0] is not None
    assert {name for name, count in counts.items() if count} == called
    assert all(count <= 1 for count in counts.values())


def test_a_refusing_verify_request_still_closes_the_connection(pair):
    class Refusing(NBytesServer):
        def verify_request(self, sock: socket.socket, peer: str) -> bool:
            return False

    server = Refusing("127.0.0.1:0", bind=False, handle_signals=False)
    try:
        assert server.admit(pair[0], "peer") is None
    finally:
        server.server_close()
    assert pair[0].fileno() == -1


class AnswerAndClose(Protocol):
    def data_received(self, data: bytes) -> None:
        self.transport.write(data)
        self.transport.close()


class Answer(Protocol):
    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


@pytest.mark.parametrize(("protocol_class", "timers"), [(AnswerAndClose, 0), (Answer, 1)])
def test_the_idle_timer_is_armed_only_for_a_connection_that_outlives_its_first_turn(pair, protocol_class, timers):
    server_side, client = pair
    loop = EventLoop(idle_timeout=60.0)
    try:
        client.sendall(b"ping")  # the request comes with the connection, as a short client's does
        connection = loop.add_connection(server_side, "peer", protocol_class())
        assert client.recv(4) == b"ping"
        assert len(loop._timers) == timers
        assert connection.is_closing() == (timers == 0)
    finally:
        loop.close()
    assert loop.served == 1


def test_an_idle_connection_still_times_out(pair):
    server_side, client = pair
    loop = EventLoop(idle_timeout=0.05)
    try:
        connection = loop.add_connection(server_side, "peer", Answer())
        for _ in range(200):  # bounded: each turn waits for the next timer at most
            if connection.is_closing():
                break
            loop.run_once(1.0)
        assert connection.is_closing()
        client.settimeout(10)
        assert recv_all(client) == b""
    finally:
        loop.close()


def test_a_thread_is_started_with_the_server_signals_blocked_without_the_enum_wrappers(monkeypatch):
    # signal.pthread_sigmask turns every number into a Signals member and back (some forty Python
    # calls); the C function under it takes and gives plain numbers.
    def wrapper_used(*args: object) -> None:
        raise AssertionError("signal.pthread_sigmask's wrapper on the per-thread path")

    monkeypatch.setattr(signal, "pthread_sigmask", wrapper_used)
    seen: list[frozenset[int]] = []
    thread = threading.Thread(target=lambda: seen.append(frozenset(raw_sigmask(signal.SIG_BLOCK, ()))))
    before = frozenset(raw_sigmask(signal.SIG_BLOCK, ()))
    start_thread_without_signals(thread.start)
    thread.join(10)
    assert frozenset(raw_sigmask(signal.SIG_BLOCK, ())) == before  # the caller's mask is back
    assert {int(signum) for signum in SERVER_SIGNALS} <= seen[0]


def test_has_unread_input_tells_whether_a_close_would_reset(pair):
    server_side, client = pair
    assert not has_unread_input(server_side.fileno())
    client.sendall(b"left unread")
    assert has_unread_input(server_side.fileno())
    assert server_side.recv(100) == b"left unread"
    assert not has_unread_input(server_side.fileno())
    client.close()  # the end of file, unread, is reported too: the caller's recv reads it
    assert has_unread_input(server_side.fileno())
    assert server_side.recv(100) == b""


def test_has_unread_input_answers_for_a_descriptor_above_select_s_limit(pair):
    # A server holding thousands of connections has descriptors past FD_SETSIZE (1024), which
    # select() refuses: the answer must still be the kernel's, not "cannot tell".
    server_side, client = pair
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft <= 1500:
        if hard != resource.RLIM_INFINITY and hard <= 1500:
            pytest.skip(f"RLIMIT_NOFILE's hard limit {hard} leaves no descriptor at 1500")
        resource.setrlimit(resource.RLIMIT_NOFILE, (1501, hard))
    try:
        high = os.dup2(server_side.fileno(), 1500)
        try:
            assert not has_unread_input(high)
            client.sendall(b"x")
            assert has_unread_input(high)
        finally:
            os.close(high)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_has_unread_input_says_yes_when_it_cannot_tell():
    sock = socket.socket()
    fd = sock.fileno()
    sock.close()
    assert has_unread_input(fd)  # the caller's recv will say what is wrong


def test_short_connections_are_served_whole_under_a_real_server(strategy, serve):
    # End to end: every connection gets its bytes and a FIN (no reset) after the cuts above.
    server = serve("nbytes", strategy=strategy)
    for count in (0, 100, 4000):
        with server.connect() as sock:
            sock.sendall(b"%d\n" % count)
            assert len(recv_all(sock)) == count


class AnswerWithLimits(Protocol):
    """Answers *size* bytes, noting the kernel's receive time limit on the socket meanwhile."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.rcvtimeo: list[bytes] = []

    def data_received(self, data: bytes) -> None:
        sock = self.transport.sock  # type: ignore[attr-defined]  # the driver's own (the "socket" extra info moves it to poll)
        self.rcvtimeo.append(sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, 16))
        self.transport.write(b"x" * self.size)
        self.transport.close()


def test_a_thread_sets_no_time_limit_on_a_connection_that_never_waits(lifecycle):
    # The request is in when the thread starts and the answer fits in the socket buffer:
    # the kernel's time limits (two setsockopt) would never be used.
    protocol = AnswerWithLimits(100)
    client, thread, result = drive(protocol, lifecycle, idle_timeout=30, request=b"ping")
    with client:
        assert recv_all(client) == b"x" * 100
    thread.join(10)
    assert result["ended_by"] is None
    assert protocol.rcvtimeo == [bytes(16)]


def test_a_thread_waiting_for_its_request_still_times_out(lifecycle):
    client, thread, result = drive(AnswerWithLimits(100), lifecycle, idle_timeout=0.3)
    with client:
        assert recv_all(client) == b""  # silent: the limit, armed before the wait, ran out
    thread.join(10)
    assert isinstance(result["ended_by"], TimeoutError)


def test_a_thread_writing_to_a_peer_that_never_reads_still_times_out(lifecycle):
    client, thread, result = drive(AnswerWithLimits(8 << 20), lifecycle, idle_timeout=0.3, request=b"ping")
    with client:
        thread.join(10)  # the send limit, armed when the first send could not take it all, ran out
        assert not thread.is_alive()
    assert isinstance(result["ended_by"], TimeoutError)


#: Run with ``-S`` (no site-packages, whose ``.pth`` files may import anything): what a
#: forking server's process has loaded once it is ready to fork (rehearsed, the direct fork found).
LOADED = textwrap.dedent("""
    import sys
    from framework.deferred import defer_unused, loaded
    defer_unused()  # as the forkthread command does first
    import framework.cli, framework.strategies.forking
    from framework.processes import DirectFork
    from framework.strategies.base import ChildRole
    argv = ["serve", "nbytes", "--strategy", "forking"]
    framework.cli.build_parser(argv).parse_args(argv)  # the command line, parsed as the command does
    from servers.nbytes import NBytesServer
    server = NBytesServer("127.0.0.1:0", handle_signals=False)
    server.rehearse(ChildRole())
    assert DirectFork.find() is not None
    server.server_close()
    names = ("termios", "fcntl", "_struct", "ctypes", "_ctypes", "shutil", "zlib", "inspect", "ast", "dis",
             "traceback")
    print(sorted(name for name in names if loaded(name)))
""")


def test_a_forking_server_loads_no_library_it_can_do_without_nor_what_it_defers():
    # termios, fcntl, _struct: shared libraries of five mappings each, which every fork copies
    # and every exit tears down (and shutil brings zlib, bz2 and lzma: argparse's formatter
    # imports it unless told its width); the ctypes package: 160 kB of objects, copied the same way
    # (the direct fork takes _ctypes alone, through framework.libc).  inspect, with ast and dis:
    # a megabyte.  (On 3.12 and later dataclasses itself reads inspect as each dataclass is
    # made.)  traceback is kept: failures use it.
    done = subprocess.run([sys.executable, "-S", "-c", LOADED], capture_output=True, text=True, timeout=60,
                          env=child_env(), check=False)
    assert done.returncode == 0, done.stderr
    deferred = [] if sys.version_info < (3, 12) else ["ast", "dis", "inspect"]
    assert done.stdout.strip() == str(sorted(["_ctypes", "traceback", *deferred]))


def test_the_ioctl_numbers_are_this_machines():
    import termios

    assert (common.FIONREAD, common.TIOCOUTQ) == (termios.FIONREAD, termios.TIOCOUTQ)


def test_the_socket_queues_are_read_with_them(pair):
    server_side, client = pair
    assert not common.bytes_queued(server_side) and not has_unread_input(server_side.fileno())
    client.sendall(b"unread")
    assert common.bytes_queued(server_side) and has_unread_input(server_side.fileno())


def test_tcp_idle_for_reads_the_kernels_clock():
    with socket.create_server(("127.0.0.1", 0)) as listener, \
            socket.create_connection(listener.getsockname()) as client:
        accepted, _ = listener.accept()
        with accepted:
            client.sendall(b"x")
            assert accepted.recv(1) == b"x"
            assert 0.0 <= common.tcp_idle_for(accepted) < 10.0


def test_the_idle_limit_is_armed_as_a_timeval(pair, lifecycle):
    connection = BlockingConnection(pair[0], "peer", lifecycle=lifecycle, idle_timeout=2.5)
    connection._arm_limits()
    for option in (socket.SO_RCVTIMEO, socket.SO_SNDTIMEO):
        assert list(array.array("l", pair[0].getsockopt(socket.SOL_SOCKET, option, 16))) == [2, 500_000]


class _Stopping(Protocol):
    def server_stopping(self) -> None:
        pass


class _Keeping(Protocol):
    def between_messages(self) -> bool:
        return False


class _KeepingMixin:
    def between_messages(self) -> bool:
        return False


@pytest.mark.parametrize(("protocol_class", "leaves_it"), [
    (Protocol, True),
    (type("Plain", (Protocol,), {}), True),
    (_Stopping, False),
    (_Keeping, False),
    (type("Inherits", (_Stopping,), {}), False),
    (type("Mixed", (_KeepingMixin, Protocol), {}), False),
])
def test_whether_a_stop_needs_the_protocol_is_worked_out_once_per_class(protocol_class, leaves_it):
    # The blocking driver reads it for every connection (may it wait in recv?), a lookup cached nowhere else.
    assert protocol_class.leaves_stop_to_driver is leaves_it
