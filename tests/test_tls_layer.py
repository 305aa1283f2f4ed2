"""The TLS layer inside the non-blocking driver, stepped from the test: flow control on ciphertext, files, close."""

from __future__ import annotations

import os
import socket
import ssl
import threading
from collections.abc import Callable

import pytest

from framework.drivers.nonblocking import HIGH_WATER, EventLoop, NonBlockingConnection
from framework.drivers.tls import TLS_CHUNK
from framework.protocol import Protocol, Transport
from framework.tls import server_context
from tests.support import open_fds_unchanged
from tests.tls_support import TlsFiles, client_context, make_tls_files

STEP_LIMIT = 100_000
#: Record headers, tags and padding on one chunk of plaintext: far below this.
RECORD_OVERHEAD = 4096


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls_files(tmp_path_factory.mktemp("tls-layer"))


class Sender(Protocol):
    """Writes *payload* (and sends *file*) on connection_made, then closes."""

    def __init__(self, payload: bytes, file_path: str | None = None) -> None:
        self.payload, self.file_path = payload, file_path
        self.lost: list[BaseException | None] = []

    def connection_made(self, transport: Transport) -> None:
        super().connection_made(transport)
        transport.write(self.payload)
        if self.file_path is not None:
            with open(self.file_path, "rb") as file:
                transport.sendfile(file)
        transport.close()

    def connection_lost(self, exc: BaseException | None) -> None:
        self.lost.append(exc)


def run_until(loop: EventLoop, done, limit: int = STEP_LIMIT) -> None:  # type: ignore[no-untyped-def]
    for _ in range(limit):
        if done():
            return
        loop.run_once(0.05)
    raise AssertionError("the loop did not get there")


class HeldReader:
    """A TLS client in a thread: handshakes at once, reads only after :meth:`read` is called, until the end."""

    def __init__(self, files: TlsFiles, sock: socket.socket) -> None:
        self.received = bytearray()
        self.errors: list[BaseException] = []
        self.handshaken = threading.Event()
        self._go = threading.Event()
        self._files, self._sock = files, sock
        sock.settimeout(30)
        self._thread = threading.Thread(target=self._run)
        self._thread.start()

    def _run(self) -> None:
        try:
            with client_context(self._files).wrap_socket(self._sock, server_hostname="localhost") as tls:
                self.handshaken.set()
                self._go.wait(30)
                while data := tls.recv(65536):
                    self.received.extend(data)
        except BaseException as exc:  # surfaced by join()
            self.errors.append(exc)

    def read(self) -> None:
        """Start reading."""
        self._go.set()

    def join(self) -> bytes:
        """Wait for the end; what arrived (the client's errors fail the test)."""
        self._go.set()
        self._thread.join(60)
        assert not self.errors, self.errors
        return bytes(self.received)


def test_ciphertext_is_bounded_for_a_slow_reader_then_all_arrives(tls_files, tmp_path):
    body = os.urandom(3 << 20)
    path = tmp_path / "body.bin"
    path.write_bytes(body)
    payload = os.urandom(2 << 20)
    protocol = Sender(payload, str(path))

    def while_held(connection: NonBlockingConnection) -> None:
        # The client reads nothing yet: the kernel buffers are full, the queue holds the rest.
        assert not connection._handshaking
        assert connection._tls is not None
        assert connection._tls.pending <= TLS_CHUNK + RECORD_OVERHEAD
        assert connection.buffered > HIGH_WATER  # plaintext waits in the queue, not as ciphertext

    with open_fds_unchanged():
        received = serve_one(tls_files, protocol, while_held)
    assert received == payload + body  # close_notify ended the stream cleanly
    assert protocol.lost == [None]


