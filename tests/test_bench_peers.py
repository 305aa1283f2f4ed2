"""The lab's peers and report logic: each peer really serves its protocol and leaves nothing behind."""

from __future__ import annotations

import http.client
import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from framework.bench.peers import PEERS, peer_targets
from framework.bench.processes import RunningServer
from framework.bench.report import Column, Row, WorkloadReport, table
from framework.bench.socketserver_peer import CARRY_ENV, carried_modules
from framework.bench.targets import Context
from framework.bench.workloads.http import file_name, make_root
from tests.support import missing_requirement, proc_children, reap_adopted, recv_all, wait_for


def peer(name: str):
    return next(item for item in PEERS if item.name == name)


@pytest.mark.parametrize("name", ["socketserver iterative", "socketserver threading", "socketserver forking",
                                  "asyncio protocol", "uvloop protocol",
                                  "floor iterative", "floor threads", "floor forks"])
def test_nbytes_peers(name):
    with RunningServer(peer(name).command(Context("nbytes", "nbytes"))) as server:
        for count in (0, 4000, 200_000):
            with socket.create_connection((server.host, server.port), 5) as sock:
                sock.sendall(b"%d\n" % count)
                assert len(recv_all(sock)) == count
        for bad in (b"many\n", b"x" * 40):  # not a number; a line over the limit, never ended
            with socket.create_connection((server.host, server.port), 5) as sock:
                sock.sendall(bad)
                assert recv_all(sock).startswith(b"error:")
        stopped = server.stop()
    assert stopped.status == 0 and not stopped.killed
    assert not reap_adopted()


@pytest.mark.parametrize("name", ["socketserver iterative", "socketserver threading", "socketserver forking"])
@pytest.mark.parametrize("protocol", ["nbytes", "echo"])
def test_the_socketserver_peers_carry_neither_the_framework_nor_asyncio(name, protocol):
    # A forked child costs more the more its parent imported: the peer must be a socketserver program, no more.
    command = peer(name).command(Context(protocol, protocol))
    argv = [command.argv[0], "-X", "importtime", *command.argv[1:], "--help"]
    result = subprocess.run(argv, env=command.env, capture_output=True, text=True, timeout=60, check=True)
    lines = result.stderr.splitlines()
    imported = {line.rsplit("|", 1)[1].strip() for line in lines if line.startswith("import time:")}
    assert "socketserver" in imported
    assert not {"framework", "servers", "asyncio"} & imported


