"""Command-line values that pass validation and then hurt, and messages that mislead (issue 25 items 4, 10, 12).

Every duration is one every strategy can wait (poll's limit is 2**31 ms),
every count one the machine can start, every usage error one line, true to
what is accepted, said under the program's own name; an option the chosen
strategy ignores is warned about.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from framework.cli import ignored_options
from framework.limits import MAX_THREADS, MAX_WAIT_SECONDS, MAX_WORKERS, check_duration
from framework.server import Server
from framework.strategies import STRATEGIES, StrategyOptions, strategy_class
from tests.support import child_env, echo_exchange, wait_for
from tests.test_cli import run_cli


def _one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, result
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr  # no usage block before the line that matters
    assert "Traceback" not in result.stderr
    return lines[0]


@pytest.mark.parametrize("value", ["2592000", "1e9", "1e308", str(MAX_WAIT_SECONDS + 1)])
def test_a_timeout_no_strategy_can_wait_is_refused_at_start(strategy, value):
    # Was: poll's first connection raised OverflowError, the blocking strategies logged a failure per
    # connection, 1e308 reset every connection.
    line = _one_line_error(run_cli("serve", "echo", "--bind", "127.0.0.1:0", "--strategy", strategy,
                                   "--timeout", value))
    assert "--timeout" in line and str(MAX_WAIT_SECONDS) in line


def test_the_longest_timeout_accepted_serves(strategy, serve):
    server = serve("echo", "--timeout", str(MAX_WAIT_SECONDS), "--graceful-timeout", str(MAX_WAIT_SECONDS),
                   "--workers", "1", "--threads", "2", strategy=strategy)
    with server.connect() as sock:
        assert echo_exchange(sock, b"a month is too long\n") == b"a month is too long\n"
    assert "Traceback" not in server.log()


@pytest.mark.parametrize(("option", "value"), [("--graceful-timeout", "2592000"), ("--graceful-timeout", "0")])
def test_graceful_timeout_is_bounded_too(option, value):
    line = _one_line_error(run_cli("serve", "echo", option, value))
    assert "> 0" in line


def test_a_server_built_in_python_refuses_a_wait_it_cannot_do():
    with pytest.raises(ValueError, match="timeout must be"):
        Server("127.0.0.1:0", "poll", timeout=2592000.0)
    with pytest.raises(ValueError, match="graceful_timeout must be"):
        Server("127.0.0.1:0", "poll", graceful_timeout=float("inf"))
    check_duration(None, "timeout")  # no limit fits


def test_negative_timeout_says_what_is_accepted():
    # Was: "must be a finite number > 0", although 0 (never) is accepted.
    line = _one_line_error(run_cli("serve", "echo", "--timeout", "-1"))
    assert ">= 0" in line and "0 means never" in line


@pytest.mark.parametrize("args", [
    ["--backlog", "2147483648"],  # was: OverflowError traceback, exit 1
    ["--workers", "100000"],  # was: the master forked until fork failed
    ["--threads", "100000"],  # was: 99,941 log lines a second when thread creation failed
    ["--workers", str(MAX_WORKERS + 1)],
    ["--threads", str(MAX_THREADS + 1)],
    ["--workers", "0"],
])
def test_counts_the_machine_cannot_honour_are_usage_errors(strategy, args):
    line = _one_line_error(run_cli("serve", "echo", "--bind", "127.0.0.1:0", "--strategy", strategy, *args))
    assert args[0] in line and "between 1 and" in line


@pytest.mark.parametrize("args", [
    ["serve", "echo", "--workers", "0"],
    ["serve", "echo", "--timeout", "-1"],
    ["serve", "echo", "--log-level", "bogus"],
    ["serve", "nosuchserver"],
    ["frobnicate"],
])
def test_a_usage_error_is_one_line(args):
    line = _one_line_error(run_cli(*args))
    assert line.startswith("forkthread") and ": error: " in line


def test_a_module_without_class_hints_at_module_class():
    line = _one_line_error(run_cli("serve", "upper"))
    assert "MODULE:CLASS" in line


def test_a_script_reports_itself_by_its_own_name(tmp_path):
    script = tmp_path / "myservers.py"
    script.write_text(textwrap.dedent("""
        import sys
        from framework.cli import main
        sys.exit(main())
    """))
    result = subprocess.run([sys.executable, str(script), "serve", "echo", "--workers", "0"], capture_output=True,
                            text=True, env=child_env(), timeout=30, stdin=subprocess.DEVNULL)
    assert _one_line_error(result).startswith("myservers.py serve echo: error:")


def test_a_serve_main_script_reports_itself_by_its_own_name():
    from tests.support import ROOT

    result = subprocess.run([sys.executable, str(ROOT / "tests" / "faulty_server.py"), "--timeout", "-1"],
                            capture_output=True, text=True, env=child_env(), timeout=30, stdin=subprocess.DEVNULL)
    assert _one_line_error(result).startswith("faulty_server.py: error:")


def test_an_ignored_option_is_warned_about(serve):
    server = serve("echo", "--workers", "4", "--accept", "passfd", strategy="threading")
    with server.connect() as sock:
        assert echo_exchange(sock, b"x") == b"x"
    warning = next(line for line in server.log().splitlines() if "ignored" in line)
    assert "WARNING" in warning and "--workers" in warning and "--accept" in warning and "threading" in warning


# Every strategy option given at once; what each strategy reads is its own declaration.
GIVEN = frozenset(StrategyOptions.__dataclass_fields__)


def test_each_strategy_is_warned_only_about_options_it_ignores(strategy):
    honoured = strategy_class(strategy).honoured_options(StrategyOptions())
    assert set(ignored_options(strategy, StrategyOptions(), GIVEN)) == {
        f"--{name.replace('_', '-')}" for name in GIVEN - honoured}
    assert ignored_options(strategy, StrategyOptions(), frozenset(honoured)) == []


def test_preforked_honours_its_worker_kinds_options():
    threaded = StrategyOptions(worker="threads")
    assert "--threads" not in ignored_options("preforked", threaded, frozenset({"threads", "workers"}))
    assert ignored_options("preforked", StrategyOptions(worker="iterative"), frozenset({"threads"})) == ["--threads"]
    assert "--selector" not in ignored_options("preforked", StrategyOptions(worker="poll"), frozenset({"selector"}))


def test_every_strategy_declares_its_options():
    fields = set(StrategyOptions.__dataclass_fields__)
    for name in STRATEGIES:
        assert strategy_class(name).option_names <= fields, name


#: A server whose address space (``ulimit -v``, KiB) lets it start some threads but not hundreds (8 MiB stacks).
ADDRESS_SPACE_KIB = 400_000
LIMITED = ["sh", "-c", f'ulimit -v {ADDRESS_SPACE_KIB} && exec "$@"', "sh", sys.executable, "-m", "framework",
           "serve", "echo"]
THREAD_STARTS = {"threading": [], "prethreaded": ["--threads", "1000"],
                 "preforked": ["--worker", "threads", "--threads", "1000", "--workers", "1"]}


def test_thread_start_failures_are_throttled(serve, strategy):
    # Was: one error line per thread that failed to start (99,941 lines in 1 s with --threads 100000).
    if strategy not in THREAD_STARTS:
        pytest.skip(f"{strategy} starts no thread per connection or pool")
    if strategy == "threading" and sys.version_info >= (3, 13):
        # Seen in CI: once thread creation has failed under `ulimit -v`, Python 3.13 starts
        # none again even after every connection thread ended and was joined (3.11 does).
        # A known gap, left open; the throttle itself is checked on 3.11 and under the pools.
        pytest.xfail("Python 3.13: no thread starts again after the address space ran out (open)")
    server = serve("echo", *THREAD_STARTS[strategy], strategy=strategy, program=LIMITED)
    clients = []
    try:
        if strategy == "threading":  # a thread per connection: hundreds of connections at once
            for _ in range(300):
                client = server.connect()
                client.sendall(b"x")
                clients.append(client)
        assert wait_for(lambda: "cannot start a thread" in server.log(), timeout=20), server.log()
        with server.connect() as sock:  # still serving, with the threads it has
            if strategy == "threading":
                for client in clients:
                    client.close()
                clients.clear()
                assert wait_for(lambda: _echoes(server), timeout=20)
            else:
                assert echo_exchange(sock, b"still here") == b"still here"
    finally:
        for client in clients:
            client.close()
    failures = [line for line in server.log().splitlines() if "cannot start a thread" in line]
    assert 1 <= len(failures) <= 2, failures  # the first, and at most one more 10 s later


def _echoes(server) -> bool:  # type: ignore[no-untyped-def]
    try:
        with server.connect(timeout=5) as sock:
            return echo_exchange(sock, b"ping") == b"ping"
    except OSError:
        return False
