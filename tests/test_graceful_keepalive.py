"""A graceful stop closes idle keep-alive connections at once instead of waiting out the deadline."""

from __future__ import annotations

import signal

from tests.support import recv_all


def test_sigterm_closes_idle_keepalive_connections_promptly(serve, strategy, tmp_path):
    (tmp_path / "f.txt").write_text("hello\n")
    server = serve("http", "--root", str(tmp_path), "--graceful-timeout", "3600", strategy=strategy)
    # Iterative serves one connection at a time, and a pool of iterative workers (processes or
    # sub-interpreters) may hand two connections to the same worker: one idle client there.
    count = 1 if strategy in ("iterative", "preforked", "interpreters") else 3
    idle = [server.connect(timeout=30) for _ in range(count)]
    try:
        for sock in idle:
            sock.sendall(b"GET /f.txt HTTP/1.1\r\nHost: x\r\n\r\n")
            head = b""
            while not head.endswith(b"hello\n"):
                chunk = sock.recv(4096)
                assert chunk, head
                head += chunk
            assert b"HTTP/1.1 200" in head and b"Connection: close" not in head  # kept alive, now idle
        # The stop's deadline (60 s) is far inside the graceful timeout (an hour): the server
        # exits within it only if nobody waited for the idle clients to leave.
        assert server.stop(signal.SIGTERM, timeout=60) == 0
        for sock in idle:
            assert recv_all(sock) == b""  # an orderly close, not a reset
    finally:
        for sock in idle:
            sock.close()
