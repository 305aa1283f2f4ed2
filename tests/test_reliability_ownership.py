"""A server takes only what is its own: its children's exit statuses, its workers' capacity, its descriptors.

Regression tests for issue 14 items 5-7:

* a forking server embedded in a program reaps only the children it forked,
  so the program's own ``subprocess`` children keep their exit statuses;
* ``preforked --accept passfd`` passes a connection only to a worker with
  room for it; the other clients wait in the kernel's listen backlog;
* under the non-blocking driver, a client that pipelines thousands of file
  requests and never reads cannot use up the server's descriptors.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import resource
import selectors
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from framework.drivers.common import OutOfDescriptors
from framework.drivers.nonblocking import FILES_HIGH_WATER, EventLoop
from framework.protocol import Protocol, Transport
from tests.support import PeakSampler, child_env, recv_all, settled, tree_fd_count, wait_for

#: A program that embeds a forking echo server and runs subprocesses of its own while
#: connections come and go.  argv[1]: ``thread`` (serve_forever in a thread: no SIGCHLD
#: handler, the run reaps on a timer) or ``main`` (serve_forever in the main thread:
#: SIGCHLD reaps).  Prints the subprocesses' exit statuses and the zombies left over.
EMBEDDED_FORKING = r"""
import json, os, socket, subprocess, sys, threading, time
from servers.echo import EchoServer
from tests.support import process_state, proc_children, recv_all, wait_for

in_main = sys.argv[1] == "main"
server = EchoServer("127.0.0.1:0", "forking", handle_signals=in_main)
host, port = server.address.host, server.address.port

def exchange():
    with socket.create_connection((host, port), timeout=30) as sock:
        sock.sendall(b"ping")
        sock.shutdown(socket.SHUT_WR)
        assert recv_all(sock) == b"ping"

def work():
    statuses = []
    for _ in range(5):
        proc = subprocess.Popen(["sh", "-c", "sleep 0.2; exit 7"])
        # Connections come and go (each a child the server forks and reaps) until the
        # subprocess has exited (a zombie, or gone if someone else reaped it)...
        deadline = time.monotonic() + 30
        while process_state(proc.pid) not in ("Z", None) and time.monotonic() < deadline:
            exchange()
        # ...and some more, so that the server's reaping runs after that exit.
        for _ in range(5):
            exchange()
        statuses.append(proc.wait(30))
    # Every connection child ends and is reaped by the server: none is left, zombie or not.
    # (The last child may still be exiting after its client read EOF: wait for it to go,
    # rather than look for zombies once, before it is one.)
    wait_for(lambda: not proc_children(os.getpid()), timeout=20)
    left = proc_children(os.getpid())
    zombies = [pid for pid in left if process_state(pid) == "Z"]
    return {"statuses": statuses, "zombies": zombies, "left": sorted(left)}

result = {}
if in_main:
    def side():
        try:
            result.update(work())
        finally:
            server.shutdown()
    helper = threading.Thread(target=side)
    helper.start()
    server.serve_forever()
    helper.join(60)
else:
    runner = threading.Thread(target=server.serve_forever)
    runner.start()
    try:
        result.update(work())
    finally:
        server.shutdown()
        runner.join(60)
