"""Blocking handlers, black-box: socketserver handlers written here run with ``forkthread serve MODULE:CLASS``.

Each test writes its own ``socketserver`` handlers and ``Server`` subclasses
into a temporary folder, makes it the current directory (so ``MODULE`` is
found there first) and runs them under the strategy of the matrix: byte-exact
transfers, concurrency, faults, time limits, stops, addresses.  ``poll``
(and ``preforked --worker poll``) must refuse to start with exit status 2.
"""

from __future__ import annotations

import ast
import os
import select
import signal
import socket
import socketserver
import struct
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from framework import Server
from framework.address import connect, parse_address
from framework.signals import SERVER_SIGNALS
from tests.support import (
    ROOT,
    ServerProcess,
    child_env,
    echo_exchange,
    recv_all,
    serving_in_thread,
    threads_not_blocking,
    wait_for,
)

MODULE = "myhandlers"

HANDLERS = textwrap.dedent('''
    """Handlers and servers written the socketserver way, for tests/test_handlers.py."""

    import http.server
    import os
    import socketserver

    from framework import Protocol, Server


    class StreamEcho(socketserver.StreamRequestHandler):
        """Echoes bytes as they come, binary-safe, until end-of-input."""

        def handle(self):
            while data := self.rfile.read1(65536):
                self.wfile.write(data)


    class RequestKind(socketserver.StreamRequestHandler):
        """Answers each line with the type of its request socket, then the line."""

        def handle(self):
            while line := self.rfile.readline():
                self.wfile.write(type(self.request).__name__.encode() + b" " + line)


    class RequestKindServer(Server):
        handler = RequestKind


    class LineEcho(socketserver.StreamRequestHandler):
        """Echoes lines; the line ``boom`` makes it raise."""

        def handle(self):
            while line := self.rfile.readline():
                if line.strip() == b"boom":
                    raise RuntimeError("handler-fault-marker")
                self.wfile.write(line)


    class RawEcho(socketserver.BaseRequestHandler):
        """Says its client_address, then echoes with recv/sendall on self.request."""

        def setup(self):
            self.greeting = repr(self.client_address).encode() + b"\\n"

        def handle(self):
            self.request.sendall(self.greeting)
            while data := self.request.recv(65536):
                self.request.sendall(data)


    class Greeter(socketserver.StreamRequestHandler):
        """Reads attributes of its server."""

        def handle(self):
            server = self.server
            self.wfile.write(f"{server.greeting} from {type(server).__name__} {server.address}\\n".encode())
            # socketserver's own names for what a handler may ask its server
            self.wfile.write(f"{server.server_address!r} {server.RequestHandlerClass.__name__}\\n".encode())


    class Flood(socketserver.StreamRequestHandler):
        """Answers one line with far more than a client will read."""

        def handle(self):
            self.rfile.readline()
            for _ in range(2000):
                self.wfile.write(b"x" * 65536)


    class StreamEchoServer(Server):
        handler = StreamEcho


    class LineEchoServer(Server):
        handler = LineEcho


    class RawEchoServer(Server):
        handler = RawEcho


    class FloodServer(Server):
        handler = Flood


    class GreeterServer(Server):
        handler = Greeter

        def __init__(self, *args, greeting="hello", **kwargs):
            self.greeting = greeting
            super().__init__(*args, **kwargs)

        @classmethod
        def add_arguments(cls, parser):
            parser.add_argument("--greeting", default="hello")

        @classmethod
        def options_from_arguments(cls, args):
            return {"greeting": args.greeting}


    class FilesServer(Server):
        """The standard library's file server handler, unchanged (files of the current directory)."""

        handler = http.server.SimpleHTTPRequestHandler


    class Upper(Protocol):
        def data_received(self, data):
            self.transport.write(data.upper())


    class UpperServer(Server):
        protocol = Upper


    class NotAServer:
        handler = LineEcho


    def helper():
        return 42
''')

#: Options that let every strategy serve three clients at once (pre-forked default: one worker per CPU).
CONCURRENT = {"preforked": ("--workers", "3"), "interpreters": ("--workers", "3")}

#: What poll-like configurations are refused with.
REFUSAL = "runs a blocking handler"


