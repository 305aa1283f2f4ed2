"""A request that is already in the socket when a stop, reload or recycle begins is answered.

The server is frozen (SIGSTOP) so that the request and the stop arrive together:
when it runs again, the stop must not close the connection before its request
was read (HTTP answers it with ``Connection: close``).
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable

import pytest

from tests.support import ServerProcess, recv_all, wait_for

GET = b"GET /f.txt HTTP/1.1\r\nHost: x\r\n\r\n"


def read_response(sock) -> bytes:  # type: ignore[no-untyped-def]
    """One response to GET /f.txt (its body ends the file), read whole."""
    data = b""
    while not data.endswith(b"hello\n"):
        chunk = sock.recv(4096)
        assert chunk, data
        data += chunk
    return data


def serving(server: ServerProcess) -> bool:
    """True once the server's status line (SIGUSR1) counts an active connection."""
    server.send_signal(signal.SIGUSR1)
    return wait_for(lambda: "active=1" in server.log(), timeout=0.5)


def signal_tree(server: ServerProcess, signum: int, pids: set[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)


def test_request_that_arrived_with_the_stop_is_answered(serve, strategy, tmp_path):
    (tmp_path / "f.txt").write_text("hello\n")
    server = serve("http", "--root", str(tmp_path), "--workers", "1", strategy=strategy)
    request_with_the_stop(server)


def request_with_the_stop(server: ServerProcess) -> None:
    """Freeze the server, send a request and a stop to every process, let it run: the request is answered."""
    with server.connect(timeout=30) as sock:
        # The connection is being served, its request not sent yet (the first read of a
        # connection is where a stop told too early threw the request away).
        assert wait_for(lambda: serving(server), timeout=30), server.log()
        pids = server.tree() | {server.pid}
        signal_tree(server, signal.SIGSTOP, pids)
        try:
            sock.sendall(GET)
            # Every process hears the stop (a worker or a child serving this connection too).
            signal_tree(server, signal.SIGTERM, pids)
        finally:
            signal_tree(server, signal.SIGCONT, pids)
        answer = recv_all(sock)
    assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"hello\n"), answer
    assert server.proc.wait(60) == 0, server.log()


def preforked_variants() -> list[object]:
    return [pytest.param(worker, accept, id=f"{worker}-{accept}") for worker in ("iterative", "threads", "poll")
            for accept in ("shared", "lock", "reuseport", "passfd")]


@pytest.mark.only_strategies("preforked")
@pytest.mark.parametrize(("worker", "accept"), preforked_variants())
def test_preforked_worker_answers_a_request_that_arrived_with_the_stop(serve, tmp_path, worker, accept):
    (tmp_path / "f.txt").write_text("hello\n")
    server = serve("http", "--root", str(tmp_path), "--workers", "1", "--worker", worker, "--accept", accept,
                   "--threads", "2", strategy="preforked")
    request_with_the_stop(server)


def fetch_once(server: ServerProcess) -> bytes:
    """One request on a connection of its own, as curl makes it; the whole answer."""
    with server.connect(timeout=30) as sock:
        sock.sendall(b"GET /f.txt HTTP/1.0\r\n\r\n")
        return recv_all(sock)


def requests_during(server: ServerProcess, disturb: Callable[[], bool], least: int) -> list[bytes]:
    """Requests one after another while *disturb()* (called between them) says go on, and at least *least*."""
    answers: list[bytes] = []
    going = True
    while (going or len(answers) < least) and len(answers) < 2000:
        if going:
            going = disturb()
        answers.append(fetch_once(server))
    return answers


def lost(answers: list[bytes]) -> list[bytes]:
    return [answer for answer in answers if not (answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"hello\n"))]


@pytest.mark.only_strategies("preforked")
@pytest.mark.parametrize(("worker", "accept"), preforked_variants())
def test_no_request_is_lost_to_reloads(serve, tmp_path, worker, accept):
    (tmp_path / "f.txt").write_text("hello\n")
    server = serve("http", "--root", str(tmp_path), "--workers", "2", "--worker", worker, "--accept", accept,
                   "--threads", "2", "--log-level", "warning", strategy="preforked")
    hups = iter(range(50))

    def reload() -> bool:
        if next(hups, None) is None:
            return False
        server.send_signal(signal.SIGHUP)
        return True

    answers = requests_during(server, reload, least=100)
    assert not lost(answers), (len(lost(answers)), len(answers), lost(answers)[:3], server.log()[-3000:])


@pytest.mark.only_strategies("preforked")
@pytest.mark.parametrize(("worker", "accept"), preforked_variants())
def test_no_request_is_lost_to_recycling(serve, tmp_path, worker, accept):
    (tmp_path / "f.txt").write_text("hello\n")
    server = serve("http", "--root", str(tmp_path), "--workers", "2", "--worker", worker, "--accept", accept,
                   "--threads", "2", "--max-requests", "3", "--log-level", "warning", strategy="preforked")
    answers = requests_during(server, lambda: False, least=150)
    assert not lost(answers), (len(lost(answers)), len(answers), lost(answers)[:3], server.log()[-3000:])