server.server_close()
print(json.dumps(result))
"""


@pytest.mark.only_strategies("forking")
@pytest.mark.parametrize("serving_thread", ["thread", "main"])
def test_embedded_forking_server_leaves_subprocess_exit_statuses_alone(serving_thread):
    done = subprocess.run([sys.executable, "-c", EMBEDDED_FORKING, serving_thread], capture_output=True, text=True,
                          env=child_env(), timeout=120, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.splitlines()[-1])
    # Before the fix, waitpid(-1) took these statuses and Popen.wait() reported 0.
    assert result["statuses"] == [7] * 5, done.stderr
    assert result["zombies"] == [] and result["left"] == [], done.stderr
    assert "Traceback" not in done.stderr, done.stderr


def accept_queue(port: int) -> int:
    """Connections waiting in the kernel's accept queue of the TCP listener on *port*.

    For a listening socket, ``/proc/net/tcp``'s ``rx_queue`` is its accept
    backlog (what ``ss -ltn`` shows as Recv-Q).
    """
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # 0A: LISTEN
                return int(fields[4].split(":")[1], 16)
    raise AssertionError(f"no listener on port {port}")


def master_turns(server, turns: int = 2) -> None:  # type: ignore[no-untyped-def]
    """Make the pre-forked master go round its loop *turns* times (SIGUSR1: a status line each).

    Its poll is level-triggered, so once it has logged two status lines it
    has also handled a listener that was readable, if it was watching it.
    """
    def lines() -> int:
        return sum("status:" in line and "workers=" in line for line in server.log().splitlines())

    for _ in range(turns):
        before = lines()
        server.send_signal(signal.SIGUSR1)
        assert wait_for(lambda before=before: lines() > before, timeout=20), server.log()


def echo_once(sock: socket.socket, payload: bytes) -> bytes:
    """Send *payload* and read its echo back."""
    sock.sendall(payload)
    received = b""
    while len(received) < len(payload):
        chunk = sock.recv(len(payload) - len(received))
        if not chunk:
            break
        received += chunk
    return received


#: Inner worker kinds, with the options that give one worker room for *capacity* connections.
PASSFD_WORKERS = {
    "iterative": ((), 1),
    "threads": (("--threads", "2"), 2),
    "poll": (("--max-connections", "2"), 2),
}


@pytest.mark.only_strategies("preforked")
@pytest.mark.parametrize("worker", list(PASSFD_WORKERS))
def test_passfd_clients_wait_in_the_kernel_backlog_while_the_worker_is_busy(serve, worker):
    options, capacity = PASSFD_WORKERS[worker]
    server = serve("echo", "--workers", "1", "--accept", "passfd", "--worker", worker, *options,
                   strategy="preforked")
    port = int(server.address.rsplit(":", 1)[1])
    with contextlib.ExitStack() as stack:
        held = [stack.enter_context(server.connect(timeout=30)) for _ in range(capacity)]
        for index, sock in enumerate(held):
            assert echo_once(sock, b"held %d" % index) == b"held %d" % index  # being served now
        waiting = [stack.enter_context(server.connect(timeout=30)) for _ in range(5)]
        for index, sock in enumerate(waiting):
            sock.sendall(b"waiting %d" % index)
        master_turns(server)
        # The master has not taken them: they wait in the kernel (before the fix: 0, all
        # five accepted and queued in the busy worker's channel).
        assert accept_queue(port) == 5, server.log()
        for sock in held:
            sock.close()
        # Each is served once the worker has room, in the order they came.
        for index, sock in enumerate(waiting):
            expected = b"waiting %d" % index
            received = b""
            while len(received) < len(expected):
                chunk = sock.recv(len(expected) - len(received))
                assert chunk, f"client {index} was closed unanswered"
                received += chunk
            assert received == expected
            sock.close()
    assert accept_queue(port) == 0


#: The server's descriptor limit in the pipelining test: far fewer than the requests pipelined.
NOFILE = 256
#: Requests the client pipelines: over one 64 KiB read holds ~1,800 of them.
PIPELINED = 3000


def limited_serve(serve, *args: str, strategy: str):  # type: ignore[no-untyped-def]
    """``forkthread serve http`` with RLIMIT_NOFILE lowered to :data:`NOFILE` (the pid stays the server's)."""
    program = ["sh", "-c", f'ulimit -n {NOFILE} && exec "$@"', "sh", sys.executable, "-m", "framework", "serve", "http"]
    return serve("http", *args, strategy=strategy, program=program)


@pytest.mark.parametrize("strategy_args", [
    pytest.param(("poll",), marks=pytest.mark.only_strategies("poll"), id="poll"),
    pytest.param(("preforked", "--workers", "1", "--worker", "poll"), marks=pytest.mark.only_strategies("preforked"),
                 id="preforked-poll"),
])
def test_pipelining_client_that_never_reads_cannot_exhaust_descriptors(serve, tmp_path, strategy_args):
    body = bytes(range(256)) * 256  # 64 KiB: the socket buffers fill after a few responses, the rest queue
    (tmp_path / "f.bin").write_bytes(body)
    name, *options = strategy_args
    server = limited_serve(serve, "--root", str(tmp_path), *options, strategy=name)
    request = b"GET /f.bin HTTP/1.1\r\nHost: x\r\n\r\n"

    def fetch() -> bytes:
        with server.connect(timeout=30) as sock:
            sock.sendall(request.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n"))
            return recv_all(sock)

    assert fetch().endswith(body)  # the file is open in the server's cache from now on
    baseline = settled(lambda: tree_fd_count(server.pid))
    with PeakSampler(lambda: tree_fd_count(server.pid)) as peak, server.connect(timeout=30) as greedy:
        greedy.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        greedy.sendall(request * PIPELINED)  # and never reads
        # Another client is served normally meanwhile, and more than once.
        for _ in range(3):
            assert fetch().endswith(body)
        held = settled(lambda: tree_fd_count(server.pid))
    # The greedy client costs its socket and one descriptor of the file, not one per queued response
    # (before the fix: a dup each, EMFILE inside data_received and a traceback per attempt).
    assert held <= baseline + 4, (baseline, held, server.log())
    assert peak.value <= baseline + 8, (baseline, peak.value, server.log())
    assert wait_for(lambda: tree_fd_count(server.pid) <= baseline, timeout=20), server.log()
    log = server.log()
    assert "Traceback" not in log and " ERROR " not in log, log


class FileSender(Protocol):
    """Answers each byte received with ``sendfile`` of the next of *files*; records how it ended."""

    def __init__(self, files: list[Path]) -> None:
        self.files = files
        self.sent = 0
        self.lost: list[BaseException | None] = []

    def connection_made(self, transport: Transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        for _ in data:
            with open(self.files[self.sent % len(self.files)], "rb") as file:  # closed at once: the driver dups
                self.transport.sendfile(file)
            self.sent += 1

    def connection_lost(self, exc: BaseException | None) -> None:
        self.lost.append(exc)


def stuffed_pair() -> tuple[socket.socket, socket.socket]:
    """A connected (server side, client side) TCP pair whose client never reads, small buffers."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.socket()
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        client.connect(listener.getsockname())
        server, _ = listener.accept()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    return server, client


def run_until(loop: EventLoop, predicate, timeout: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    """Run *loop* until *predicate()* (bounded in steps and time)."""
    deadline = time.monotonic() + timeout
    for _ in range(100_000):
        if predicate():
            return
        assert time.monotonic() < deadline, "condition not reached in time"
        loop.run_once(0.01)
    raise AssertionError("condition not reached within the step limit")


def test_queued_file_responses_hold_one_descriptor_per_file_and_pause_reading(tmp_path):
    tiny = tmp_path / "tiny"
    tiny.write_bytes(b"t")
    loop = EventLoop(selectors.PollSelector())
    server, client = stuffed_pair()
    try:
        protocol = FileSender([tiny])
        connection = loop.add_connection(server, "greedy", protocol)
        filler = b"f" * 4096
        for _ in range(10_000):  # fill the kernel's buffers until our queue starts
            connection.write(filler)
            if connection.buffered:
                break
        before = len(os.listdir("/proc/self/fd"))
        client.sendall(b"x" * (FILES_HIGH_WATER * 4))  # one read: four times the queued-file bound
        run_until(loop, lambda: protocol.sent == FILES_HIGH_WATER * 4)
        # One descriptor for the 256 queued responses (before: one each), and the
        # connection is no longer read (before: the byte count alone decided, and it is small).
        assert len(os.listdir("/proc/self/fd")) == before + 1
        assert connection.buffered < 64 * 1024 and not connection.reading
        client.setblocking(False)
        received = bytearray()

        def drained() -> bool:
            with contextlib.suppress(BlockingIOError):
                received.extend(client.recv(1 << 20))
            return received.endswith(b"t" * (FILES_HIGH_WATER * 4))

        run_until(loop, drained)
        assert connection.reading and not connection.buffered  # the queue drained: read again
        assert len(os.listdir("/proc/self/fd")) == before
    finally:
        client.close()
        loop.close()


def limit_leaving(room: int) -> int:
    """A descriptor limit that leaves this process exactly *room* free descriptor numbers below it."""
    held = {int(fd) for fd in os.listdir("/proc/self/fd")}
    fd = free = 0
    while True:
        if fd not in held:
            free += 1
            if free > room:
                return fd
        fd += 1


def test_out_of_descriptors_ends_only_the_connection_that_queued_the_response(tmp_path, caplog):
    files = []
    for index in range(40):
        files.append(tmp_path / f"file{index}")
        files[-1].write_bytes(os.urandom(1 << 16))
    loop = EventLoop(selectors.PollSelector(), handle_error=lambda exc, peer: errors.append(exc))
    errors: list[BaseException] = []
    greedy_server, greedy_client = stuffed_pair()
    other_server, other_client = stuffed_pair()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        greedy = FileSender(files)  # a different file each: one descriptor each
        other = FileSender(files[:1])
        loop.add_connection(greedy_server, "greedy", greedy)
        loop.add_connection(other_server, "other", other)
        # Room for a few dups and one open() at a time: the greedy client's 40 run out.
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit_leaving(8), hard))
        with caplog.at_level(logging.WARNING, logger="forkthread"):
            greedy_client.sendall(b"x" * len(files))
            run_until(loop, lambda: greedy.lost)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        assert isinstance(greedy.lost[0], OutOfDescriptors), greedy.lost
        # The other connection is served on.
        other_client.sendall(b"x")
        other_client.setblocking(False)
        answer = bytearray()

        def answered() -> bool:
            with contextlib.suppress(BlockingIOError):
                answer.extend(other_client.recv(1 << 16))
            return bool(answer)

        run_until(loop, answered)
        assert not other.lost and not errors
        warnings = [record for record in caplog.records if record.levelno >= logging.WARNING]
        assert len(warnings) == 1 and "no descriptor" in warnings[0].getMessage(), warnings
        assert not any(record.exc_info for record in caplog.records)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        for sock in (greedy_client, other_client):
            sock.close()
        loop.close()