@pytest.fixture
def handlers_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder with the handlers module, made the current directory (servers start there)."""
    (tmp_path / f"{MODULE}.py").write_text(HANDLERS)
    (tmp_path / "broken.py").write_text("raise ImportError('broken on purpose')\n")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def start(serve, strategy: str, server: str, *args: str, **kwargs: object) -> ServerProcess:  # type: ignore[no-untyped-def]
    """``forkthread serve myhandlers:SERVER --strategy STRATEGY``; poll is tested by test_refused_under_poll."""
    if strategy == "poll":
        pytest.skip("poll refuses blocking handlers: see test_refused_under_poll")
    process: ServerProcess = serve(f"{MODULE}:{server}", *CONCURRENT.get(strategy, ()), *args,
                                   strategy=strategy, **kwargs)
    return process


def run_serve(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """Run ``forkthread serve ...`` to its end (for commands that must refuse to start)."""
    return subprocess.run([sys.executable, "-m", "framework", "serve", *args], capture_output=True, text=True,
                          env=child_env(), timeout=timeout, stdin=subprocess.DEVNULL)


def line_exchange(sock: socket.socket, line: bytes) -> bytes:
    """Send one line, read one line back."""
    sock.sendall(line)
    received = b""
    while not received.endswith(b"\n"):
        data = sock.recv(4096)
        if not data:
            break
        received += data
    return received


def assert_stop_ends_waiting_clients(server: ServerProcess, clients: list[socket.socket]) -> None:
    """SIGTERM ends the server (status 0) well inside its graceful timeout; each client reads end-of-file."""
    assert server.stop(signal.SIGTERM, timeout=20) == 0, server.log()
    for sock in clients:
        assert read_to_end(sock) == b""


def read_to_end(sock: socket.socket) -> bytes:
    """Read until the server ends the connection; a reset counts as the end too."""
    try:
        return recv_all(sock)
    except ConnectionResetError:
        return b""


# -- the matrix ----------------------------------------------------------------------------


def test_refused_under_poll(strategy, handlers_dir):
    """poll and preforked --worker poll refuse in one line with exit 2; other strategies start."""
    if strategy == "poll":
        variants = [("--strategy", "poll")]
    elif strategy == "preforked":
        variants = [("--strategy", "preforked", "--worker", "poll", "--workers", "1")]
    else:
        pytest.skip(f"{strategy} carries blocking handlers (every other test here runs it)")
    for variant in variants:
        result = run_serve(f"{MODULE}:LineEchoServer", "--bind", "127.0.0.1:0", *variant)
        assert result.returncode == 2, result
        assert result.stdout == ""
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and REFUSAL in lines[0], result.stderr
        assert "Traceback" not in result.stderr


def test_stream_handler_echoes_mib_byte_exact(serve, strategy, handlers_dir):
    server = start(serve, strategy, "StreamEchoServer")
    payload = os.urandom(6 * 1024 * 1024)
    with server.connect(timeout=60) as sock:
        assert echo_exchange(sock, payload) == payload
    with server.connect(timeout=60) as sock:  # and again: the server lives on
        assert echo_exchange(sock, payload[:100_000], chunk=7777) == payload[:100_000]


def test_concurrent_clients(serve, strategy, handlers_dir):
    if strategy == "iterative":
        pytest.skip("iterative serves one client at a time by design")
    server = start(serve, strategy, "LineEchoServer")
    clients = [server.connect() for _ in range(3)]
    try:
        for round_ in range(2):
            for number, sock in enumerate(clients):  # every connection is open, each gets its answer
                line = f"client {number} round {round_}\n".encode()
                assert line_exchange(sock, line) == line
    finally:
        for sock in clients:
            sock.close()


def test_raising_handler_ends_its_connection_and_is_logged_once(serve, strategy, handlers_dir):
    server = start(serve, strategy, "LineEchoServer")
    with server.connect() as sock:
        assert line_exchange(sock, b"before\n") == b"before\n"
        sock.sendall(b"boom\n")
        assert read_to_end(sock) == b""
    with server.connect() as sock:
        assert line_exchange(sock, b"after\n") == b"after\n"
    assert wait_for(lambda: "RuntimeError: handler-fault-marker" in server.log(), timeout=10), server.log()
    log = server.log()
    assert log.count("Traceback (most recent call last)") == 1, log
    assert log.count("RuntimeError: handler-fault-marker") == 1, log
    assert "handler failed" in log


@pytest.mark.parametrize("status_first", [False, True], ids=["term", "usr1-then-term"])
def test_sigterm_is_prompt_while_handlers_wait_in_readline(serve, strategy, handlers_dir, status_first):
    """Idle handlers blocked in readline end soon after SIGTERM, far inside a 60 s graceful timeout.

    SIGTERM may be the first signal the server gets while its handlers block, or follow a SIGUSR1.
    After the SIGUSR1 every thread but a process's main one (the watch threads it started, pool
    threads) blocks the server's signals: one that caught the SIGTERM would leave it unheard by a
    main thread blocked in ``recv`` (CI once saw a worker ignore SIGTERM that way).
    """
    server = start(serve, strategy, "LineEchoServer", "--graceful-timeout", "60")
    clients = [server.connect(timeout=30) for _ in range(1 if strategy == "iterative" else 2)]
    try:
        for sock in clients:
            assert line_exchange(sock, b"waiting\n") == b"waiting\n"  # its handler now waits in readline
        if status_first:
            server.send_signal(signal.SIGUSR1)  # signal actions run while the handler blocks
            assert wait_for(lambda: "status:" in server.log(), timeout=10), server.log()
            assert threads_not_blocking(server.pid, SERVER_SIGNALS) == {}
        assert_stop_ends_waiting_clients(server, clients)
    finally:
        for sock in clients:
            sock.close()
    assert "Traceback" not in server.log()


def test_graceful_stop_lets_a_running_transfer_finish(serve, strategy, handlers_dir):
    server = start(serve, strategy, "StreamEchoServer", "--graceful-timeout", "60")
    payload = os.urandom(8 * 1024 * 1024)
    received = bytearray()
    errors: list[BaseException] = []

    def read() -> None:
        try:
            while data := sock.recv(65536):
                received.extend(data)
        except OSError as exc:
            errors.append(exc)

    with server.connect(timeout=60) as sock:
        reader = threading.Thread(target=read)
        reader.start()
        try:
            view = memoryview(payload)
            sock.sendall(view[:1 << 16])
            # Signal once the handler serves this connection (before, a stop would refuse it unserved).
            assert wait_for(lambda: len(received) > 0, timeout=30)
            server.send_signal(signal.SIGTERM)  # mid-transfer: the handler goes on receiving
            for start_at in range(1 << 16, len(payload), 1 << 16):
                sock.sendall(view[start_at:start_at + (1 << 16)])
            sock.shutdown(socket.SHUT_WR)
        finally:
            reader.join(60)
    assert not errors and bytes(received) == payload
    assert server.proc.wait(30) == 0, server.log()


def test_graceful_deadline_ends_a_handler_still_busy(serve, strategy, handlers_dir):
    """A client that keeps talking is never idle: the graceful deadline ends its handler."""
    server = start(serve, strategy, "LineEchoServer", "--graceful-timeout", "2")
    with server.connect(timeout=30) as sock:
        assert line_exchange(sock, b"first\n") == b"first\n"
        server.send_signal(signal.SIGTERM)
        give_up = time.monotonic() + 30  # bounded: the server must end the connection well before
        ended = False
        while not ended and time.monotonic() < give_up:
            try:
                ended = line_exchange(sock, b"still here\n") != b"still here\n"
            except OSError:  # EPIPE / reset once the server shut the connection down
                ended = True
            time.sleep(0.1)
        assert ended
    assert server.proc.wait(30) == 0, server.log()


def test_handler_reads_its_server_attributes(serve, strategy, handlers_dir):
    server = start(serve, strategy, "GreeterServer", "--greeting", "bonjour")
    host, port = server.address.rsplit(":", 1)
    with server.connect() as sock:
        assert read_to_end(sock) == (f"bonjour from GreeterServer {server.address}\n"
                                     f"{(host, int(port))!r} Greeter\n").encode()


def test_http_server_handler_from_the_stdlib_runs_unchanged(serve, strategy, handlers_dir):
    """http.server's SimpleHTTPRequestHandler, as it is, serves files under every carrying model."""
    (handlers_dir / "page.txt").write_bytes(b"served by a stdlib handler\n" * 1000)
    server = start(serve, strategy, "FilesServer")
    with server.connect() as sock:
        sock.sendall(b"GET /page.txt HTTP/1.0\r\nHost: test\r\n\r\n")
        response = read_to_end(sock)
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200") and body == b"served by a stdlib handler\n" * 1000, head


