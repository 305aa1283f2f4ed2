"""The access log never blocks serving, and a failing one is reported (issue 25 item 6).

`--access-log -` into a pipe nobody reads used to freeze poll and preforked after ~225 requests
(every thread under threading), and hold SIGTERM; on a full disk lines vanished without a word.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from framework import linesink
from framework.linesink import LineSink
from tests.http_support import exchange, make_root
from tests.support import wait_for

F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
LINE = b"127.0.0.1 - - [04/Dec/2026:14:21:38 +0000] \"GET /hello.txt HTTP/1.1\" 200 13\n"


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    read_end, write_end = os.pipe()
    fcntl.fcntl(write_end, F_SETPIPE_SZ, 4096)
    os.set_blocking(write_end, False)
    yield read_end, write_end
    for fd in (read_end, write_end):
        with contextlib.suppress(OSError):
            os.close(fd)


def read_available(fd: int) -> bytes:
    os.set_blocking(fd, False)
    chunks = []
    with contextlib.suppress(BlockingIOError):
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_a_pipe_nobody_reads_holds_then_drops_and_counts(pipe, caplog):
    read_end, write_end = pipe
    sink = LineSink(write_end, name="test log", owned=False, buffer_limit=8192)
    with caplog.at_level(logging.WARNING, logger="forkthread"):
        for _ in range(2000):
            sink.write_line(LINE)  # a blocking write would hang here once the pipe is full
    assert sink.dropped > 0 and sink.errors == 0
    assert sum("not being read" in record.getMessage() for record in caplog.records) == 1, "throttled"
    written = read_available(read_end)
    for _ in range(10):  # room again: what was held goes out, a pipe-full at a time
        sink.flush()
        written += read_available(read_end)
    assert written and written.endswith(b"\n")
    assert set(written.splitlines(keepends=True)) == {LINE}, "only whole lines"
    assert len(written) // len(LINE) + sink.dropped == 2000


def test_a_reader_gone_quiet_is_reported_before_any_line_is_lost(pipe, caplog, monkeypatch):
    _, write_end = pipe
    monkeypatch.setattr(linesink, "STALL_REPORT", 0.0)
    sink = LineSink(write_end, name="test log", owned=False)
    with caplog.at_level(logging.WARNING, logger="forkthread"):
        for _ in range(200):  # 4 KiB of pipe, then held: nothing dropped
            sink.write_line(LINE)
            time.sleep(0.001)
    assert sink.dropped == 0
    reports = [r.getMessage() for r in caplog.records]
    assert len(reports) == 1 and "not being read for" in reports[0] and "0 dropped" in reports[0]


def test_a_full_disk_is_reported_once_and_counted(caplog):
    sink = LineSink.open("/dev/full", name="test log")
    try:
        with caplog.at_level(logging.WARNING, logger="forkthread"):
            for _ in range(100):
                sink.write_line(LINE)
        assert (sink.errors, sink.dropped) == (100, 100)
        reports = [r.getMessage() for r in caplog.records if "cannot write" in r.getMessage()]
        assert len(reports) == 1 and "No space left on device" in reports[0]
        assert sink.status() == "dropped=100 errors=100"
    finally:
        sink.close()


def test_a_reader_gone_is_epipe_not_a_crash(pipe):
    read_end, write_end = pipe
    os.close(read_end)
    sink = LineSink(write_end, name="test log", owned=False)
    sink.write_line(LINE)
    assert (sink.errors, sink.dropped) == (1, 1)


def test_leave_reports_held_lines_once(pipe, caplog):
    _, write_end = pipe
    sink = LineSink(write_end, name="test log", owned=False)
    for _ in range(200):
        sink.write_line(LINE)
    with caplog.at_level(logging.WARNING, logger="forkthread"):
        sink.leave()
        sink.close()
    totals = [r.getMessage() for r in caplog.records if "dropped in all" in r.getMessage()]
    assert len(totals) == 1 and sink.dropped > 0


# -- a live server under every strategy ----------------------------------------------------------

def http_root(tmp_path: Path) -> Path:
    return make_root(tmp_path)


def status_counts(log: str, name: str) -> list[int]:
    return [int(n) for n in re.findall(rf"{name}=(\d+)", log)]


def test_a_stalled_access_log_pipe_does_not_stop_service_or_the_stop(serve, strategy, tmp_path):
    server = serve("http", "--root", str(http_root(tmp_path)), "--access-log", "-", strategy=strategy)
    # Standard output is the pipe the harness read 'listening on' from, and reads no more.
    fcntl.fcntl(server.proc.stdout.fileno(), F_SETPIPE_SZ, 4096)
    answered = 0
    for _ in range(10):
        with server.connect() as sock:
            replies, _ = exchange(sock, b"HEAD /hello.txt HTTP/1.1\r\nHost: x\r\n\r\n" * 500, ["HEAD"] * 500,
                                  timeout=20)
        answered += sum(reply.status == 200 for reply in replies)
    assert answered == 5000
    # Well inside the 30 s graceful timeout: a stop that waited for the pipe would miss it.
    assert server.stop(signal.SIGTERM, timeout=15) == 0
    assert "dropped" in server.log()
    assert "Traceback" not in server.log()


@contextlib.contextmanager
def full_disk(tmp_path: Path) -> Iterator[str]:
    """A log file on a full file system: a 64 KiB tmpfs filled up (as root), else /dev/full."""
    mount = tmp_path / "full"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)],
                                           capture_output=True).returncode != 0:
        yield "/dev/full"
        return
    try:
        with contextlib.suppress(OSError), open(mount / "filler", "wb") as filler:
            filler.write(b"x" * (1 << 20))
        yield str(mount / "access.log")
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


def test_a_full_disk_is_reported_and_counted_in_the_status_line(serve, strategy, tmp_path):
    with full_disk(tmp_path) as log_path:
        server = serve("http", "--root", str(http_root(tmp_path)), "--access-log", log_path, strategy=strategy)
        for _ in range(3):
            with server.connect() as sock:
                replies, _ = exchange(sock, b"GET /hello.txt HTTP/1.1\r\nHost: x\r\n\r\n" * 40, ["GET"] * 40)
            assert [reply.status for reply in replies] == [200] * 40
        assert wait_for(lambda: "No space left on device" in server.log(), timeout=10), server.log()
        if strategy != "forking":  # there each connection's child reports its own loss as it exits
            server.send_signal(signal.SIGUSR1)
            assert wait_for(lambda: sum(status_counts(server.log(), "access_log_errors")) > 0, timeout=10), \
                server.log()
        assert server.stop(signal.SIGTERM, timeout=20) == 0
    assert server.log().count("cannot write") <= 6, "reported once per interval, not once per line"
