"""The lab's parsers and accounting, on real output: wrk reports captured on this machine, live /proc."""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from framework.bench import procfs, wrk
from framework.bench.clients import percentile, split, summarize
from framework.bench.processes import RunningServer, ServerCommand
from framework.bench.targets import serve_command

DATA = Path(__file__).parent / "data"


def test_wrk_report_with_latency_distribution():
    result = wrk.parse_output((DATA / "wrk-nginx-1k.txt").read_text())
    assert result.requests == 20574
    assert result.seconds == pytest.approx(1.01)
    assert result.requests_per_second == pytest.approx(20442.11)
    assert result.latency == pytest.approx({"p50": 267e-6, "p75": 1.27e-3, "p90": 3.20e-3, "p99": 7.11e-3})
    assert result.socket_errors == 0 and result.non_2xx == 0


def test_wrk_report_counts_non_2xx():
    result = wrk.parse_output((DATA / "wrk-nginx-404.txt").read_text())
    assert result.non_2xx == result.requests == 35123


def test_wrk_report_counts_socket_errors():
    result = wrk.parse_output((DATA / "wrk-socket-errors.txt").read_text())
    assert result.requests == 0
    assert result.socket_errors == 9194


def test_wrk_report_with_milliseconds_at_p99():
    result = wrk.parse_output((DATA / "wrk-httpserver-errors.txt").read_text())
    assert result.latency["p99"] == pytest.approx(0.20825)
    assert result.requests == 3996 and result.seconds == pytest.approx(2.0)


@pytest.mark.parametrize("text", ["", "wrk: unable to connect\n", "Requests/sec: 5\n"])
def test_wrk_garbage_is_a_clear_error(text):
    with pytest.raises(wrk.WrkOutputError):
        wrk.parse_output(text)


@pytest.mark.parametrize(("text", "seconds"),
                         [("186.00us", 186e-6), ("1.27ms", 1.27e-3), ("2.5s", 2.5), ("1.5m", 90.0)])
def test_wrk_durations(text, seconds):
    assert wrk.parse_duration(text) == pytest.approx(seconds)


def test_wrk_argv_never_has_more_threads_than_connections():
    assert wrk.wrk_argv("http://127.0.0.1:1/", 1, 2, threads=4)[1] == "-t1"


def test_parse_stat_of_a_command_name_with_spaces_and_parentheses():
    pid = os.fork()
    if pid == 0:  # child: a hostile command name, then wait to be killed
        ctypes.CDLL(None).prctl(15, b"a) (b c", 0, 0, 0)  # PR_SET_NAME
        time.sleep(30)
        os._exit(0)
    try:
        for _ in range(200):
            stat = procfs.read_stat(pid)
            if stat is not None and stat.comm == "a) (b c":
                break
            time.sleep(0.01)
        assert stat is not None and stat.comm == "a) (b c"
        assert stat.pid == pid and stat.ppid == os.getpid()
        assert stat.state in "RS"
        assert stat.threads == 1
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


def test_parse_stat_fields_of_this_process():
    stat = procfs.parse_stat(Path("/proc/self/stat").read_text())
    assert stat.pid == os.getpid() and stat.ppid == os.getppid()
    assert stat.rss_pages > 0 and stat.minflt > 0


def test_parse_stat_rejects_truncated_lines():
    with pytest.raises(ValueError):
        procfs.parse_stat("12 (x) S 1 2 3")


def test_tree_cpu_and_faults_include_reaped_children_and_live_ones():
    """A reaped child's CPU and faults move into its parent's cutime/cminflt: the tree totals must keep them."""
    def burn(seconds: float) -> None:
        end = time.process_time() + seconds
        while time.process_time() < end:
            pass

    ballast = bytearray(4 << 20)  # 1,024 pages: a child writing one byte in each takes a fault per page

    read_end, write_end = os.pipe()
    middle = os.fork()
    if middle == 0:  # the "server": one child that burns and is reaped, one that burns and lives on
        os.close(read_end)
        reaped = os.fork()
        if reaped == 0:
            burn(0.3)
            for offset in range(0, len(ballast), 4096):
                ballast[offset] = 1
            os._exit(0)
        os.waitpid(reaped, 0)
        live = os.fork()
        if live == 0:
            burn(0.3)
            os.write(write_end, b"x")
            time.sleep(30)
            os._exit(0)
        time.sleep(30)
        os._exit(0)
    os.close(write_end)
    try:
        assert os.read(read_end, 1) == b"x"
        members = procfs.tree(middle)
        assert len(members) == 2
        assert procfs.tree_cpu_seconds(middle) >= 0.55
        assert procfs.tree_minor_faults(middle) >= 1024
    finally:
        for stat in procfs.tree(middle):
            os.kill(stat.pid, signal.SIGKILL)
        os.waitpid(middle, 0)
        os.close(read_end)


