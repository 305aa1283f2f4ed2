"""A stop closes connections idle between messages at once, and says when it begins and how it ended."""

from __future__ import annotations

import re
import signal

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
