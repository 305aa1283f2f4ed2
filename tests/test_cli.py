"""The command line: list, usage errors (exit 2), listen failures (exit 1), no tracebacks."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys

import pytest

from framework.address import bind_socket, local_address, parse_address
from framework.strategies import STRATEGIES
from tests.support import child_env, thread_states, wait_for


def run_cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "framework", *args], capture_output=True, text=True,
                          env=child_env(), timeout=timeout, stdin=subprocess.DEVNULL)


def test_list_shows_every_server_and_strategy_with_a_description():
    result = run_cli("list")
    assert result.returncode == 0
    for name in ["daytime", "echo", *STRATEGIES]:
        line = next(line for line in result.stdout.splitlines() if line.split()[:1] == [name])
        assert len(line.split()) > 2, line


def test_help_is_laid_out_to_the_width_columns_asks_for():
    # cli.help_width() works the width out as shutil would (argparse's own way loads shutil).
    def help_lines(columns: int) -> list[str]:
        result = subprocess.run([sys.executable, "-m", "framework", "serve", "nbytes", "--help"],
                                capture_output=True, text=True, env=child_env(COLUMNS=str(columns)), timeout=30,
                                stdin=subprocess.DEVNULL)
        assert result.returncode == 0, result.stderr
        return result.stdout.splitlines()

    narrow, wide = help_lines(50), help_lines(120)
    assert len(narrow) > len(wide)
    # Wrapped help text (usage, option names and group titles are not wrapped by argparse).
    text = [line for line in narrow if line.startswith(" ") and line.lstrip()[:1] not in ("-", "[", "")]
    assert text and max(len(line) for line in text) <= 48


def test_version():
    result = run_cli("--version")
    assert result.returncode == 0 and result.stdout.startswith("forkthread ")


@pytest.mark.parametrize("args", [
    [],
    ["serve"],
    ["serve", "nosuchserver"],
    ["serve", "echo", "--bind", "nonsense"],
    ["serve", "echo", "--bind", "127.0.0.1:99999"],
    ["serve", "echo", "--strategy", "nosuchstrategy", "--bind", "127.0.0.1:0"],
    ["serve", "echo", "--timeout", "-3"],
    ["serve", "echo", "--workers", "zero"],
    ["serve", "echo", "--timeout", "abc"],
    ["serve", "echo", "--graceful-timeout", "nan"],
    ["serve", "echo", "--timeout", "inf"],
    ["client", "daytime", "--timeout", "-1", "127.0.0.1:1"],
    ["client", "echo", "--timeout", "nan", "127.0.0.1:1"],
    ["serve", "chat", "--max-buffer", "-1"],
    ["serve", "message", "--max-message", "0"],
    ["serve", "http", "--header-timeout", "inf"],
    ["bench", "stevens", "--duration", "nan"],
    ["serve", "echo", "--keepalive", "99999999999,1,1"],  # every connection's setsockopt failed
    ["serve", "echo", "--keepalive", "60,10,128"],
    ["serve", "echo", "--strategy", "poll", "--max-requests", "-1"],  # was ignored outside preforked
    ["frobnicate"],
])
def test_usage_errors_exit_2_without_traceback(args):
    result = run_cli(*args)
    assert result.returncode == 2, result
    assert "Traceback" not in result.stderr
    assert result.stderr.strip()
    assert result.stdout == ""


def test_busy_address_exits_1_with_one_line():
    with bind_socket(parse_address("127.0.0.1:0")) as taken:
        address = str(local_address(taken))
        result = run_cli("serve", "echo", "--bind", address)
    assert result.returncode == 1
    assert result.stderr.strip() == f"forkthread: cannot listen on {address}: Address already in use"
    assert result.stdout == ""


def test_live_unix_socket_is_refused(tmp_path):
    path = tmp_path / "busy.sock"
    with bind_socket(parse_address(f"unix:{path}")):
        result = run_cli("serve", "echo", "--bind", f"unix:{path}")
    assert result.returncode == 1
    assert "cannot listen on unix:" in result.stderr and "Traceback" not in result.stderr


def test_console_script_entry_point_matches_module():
    from framework.cli import main

    assert main(["list"]) == 0


def test_serve_help_lists_strategy_options():
    result = run_cli("serve", "echo", "--help")
    assert result.returncode == 0
    for option in ["--bind", "--strategy", "--log-level", "--timeout", "--graceful-timeout", "--max-connections"]:
        assert option in result.stdout


@pytest.mark.parametrize("buffered", [True, False], ids=["buffered", "unbuffered"])
@pytest.mark.parametrize("args", [["list"], ["--help"]])
def test_a_reader_that_goes_away_gets_no_traceback(args, buffered):
    # ``forkthread list | head -1``: the pipe's reader is gone before we write.
    env = child_env()
    env.pop("PYTHONUNBUFFERED", None)
    if not buffered:
        env["PYTHONUNBUFFERED"] = "1"
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        result = subprocess.run([sys.executable, "-m", "framework", *args], stdout=write_end,
                                stderr=subprocess.PIPE, text=True, env=env, timeout=30, stdin=subprocess.DEVNULL)
    finally:
        os.close(write_end)
    assert result.stderr == ""  # no traceback, no "Exception ignored" at exit
    # argparse itself ignores a failed write of unbuffered help text (status 0 then).
    assert result.returncode in ((0, 1) if args == ["--help"] else (1,))


def test_an_output_directory_that_cannot_be_made_is_one_line_and_exit_1():
    # bench measured, then failed to create --out with a FileNotFoundError traceback; now it checks first.
    result = run_cli("bench", "stevens", "--quick", "--strategies", "iterative", "--servers", "none",
                     "--connections", "20", "--out", "/proc/forkthread-no-such-dir", timeout=120)
    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line == "forkthread: cannot write results into /proc/forkthread-no-such-dir: No such file or directory"


def test_a_client_for_a_host_that_does_not_resolve_is_one_line_and_exit_1():
    # connect() raised AddressError past the client's error handling: a traceback.
    result = run_cli("client", "echo", "nosuchhost.invalid:7")
    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "cannot resolve 'nosuchhost.invalid'" in result.stderr


def test_a_client_cacert_that_does_not_load_names_the_file(tmp_path):
    # The message named only the server's address: "127.0.0.1:PORT: No such file or directory".
    missing = str(tmp_path / "missing.pem")
    with bind_socket(parse_address("127.0.0.1:0")) as listener:  # bound and listening: connect succeeds
        address = local_address(listener)
        result = run_cli("client", "echo", "--tls", "--cacert", missing, str(address))
    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr
    assert f"cannot load --cacert {missing!r}" in result.stderr


def test_a_stalled_unix_socket_server_does_not_hang_start_up(tmp_path, serve, strategy):
    # Was: the stale-socket check's blocking connect() waited for ever on a live server that did not accept.
    path = tmp_path / "stalled.sock"
    stalled = serve("echo", "--backlog", "1", "--workers", "2", strategy=strategy, bind=f"unix:{path}")
    if strategy == "preforked":  # the workers may still be starting when the master says it listens
        assert wait_for(lambda: len(stalled.tree()) == 2, timeout=10)
    stopped = [stalled.pid, *stalled.tree()]
    for process in stopped:
        os.kill(process, signal.SIGSTOP)
    # Every thread of every process stopped: none may still accept and open a slot in the backlog.
    # (A pool thread waiting in accept() stops on its way back from the kernel, and may take a
    # connection that came meanwhile: the main thread's "T" alone says nothing of it.)
    assert wait_for(lambda: all(set(thread_states(process).values()) == {"T"} for process in stopped), timeout=10)
    fillers = []
    try:
        while True:  # fill the stopped server's backlog: the next connect would block
            filler = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            filler.setblocking(False)
            fillers.append(filler)
            try:
                filler.connect(str(path))
            except BlockingIOError:
                break
            assert len(fillers) < 100, "the backlog never filled"
        result = run_cli("serve", "echo", "--bind", f"unix:{path}", "--strategy", strategy, timeout=30)
    finally:
        for filler in fillers:
            filler.close()
        for process in stopped:
            os.kill(process, signal.SIGCONT)
    assert result.returncode == 1, result
    assert result.stderr.strip() == f"forkthread: cannot listen on unix:{path}: Address already in use" \
        " (by a server that is not accepting connections)"
    assert path.exists()  # the live server's file was left alone


FROZEN_AT_EXIT_SERVER = '''
import atexit, gc, os

from servers.echo import EchoServer


def _record() -> None:
    # Registered at import, before serve's own handler: atexit runs it after that one.
    with open(os.environ["FROZEN_REPORT"], "w") as report:
        report.write(str(gc.get_freeze_count()))


atexit.register(_record)


class Server(EchoServer):
    """The echo server, in a module that reports the frozen heap at exit."""
'''


def test_serve_freezes_the_heap_before_the_interpreters_final_collections(tmp_path, serve):
    # Was: the teardown's full collections visited the whole heap at every stop, for nothing.
    (tmp_path / "frozen_at_exit.py").write_text(FROZEN_AT_EXIT_SERVER)
    report = tmp_path / "frozen"
    env = child_env()
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), env.get("PYTHONPATH", "")])
    env["FROZEN_REPORT"] = str(report)
    server = serve("frozen_at_exit:Server", env=env)
    with server.connect() as sock:
        sock.sendall(b"ping")
        assert sock.recv(4) == b"ping"
    server.stop()
    # The user's atexit handler still ran (normal exit), and saw the heap frozen.
    assert int(report.read_text()) > 1000
