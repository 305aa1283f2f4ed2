"""A stop closes connections idle between messages at once, and says when it begins and how it ended."""

from __future__ import annotations

import re
import signal
import socket
import time

import pytest

from tests.support import recv_all

#: Far beyond the test's own deadline: a stop that waits for the idle client fails on time.
GRACEFUL = "60"


def stop_promptly(server) -> str:  # type: ignore[no-untyped-def]
    """SIGTERM; the server must exit well inside the graceful timeout; its log."""
    assert server.stop(signal.SIGTERM, timeout=20) == 0, server.log()
    return server.log()


def test_an_idle_echo_client_does_not_hold_the_stop(serve, strategy):
    server = serve("echo", "--graceful-timeout", GRACEFUL, "--workers", "1", "--log-level", "info",
                   strategy=strategy)
    with server.connect(timeout=30) as sock:
        sock.sendall(b"hello")
        assert sock.recv(64) == b"hello"  # being served, and idle from now on
        log = stop_promptly(server)
        assert recv_all(sock) == b""  # closed in order, not reset
    assert re.search(r"stopping: waiting up to 60 s for 1 connection\(s\)", log), log
    assert re.search(r"stopped after [\d.]+ s: every connection finished", log), log


@pytest.mark.parametrize("chat_strategy", ["poll", "threading"])
def test_an_idle_chat_client_does_not_hold_the_stop(serve, chat_strategy):
    server = serve("chat", "--graceful-timeout", GRACEFUL, "--log-level", "info", strategy=chat_strategy)
    with server.connect(timeout=30) as sock:
        assert sock.recv(4096).startswith(b"* welcome")
        log = stop_promptly(server)
        recv_all(sock)  # the connection ends
    assert "stopping: waiting up to 60 s for 1 connection(s)" in log, log


def test_a_chat_line_half_sent_is_waited_for(serve):
    server = serve("chat", "--graceful-timeout", "1", "--log-level", "info", strategy="poll")
    with server.connect(timeout=30) as sock:
        assert sock.recv(4096).startswith(b"* welcome")
        sock.sendall(b"half a li")  # a message on its way: not idle
        assert server.stop(signal.SIGTERM, timeout=20) == 0
        log = server.log()
    # The line was never finished: the graceful deadline ended it, and the stop says so.
    assert "graceful timeout passed: ending 1 connection(s) still in progress" in log, log
    assert re.search(r"stopped after [\d.]+ s: 1 connection\(s\) ended at the graceful deadline", log), log


def test_half_a_request_unread_when_the_stop_is_seen_is_waited_for(serve):
    """A stop seen before the loop read what had arrived must not take the connection for idle.

    The event loop is held in one connection's work (``sleep:3000``) while a second,
    quiet for longer than the stop's idle grace, gets half a request and SIGTERM
    follows: the signal's action then runs in the last resort's helper thread
    (the loop has not run it for ``UNHEARD_GRACE``), so the stop begins before the
    loop has read the half.  Read first, the half makes the connection busy:
    its request is answered.  Closed as idle, the half is discarded unanswered.
    """
    server = serve("work", "--work", "sleep:3000", "--graceful-timeout", GRACEFUL, "--log-level", "info",
                   strategy="poll")
    with server.connect(timeout=30) as busy, server.connect(timeout=30) as waiting:
        waiting.sendall(b"\n")
        assert recv_all(waiting, 3) == b"ok\n"  # served, then quiet past the idle grace while the loop sleeps
        busy.sendall(b"\n")  # the loop sleeps 3 s in this line's work
        # Let the loop take that line alone and fall asleep in its work: sent at once, the half
        # could be read in the same turn (the test then passes whatever the loop's rule).
        time.sleep(0.5)
        waiting.sendall(b"first half;")  # arrives while the loop is held
        server.send_signal(signal.SIGTERM)
        waiting.sendall(b"second half\n")
        waiting.shutdown(socket.SHUT_WR)
        assert recv_all(waiting) == b"ok\n", server.log()
        assert recv_all(busy, 3) == b"ok\n"
        assert server.proc.wait(30) == 0, server.log()
