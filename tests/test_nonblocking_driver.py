"""The non-blocking driver over real sockets, driven step by step from the test.

Each test runs the :class:`EventLoop` in this thread with ``run_once`` and
plays the client in between (non-blocking), so a slow or absent reader is
exact, not a matter of timing.
"""

from __future__ import annotations

import os
import selectors
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from framework.drivers.common import RECV_SIZE
from framework.drivers.nonblocking import HIGH_WATER, EventLoop, NonBlockingConnection
from framework.protocol import Protocol, Transport
from framework.signals import is_peer_gone
from tests.support import open_fds_unchanged

STEP_LIMIT = 200_000  # every loop below is bounded in iterations as well as time


class Scripted(Protocol):
    """A protocol whose callbacks are given as functions; it records what happened."""

    def __init__(self, made: Callable[[Scripted], None] | None = None,
                 data: Callable[[Scripted, bytes], None] | None = None,
                 eof: Callable[[Scripted], bool | None] | None = None,
                 deadline: Callable[[Scripted], None] | None = None) -> None:
        self._made, self._data, self._eof, self._deadline = made, data, eof, deadline
        self.received = bytearray()
        self.deadlines = 0
        self.lost: list[BaseException | None] = []

    def connection_made(self, transport: Transport) -> None:
        super().connection_made(transport)
        if self._made:
            self._made(self)

    def data_received(self, data: bytes) -> None:
        self.received += data
        if self._data:
            self._data(self, data)

    def eof_received(self) -> bool | None:
        return self._eof(self) if self._eof else None

    def deadline_expired(self) -> None:
        self.deadlines += 1
        if self._deadline:
            self._deadline(self)
        else:
            super().deadline_expired()

    def connection_lost(self, exc: BaseException | None) -> None:
        self.lost.append(exc)


def echo(protocol: Scripted, data: bytes) -> None:
    protocol.transport.write(data)


class Harness:
    """An event loop with recorded errors, and helpers to drive it."""

    def __init__(self, idle_timeout: float | None = None) -> None:
        self.errors: list[tuple[BaseException, str]] = []
        self.loop = EventLoop(selectors.PollSelector(), idle_timeout=idle_timeout,
                              handle_error=lambda exc, peer: self.errors.append((exc, peer)))

    def serve(self, sock: socket.socket, protocol: Protocol) -> NonBlockingConnection:
        return self.loop.add_connection(sock, "test-peer", protocol)

    def run_until(self, predicate: Callable[[], object], timeout: float = 10.0,
                  step: Callable[[], None] | None = None, wait: float = 0.01) -> None:
        deadline = time.monotonic() + timeout
        for _ in range(STEP_LIMIT):
            if predicate():
                return
            assert time.monotonic() < deadline, "condition not reached in time"
            self.loop.run_once(wait)
            if step:
                step()
        raise AssertionError("condition not reached within the step limit")


@pytest.fixture
def harness():
    with open_fds_unchanged():
        harness = Harness()
        yield harness
        harness.loop.close()


