"""The acceptor's batch takes what waits and learns that the backlog is empty without a failed accept;
a connection to a listener the workers wait on exclusively wakes one of them.

A failed non-blocking ``accept`` raises ``BlockingIOError``, which costs
about ten times a zero-timeout poll in Python; a short batch therefore asks
:meth:`Acceptor.waiting` before each accept after the first.  These tests
count the accepts that found nothing, on real listeners.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import threading
import time
import types
from collections.abc import Iterator
from pathlib import Path

import pytest

from framework.accepting import PEEK_LIMIT, Acceptor, wait_in_accept
from framework.address import bind_socket, local_address, parse_address
from framework.strategies.accept_modes import ReusePortAccept, SharedAccept
from framework.strategies.dispatching import AcceptLoop
from framework.strategies.iterative import IterativeStrategy
from framework.strategies.poll import PollStrategy
from framework.strategies.prefork_worker import drain
from framework.strategies.prethreaded import PrethreadedStrategy
from servers.echo import EchoServer
from tests.support import recv_all

DEADLINE = 10.0


class CountingAcceptor(Acceptor):
    """An acceptor that counts its accepts, and the ones that found no connection."""

    def __init__(self, listener: socket.socket, *, shared: bool = False) -> None:
        super().__init__(listener, shared=shared)
        self.calls = 0
        self.empty = 0

    def accept(self) -> tuple[socket.socket, str] | None:
        self.calls += 1
        accepted = super().accept()
        if accepted is None:
            self.empty += 1
        return accepted


@pytest.fixture(params=["tcp", "unix"])
def listener(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[socket.socket]:
    if request.param == "tcp":
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
    else:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(str(tmp_path / "l.sock"))
    with sock:
        sock.listen(128)
        sock.setblocking(False)
        yield sock


def connect(listener: socket.socket, count: int, stack: contextlib.ExitStack) -> None:
    for _ in range(count):
        client = stack.enter_context(socket.socket(listener.family, socket.SOCK_STREAM))
        client.connect(listener.getsockname())


def take(acceptor: CountingAcceptor, count: int, stack: contextlib.ExitStack, limit: int = 64) -> int:
    """Run batches, each after a poll found the listener readable, until *count* are accepted."""
    poller = select.poll()
    poller.register(acceptor.fileno(), select.POLLIN)
    taken = batches = 0
    deadline = time.monotonic() + DEADLINE
    while taken < count and time.monotonic() < deadline:
        if not poller.poll(100):
            continue
        batches += 1
        for sock, _peer in acceptor.accept_batch(lambda: True, limit):
            stack.enter_context(sock)
            taken += 1
    assert taken == count
    return batches


def test_waiting_says_whether_a_connection_waits(listener):
    acceptor = Acceptor(listener)
    assert not acceptor.waiting()
    with contextlib.ExitStack() as stack:
        connect(listener, 1, stack)
        deadline = time.monotonic() + DEADLINE
        while not acceptor.waiting() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert acceptor.waiting()
        accepted = acceptor.accept()
        assert accepted is not None
        accepted[0].close()
        assert not acceptor.waiting()


def test_a_short_batch_ends_without_an_accept_that_finds_nothing(listener):
    acceptor = CountingAcceptor(listener)
    with contextlib.ExitStack() as stack:
        connect(listener, 5, stack)
        take(acceptor, 5, stack)
    assert acceptor.calls == 5 and acceptor.empty == 0


def test_a_long_batch_takes_the_whole_backlog_and_pays_one_empty_accept(listener):
    count = PEEK_LIMIT + 3
    acceptor = CountingAcceptor(listener)
    with contextlib.ExitStack() as stack:
        connect(listener, count, stack)
        batches = take(acceptor, count, stack)
    # Only a batch that got past its peeking accepts may end on an accept that finds none.
    assert acceptor.empty <= batches
    assert acceptor.calls == count + acceptor.empty
    if listener.family == socket.AF_UNIX:  # every connect was in the backlog at once: one batch
        assert batches == 1 and acceptor.empty == 1


def test_a_batch_stops_at_its_limit_and_when_there_is_no_room(listener):
    acceptor = CountingAcceptor(listener)
    with contextlib.ExitStack() as stack:
        connect(listener, 3, stack)
        assert take(acceptor, 3, stack, limit=1) == 3  # one per wakeup: level-triggered poll says "more"
        connect(listener, 1, stack)
        poller = select.poll()
        poller.register(listener.fileno(), select.POLLIN)
        assert poller.poll(int(DEADLINE * 1000))
        assert list(acceptor.accept_batch(lambda: False)) == []
        assert acceptor.waiting()  # left in the backlog for when there is room
    assert acceptor.empty == 0


def test_a_shared_listener_is_peeked_at_before_the_first_accept_too(listener):
    mine, sibling = CountingAcceptor(listener, shared=True), Acceptor(listener)
    with contextlib.ExitStack() as stack:
        connect(listener, 1, stack)
        poller = select.poll()
        poller.register(listener.fileno(), select.POLLIN)
        assert poller.poll(int(DEADLINE * 1000))  # readable: both workers would wake...
        accepted = sibling.accept()  # ...and the other one takes the connection first
        assert accepted is not None
        stack.enter_context(accepted[0])
        assert list(mine.accept_batch(lambda: True)) == []
    assert mine.calls == 0  # the peek said so: no accept raised for nothing


def _in_epoll_wait(thread: threading.Thread) -> bool:
    """True while *thread* sleeps in epoll_wait (the kernel's wait channel: ``do_epoll_wait``, ``ep_poll``)."""
    try:
        with open(f"/proc/self/task/{thread.native_id}/wchan") as file:
            wchan = file.read()
    except OSError:
        return False
    return "epoll" in wchan or "ep_poll" in wchan


def test_one_connection_wakes_one_of_the_loops_waiting_on_an_exclusive_listener(listener):
    """EPOLLEXCLUSIVE: of two waits on a listener the workers share, one connection ends one."""
    pipes = [os.pipe() for _ in range(2)]
    acceptor = Acceptor(listener, exclusive=True)
    loops = [AcceptLoop(acceptor, read_end, on_wake=lambda: None) for read_end, _ in pipes]
    results: dict[int, tuple[bool, bool]] = {}
    ended = [threading.Event(), threading.Event()]

    def wait(index: int) -> None:
        ready = loops[index].wait(accepting=True, timeout=DEADLINE)
        results[index] = (ready, loops[index].woke)
        ended[index].set()

    threads = [threading.Thread(target=wait, args=(index,)) for index in range(2)]
    try:
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + DEADLINE
        while not all(_in_epoll_wait(thread) for thread in threads) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert all(_in_epoll_wait(thread) for thread in threads), "both loops must be waiting"
        with contextlib.ExitStack() as stack:
            connect(listener, 1, stack)
            deadline = time.monotonic() + DEADLINE
            while not any(event.is_set() for event in ended) and time.monotonic() < deadline:
                time.sleep(0.01)
            first = 0 if ended[0].is_set() else 1
            assert results[first] == (True, False)
            accepted = acceptor.accept()
            assert accepted is not None
            stack.enter_context(accepted[0])
            # With poll both would have returned at once; the other one is still waiting.
            assert not ended[1 - first].wait(0.5)
            os.write(pipes[1 - first][1], b"x")
            assert ended[1 - first].wait(DEADLINE)
            assert results[1 - first] == (False, True)
    finally:
        for _, write_end in pipes:
            os.write(write_end, b"x")
        for thread in threads:
            thread.join(DEADLINE)
        for loop in loops:
            loop.close()
        for read_end, write_end in pipes:
            os.close(read_end)
            os.close(write_end)


def test_a_worker_leaving_an_exclusive_wait_serves_one_waiting_connection_and_no_more():
    """The hand-off an exclusive wait needs: drain(most=1) takes the connection that may be this worker's."""
    with EchoServer("127.0.0.1:0", "iterative") as server:
        acceptor = Acceptor(server.listener, exclusive=True)
        with contextlib.ExitStack() as stack:
            clients = []
            for text in (b"first", b"second"):
                client = stack.enter_context(socket.create_connection(server.listener.getsockname(), timeout=DEADLINE))
                client.sendall(text)
                client.shutdown(socket.SHUT_WR)  # the echo ends at this end-of-file
                clients.append(client)
            deadline = time.monotonic() + DEADLINE
            while not acceptor.waiting() and time.monotonic() < deadline:
                time.sleep(0.01)
            drain(server, acceptor, most=1)
            assert recv_all(clients[0]) == b"first"
            assert acceptor.waiting()  # the other one is left for the workers that stay
            drain(server, acceptor)
            assert recv_all(clients[1]) == b"second"
            assert not acceptor.waiting()


def test_a_listener_made_to_wait_in_accept_bounds_each_wait_and_is_undone(listener):
    # A pre-forked worker's thread waits in accept itself; its own stop is seen when the wait
    # ends by itself (the receive timeout), and the shared listener's stop ends it with EINVAL.
    wait_in_accept(listener, 0.05)
    acceptor = Acceptor(listener, waits_in_accept=True)
    assert listener.getblocking() and acceptor.shared
    assert acceptor.accept() is None and not acceptor.stopped  # the timeout: nothing, not stopped
    with contextlib.ExitStack() as stack:
        connect(listener, 1, stack)
        accepted = acceptor.accept()
        assert accepted is not None
        stack.enter_context(accepted[0])
    ended: list[object] = []
    waiter = threading.Thread(target=lambda: ended.append(Acceptor(listener, waits_in_accept=True).accept()))
    wait_in_accept(listener, DEADLINE)  # a wait only the shutdown ends before the deadline
    waiter.start()
    time.sleep(0.2)  # let it block (if it has not, its accept finds the listener shut down: the same outcome)
    listener.shutdown(socket.SHUT_RD)  # another process's stop (a pre-forked master's)
    waiter.join(DEADLINE)
    assert ended == [None] and not waiter.is_alive()
    wait_in_accept(listener, None)
    assert not listener.getblocking()
    assert listener.getsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, 16) == bytes(16)