def test_wait4_charges_forked_children_to_the_server():
    """A forking nbytes server (iterative until forking lands): its exit rusage covers the whole tree."""
    import socket

    from framework.strategies import STRATEGIES

    strategy = "forking" if "forking" in STRATEGIES else "iterative"
    with RunningServer(serve_command("nbytes", strategy, [], [])) as server:
        before = server.cpu_seconds()
        faults_before = server.minor_faults()
        main_before = server.main_process_usage()
        for _ in range(5):
            with socket.create_connection((server.host, server.port), 5) as sock:
                sock.sendall(b"10\n")
                assert sock.recv(100) == b"abcdefghij"
        main_after = server.main_process_usage()
        stopped = server.stop()
    assert stopped.status == 0 and not stopped.killed
    assert stopped.cpu_seconds >= before > 0
    assert stopped.minor_faults >= faults_before > 0
    # The main process's own faults leave out its children's: each child copies pages of its own.
    assert main_before is not None and main_after is not None
    assert server.main_process_usage() is None  # reaped: no figure rather than a wrong one
    main_faults = main_after[1] - main_before[1]
    assert 0 < main_faults < stopped.minor_faults - faults_before
    assert main_after[0] >= main_before[0] > 0


#: Like nginx: listens, then (a while later) handles its stop signal and writes its pid file.
LISTENS_BEFORE_IT_HANDLES_SIGNALS = """\
import os, signal, socket, sys, time
listener = socket.create_server(("127.0.0.1", int(sys.argv[1])))
time.sleep(0.5)
signal.signal(signal.SIGQUIT, lambda *_: sys.exit(0))
with open(sys.argv[2], "w") as file:
    file.write(str(os.getpid()))
time.sleep(60)
"""


def test_a_server_with_a_ready_file_is_ready_only_once_the_file_exists(tmp_path):
    """An open port alone is not ready when the stop signal is handled later: stopping at once must be graceful."""
    from framework.bench.processes import ServerCommand, free_port

    port, ready_file = free_port(), str(tmp_path / "server.pid")
    command = ServerCommand([sys.executable, "-c", LISTENS_BEFORE_IT_HANDLES_SIGNALS, str(port), ready_file],
                            ready_pattern=None, port=port, stop_signal=signal.SIGQUIT, ready_file=ready_file)
    with RunningServer(command) as server:
        assert os.path.exists(ready_file)
        stopped = server.stop()
    assert stopped.status == 0 and not stopped.killed


def test_smaps_rollup_parser():
    values = procfs.parse_smaps_rollup(Path("/proc/self/smaps_rollup").read_text())
    assert values["Rss"] > 0 and "Pss" in values


def test_statistics_helpers():
    assert split(10, 4) == [3, 3, 2, 2]
    assert split(2, 4) == [1, 1]
    assert percentile([], 0.5) is None
    assert percentile(list(range(1, 101)), 0.99) == 99
    assert percentile([5.0], 0.99) == 5.0
    assert summarize([3.0, None, 1.0, 2.0]) == {"median": 2.0, "min": 1.0, "max": 3.0}


#: A server that talks while it starts: many small writes while the lab polls its output.
CHATTY_START = """
import socket, sys
listener = socket.create_server(("127.0.0.1", 0))
for number in range(20000):
    sys.stdout.write(f"line {number}\\n")
    sys.stdout.flush()
print(f"listening on 127.0.0.1:{listener.getsockname()[1]}", flush=True)
listener.accept()
"""


def test_a_servers_output_is_kept_whole_while_the_lab_reads_it():
    # The server's stdout shares the output file's offset with the lab, whose every poll seeks
    # and reads: unless the file appends, a write can land where the lab just seeked to.
    command = ServerCommand([sys.executable, "-c", CHATTY_START])
    with RunningServer(command) as server:
        lines = server.log().splitlines()
        server.stop()
    assert lines[:20000] == [f"line {number}" for number in range(20000)]
    assert lines[20000].startswith("listening on 127.0.0.1:")
