"""The blocking driver over real socket pairs: sendfile, deadlines, lingering close, faults."""

from __future__ import annotations

import os
import platform
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from framework.drivers.blocking import BlockingConnection, HandlerError
from framework.drivers.watch import ConnectionWatch
from framework.lifecycle import Lifecycle
from framework.protocol import Protocol, Transport
from tests.support import recv_all


@pytest.fixture
def lifecycle():
    life = Lifecycle(graceful_timeout=5)
    yield life
    life.close()


def drive(protocol: Protocol, lifecycle: Lifecycle, *, idle_timeout=None, watch_wakeup=False, watch=None,
          request: bytes = b""):
    """Run *protocol* on one end of a socket pair in a thread; return (client socket, thread, result).

    *request* is sent before the thread starts: in when the driver first reads, as a short client's is.
    """
    server_end, client_end = socket.socketpair()
    server_end.setblocking(False)
    client_end.sendall(request)
    result: dict[str, object] = {}

    def run() -> None:
        connection = BlockingConnection(server_end, "pair", lifecycle=lifecycle, idle_timeout=idle_timeout,
                                        watch_wakeup=watch_wakeup, watch=watch)
        try:
            result["ended_by"] = connection.run(protocol)
        except HandlerError as fault:
            result["fault"] = fault.original

    thread = threading.Thread(target=run)
    thread.start()
    return client_end, thread, result


class FileSender(Protocol):
    def __init__(self, path, offset=0, count=None, then_close=True):
        self.path, self.offset, self.count, self.then_close = path, offset, count, then_close
        self.lost = []

    def connection_made(self, transport: Transport) -> None:
        super().connection_made(transport)
        with open(self.path, "rb") as file:  # closed right after the call: the driver must cope
            transport.write(b"head:")
            transport.sendfile(file, self.offset, self.count)
        if self.then_close:
            transport.close()

    def connection_lost(self, exc):
        self.lost.append(exc)


def test_sendfile_large_file_to_a_slow_reader_is_byte_exact(tmp_path, lifecycle):
    data = os.urandom(3 << 20)
    path = tmp_path / "big"
    path.write_bytes(data)
    protocol = FileSender(path, offset=1000, count=len(data) - 2000)
    client, thread, result = drive(protocol, lifecycle)
    with client:
        got = recv_all(client)
    thread.join(10)
    assert got == b"head:" + data[1000:-1000]
    assert result["ended_by"] is None and protocol.lost == [None]


def test_sendfile_whole_file_when_count_is_none(tmp_path, lifecycle):
    path = tmp_path / "small"
    path.write_bytes(b"0123456789")
    client, thread, _ = drive(FileSender(path, offset=4), lifecycle)
    with client:
        assert recv_all(client) == b"head:456789"
    thread.join(10)


def test_sendfile_of_a_file_shorter_than_promised_aborts(tmp_path, lifecycle):
    path = tmp_path / "short"
    path.write_bytes(b"abc")
    protocol = FileSender(path, count=100)
    client, thread, result = drive(protocol, lifecycle)
    with client:
        recv_all(client)
    thread.join(10)
    assert isinstance(result["ended_by"], OSError)


class DeadlineProtocol(Protocol):
    def connection_made(self, transport: Transport) -> None:
        super().connection_made(transport)
        transport.set_deadline(0.2)

    def deadline_expired(self) -> None:
        self.transport.write(b"too slow\n")
        self.transport.close(linger=1.0)


def test_protocol_deadline_fires_and_lingering_close_delivers_the_answer(lifecycle):
    client, thread, result = drive(DeadlineProtocol(), lifecycle)
    with client:
        client.sendall(b"unread input that must not turn into a reset")
        assert recv_all(client) == b"too slow\n"
    thread.join(10)
    assert result["ended_by"] is None


def test_idle_timeout_ends_with_timeout_error(lifecycle):
    client, thread, result = drive(Protocol(), lifecycle, idle_timeout=0.2)
    with client:
        assert recv_all(client) == b""
    thread.join(10)
    assert isinstance(result["ended_by"], TimeoutError)


class Raising(Protocol):
    def __init__(self):
        self.lost = []

    def data_received(self, data: bytes) -> None:
        raise ValueError("protocol bug")

    def connection_lost(self, exc):
        self.lost.append(exc)


def test_protocol_exception_is_reported_and_connection_lost_called(lifecycle):
    protocol = Raising()
    client, thread, result = drive(protocol, lifecycle)
    with client:
        client.sendall(b"x")
        recv_all(client)
    thread.join(10)
    assert isinstance(result["fault"], ValueError)
    assert isinstance(protocol.lost[0], ValueError)


class Aborting(Protocol):
    def data_received(self, data: bytes) -> None:
        self.transport.write(b"never")  # queued writes are dropped on abort? here writes are synchronous
        self.transport.abort()
        self.transport.write(b"dropped after abort")


def test_abort_ends_at_once_and_later_writes_are_dropped(lifecycle):
    client, thread, result = drive(Aborting(), lifecycle)
    with client:
        client.sendall(b"go")
        assert recv_all(client) == b"never"
    thread.join(10)
    assert isinstance(result["ended_by"], ConnectionAbortedError)


