"""The rehearsal of a forking parent (:mod:`framework.rehearsal`): warm, invisible, harmless.

It must serve its connections through the very path a child runs after
admission (so the interpreter specializes that path), and leave no trace:
none of the server's hooks called, nothing counted or logged, no
descriptor left, and a failure ending only the rehearsal.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from framework import rehearsal
from framework.processes import rehearse_exit
from framework.rehearsal import ROUNDS, rehearse
from framework.server import Server
from framework.strategies.base import ChildRole
from tests.support import open_fds_unchanged, recv_all
from tests.test_connection_cost import calls_during
from tests.witness_server import WitnessHandlerServer, WitnessServer

#: The server's admission and its hooks (the witness server notes its protocol's and handler's calls itself).
HOOKS = ("admit", "_admit", "verify_request", "configure_connection", "protocol_factory", "handle_error")


@pytest.fixture
def witness(tmp_path: Path) -> Path:
    return tmp_path / "witness"


@pytest.fixture(params=[WitnessServer, WitnessHandlerServer], ids=["protocol", "handler"])
def server(request: pytest.FixtureRequest, witness: Path) -> Iterator[WitnessServer]:
    made = request.param("127.0.0.1:0", bind=False, handle_signals=False, witness=str(witness))
    yield made
    made.server_close()


def test_a_rehearsal_serves_its_rounds_through_the_path_a_child_runs_after_admission(server):
    path = "_run_handler" if server.handler is not None else "_serve_protocol"
    counts = calls_during(server.rehearse, (path, "run_handler", "run", "_finish"))
    assert counts[path] == ROUNDS
    if server.handler is not None:
        assert counts["run_handler"] == ROUNDS
    else:
        assert counts["run"] == counts["_finish"] == ROUNDS  # BlockingConnection's, to the end of each connection


def test_a_rehearsal_calls_none_of_the_servers_hooks_and_leaves_no_trace(server, witness, caplog):
    counted = server.connections
    with open_fds_unchanged(), caplog.at_level(logging.DEBUG):
        counts = calls_during(server.rehearse, HOOKS)
    assert not any(counts.values()), counts
    assert not witness.exists()
    assert server.connections is counted and counted.served == 0 and len(counted) == 0
    assert caplog.records == []


def test_a_rehearsal_that_meets_an_error_stops_quietly():
    served = []

    def serve_one(sock: socket.socket, peer_closes: bool) -> None:
        if len(served) == 3:
            raise ConnectionResetError("the fourth connection fails")
        sock.sendall(sock.recv(64))
        sock.close()
        served.append(peer_closes)

    with open_fds_unchanged():
        assert rehearse(serve_one) == 3
    assert served == [False, True, False]  # the two kinds of end take turns


def test_a_rehearsal_stops_when_no_socket_pair_can_be_made(monkeypatch):
    def no_pair(*args: object) -> tuple[socket.socket, socket.socket]:
        raise OSError(24, "Too many open files")

    monkeypatch.setattr(rehearsal.socket, "socketpair", no_pair)
    assert rehearse(lambda sock, peer_closes: pytest.fail("nothing to serve")) == 0


#: Run in a fresh interpreter (no tracer: a traced frame runs unspecialized): how many
#: instructions of the driver's serving loop are specialized before and after a rehearsal.
SPECIALIZED = textwrap.dedent("""
    import dis, json, opcode, sys
    from framework.drivers.blocking import BlockingConnection
    from servers.nbytes import NBytesServer

    # The forms an instruction takes once specialized for what it met (not 3.11's adaptive
    # forms, nor 3.12's superinstructions, which a code object has from its first call).
    SPECIALIZED = {name for names in opcode._specializations.values() for name in names
                   if not name.endswith("_ADAPTIVE")}

    def specialized(function):
        return sum(1 for instruction in dis.get_instructions(function.__code__, adaptive=True)
                   if instruction.opname in SPECIALIZED)

    from framework import processes
    from framework.server import Server
    from framework.strategies.base import ChildRole

    PATH = (BlockingConnection._serve, Server.enter_child, processes._flush_on_exit)
    server = NBytesServer("127.0.0.1:0", handle_signals=False)
    before = [specialized(function) for function in PATH]
    server.rehearse(ChildRole())  # the role a child per connection enters
    processes.rehearse_exit(20)
    print(json.dumps([before, [specialized(function) for function in PATH], sys.gettrace() is None]))
    server.server_close()
