"""At the graceful deadline every strategy ends: a handler that never returns, or its threads, cannot hold it."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import pytest

STUBBORN = str(Path(__file__).resolve().parent / "stubborn_server.py")

#: Strategies that carry a blocking handler (poll does not).
HANDLER_STRATEGIES = ("iterative", "forking", "threading", "prethreaded", "preforked")


def start_stubborn(serve, strategy: str, kind: str):  # type: ignore[no-untyped-def]
    if strategy not in HANDLER_STRATEGIES and kind != "dozer":
        pytest.skip(f"{strategy} carries no blocking handler")
    return serve(kind, "--graceful-timeout", "1", "--workers", "1", "--log-level", "info", strategy=strategy,
                 program=[sys.executable, STUBBORN, kind])


def stop_after_answer(server, answer: bytes, keep_open: bool) -> str:  # type: ignore[no-untyped-def]
    """Send a line, read *answer*, SIGTERM (the connection kept open or not): the server ends; its log."""
    with server.connect(timeout=30) as sock:
        sock.sendall(b"hello\n")
        assert sock.recv(64) == answer
        if keep_open:
            server.send_signal(signal.SIGTERM)
    if not keep_open:
        server.send_signal(signal.SIGTERM)
    # Far beyond the 1 s graceful timeout: only a server that never ends misses it.
    assert server.proc.wait(30) in (0, 1), server.log()
    server.expected_status = server.proc.returncode
    log = server.log()
    assert "Traceback" not in log, log
    return log


@pytest.mark.parametrize("kind", ["sleeper", "spinner"])
def test_a_handler_that_never_returns_cannot_outlive_the_deadline(serve, strategy, kind):
    log = stop_after_answer(start_stubborn(serve, strategy, kind), b"busy\n", keep_open=True)
    assert "stopping: waiting up to" in log
    assert "graceful timeout passed" in log, log


def test_a_protocol_callback_that_never_returns_cannot_outlive_the_deadline(serve, strategy):
    # The serving thread never comes back to run the signal actions (poll, iterative...).
    stop_after_answer(start_stubborn(serve, strategy, "dozer"), b"busy\n", keep_open=True)


def test_a_handlers_non_daemon_thread_cannot_outlive_the_deadline(serve, strategy):
    stop_after_answer(start_stubborn(serve, strategy, "leaver"), b"left\n", keep_open=False)
