"""nginx as the load balancer in front of two forkthread HTTP instances (skipped without nginx)."""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import time

import pytest

from framework.registry import server_targets
from tests.support import ROOT, descendants, proc_children, process_state, reap_adopted

TEMPLATE = ROOT / "docs" / "deploy" / "nginx" / "forkthread-upstream.conf"

pytestmark = [
    pytest.mark.needs_tool("nginx"),
    pytest.mark.skipif("http" not in server_targets(), reason="the http server is not available"),
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def render(prefix, listen: str, upstreams: list[str]) -> str:
    user = "user root;" if os.geteuid() == 0 else ""  # as root, workers must be able to reach PREFIX
    return (TEMPLATE.read_text().replace("@PREFIX@", str(prefix)).replace("@LISTEN@", listen)
            .replace("@USER@", user)
            .replace("@UPSTREAMS@", "\n".join(f"        server {address} max_fails=1 fail_timeout=5s;"
                                              for address in upstreams)))


def get(port: int, path: str) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


@pytest.fixture
def nginx(tmp_path):
    """Start nginx from the rendered template; stop it by its PID; prove it is gone."""
    started: list[subprocess.Popen[bytes]] = []

    def start(upstreams: list[str]) -> int:
        prefix = tmp_path / "nginx"
        prefix.mkdir()
        port = free_port()
        config = prefix / "nginx.conf"
        config.write_text(render(prefix, f"127.0.0.1:{port}", upstreams))
        proc = subprocess.Popen(["nginx", "-p", str(prefix), "-c", str(config)], stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
        started.append(proc)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"nginx exited: {proc.stderr.read().decode()} {(prefix / 'error.log').read_text()}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return port
            except OSError:
                time.sleep(0.05)
        pytest.fail("nginx did not listen within 20 s")

    yield start
    for proc in started:
        workers = descendants(proc.pid)
        if proc.poll() is None:
            proc.send_signal(signal.SIGQUIT)  # graceful: finish requests, then the master reaps its workers
        try:
            assert proc.wait(20) == 0
        finally:
            proc.stderr.close()
        reap_adopted(timeout=2, keep=proc_children(os.getpid()) - workers)
        survivors = {pid for pid in workers if process_state(pid) not in (None, "Z")}
        assert not survivors, f"nginx workers outlived their master: {survivors}"


def test_nginx_balances_over_two_instances(serve, nginx, tmp_path, strategy):
    instances = []
    for name in ("A", "B"):
        root = tmp_path / name
        root.mkdir()
        (root / "who.txt").write_text(name)
        instances.append(serve("http", "--root", str(root), strategy=strategy))
    port = nginx([instance.address for instance in instances])
    answers = [get(port, "/who.txt") for _ in range(8)]
    assert {status for status, _ in answers} == {200}
    assert sorted({body for _, body in answers}) == [b"A", b"B"]  # round-robin: both instances serve


def test_nginx_routes_around_a_stopped_instance(serve, nginx, tmp_path):
    instances = []
    for name in ("A", "B"):
        root = tmp_path / name
        root.mkdir()
        (root / "who.txt").write_text(name)
        instances.append(serve("http", "--root", str(root)))
    port = nginx([instance.address for instance in instances])
    assert instances[1].stop() == 0  # B goes away (a deploy, a crash)
    answers = [get(port, "/who.txt") for _ in range(6)]
    assert answers == [(200, b"A")] * 6