@pytest.mark.parametrize("family", ["ipv4", "ipv6", "unix"])
def test_addresses_and_client_address(serve, strategy, handlers_dir, family):
    """TCP, IPv6 and Unix addresses; client_address as socketserver gives it."""
    if family == "ipv6" and not socket.has_ipv6:
        pytest.skip("no IPv6")
    bind = {"ipv4": "127.0.0.1:0", "ipv6": "[::1]:0", "unix": f"unix:{handlers_dir / 'h.sock'}"}[family]
    try:
        server = start(serve, strategy, "RawEchoServer", bind=bind)
    except AssertionError:
        if family == "ipv6":
            pytest.skip("cannot listen on ::1 here")
        raise
    assert parse_address(server.address).is_unix == (family == "unix")
    payload = os.urandom(300_000)
    with server.connect() as sock:
        greeting = b""
        while not greeting.endswith(b"\n"):
            greeting += sock.recv(1)
        client_address = ast.literal_eval(greeting.decode())
        assert client_address == ("" if family == "unix" else sock.getsockname())
        assert echo_exchange(sock, payload) == payload


def test_timeout_ends_a_silent_client(serve, strategy, handlers_dir):
    server = start(serve, strategy, "LineEchoServer", "--timeout", "1")
    with server.connect(timeout=30) as sock:
        assert read_to_end(sock) == b""  # silent: the handler's read timed out
    with server.connect() as sock:
        assert line_exchange(sock, b"next\n") == b"next\n"
    assert "Traceback" not in server.log()


