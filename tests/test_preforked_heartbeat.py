"""``--worker-timeout``: a pre-forked worker silent that long is killed and replaced (gunicorn's heartbeat)."""

from __future__ import annotations

import os
import signal

import pytest

from tests.reliability_support import echo_roundtrip
from tests.support import wait_for


@pytest.mark.only_strategies("preforked")
@pytest.mark.parametrize("worker", ["iterative", "threads", "poll"])
def test_a_stopped_worker_is_replaced_after_the_worker_timeout(serve, worker):
    server = serve("echo", "--workers", "1", "--worker", worker, "--threads", "2", "--worker-timeout", "2",
                   "--log-level", "info", strategy="preforked")
    assert echo_roundtrip(server, b"before") == b"before"
    (stopped,) = server.tree()
    os.kill(stopped, signal.SIGSTOP)
    try:
        # A deadline far beyond the 2 s timeout (and the master's 1 s tick): only a master that never looks misses it.
        assert wait_for(lambda: f"(pid {stopped}) silent for" in server.log(), timeout=30), server.log()
        assert wait_for(lambda: stopped not in server.tree() and len(server.tree()) == 1, timeout=30), server.log()
    finally:
        try:
            os.kill(stopped, signal.SIGCONT)
        except ProcessLookupError:
            pass
    assert echo_roundtrip(server, b"after") == b"after"  # its successor serves
    assert "serving 0 connection(s)" in server.log()


@pytest.mark.only_strategies("preforked")
def test_a_busy_worker_keeps_beating(serve):
    # A connection held open longer than the timeout is not silence: the worker lives on.
    server = serve("echo", "--workers", "1", "--worker-timeout", "1", "--log-level", "info", strategy="preforked")
    assert echo_roundtrip(server, b"up") == b"up"
    (worker,) = server.tree()
    with server.connect(timeout=30) as sock:
        sock.sendall(b"hold")
        assert sock.recv(64) == b"hold"
        assert not wait_for(lambda: "silent for" in server.log(), timeout=3)
        sock.sendall(b"still")
        assert sock.recv(64) == b"still"
    assert server.tree() == {worker}


def test_worker_timeout_is_refused_when_not_a_duration(tmp_path):
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "framework", "serve", "echo", "--strategy", "preforked",
                             "--worker-timeout", "-1"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "--worker-timeout" in result.stderr and "Traceback" not in result.stderr