""")


@pytest.mark.skipif(sys.version_info < (3, 11), reason="the specializing interpreter came with 3.11")
def test_after_a_rehearsal_the_serving_loop_is_specialized():
    env = {name: value for name, value in os.environ.items() if not name.startswith("COVERAGE")}
    done = subprocess.run([sys.executable, "-c", SPECIALIZED], capture_output=True, text=True, env=env, timeout=60,
                          cwd=Path(__file__).parent.parent, check=True)
    before, after, untraced = json.loads(done.stdout)
    assert untraced
    serving, entry, leaving = zip(before, after, strict=True)
    assert serving[1] >= serving[0] + 10  # 3.11: 0 -> 59, 3.12: 15 -> 35, 3.13: 0 -> 38
    assert entry[1] >= entry[0] + 10  # Server.enter_child, on stand-ins
    assert leaving[1] > leaving[0]  # the exit's flushing


@pytest.mark.parametrize("server_class", ["WitnessServer", "WitnessHandlerServer"])
def test_a_forking_parent_runs_none_of_its_servers_hooks(serve, witness, server_class):
    # End to end: the parent rehearses before its first fork, and every hook still runs in a child only.
    server = serve(f"tests.witness_server:{server_class}", "--witness", str(witness), strategy="forking")
    children = set()
    for _ in range(3):
        with server.connect() as sock:
            sock.sendall(b"hello\n")
            children.add(int(recv_all(sock)))
    server.stop()
    notes = [line.split() for line in witness.read_text().splitlines()]
    assert len(children) == 3 and server.pid not in children
    assert {int(pid) for _, pid in notes} == children
    expected = {"verify_request", "configure_connection"} | (
        {"handler"} if server_class == "WitnessHandlerServer" else {"protocol_factory", "data_received"})
    assert {hook for hook, _ in notes} == expected


def test_a_server_already_stopping_does_not_rehearse(server, witness):
    server.lifecycle.request_stop()
    counts = calls_during(server.rehearse, ("_serve_protocol", "_run_handler"))
    assert not any(counts.values())


#: What a rehearsed entry must leave as it was on the server itself.
SERVER_STATE = ("lifecycle", "connections", "_acceptor", "_listener", "requested_address", "_run",
                "_unix_inode", "_serving_thread")


def test_a_rehearsed_entry_runs_on_stand_ins_and_leaves_the_server_as_it_was(witness):
    server = WitnessServer("127.0.0.1:0", handle_signals=False, witness=str(witness))
    try:
        before = {name: getattr(server, name) for name in SERVER_STATE}
        with open_fds_unchanged():
            counts = calls_during(lambda: server.rehearse(ChildRole()), ("enter_child", "worker_init", *HOOKS))
        assert counts.pop("enter_child") == ROUNDS
        assert not any(counts.values()), counts
        assert {name: getattr(server, name) for name in SERVER_STATE} == before
        assert server.listener.fileno() >= 0 and not server.lifecycle.stopping
        assert not witness.exists()
    finally:
        server.server_close()


@pytest.mark.parametrize("role", [ChildRole(keep_listener=True), ChildRole(worker=True)], ids=["keeps", "worker"])
def test_only_a_child_per_connections_entry_is_rehearsed(server, role):
    # A worker's role starts a run, runs worker_init, keeps the listener: the server's own business.
    assert calls_during(lambda: server.rehearse(role), ("enter_child",))["enter_child"] == 0


def test_a_rehearsed_entry_that_meets_an_error_stops_quietly(server, monkeypatch):
    calls = []

    def failing_entry(self: Server, role: ChildRole) -> None:
        calls.append(self)
        raise RuntimeError("an entry that fails")

    monkeypatch.setattr(Server, "enter_child", failing_entry)
    with open_fds_unchanged():
        server.rehearse(ChildRole())
    assert len(calls) == 1 and calls[0] is not server and type(calls[0]) is type(server)


def test_a_rehearsed_exit_flushes_and_writes_nothing(capfd):
    print("held", end="")  # in the stream's buffer: a flush writes it, and nothing else is written
    rehearse_exit(ROUNDS)
    assert capfd.readouterr().out == "held"