def test_vanished_peer_ends_one_connection_quietly(serve, strategy, handlers_dir):
    server = start(serve, strategy, "FloodServer", "--log-level", "debug")
    for _ in range(3):
        with server.connect() as sock:
            sock.sendall(b"go\n")
            assert sock.recv(65536)
            # Close with unread data and a reset: the handler's writes fail with EPIPE/ECONNRESET.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with server.connect() as sock:
        sock.sendall(b"go\n")
        assert sock.recv(1) == b"x"
    assert wait_for(lambda: server.log().count("ended:") >= 3, timeout=10), server.log()
    log = server.log()
    assert "Traceback" not in log and "ERROR" not in log and "exited with status" not in log, log


def test_max_connections_bounds_handlers(serve, strategy, handlers_dir):
    if strategy not in ("forking", "threading"):
        pytest.skip("--max-connections applies to forking, threading (and poll)")
    server = start(serve, strategy, "LineEchoServer", "--max-connections", "1")
    with server.connect(timeout=30) as first:
        assert line_exchange(first, b"one\n") == b"one\n"
        second = server.connect(timeout=30)
        try:
            second.sendall(b"two\n")
            # The bound holds: the second client waits in the backlog while the first is served.
            assert select.select([second], [], [], 0.5)[0] == []
            first.close()
            assert recv_all(second, 4) == b"two\n"
        finally:
            second.close()


@pytest.mark.only_strategies("preforked")
def test_preforked_thread_workers_carry_handlers(serve, handlers_dir):
    server = serve(f"{MODULE}:LineEchoServer", "--worker", "threads", "--workers", "2", "--threads", "2",
                   "--graceful-timeout", "60", strategy="preforked")
    clients = [server.connect(timeout=30) for _ in range(3)]
    try:
        for number, sock in enumerate(clients):
            line = f"client {number}\n".encode()
            assert line_exchange(sock, line) == line
        payload = os.urandom(2 * 1024 * 1024)
        streaming = serve(f"{MODULE}:StreamEchoServer", "--worker", "threads", strategy="preforked")
        with streaming.connect(timeout=60) as sock:
            assert echo_exchange(sock, payload) == payload
        assert_stop_ends_waiting_clients(server, clients)
    finally:
        for sock in clients:
            sock.close()


# -- serve MODULE:CLASS -----------------------------------------------------------------------


@pytest.mark.parametrize(("target", "says"), [
    ("nosuchmodule:Server", "cannot import 'nosuchmodule'"),
    (f"{MODULE}:Missing", "has no 'Missing'"),
    (f"{MODULE}:NotAServer", "is not a forkthread Server subclass"),
    (f"{MODULE}:helper", "is not a forkthread Server subclass"),
    ("broken:Anything", "broken on purpose"),
    (":Nothing", "expected MODULE:CLASS"),
    ("framework.server:Server", "sets neither `protocol` nor `handler`"),
    ("os:path", "is not a forkthread Server subclass"),
    ("a..b:X", "cannot import 'a..b'"),
    (".relative:X", "cannot import '.relative'"),
    ("é:Ü", "cannot import 'é'"),
    ("x" * 5000 + ":X", "cannot import"),
    (f"{MODULE}:Not A Class", "has no 'Not A Class'"),
    (f"{MODULE}:StreamEcho", "is not a forkthread Server subclass"),  # the handler, not its server
])
def test_bad_target_is_one_line_and_exit_2(handlers_dir, target, says):
    result = run_serve(target, "--bind", "127.0.0.1:0")
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and says in lines[0], result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""


