"""Slow, stuck and half-gone peers: the server's memory stays bounded and time limits end them.

Every test runs under every selected strategy against a real server process
started with a short ``--timeout``.
"""

from __future__ import annotations

import os
import socket
import struct
import time

from tests.reliability_support import Bounded, count_lines, echo_roundtrip, report, settle, usage, workers_ready
from tests.support import recv_all, uninstrumented_env, wait_for

TIMEOUT = 1.0
#: Far more than every socket buffer on the path together (loopback buffers auto-tune to a few MiB).
FLOOD_CAP = 256 << 20


def start(serve, strategy: str, *args: str, env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    server = serve("echo", "--timeout", str(TIMEOUT), "--workers", "2", *args, strategy=strategy, env=env)
    workers_ready(server)
    assert echo_roundtrip(server, b"warm") == b"warm"
    time.sleep(0.2)
    return server


def test_client_that_never_reads_cannot_grow_server_memory(serve, strategy):
    server = start(serve, strategy, env=uninstrumented_env())  # its memory, not coverage's
    baseline = usage(server.pid)
    sock = server.connect()
    try:
        sock.setblocking(False)
        chunk = os.urandom(256 * 1024)
        sent = 0
        bound = Bounded(count=FLOOD_CAP // len(chunk), seconds=6)
        last_progress = time.monotonic()
        # Push echo requests and never read the answers: the server must stop reading
        # (flow control / a blocking write) so that the flood stalls in the kernel's buffers.
        while bound.more():
            try:
                sent += sock.send(chunk)
                last_progress = time.monotonic()
            except BlockingIOError:
                if time.monotonic() - last_progress > 0.5:
                    break  # stalled: the server stopped taking more
                time.sleep(0.01)
            except OSError:
                break  # the server already gave up on us (timeout): also fine
        grown = usage(server.pid).pss_kib - baseline.pss_kib
        assert sent < FLOOD_CAP, "the server kept reading from a client that never reads"
        assert grown < 8 * 1024, f"server grew by {grown} KiB for one client that does not read"
        # The stalled connection is dropped after --timeout: the server's tree is back to its baseline.
        started = time.monotonic()
        # The deadline is one only a hang misses; how long it took is a figure, not a bound.
        back = settle(server.pid, baseline, pss_slack_kib=8 * 1024, timeout=TIMEOUT + 60)
        assert back.fds <= baseline.fds and back.processes <= baseline.processes, (baseline, back)
        dropped_after = time.monotonic() - started
    finally:
        sock.close()
    assert echo_roundtrip(server, b"still serving") == b"still serving"
    assert "Traceback" not in server.log()
    report("never-reads", strategy=strategy, accepted_kib=sent // 1024, pss_growth_kib=grown,
           dropped_within_s=f"{dropped_after:.1f}", timeout_s=TIMEOUT)


def test_silent_client_dropped_after_idle_timeout(serve, strategy):
    server = start(serve, strategy)
    with server.connect() as sock:
        sock.settimeout(TIMEOUT + 60)  # a server that never drops it fails here
        started = time.monotonic()
        assert recv_all(sock) == b""  # the server closed on us
        elapsed = time.monotonic() - started
    # Not at once: that would be a different bug.
    assert elapsed >= TIMEOUT * 0.8, elapsed
    assert echo_roundtrip(server, b"next") == b"next"


def test_client_silent_after_a_partial_exchange_is_dropped(serve, strategy):
    server = start(serve, strategy)
    with server.connect() as sock:
        sock.settimeout(TIMEOUT + 60)  # only a hang misses it
        sock.sendall(b"half a request")
        assert recv_all(sock, limit=14) == b"half a request"
        assert recv_all(sock) == b""  # then silence: dropped after the idle timeout
    assert echo_roundtrip(server, b"next") == b"next"


def test_half_closed_client_that_does_not_read_is_finished(serve, strategy):
    # The client sends, half-closes, and reads only much later: the answer waits in the
    # buffers, the server closes its side, and nothing is lost.
    server = start(serve, strategy)
    payload = os.urandom(64 * 1024)
    with server.connect() as sock:
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        time.sleep(TIMEOUT / 2)
        sock.settimeout(10)
        assert recv_all(sock) == payload


def test_reset_mid_transfer_ends_one_connection_quietly(serve, strategy):
    server = start(serve, strategy)
    baseline = usage(server.pid)
    bound = Bounded(count=50, seconds=10)
    while bound.more():
        sock = server.connect()
        sock.sendall(os.urandom(128 * 1024))
        # SO_LINGER 0: close() sends RST, as a crashed or killed peer's kernel may.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
    after = settle(server.pid, baseline, pss_slack_kib=8192)
    assert after.fds <= baseline.fds and after.processes <= baseline.processes, (baseline, after)
    assert echo_roundtrip(server, b"next") == b"next"
    log = server.log()
    assert "Traceback" not in log and count_lines(log, r" (ERROR|CRITICAL) ") == 0, log


def test_slowloris_bytes_trickling_keep_only_their_own_connection(serve, strategy):
    # One byte per half timeout keeps a connection alive; other clients are unaffected
    # wherever the strategy serves more than one connection at once.
    server = start(serve, strategy)
    with server.connect() as slow:
        slow.settimeout(10)
        for byte in b"abc":
            slow.sendall(bytes([byte]))
            assert slow.recv(1) == bytes([byte])
            time.sleep(TIMEOUT / 2)
        if strategy != "iterative":
            assert echo_roundtrip(server, b"other") == b"other"
        slow.shutdown(socket.SHUT_WR)
        assert recv_all(slow) == b""
    assert wait_for(lambda: server.proc.poll() is None)