@pytest.mark.parametrize("inner, waits", [
    (IterativeStrategy(), True), (PrethreadedStrategy(accept="shared"), True),
    (PrethreadedStrategy(accept="lock"), False), (PollStrategy(), False),
])
def test_the_shared_mode_makes_the_listener_wait_in_accept_only_for_workers_that_can_and_undoes_it(
        listener, inner, waits):
    # A program may serve the same listener again after a pre-forked serve: the master's close()
    # must leave it as it found it, non-blocking and without a receive timeout.
    mode = SharedAccept()
    mode.prepare(types.SimpleNamespace(listener=listener), inner)  # type: ignore[arg-type]
    no_timeout = bytes(16)
    assert listener.getblocking() is waits
    assert (listener.getsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, 16) != no_timeout) is waits
    assert mode.worker_acceptor(types.SimpleNamespace(listener=listener), 0, listener,  # type: ignore[arg-type]
                                lambda: None).waits_in_accept is waits
    mode.close()
    assert not listener.getblocking()
    assert listener.getsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, 16) == no_timeout
    mode.close()  # a second close is harmless, and so is one after the listener was closed
    mode.prepare(types.SimpleNamespace(listener=listener), inner)  # type: ignore[arg-type]
    listener.close()
    mode.close()


@pytest.mark.parametrize("inner, waits", [(IterativeStrategy(), True), (PollStrategy(), False)])
def test_the_reuseport_mode_makes_every_lane_wait_in_accept_for_workers_that_can_and_undoes_it(inner, waits):
    stops: list[object] = []
    with bind_socket(parse_address("127.0.0.1:0")) as listener:
        host = types.SimpleNamespace(listener=listener, address=local_address(listener), backlog=16,
                                     lifecycle=types.SimpleNamespace(call_when_stopping=stops.append))
        mode = ReusePortAccept()
        mode.prepare(host, inner)  # type: ignore[arg-type]
        mode.before_spawn(host, 1)  # type: ignore[arg-type]
        acceptors = [mode.worker_acceptor(host, lane, listener, lambda: None) for lane in (0, 1)]  # type: ignore[arg-type]
        lane_1 = acceptors[1].listener
        assert acceptors[0].listener is listener and lane_1 is not listener
        for acceptor in acceptors:
            assert acceptor.waits_in_accept is waits and acceptor.listener.getblocking() is waits
            timeout = acceptor.listener.getsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, 16)
            assert (timeout != bytes(16)) is waits
        mode.close()
        assert lane_1.fileno() == -1  # every lane but the server's own is closed
        assert not listener.getblocking()
        assert listener.getsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, 16) == bytes(16)
        assert len(stops) == 1  # the master's stop shuts every lane down