class KeepAfterEof(Protocol):
    def eof_received(self):
        self.transport.set_deadline(0.1)
        return True

    def deadline_expired(self) -> None:
        self.transport.write(b"late answer")
        self.transport.close()


def test_protocol_may_keep_the_connection_after_eof(lifecycle):
    client, thread, _ = drive(KeepAfterEof(), lifecycle)
    with client:
        client.shutdown(socket.SHUT_WR)
        assert recv_all(client) == b"late answer"
    thread.join(10)


def test_peer_reset_while_writing_ends_quietly(lifecycle):
    class Flood(Protocol):
        def data_received(self, data: bytes) -> None:
            for _ in range(200):
                self.transport.write(b"x" * 65536)

    client, thread, result = drive(Flood(), lifecycle)
    client.sendall(b"go")
    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
    client.close()
    thread.join(10)
    assert isinstance(result["ended_by"], ConnectionError)


def test_graceful_deadline_in_the_main_thread_driver(lifecycle):
    lifecycle.graceful_timeout = 0.2
    client, thread, result = drive(Protocol(), lifecycle, watch_wakeup=True)
    with client:
        lifecycle.request_stop()
        assert recv_all(client) == b""
    thread.join(10)
    assert isinstance(result["ended_by"], TimeoutError)


class StopAware(Protocol):
    def __init__(self):
        self.told = 0

    def server_stopping(self) -> None:
        self.told += 1
        self.transport.write(b"bye\n")
        self.transport.close()


@pytest.mark.parametrize("watch_wakeup", [False, True], ids=["worker-thread", "main-thread"])
def test_graceful_stop_is_told_to_an_idle_protocol(lifecycle, watch_wakeup):
    protocol = StopAware()
    client, thread, result = drive(protocol, lifecycle, watch_wakeup=watch_wakeup)
    with client:
        client.sendall(b"x")  # the connection is up and idle afterwards
        lifecycle.request_stop()
        assert recv_all(client) == b"bye\n"
    thread.join(10)
    assert not thread.is_alive()
    assert protocol.told == 1 and result["ended_by"] is None


#: System call numbers (``/proc/.../syscall``) of the two ways to wait, per machine.
WAIT_CALLS = {"x86_64": {45: "recv", 7: "poll"}, "aarch64": {207: "recv", 73: "poll"}}


def waits_in(thread: threading.Thread, timeout: float = 10.0) -> str:
    """The system call *thread* is blocked in ("recv" or "poll"), once it blocks in one of them."""
    calls = WAIT_CALLS.get(platform.machine())
    if calls is None:
        pytest.skip(f"system call numbers of {platform.machine()} not listed")
    give_up = time.monotonic() + timeout
    seen = "nothing"
    while time.monotonic() < give_up:
        seen = Path(f"/proc/self/task/{thread.native_id}/syscall").read_text().split()[0]
        if seen.isdigit() and int(seen) in calls:
            return calls[int(seen)]
        time.sleep(0.01)
    raise AssertionError(f"thread not waiting in recv or poll within {timeout}s (last: {seen})")


class Echo(Protocol):
    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


class EchoThenDeadline(Echo):
    """Echoes; the first byte starts a protocol deadline, which answers "late" and closes."""

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self.transport.set_deadline(0.3)

    def deadline_expired(self) -> None:
        self.transport.write(b"late")
        self.transport.close()


def test_a_worker_thread_waits_in_recv_for_a_protocol_only_the_peer_can_wake(lifecycle):
    client, thread, result = drive(Echo(), lifecycle, idle_timeout=30)
    with client:
        for _ in range(3):
            client.sendall(b"ping")
            assert client.recv(4) == b"ping"
            assert waits_in(thread) == "recv"
        client.shutdown(socket.SHUT_WR)
        assert recv_all(client) == b""
    thread.join(10)
    assert result["ended_by"] is None


def test_the_idle_timeout_ends_a_wait_in_recv(lifecycle):
    client, thread, result = drive(Echo(), lifecycle, idle_timeout=0.3)
    with client:
        client.sendall(b"ping")
        assert client.recv(4) == b"ping"
        assert recv_all(client) == b""  # the kernel's SO_RCVTIMEO ran out: the server closed
    thread.join(10)
    assert isinstance(result["ended_by"], TimeoutError)


def test_a_protocol_that_wants_stop_notices_waits_in_poll(lifecycle):
    protocol = StopAware()
    client, thread, result = drive(protocol, lifecycle)
    with client:
        client.sendall(b"x")
        assert waits_in(thread) == "poll"
        lifecycle.request_stop()
        assert recv_all(client) == b"bye\n"
    thread.join(10)
    assert protocol.told == 1 and result["ended_by"] is None


def test_a_protocol_deadline_moves_the_connection_to_poll_and_fires(lifecycle):
    client, thread, result = drive(EchoThenDeadline(), lifecycle, idle_timeout=30)
    with client:
        assert waits_in(thread) == "recv"
        client.sendall(b"ping")
        assert client.recv(4) == b"ping"
        assert waits_in(thread) == "poll"
        assert recv_all(client) == b"late"
    thread.join(10)
    assert result["ended_by"] is None


