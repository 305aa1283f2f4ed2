"""The lab's ``work`` server: the spec, the work, the protocol, the handler, and every strategy over real sockets."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from framework.testing import RecordingTransport
from servers.work import (
    ANSWER,
    MAX_LINE,
    MAX_MS,
    Work,
    WorkHandlerServer,
    WorkProtocol,
    WorkProtocolServer,
    WorkServer,
    WorkSpec,
    calibrate,
    handler_supported,
    parse_spec,
)
from tests.support import child_env, recv_all


@pytest.mark.parametrize(("text", "spec"), [
    ("cpu:2", WorkSpec(2.0, 0.0)),
    ("sleep:20", WorkSpec(0.0, 20.0)),
    ("cpu:2,sleep:20", WorkSpec(2.0, 20.0)),
    ("sleep:20, cpu:0.5", WorkSpec(0.5, 20.0)),
    ("cpu:0", WorkSpec(0.0, 0.0)),
    (f"sleep:{MAX_MS}", WorkSpec(0.0, float(MAX_MS))),
])
def test_specs(text, spec):
    assert parse_spec(text) == spec
    assert parse_spec(str(spec)) == spec  # str() gives the spec back


@pytest.mark.parametrize("text", [
    "", "cpu", "cpu:", "cpu:x", "cpu:-1", "cpu:1e3", "cpu:inf", "cpu:nan", "cpu:1_000", "cpu:\u0663",
    "cpu:1,cpu:2", "io:3", "cpu:2;sleep:3", f"sleep:{MAX_MS + 1}", "cpu:" + "9" * 5000, "cpu:1,", ",",
    "CPU:1", "cpu :1", "cpu:1.23456",
])
def test_bad_specs_are_a_clear_value_error(text):
    with pytest.raises(ValueError, match="expected --work cpu:MS"):
        parse_spec(text)


@given(st.text(max_size=60))
def test_any_text_is_a_spec_or_a_value_error(text):
    try:
        spec = parse_spec(text)
    except ValueError:
        return
    assert 0 <= spec.cpu_ms <= MAX_MS and 0 <= spec.sleep_ms <= MAX_MS


def test_work_kind_names():
    assert [WorkSpec(*values).kind for values in ((2, 0), (0, 20), (2, 20), (0, 0))] == [
        "cpu", "sleep", "cpu+sleep", "none"]


def test_calibration_is_per_cpu_millisecond_and_the_cpu_part_uses_cpu_not_wall_time():
    per_ms = calibrate(rounds=1)
    assert per_ms > 0
    work = Work(WorkSpec(cpu_ms=20.0), per_ms)
    begin = time.thread_time()
    work.do()
    assert time.thread_time() - begin > 0  # it computed (how fast is the lab's business)


def test_sleep_part_waits_without_computing():
    work = Work(WorkSpec(sleep_ms=30.0))
    begin = time.monotonic()
    work.do()
    assert time.monotonic() - begin >= 0.03
    assert work.per_ms == 1  # nothing to calibrate without cpu work


def feed(data: bytes, chunk: int) -> RecordingTransport:
    transport = RecordingTransport()
    protocol = WorkProtocol(Work(WorkSpec()))
    protocol.connection_made(transport)
    for start in range(0, len(data), chunk):
        protocol.data_received(data[start:start + chunk])
    return transport


@pytest.mark.parametrize("chunk", [1, 3, 1000])
def test_protocol_answers_every_line_in_order(chunk):
    transport = feed(b"a\nbb\n\nccc\n", chunk)
    assert transport.output() == ANSWER * 4 and not transport.closed


def test_protocol_waits_for_the_end_of_a_line():
    assert feed(b"half a line", 1).output() == b""


@pytest.mark.parametrize("chunk", [1, 500, 5000])
def test_protocol_refuses_a_line_too_long(chunk):
    transport = feed(b"x" * (MAX_LINE + 10) + b"\n", chunk)
    assert transport.output().startswith(b"error: request line longer") and transport.closed


def test_longest_line_accepted():
    assert feed(b"x" * (MAX_LINE - 1) + b"\n", 100).output() == ANSWER


def test_style_picks_the_class():
    assert WorkServer.__new__(WorkServer).__class__ is WorkProtocolServer
    assert WorkServer.__new__(WorkServer, style="handler").__class__ is WorkHandlerServer
    with pytest.raises(ValueError, match="unknown style"):
        WorkServer.__new__(WorkServer, style="fibers")


def forkthread(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "framework", "serve", "work", "--bind", "127.0.0.1:0", *args],
                          capture_output=True, text=True, timeout=60, env=child_env(), stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("spec", ["cpu:x", "sleep:-1", "cpu:1,cpu:1", "nap:3", "cpu:" + "1" * 3000])
def test_bad_work_option_is_one_line_and_status_2(spec):
    done = forkthread("--work", spec)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "expected --work cpu:MS" in done.stderr and "Traceback" not in done.stderr


def exchanges(sock: socket.socket, count: int) -> bytes:
    answers = b""
    for _ in range(count):
        sock.sendall(b"work\n")
        answers += recv_all(sock, len(ANSWER))
    return answers


def test_every_strategy_serves_many_exchanges_on_concurrent_connections(serve, strategy):
    server = serve("work", "--work", "cpu:1,sleep:1", "--workers", "3", strategy=strategy)
    clients = 1 if strategy == "iterative" else 3  # one connection at a time is what iterative is
    results: list[bytes] = []
    socks = [server.connect() for _ in range(clients)]
    try:
        threads = [threading.Thread(target=lambda s=sock: results.append(exchanges(s, 20))) for sock in socks]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    finally:
        for sock in socks:
            sock.close()
    assert results == [ANSWER * 20] * clients


def test_every_strategy_refuses_a_long_line_and_lives_on(serve, strategy):
    server = serve("work", "--work", "sleep:1", strategy=strategy)
    with server.connect() as sock:
        sock.sendall(b"y" * 5000 + b"\n")
        assert recv_all(sock).startswith(b"error: request line longer")
    with server.connect() as sock:
        assert exchanges(sock, 2) == ANSWER * 2


def test_a_client_leaving_mid_line_ends_only_its_connection(serve, strategy):
    server = serve("work", "--work", "sleep:1", strategy=strategy)
    with server.connect() as sock:
        sock.sendall(b"half")
    with server.connect() as sock:
        assert exchanges(sock, 1) == ANSWER
    assert "Traceback" not in server.log()


@pytest.mark.skipif(handler_supported(), reason="the framework runs socketserver handlers")
def test_handler_style_without_framework_support_refuses_with_one_line():
    done = forkthread("--style", "handler")
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "handler support" in done.stderr


@pytest.mark.skipif(not handler_supported(), reason="needs the framework's socketserver handler support")
def test_handler_style_serves_or_refuses_by_model(serve, strategy):
    if strategy == "poll":
        done = forkthread("--style", "handler", "--strategy", strategy)
        assert done.returncode == 2 and done.stderr.count("\n") == 1
        return
    server = serve("work", "--work", "cpu:1,sleep:1", "--style", "handler", strategy=strategy)
    with server.connect() as sock:
        assert exchanges(sock, 5) == ANSWER * 5
    with server.connect() as sock:
        sock.sendall(b"z" * 5000 + b"\n")
        assert recv_all(sock).startswith(b"error: request line longer")
