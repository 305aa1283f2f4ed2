"""Chat out of descriptors (issue 25 item 10): a warning now and then, never a traceback per client.

Under ``threading`` each chat client's outbox duplicates its socket for a
sender thread; at ``ulimit -n 64`` every client past the limit logged a
traceback from ``sock.dup()`` (53 of them), while ``poll`` said it once.
Both strategies that carry chat now end such a client alone, quietly, with
one throttled warning, and serve on.  The test leaves the server room for
exactly one more descriptor: each client is accepted, and under
``threading`` its outbox's duplicate is the one that fails.
"""

from __future__ import annotations

import resource
import socket

import pytest

from tests.reliability_support import count_lines, lowest_free_fd, restore_nofile
from tests.support import wait_for

CHAT_STRATEGIES = ("threading", "poll")


def _welcomed(server) -> bool:  # type: ignore[no-untyped-def]
    try:
        with server.connect(timeout=5) as sock:
            return sock.recv(200).startswith(b"* welcome")
    except OSError:
        return False


def _closed_by_server(client: socket.socket) -> bool:
    client.setblocking(False)  # a socket with a timeout would wait for it in recv
    try:
        return client.recv(4096, socket.MSG_PEEK) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def test_chat_out_of_descriptors_warns_without_tracebacks(serve, strategy):
    if strategy not in CHAT_STRATEGIES:
        pytest.skip(f"chat runs under {', '.join(CHAT_STRATEGIES)} only")
    server = serve("chat", strategy=strategy)  # no client yet: every descriptor below the lowest free is held
    soft, hard = resource.prlimit(server.pid, resource.RLIMIT_NOFILE)
    resource.prlimit(server.pid, resource.RLIMIT_NOFILE, (lowest_free_fd(server.pid) + 1, hard))
    clients: list[socket.socket] = []
    try:
        for _ in range(20):
            clients.append(server.connect())
        # threading: a client got past accept but found no descriptor for its outbox (before the
        # fix: a traceback each; now the warning); poll duplicates nothing: its accept says it.
        reached = "for its outbox|handler failed" if strategy == "threading" else "Too many open files"
        assert wait_for(lambda: count_lines(server.log(), reached) > 0, timeout=30), server.log()
        if strategy == "threading":  # every client meets the same fate: wait until the last has
            assert wait_for(lambda: all(_closed_by_server(client) for client in clients), timeout=30), server.log()
    finally:
        restore_nofile({server.pid: (soft, hard)})
        for client in clients:
            client.close()
    assert wait_for(lambda: _welcomed(server), timeout=30), server.log()
    log = server.log()
    assert "Traceback" not in log and "handler failed" not in log, log
    assert count_lines(log, "Too many open files") <= 4, log  # throttled: once, and again 10 s later at most