def test_a_socket_handed_to_the_protocol_moves_the_connection_to_poll(lifecycle):
    class TakesSocket(Echo):
        def connection_made(self, transport: Transport) -> None:
            super().connection_made(transport)
            self.shared = transport.get_extra_info("socket").dup()
            self.shared.settimeout(5)  # shares the open file: the descriptor is non-blocking now

        def connection_lost(self, exc: BaseException | None) -> None:
            self.shared.close()

    client, thread, result = drive(TakesSocket(), lifecycle, idle_timeout=30)
    with client:
        client.sendall(b"ping")
        assert client.recv(4) == b"ping"
        assert waits_in(thread) == "poll"
        client.sendall(b"pong")  # still served: the non-blocking descriptor is not taken for a timeout
        assert client.recv(4) == b"pong"
    thread.join(10)
    assert result["ended_by"] is None


def test_the_main_thread_moves_to_recv_once_a_connection_stays(lifecycle):
    """Two requests waiting in poll, then in recv, with the watch running signal actions meanwhile."""
    watch = ConnectionWatch(lifecycle)
    client, thread, result = drive(Echo(), lifecycle, idle_timeout=30, watch_wakeup=True, watch=watch)
    try:
        with client:
            seen = []
            for _ in range(4):
                client.sendall(b"ping")
                assert client.recv(4) == b"ping"
                seen.append(waits_in(thread))
            assert seen == ["poll", "recv", "recv", "recv"]
            client.shutdown(socket.SHUT_WR)
            assert recv_all(client) == b""
        thread.join(10)
        assert result["ended_by"] is None
    finally:
        watch.close()


def test_an_ended_connection_and_its_protocol_are_freed_without_the_collector(lifecycle):
    # As in the event loop's test: no cycle left between the connection and its protocol.
    import gc
    import weakref

    class AnswerOnce(Protocol):
        def data_received(self, data: bytes) -> None:
            self.transport.write(b"bye")
            self.transport.close()

    server_end, client_end = socket.socketpair()
    server_end.setblocking(False)
    client_end.sendall(b"hi")
    gc.collect()
    gc.disable()
    try:
        with client_end:
            connection = BlockingConnection(server_end, "pair", lifecycle=lifecycle)
            protocol = AnswerOnce()
            assert connection.run(protocol) is None
            assert recv_all(client_end) == b"bye"
        refs = weakref.ref(connection), weakref.ref(protocol)
        del connection, protocol
        server_end.close()
        assert [ref() for ref in refs] == [None, None], "left for the garbage collector"
    finally:
        gc.enable()


class FileMaker(Protocol):
    """Makes a file of its connection's socket, as a handler-style protocol might; answers; closes the file last."""

    def __init__(self, hand_out: bool) -> None:
        self.hand_out = hand_out
        self.socket: socket.socket | None = None
        self.file: Any = None
        self.open_at_the_end: bool | None = None

    def connection_made(self, transport: Transport) -> None:
        super().connection_made(transport)
        self.socket = transport.get_extra_info("socket") if self.hand_out else transport.sock  # type: ignore[attr-defined]
        if self.hand_out:
            self.file = self.socket.makefile("rb")

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)
        self.transport.close()

    def connection_lost(self, exc: BaseException | None) -> None:
        if self.file is not None:
            fd = self.file.fileno()
            try:
                os.fstat(fd)
                self.open_at_the_end = True
            except OSError:
                self.open_at_the_end = False
            self.file.close()


@pytest.mark.parametrize("hand_out", [True, False])
def test_a_socket_handed_to_the_protocol_stays_open_while_a_file_of_it_does(lifecycle, hand_out):
    # The driver closes with socket.close() (which waits for the files made of it) once the
    # protocol was given the socket; otherwise with the C close, the socket being its own.
    protocol = FileMaker(hand_out)
    client, thread, result = drive(protocol, lifecycle, request=b"ping")
    with client:
        assert recv_all(client) == b"ping"  # the end of input: closed for real once the file was
    thread.join(10)
    assert result["ended_by"] is None
    assert protocol.open_at_the_end is (True if hand_out else None)
    assert protocol.socket is not None and protocol.socket.fileno() == -1


class ClosingTells(socket.socket):
    """A socket whose class closes it its own way (as a connection a pre-forked master passed does)."""

    closes: list[int] = []

    def close(self) -> None:
        ClosingTells.closes.append(self.fileno())
        super().close()


def test_a_socket_of_a_class_with_its_own_close_is_closed_by_it(lifecycle):
    ClosingTells.closes.clear()
    plain_end, client = socket.socketpair()
    server_end = ClosingTells(fileno=plain_end.detach())
    client.sendall(b"ping")
    with client:
        connection = BlockingConnection(server_end, "pair", lifecycle=lifecycle)
        assert connection.run(FileMaker(hand_out=False)) is None
        assert recv_all(client) == b"ping"
    assert len(ClosingTells.closes) == 1 and server_end.fileno() == -1
