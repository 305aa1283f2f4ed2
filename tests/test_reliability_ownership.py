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
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import child_env, wait_for

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
    # Every connection child is reaped: no zombie is left among our children.
    wait_for(lambda: not [pid for pid in proc_children(os.getpid()) if process_state(pid) == "Z"], timeout=20)
    zombies = [pid for pid in proc_children(os.getpid()) if process_state(pid) == "Z"]
    return {"statuses": statuses, "zombies": zombies}

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
    assert result["zombies"] == [], done.stderr
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