def tcp_pair(client_rcvbuf: int | None = None, server_sndbuf: int | None = None) -> tuple[socket.socket, socket.socket]:
    """A connected (server side, client side) TCP pair on 127.0.0.1."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.socket()
        if client_rcvbuf:
            client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, client_rcvbuf)
        client.connect(listener.getsockname())
        server, _ = listener.accept()
    if server_sndbuf:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, server_sndbuf)
    client.setblocking(False)
    return server, client


class SlowReader:
    """Reads at most *size* bytes per step from a non-blocking client socket, until EOF."""

    def __init__(self, sock: socket.socket, size: int) -> None:
        self.sock, self.size = sock, size
        self.data = bytearray()
        self.eof = False

    def step(self) -> None:
        try:
            chunk = self.sock.recv(self.size)
        except BlockingIOError:
            return
        if chunk:
            self.data += chunk
        else:
            self.eof = True


def read_to_eof(harness: Harness, client: socket.socket, size: int = 100, **run: float) -> bytes:
    """Read *client* at most *size* bytes per loop step until EOF, then close it; return the bytes."""
    reader = SlowReader(client, size)
    with client:
        harness.run_until(lambda: reader.eof, step=reader.step, **run)
    return bytes(reader.data)


def test_partial_writes_reach_a_slow_reader_in_order_and_mutable_buffers_are_copied(harness):
    payload = os.urandom(1 << 20)
    mutable = bytearray(os.urandom(100_000))
    expected = payload + bytes(mutable) + payload[:5000]
    seen_queued = []

    def made(protocol: Scripted) -> None:
        protocol.transport.write(payload)
        protocol.transport.write(mutable)
        mutable[:] = b"x" * len(mutable)  # the caller reuses its buffer at once
        protocol.transport.write(memoryview(payload)[:5000])
        seen_queued.append(protocol.transport.get_extra_info("write_buffer_size"))
        protocol.transport.close()

    server, client = tcp_pair(client_rcvbuf=4096, server_sndbuf=4096)
    protocol = Scripted(made=made)
    harness.serve(server, protocol)
    assert seen_queued[0] > 0, "the reader is slow: most of the payload must have been queued"
    assert read_to_eof(harness, client, 3000, wait=0) == expected
    assert protocol.lost == [None]
    assert not harness.errors


def test_many_small_queued_writes_are_gathered_and_arrive_in_order(harness):
    pieces = [os.urandom(1 + index % 700) for index in range(3000)]

    def made(protocol: Scripted) -> None:
        for piece in pieces:
            protocol.transport.write(piece)
        protocol.transport.close()

    server, client = tcp_pair(client_rcvbuf=4096, server_sndbuf=4096)
    protocol = Scripted(made=made)
    connection = harness.serve(server, protocol)
    assert connection.buffered > 0
    assert read_to_eof(harness, client, 5000, wait=0) == b"".join(pieces)
    assert protocol.lost == [None]


def test_sendfile_of_a_large_file_to_a_slow_reader_is_byte_exact(harness, tmp_path):
    content = os.urandom(8 << 20)
    path = tmp_path / "big.bin"
    path.write_bytes(content)
    start, count = 1000, len(content) - 2000

    def made(protocol: Scripted) -> None:
        with open(path, "rb") as file:
            protocol.transport.write(b"head")
            protocol.transport.sendfile(file, start, count)
            protocol.transport.write(b"tail")
            protocol.transport.sendfile(file, 0, 10)
        # The file is closed now: the driver must have kept its own descriptor.
        protocol.transport.close()

    server, client = tcp_pair(client_rcvbuf=65536, server_sndbuf=65536)
    protocol = Scripted(made=made)
    connection = harness.serve(server, protocol)
    assert connection.buffered > 0, "the reader is slow: part of the file must have been queued"
    expected = b"head" + content[start:start + count] + b"tail" + content[:10]
    assert read_to_eof(harness, client, 16384, timeout=30, wait=0) == expected
    assert protocol.lost == [None]


def test_flow_control_stops_reading_a_client_that_never_reads(harness):
    server, client = tcp_pair()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    protocol = Scripted(data=echo)
    connection = harness.serve(server, protocol)
    chunk = os.urandom(16384)
    sent = 0
    stalls = 0
    most_buffered = 0
    stream = bytearray()  # exactly what the kernel took: a send may take part of a chunk
    with client:
        # Push until nothing moves any more: the server must stop reading, so this ends.
        for _ in range(20000):
            try:
                taken = client.send(chunk)
                stream += chunk[:taken]
                sent += taken
                stalls = 0
            except BlockingIOError:
                stalls += 1
                if stalls >= 30:
                    break
            harness.loop.run_once(0.005 if stalls else 0)
            most_buffered = max(most_buffered, connection.buffered)
        assert stalls >= 30, f"the server kept reading: {sent} bytes taken"
        assert not connection.reading
        assert HIGH_WATER < most_buffered <= HIGH_WATER + RECV_SIZE
        # Now read: the queue drains, reading resumes, and every byte comes back in order.
        reader = SlowReader(client, 1 << 20)
        harness.run_until(lambda: len(reader.data) >= sent, step=reader.step, wait=0.001)
        client.shutdown(socket.SHUT_WR)
        harness.run_until(lambda: reader.eof, step=reader.step)
    assert bytes(reader.data) == bytes(stream)
    assert protocol.lost == [None]


def test_deadline_fires_once_and_can_be_cancelled(harness):
    def made_fires(protocol: Scripted) -> None:
        protocol.transport.set_deadline(0.05)

    def late(protocol: Scripted) -> None:
        protocol.transport.write(b"late\n")
        protocol.transport.close()

    def made_cancels(protocol: Scripted) -> None:
        protocol.transport.set_deadline(0.05)
        protocol.transport.set_deadline(None)

    server1, client1 = tcp_pair()
    server2, client2 = tcp_pair()
    fires = Scripted(made=made_fires, deadline=late)
    cancelled = Scripted(made=made_cancels)
    harness.serve(server1, fires)
    second = harness.serve(server2, cancelled)
    reader = SlowReader(client1, 100)
    with client1, client2:
        harness.run_until(lambda: reader.eof, step=reader.step)
        assert bytes(reader.data) == b"late\n"
        assert fires.deadlines == 1 and fires.lost == [None]
        until = time.monotonic() + 0.2
        harness.run_until(lambda: time.monotonic() >= until)
        assert cancelled.deadlines == 0 and not second.is_closing()


def test_idle_timeout_ends_a_silent_connection_but_not_a_busy_one():
    with open_fds_unchanged():
        # The busy client sends every 0.05 s from this very thread: a stall of this
        # process longer than the idle timeout (a loaded machine) would look like
        # silence, so the timeout leaves a wide margin over the sending interval.
        harness = Harness(idle_timeout=1.0)
        try:
            silent_server, silent_client = tcp_pair()
            busy_server, busy_client = tcp_pair()
            silent = Scripted()
            busy = Scripted(data=echo)
            harness.serve(silent_server, silent)
            busy_connection = harness.serve(busy_server, busy)
            last_sent = [0.0]

            def keep_busy() -> None:
                if time.monotonic() - last_sent[0] > 0.05:
                    busy_client.send(b"x")
                    last_sent[0] = time.monotonic()

            with silent_client, busy_client:
                harness.run_until(lambda: silent.lost, step=keep_busy)
                assert isinstance(silent.lost[0], TimeoutError)
                assert silent_client.recv(10) == b""
                until = time.monotonic() + 1.5  # well past the idle timeout, and busy all along
                harness.run_until(lambda: time.monotonic() >= until, step=keep_busy)
                assert not busy_connection.is_closing()
                # Silence now: the busy one times out as well.
                harness.run_until(lambda: busy.lost)
                assert isinstance(busy.lost[0], TimeoutError)
            assert not harness.errors
        finally:
            harness.loop.close()


def test_linger_close_delivers_the_last_response_to_a_client_still_sending(harness):
    """An error response sent while the client still uploads arrives, with no reset.

    Without the linger the rest of the upload would meet a closed socket and
    the client, writing before it reads, would get a reset instead.
    """
    body = os.urandom(512 << 10)
    response = b"413 request too large\r\n"

    def refuse(protocol: Scripted, data: bytes) -> None:
        if not protocol.transport.is_closing():
            protocol.transport.write(response)
            protocol.transport.close(linger=2.0)

    server, client = tcp_pair()
    client.setblocking(True)
    client.settimeout(10)
    protocol = Scripted(data=refuse)
    harness.serve(server, protocol)
    outcome: dict[str, object] = {}

    def upload() -> None:
        try:
            view = memoryview(body)
            for start in range(0, len(body), 8192):
                client.sendall(view[start:start + 8192])
                time.sleep(0.0005)
            client.shutdown(socket.SHUT_WR)
            outcome["sent"] = True
        except OSError as exc:
            outcome["sent"] = exc

    uploader = threading.Thread(target=upload)
    uploader.start()
    try:
        harness.run_until(lambda: protocol.lost, timeout=15)
    finally:
        uploader.join(15)
    with client:
        try:
            answer = client.recv(1000)
            tail = client.recv(1000)
        except OSError as exc:
            answer, tail = exc, None
    assert outcome["sent"] is True
    assert (answer, tail) == (response, b"")
    assert protocol.lost == [None]


def test_close_drains_unread_input_so_the_peer_gets_fin_not_reset(harness):
    server, client = tcp_pair()
    client.sendall(os.urandom(100_000))  # more than one recv: some stays unread at close

    def answer_and_close(protocol: Scripted, data: bytes) -> None:
        protocol.transport.write(b"ok")
        protocol.transport.close()

    protocol = Scripted(data=answer_and_close)
    harness.serve(server, protocol)
    harness.run_until(lambda: protocol.lost)
    assert len(protocol.received) < 100_000
    client.setblocking(True)
    client.settimeout(5)
    with client:
        assert client.recv(10) == b"ok"
        assert client.recv(10) == b""
    assert protocol.lost == [None]


def test_a_handler_exception_ends_only_its_own_connection(harness):
    def echo_or_boom(protocol: Scripted, data: bytes) -> None:
        if b"boom" in data:
            raise ValueError("boom")
        protocol.transport.write(data)

    server1, client1 = tcp_pair()
    server2, client2 = tcp_pair()
    faulty, healthy = Scripted(data=echo_or_boom), Scripted(data=echo_or_boom)
    harness.serve(server1, faulty)
    harness.serve(server2, healthy)
    with client1, client2:
        client1.send(b"boom")
        harness.run_until(lambda: faulty.lost)
        assert isinstance(faulty.lost[0], ValueError)
        assert [(type(exc), peer) for exc, peer in harness.errors] == [(ValueError, "test-peer")]
        client2.send(b"still here")
        reader = SlowReader(client2, 100)
        harness.run_until(lambda: reader.data == b"still here", step=reader.step)
        assert not healthy.lost


@pytest.mark.parametrize("callback", ["made", "data", "eof", "deadline"])
def test_an_exception_in_any_callback_is_reported_and_ends_the_connection(harness, callback):
    def boom(protocol: Scripted, *args: object) -> None:
        raise KeyError(callback)

    def arm(protocol: Scripted) -> None:
        protocol.transport.set_deadline(0.01)

    scripts = {"made": {"made": boom}, "data": {"data": boom}, "eof": {"eof": boom},
               "deadline": {"made": arm, "deadline": boom}}
    server, client = tcp_pair()
    protocol = Scripted(**scripts[callback])
    harness.serve(server, protocol)
    with client:
        if callback in ("data", "eof"):
            client.send(b"x")
            client.shutdown(socket.SHUT_WR)
        harness.run_until(lambda: protocol.lost)
    assert isinstance(protocol.lost[0], KeyError)
    assert [type(exc) for exc, _ in harness.errors] == [KeyError]


def test_a_lingering_close_gives_up_when_the_peer_never_finishes(harness):
    def answer(protocol: Scripted, data: bytes) -> None:
        protocol.transport.write(b"bye")
        protocol.transport.close(linger=0.2)

    server, client = tcp_pair()
    protocol = Scripted(data=answer)
    connection = harness.serve(server, protocol)
    with client:
        client.send(b"hello")
        reader = SlowReader(client, 100)
        harness.run_until(lambda: reader.eof, step=reader.step)
        assert bytes(reader.data) == b"bye"  # the sending side was shut down at once
        assert not protocol.lost and connection.is_closing()
        client.send(b"more input, discarded")  # but no end-of-file from this peer
        harness.run_until(lambda: protocol.lost)
    assert protocol.lost == [None]


def test_a_lingering_close_ends_at_the_peer_eof_and_tolerates_a_reset(harness):
    def answer(protocol: Scripted, data: bytes) -> None:
        protocol.transport.close(linger=10)

    server1, client1 = tcp_pair()
    server2, client2 = tcp_pair()
    finishes, resets = Scripted(data=answer), Scripted(data=answer)
    harness.serve(server1, finishes)
    harness.serve(server2, resets)
    client1.send(b"x")
    client2.send(b"x")
    harness.run_until(lambda: client1.recv(1) == b"" if readable(client1) else False)
    client1.shutdown(socket.SHUT_WR)
    client2.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
    client2.close()
    harness.run_until(lambda: finishes.lost and resets.lost, timeout=5)
    client1.close()
    assert finishes.lost == [None] and resets.lost == [None]
    assert not harness.errors


def readable(sock: socket.socket) -> bool:
    with selectors.DefaultSelector() as selector:
        selector.register(sock, selectors.EVENT_READ)
        return bool(selector.select(0))


def test_a_peer_reset_ends_the_connection_quietly_and_releases_queued_files(harness, tmp_path):
    path = tmp_path / "file.bin"
    path.write_bytes(os.urandom(4 << 20))

    def send_file(protocol: Scripted) -> None:
        with open(path, "rb") as file:
            protocol.transport.sendfile(file)

    server1, client1 = tcp_pair(client_rcvbuf=4096, server_sndbuf=4096)
    server2, client2 = tcp_pair()
    writer, reader = Scripted(made=send_file), Scripted(data=echo)
    connection = harness.serve(server1, writer)
    harness.serve(server2, reader)
    assert connection.buffered > 0
    for client in (client1, client2):
        client.send(b"some input")
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")  # close = RST
        client.close()
    harness.run_until(lambda: writer.lost and reader.lost)
    for protocol in (writer, reader):
        exc = protocol.lost[0]
        assert exc is None or is_peer_gone(exc), exc
    assert isinstance(writer.lost[0], OSError)
    assert not harness.errors


def test_abort_drops_the_queue_and_ends_at_once(harness):
    def write_then_abort(protocol: Scripted) -> None:
        protocol.transport.write(os.urandom(4 << 20))
        protocol.transport.abort()
        protocol.transport.write(b"dropped")

    server, client = tcp_pair()
    protocol = Scripted(made=write_then_abort)
    connection = harness.serve(server, protocol)
    assert connection.is_closing() and connection.buffered == 0
    harness.run_until(lambda: protocol.lost)
    assert isinstance(protocol.lost[0], ConnectionAbortedError)
    assert not harness.errors
    client.close()


def test_eof_received_true_keeps_the_connection_open_for_writing(harness):
    def keep(protocol: Scripted) -> bool:
        protocol.transport.set_deadline(0.05)
        return True

    def reply(protocol: Scripted) -> None:
        protocol.transport.write(b"after eof: " + bytes(protocol.received))
        protocol.transport.close()

    server, client = tcp_pair()
    protocol = Scripted(eof=keep, deadline=reply)
    harness.serve(server, protocol)
    client.send(b"question")
    client.shutdown(socket.SHUT_WR)
    assert read_to_eof(harness, client, 100) == b"after eof: question"
    assert protocol.lost == [None]


def test_unix_socketpair_echo_and_timer_heap_stays_small(harness):
    harness.loop.idle_timeout = 60.0
    # A connection that stays: its live timer heads the heap, so the cancelled
    # timers of the short ones behind it are not simply popped off the top.
    held_server, held_client = socket.socketpair()
    held = harness.serve(held_server, Scripted())
    for _ in range(300):
        server, client = socket.socketpair()
        with client:
            protocol = Scripted(made=lambda protocol: protocol.transport.close())
            harness.serve(server, protocol)
            harness.loop.run_once(0)
            assert protocol.lost == [None]
    # Each short connection cancelled its 60 s idle timer: the heap must not keep them all.
    assert len(harness.loop._timers) <= 150
    server, client = socket.socketpair()
    protocol = Scripted(data=echo)
    harness.serve(server, protocol)
    client.setblocking(False)
    reader = SlowReader(client, 100)
    with client, held_client:
        client.send(b"unix")
        harness.run_until(lambda: reader.data == b"unix", step=reader.step)
        assert not held.is_closing()


def test_writes_after_close_are_dropped_and_a_raising_connection_lost_is_reported(harness):
    class Faulty(Scripted):
        def connection_lost(self, exc: BaseException | None) -> None:
            super().connection_lost(exc)
            raise RuntimeError("lost failed")

    def made(protocol: Scripted) -> None:
        protocol.transport.write(b"one")
        protocol.transport.close()
        protocol.transport.write(b"two")
        assert protocol.transport.is_closing()

    server, client = tcp_pair()
    protocol = Faulty(made=made)
    harness.serve(server, protocol)
    assert read_to_eof(harness, client) == b"one"
    harness.run_until(lambda: protocol.lost)
    assert [type(exc) for exc, _ in harness.errors] == [RuntimeError]


def test_a_deadline_waits_while_the_peer_is_slow_to_read_our_output(harness):
    payload = os.urandom(1 << 20)

    def made(protocol: Scripted) -> None:
        protocol.transport.write(payload)
        protocol.transport.set_deadline(0.01)

    def expired(protocol: Scripted) -> None:
        assert protocol.transport.get_extra_info("write_buffer_size") == 0
        protocol.transport.write(b"!")
        protocol.transport.close()

    server, client = tcp_pair(client_rcvbuf=4096, server_sndbuf=4096)
    protocol = Scripted(made=made, deadline=expired)
    harness.serve(server, protocol)
    until = time.monotonic() + 0.1
    harness.run_until(lambda: time.monotonic() >= until)
    assert protocol.deadlines == 0, "the deadline fired while our output was still queued"
    assert read_to_eof(harness, client, 65536, wait=0.001) == payload + b"!"
    assert protocol.deadlines == 1 and protocol.lost == [None]
    assert not harness.errors


@pytest.mark.parametrize(("offset", "count", "expected"), [(4, None, b"456789"), (0, 100, b"0123456789")])
def test_sendfile_whole_rest_or_a_file_shorter_than_promised(harness, tmp_path, offset, count, expected):
    path = tmp_path / "small"
    path.write_bytes(b"0123456789")

    def made(protocol: Scripted) -> None:
        with open(path, "rb") as file:
            protocol.transport.sendfile(file, offset, count)
        protocol.transport.close()

    server, client = tcp_pair()
    protocol = Scripted(made=made)
    harness.serve(server, protocol)
    assert read_to_eof(harness, client, 100) == expected
    if count is None:
        assert protocol.lost == [None]
    else:  # the promised length cannot be kept: the connection is aborted
        assert isinstance(protocol.lost[0], OSError)
    assert not harness.errors


def test_sendfile_over_a_unix_socket(harness, tmp_path):
    content = os.urandom(3 << 20)
    path = tmp_path / "file.bin"
    path.write_bytes(content)

    def made(protocol: Scripted) -> None:
        with open(path, "rb") as file:
            protocol.transport.sendfile(file)
        protocol.transport.close()

    server, client = socket.socketpair()
    client.setblocking(False)
    protocol = Scripted(made=made)
    harness.serve(server, protocol)
    assert read_to_eof(harness, client, 65536, wait=0) == content
    assert protocol.lost == [None]


def test_an_ended_connection_and_its_protocol_are_freed_without_the_collector(harness):
    # A cycle between the connection and its protocol (or its bound handler) would wait for the
    # garbage collector, whose runs every few hundred connections cost every connection.
    import gc
    import weakref

    def answer_and_close(protocol: Scripted, data: bytes) -> None:
        protocol.transport.write(b"bye")
        protocol.transport.close()

    gc.collect()
    gc.disable()
    try:
        server, client = tcp_pair()
        client.sendall(b"hi")
        protocol = Scripted(data=answer_and_close)
        connection = weakref.ref(harness.serve(server, protocol))
        assert read_to_eof(harness, client) == b"bye"
        lost = protocol.lost
        harness.run_until(lambda: lost)
        assert lost == [None]
        protocol_ref = weakref.ref(protocol)
        del protocol
        assert connection() is None and protocol_ref() is None, "left for the garbage collector"
    finally:
        gc.enable()


@pytest.mark.parametrize("hand_out", [True, False])
def test_a_socket_handed_to_the_protocol_stays_open_while_a_file_of_it_does(harness, hand_out):
    # As in the blocking driver: socket.close() (which waits for the files made of it) once the
    # protocol was given the socket; otherwise the C close, the socket being the loop's own.
    files: list[Any] = []
    open_at_the_end: list[bool] = []

    def made(protocol: Scripted) -> None:
        if hand_out:
            files.append(protocol.transport.get_extra_info("socket").makefile("rb"))

    def answer(protocol: Scripted, data: bytes) -> None:
        protocol.transport.write(data)
        protocol.transport.close()

    server, client = tcp_pair()
    protocol = Scripted(made=made, data=answer)
    original_lost = protocol.connection_lost

    def lost(exc: BaseException | None) -> None:
        original_lost(exc)
        for file in files:
            try:
                os.fstat(file.fileno())
                open_at_the_end.append(True)
            except OSError:
                open_at_the_end.append(False)
            file.close()

    protocol.connection_lost = lost  # type: ignore[method-assign]
    harness.serve(server, protocol)
    client.sendall(b"ping")
    assert read_to_eof(harness, client) == b"ping"
    harness.run_until(lambda: protocol.lost)
    assert open_at_the_end == ([True] if hand_out else [])
    assert server.fileno() == -1


def test_a_socket_of_a_class_with_its_own_close_is_closed_by_it(harness):
    closes: list[int] = []

    class ClosingTells(socket.socket):
        def close(self) -> None:
            closes.append(self.fileno())
            super().close()

    plain, client = tcp_pair()
    server = ClosingTells(fileno=plain.detach())
    protocol = Scripted(data=lambda p, data: (p.transport.write(data), p.transport.close()))
    harness.serve(server, protocol)
    client.sendall(b"ping")
    assert read_to_eof(harness, client) == b"ping"
    harness.run_until(lambda: protocol.lost)
    assert len(closes) == 1 and server.fileno() == -1