@pytest.mark.parametrize("name", ["floor iterative", "floor threads", "floor forks"])
def test_the_floors_import_the_socket_module_and_little_else(name):
    # The floor of a model is the least a Python server of it does: nothing of the
    # framework, nor of another library, is loaded (a fork would copy it).
    command = peer(name).command(Context("nbytes", "nbytes"))
    argv = [command.argv[0], "-X", "importtime", *command.argv[1:-1], "no-such-kind"]
    result = subprocess.run(argv, env=command.env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "usage:" in result.stderr
    lines = result.stderr.splitlines()
    imported = {line.rsplit("|", 1)[1].strip() for line in lines if line.startswith("import time:")}
    assert {"socket", "threading"} <= imported
    assert not {"framework", "servers", "asyncio", "socketserver", "argparse"} & imported


def test_the_forks_floor_ends_its_children_at_the_stop():
    with RunningServer(peer("floor forks").command(Context("nbytes", "nbytes"))) as server:
        assert wait_for(lambda: len(proc_children(server.pid)) == (os.cpu_count() or 1), timeout=30)
        children = proc_children(server.pid)
        with socket.create_connection((server.host, server.port), 5) as sock:
            sock.sendall(b"10\n")
            assert recv_all(sock) == b"abcdefghij"
        stopped = server.stop()
    assert stopped.status == 0 and not stopped.killed
    assert not reap_adopted()
    assert not [pid for pid in children if os.path.exists(f"/proc/{pid}")]


@pytest.mark.parametrize("name", ["socketserver iterative", "socketserver threading", "socketserver forking", "asyncio",
                                  "asyncio protocol", "uvloop", "uvloop protocol"])
def test_echo_peers(name):
    with RunningServer(peer(name).command(Context("echo", "echo"))) as server:
        with socket.create_connection((server.host, server.port), 5) as sock:
            for message in (b"x", b"hello\n" * 1000):
                sock.sendall(message)
                assert recv_all(sock, len(message)) == message
        stopped = server.stop()
    assert stopped.status == 0 and not stopped.killed
    assert not reap_adopted()


@pytest.mark.parametrize("name", ["socketserver iterative", "socketserver threading", "socketserver forking",
                                  "asyncio executor",
                                  "asyncio inline", "uvloop executor", "uvloop inline"])
def test_work_peers_answer_every_line_and_refuse_a_long_one(name):
    context = Context("work", "work", peer_options=["--work", "cpu:1,sleep:1", "--calibration", "1000"])
    with RunningServer(peer(name).command(context)) as server:
        with socket.create_connection((server.host, server.port), 10) as sock:
            sock.sendall(b"one\ntwo\n")
            assert recv_all(sock, 6) == b"ok\nok\n"
            sock.sendall(b"three\n")
            assert recv_all(sock, 3) == b"ok\n"
        with socket.create_connection((server.host, server.port), 10) as sock:
            sock.sendall(b"x" * 5000 + b"\n")
            sock.shutdown(socket.SHUT_WR)
            assert not recv_all(sock).startswith(b"ok")  # an error line, or just the close
        stopped = server.stop()
    assert stopped.status == 0 and not stopped.killed
    assert not reap_adopted()


@pytest.mark.parametrize("name", ["http.server", "gunicorn sync", "gunicorn gthread", "nginx"])
def test_http_peers_serve_the_files(name):
    if peer(name).missing():
        missing_requirement(peer(name).missing() or name)
    root = make_root((1024, 65536))
    try:
        with RunningServer(peer(name).command(Context("http", "http", root=root))) as server:
            for size in (1024, 65536):
                connection = http.client.HTTPConnection(server.host, server.port, timeout=10)
                connection.request("GET", "/" + file_name(size))
                response = connection.getresponse()
                body = response.read()
                connection.close()
                assert response.status == 200
                with open(os.path.join(root, file_name(size)), "rb") as file:
                    assert body == file.read()
            server.stop()
    finally:
        shutil.rmtree(root)
    assert not reap_adopted()


@pytest.mark.needs_tool("nginx")
def test_nginx_lives_in_a_temp_dir_that_is_removed_and_listens_on_loopback_only():
    root = make_root((1024,))
    try:
        command = peer("nginx").command(Context("http", "http", root=root))
        prefix = command.argv[command.argv.index("-p") + 1]
        config = Path(prefix, "nginx.conf").read_text()
        assert f"listen 127.0.0.1:{command.port};" in config
        assert f"pid {prefix}/nginx.pid;" in config and "worker_processes 1;" in config
        with RunningServer(command) as server:
            assert os.path.exists(os.path.join(prefix, "nginx.pid"))
            assert server.stop().status == 0
        assert not os.path.exists(prefix)
    finally:
        shutil.rmtree(root)


def test_peer_selection_and_missing_peers_become_notes():
    names = [target.name for target in peer_targets("echo", None)]
    assert names == ["socketserver iterative", "socketserver threading", "socketserver forking", "asyncio",
                     "asyncio protocol", "uvloop", "uvloop protocol"]
    assert [target.name for target in peer_targets("nbytes", None)] == [
        "socketserver iterative", "socketserver threading", "socketserver forking",
        "floor iterative", "floor threads", "floor forks", "asyncio protocol", "uvloop protocol"]
    assert [target.name for target in peer_targets("work", ["asyncio"])] == ["asyncio executor", "asyncio inline"]
    assert [target.name for target in peer_targets("http", ["gunicorn"])] == ["gunicorn sync", "gunicorn gthread"]
    assert [target.name for target in peer_targets("http", ["http.server"])] == ["http.server"]
    assert peer_targets("nbytes", ["nginx"]) == []


def test_ratios_compare_rows_at_the_same_load_point():
    report = WorkloadReport("w", "W", "", [Column("rate", "rate")], ratio_metric="rate", params=["c"])
    report.rows = [
        Row("w", "poll", "forkthread", "poll", {"c": 1}, {"rate": 300.0}),
        Row("w", "poll", "forkthread", "poll", {"c": 10}, {"rate": 900.0}),
        Row("w", "nginx", "peer", None, {"c": 1}, {"rate": 100.0}),
        Row("w", "nginx", "peer", None, {"c": 10}, {"rate": 0.0}),
    ]
    ratios = report.ratios()
    assert ratios == [{"target": "poll", "params": {"c": 1}, "ratios": {"nginx": 3.0}},
                      {"target": "poll", "params": {"c": 10}, "ratios": {}}]
    text = table(report, markdown=True)
    assert text.splitlines()[0] == "| server | kind | c | rate | notes |"
    assert "| poll | forkthread | 10 | 900 |  |" in text


def test_a_socketserver_peer_carries_modules_only_when_told(monkeypatch):
    # The measurement behind docs/lab.md's "what loaded modules cost": the same peer, its parent bigger.
    command = peer("socketserver forking").command(Context("nbytes", "nbytes"))
    with RunningServer(command) as server:
        lean = Path(f"/proc/{server.pid}/maps").read_text()
    # csv: an extension module nothing else here loads (coverage, in the lab's environment, loads json).
    monkeypatch.setenv(CARRY_ENV, "csv, framework.lifecycle")
    command = peer("socketserver forking").command(Context("nbytes", "nbytes"))
    with RunningServer(command) as server:
        carrying = Path(f"/proc/{server.pid}/maps").read_text()
        with socket.create_connection((server.host, server.port), 5) as sock:
            sock.sendall(b"100\n")
            assert len(recv_all(sock)) == 100
    assert "_csv" not in lean and "_csv" in carrying
    # Lean: not even the compression modules argparse's default formatter brings in through
    # shutil (the peer's parser is told its width; zlib itself coverage may load).
    assert "_lzma" not in lean and "_bz2" not in lean
    assert carried_modules() == ["csv", "framework.lifecycle"]