def test_handshake_failure_never_reaches_the_protocol(tls_files):
    with open_fds_unchanged():
        loop = EventLoop(idle_timeout=60, tls=server_context(str(tls_files.cert), str(tls_files.key)))
        server_end, client_end = socket.socketpair()
        protocol = Sender(b"never")
        made: list[bool] = []
        protocol.connection_made = lambda transport: made.append(True)  # type: ignore[method-assign]
        try:
            loop.add_connection(server_end, "pair", protocol)
            client_end.sendall(b"\x16\x03\x01\x00\x05hello")  # a handshake record of garbage
            run_until(loop, lambda: not loop.connections)
            loop.report_ended()
            assert made == [] and protocol.lost == []
            client_end.settimeout(10)
            assert len(client_end.recv(100)) < 100  # an alert at most, then the end
        finally:
            client_end.close()
            loop.close()


def test_plain_loop_never_loads_ssl_for_nothing():
    import subprocess
    import sys

    code = ("import sys; from framework.drivers.nonblocking import EventLoop; import framework.server;"
            " EventLoop().close(); print('ssl' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "False", result.stderr


def test_ssl_errors_end_quietly():
    from framework.drivers.common import ends_quietly

    assert ends_quietly(ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number"))
    assert ends_quietly(ssl.SSLEOFError(8, "EOF"))
    assert not ends_quietly(ValueError("a bug"))


def test_blocking_handshake_hook_gives_a_blocking_ssl_socket(tls_files):
    """drivers.blocking.tls_handshake: what a blocking request handler would be given over TLS."""
    from framework.drivers.blocking import tls_handshake
    from framework.lifecycle import Lifecycle

    lifecycle = Lifecycle(5.0)
    context = server_context(str(tls_files.cert), str(tls_files.key))
    server_end, client_end = socket.socketpair()
    tls = context.wrap_socket(server_end, server_side=True, do_handshake_on_connect=False)
    answers: list[bytes] = []

    def client() -> None:
        client_end.settimeout(10)
        with client_context(tls_files).wrap_socket(client_end, server_hostname="localhost") as sock:
            sock.sendall(b"ping")
            answers.append(sock.recv(4))

    thread = threading.Thread(target=client)
    thread.start()
    try:
        assert tls_handshake(tls, "pair", lifecycle=lifecycle, idle_timeout=10, watch_wakeup=False) is None
        tls.settimeout(10)  # from here on, a blocking SSLSocket
        assert tls.recv(4) == b"ping"
        tls.sendall(b"pong")
    finally:
        thread.join(30)
        tls.close()
        lifecycle.close()
    assert answers == [b"pong"]


def test_blocking_handshake_hook_drops_a_silent_client(tls_files):
    from framework.drivers.blocking import tls_handshake
    from framework.lifecycle import Lifecycle

    lifecycle = Lifecycle(5.0)
    context = server_context(str(tls_files.cert), str(tls_files.key))
    server_end, client_end = socket.socketpair()
    tls = context.wrap_socket(server_end, server_side=True, do_handshake_on_connect=False)
    try:
        ended = tls_handshake(tls, "pair", lifecycle=lifecycle, idle_timeout=0.2, watch_wakeup=False)
        assert isinstance(ended, TimeoutError)
        assert tls.fileno() == -1  # closed
    finally:
        client_end.close()
        lifecycle.close()


def test_blocking_handshake_trickled_is_still_bounded(tls_files):
    """A peer sending its ClientHello a few bytes at a time does not renew the handshake's time limit."""
    from framework.drivers.blocking import tls_handshake
    from framework.lifecycle import Lifecycle
    from tests.tls_support import client_hello

    lifecycle = Lifecycle(5.0)
    context = server_context(str(tls_files.cert), str(tls_files.key))
    server_end, client_end = socket.socketpair()
    tls = context.wrap_socket(server_end, server_side=True, do_handshake_on_connect=False)
    hello = client_hello(tls_files)
    stop = threading.Event()

    def trickle() -> None:
        for start in range(0, len(hello) - 1, 2):  # never the last byte
            if stop.wait(0.1):
                return
            try:
                client_end.sendall(hello[start:start + 2])
            except OSError:
                return

    thread = threading.Thread(target=trickle)
    thread.start()
    try:
        ended = tls_handshake(tls, "pair", lifecycle=lifecycle, idle_timeout=0.5, watch_wakeup=False)
        assert thread.is_alive()  # ended by the limit while the peer was still trickling
        assert isinstance(ended, TimeoutError), ended
        assert "handshake" in str(ended)
    finally:
        stop.set()
        thread.join(30)
        client_end.close()
        lifecycle.close()


class Chatty(Protocol):
    """Many small writes (gathered into records by the TLS stream), or a file promised longer than it is."""

    def __init__(self, pieces: list[bytes], file_path: str | None = None, promise: int = 0) -> None:
        self.pieces, self.file_path, self.promise = pieces, file_path, promise
        self.lost: list[BaseException | None] = []

    def connection_made(self, transport: Transport) -> None:
        super().connection_made(transport)
        for piece in self.pieces:
            transport.write(piece)
        if self.file_path is not None:
            with open(self.file_path, "rb") as file:
                transport.sendfile(file, 0, self.promise)
        transport.close()

    def connection_lost(self, exc: BaseException | None) -> None:
        self.lost.append(exc)


def serve_one(tls_files: TlsFiles, protocol: Protocol,
              while_held: Callable[[NonBlockingConnection], None] | None = None) -> bytes:
    """Run *protocol* over TLS on a socket pair; the client reads only once the loop idled (and *while_held* ran)."""
    loop = EventLoop(idle_timeout=60, tls=server_context(str(tls_files.cert), str(tls_files.key)))
    server_end, client_end = socket.socketpair()
    reader = HeldReader(tls_files, client_end)
    try:
        connection = loop.add_connection(server_end, "pair", protocol)
        run_until(loop, reader.handshaken.is_set)
        for _ in range(50):
            loop.run_once(0.01)
        if while_held is not None:
            while_held(connection)
        reader.read()
        run_until(loop, lambda: not loop.connections)
        loop.report_ended()
    finally:
        received = reader.join()
        loop.close()
    return received


def test_many_small_writes_to_a_slow_reader_arrive_in_order(tls_files):
    pieces = [os.urandom(97) for _ in range(30000)]  # ~2.9 MB: most of it queued as small buffers
    protocol = Chatty(pieces)
    with open_fds_unchanged():
        assert serve_one(tls_files, protocol) == b"".join(pieces)
    assert protocol.lost == [None]


def test_a_file_shorter_than_promised_aborts_the_connection(tls_files, tmp_path):
    from framework.drivers.common import ShortFileError

    body = os.urandom(300_000)
    path = tmp_path / "short.bin"
    path.write_bytes(body)
    protocol = Chatty([b"head"], str(path), promise=len(body) + 1000)
    with open_fds_unchanged():
        received = serve_one(tls_files, protocol)
    assert received == b"head" + body  # every byte the file had, then the end
    assert len(protocol.lost) == 1 and isinstance(protocol.lost[0], ShortFileError)


def test_server_context_defaults(tls_files, monkeypatch, tmp_path):
    monkeypatch.setenv("SSLKEYLOGFILE", str(tmp_path / "keys.log"))
    context = server_context(str(tls_files.cert), str(tls_files.key))
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert context.options & ssl.OP_NO_RENEGOTIATION
    assert context.options & ssl.OP_NO_COMPRESSION
    assert context.verify_mode == ssl.CERT_NONE
    assert context.keylog_filename is None
    mutual = server_context(str(tls_files.cert), str(tls_files.key), client_ca=str(tls_files.ca))
    assert mutual.verify_mode == ssl.CERT_REQUIRED
    assert [ca["subject"] for ca in mutual.get_ca_certs()] == [((("commonName", "forkthread test CA"),),)]