def test_target_found_in_the_current_directory_first(serve, handlers_dir):
    """``python -P`` leaves the current directory off sys.path: only `serve` puts it there, first."""
    server = serve(f"{MODULE}:LineEchoServer",
                   program=[sys.executable, "-P", "-m", "framework", "serve", f"{MODULE}:LineEchoServer"])
    with server.connect() as sock:
        assert line_exchange(sock, b"found\n") == b"found\n"


def test_protocol_server_by_target(serve, handlers_dir):
    server = serve(f"{MODULE}:UpperServer", strategy="poll")
    with server.connect() as sock:
        assert echo_exchange(sock, b"shout\n") == b"SHOUT\n"


def test_target_help_lists_the_class_options(handlers_dir):
    result = run_serve(f"{MODULE}:GreeterServer", "--help")
    assert result.returncode == 0
    assert "--greeting" in result.stdout and "--strategy" in result.stdout


# -- the tutorial's example --------------------------------------------------------------------

EXAMPLE = ROOT / "docs" / "examples" / "upper_handler.py"


def test_tutorial_handler_example_under_every_strategy(serve, strategy):
    """docs/porting-socketserver.md: the ported example runs under every model that can carry it."""
    program = [sys.executable, str(EXAMPLE)]
    if strategy == "poll":
        result = subprocess.run([*program, "--bind", "127.0.0.1:0", "--strategy", "poll"], capture_output=True,
                                text=True, env=child_env(), timeout=30, stdin=subprocess.DEVNULL)
        assert result.returncode == 2 and REFUSAL in result.stderr, result
        return
    if strategy == "interpreters":  # the example's server is defined in __main__: a worker cannot import it
        result = subprocess.run([*program, "--bind", "127.0.0.1:0", "--strategy", "interpreters"],
                                capture_output=True, text=True, env=child_env(), timeout=30, stdin=subprocess.DEVNULL)
        assert result.returncode == 2 and "__main__" in result.stderr, result
        return
    server = serve("upper", strategy=strategy, program=program)
    with server.connect() as sock:
        assert echo_exchange(sock, b"hello\nworld\nlast", chunk=3) == b"HELLO\nWORLD\nLAST\n3 lines\n"


# -- in process ----------------------------------------------------------------------------------


@pytest.mark.parametrize("strategy_name", ["iterative", "threading", "prethreaded"])
def test_shutdown_in_process_ends_waiting_handlers_and_the_watch(strategy_name):
    """Server.shutdown() with a handler waiting in readline: serve_forever returns, no thread is left."""
    class LineEcho(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            while line := self.rfile.readline():
                self.wfile.write(line)

    class LineEchoServer(Server):
        handler = LineEcho

    before = set(threading.enumerate())
    with LineEchoServer("127.0.0.1:0", strategy_name, graceful_timeout=60) as server:
        with serving_in_thread(server) as runner, connect(server.address, 10) as sock:
            assert line_exchange(sock, b"hi\n") == b"hi\n"
            server.shutdown()
            assert read_to_end(sock) == b""
        assert not runner.is_alive()
    assert wait_for(lambda: not [t for t in set(threading.enumerate()) - before if t.is_alive()], timeout=10)


def test_inetd_serves_one_connection_with_a_handler(handlers_dir):
    """``--inetd``: the handler serves the connection on standard input; SIGTERM ends it promptly."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname(), timeout=30)
        accepted, _ = listener.accept()
    with client, accepted:
        proc = subprocess.Popen([sys.executable, "-m", "framework", "serve", f"{MODULE}:LineEchoServer", "--inetd",
                                 "--graceful-timeout", "60"], stdin=accepted, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True, env=child_env())
        accepted.close()
        try:
            assert line_exchange(client, b"over inetd\n") == b"over inetd\n"
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(20) == 0
            assert read_to_end(client) == b""
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
            assert proc.stderr is not None
            errors = proc.stderr.read()
            proc.stderr.close()
    assert "Traceback" not in errors


def test_handler_over_tls_sees_an_ssl_socket(serve, strategy, handlers_dir, tmp_path_factory):
    """With --tls-cert/--tls-key a handler's request is an ssl.SSLSocket whose handshake is done."""
    from tests.tls_support import make_tls_files, tls_connect

    files = make_tls_files(tmp_path_factory.mktemp("handler-tls"))
    server = start(serve, strategy, "RequestKindServer", *files.server_args())
    with tls_connect(server.address, files) as sock:
        assert line_exchange(sock, b"one\n") == b"SSLSocket one\n"
        assert line_exchange(sock, b"two\n") == b"SSLSocket two\n"
    assert "Traceback" not in server.log()
