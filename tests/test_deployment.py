"""Deployment: inetd mode, systemd socket activation, sd_notify, SO_REUSEPORT instances, socket options."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import textwrap

import pytest

from framework.activation import listen_fds, sd_notify
from tests.support import ServerProcess, child_env, echo_exchange, reap_adopted, recv_all, wait_for
from tests.test_conformance import CTIME

SERVE = [sys.executable, "-m", "framework", "serve"]


# -- inetd ----------------------------------------------------------------------


def run_inetd(server: str, *args: str) -> tuple[socket.socket, subprocess.Popen[str]]:
    """Start ``forkthread serve SERVER --inetd`` with one end of a socketpair as stdin and stdout."""
    ours, theirs = socket.socketpair()
    with theirs:
        proc = subprocess.Popen([*SERVE, server, "--inetd", *args], stdin=theirs, stdout=theirs,
                                stderr=subprocess.PIPE, text=True, env=child_env())
    ours.settimeout(20)
    return ours, proc


def test_inetd_echo_serves_the_socketpair_on_stdin():
    sock, proc = run_inetd("echo")
    with sock:
        payload = os.urandom(300_000)
        assert echo_exchange(sock, payload) == payload
    _, stderr = proc.communicate(timeout=20)
    assert proc.returncode == 0, stderr
    assert "listening on" not in stderr and "Traceback" not in stderr


def test_inetd_daytime_writes_one_line_and_the_connection_ends():
    # The connection must end although stdin and stdout both held it: EOF proves they were let go.
    sock, proc = run_inetd("daytime", "--utc")
    with sock:
        assert CTIME.match(recv_all(sock))
    _, stderr = proc.communicate(timeout=20)
    assert proc.returncode == 0, stderr


def test_inetd_log_lines_never_reach_the_client():
    ours, theirs = socket.socketpair()
    with theirs:
        proc = subprocess.Popen([*SERVE, "echo", "--inetd", "--log-level", "debug"], stdin=theirs, stdout=theirs,
                                stderr=theirs, env=child_env())
    with ours:
        ours.settimeout(20)
        assert echo_exchange(ours, b"only this") == b"only this"
    assert proc.wait(20) == 0


def test_inetd_sigterm_ends_an_idle_connection_gracefully():
    sock, proc = run_inetd("echo", "--graceful-timeout", "1")
    with sock:
        assert echo_exchange_open(sock, b"before") == b"before"
        proc.terminate()
        assert proc.wait(20) == 0  # the idle connection ended at the graceful deadline
        assert recv_all(sock) == b""
    proc.stderr.close()


def echo_exchange_open(sock: socket.socket, payload: bytes) -> bytes:
    """Send *payload* and read it back without half-closing."""
    sock.sendall(payload)
    data = b""
    while len(data) < len(payload):
        data += sock.recv(len(payload) - len(data))
    return data


def test_inetd_refuses_a_non_socket_stdin():
    result = subprocess.run([*SERVE, "echo", "--inetd"], stdin=subprocess.DEVNULL, capture_output=True, text=True,
                            env=child_env(), timeout=30)
    assert result.returncode == 1
    assert "standard input is not a socket" in result.stderr and "Traceback" not in result.stderr


# -- systemd socket activation --------------------------------------------------------

# Binds nothing itself: receives the listening socket as fd 3, sets LISTEN_PID to its own pid
# (exec keeps the pid), then execs forkthread, as systemd does.
ACTIVATE = textwrap.dedent("""
    import os, sys
    os.environ["LISTEN_PID"] = str(os.getpid())
    os.environ["LISTEN_FDS"] = "1"
    os.execv(sys.executable, [sys.executable, "-m", "framework", "serve", *sys.argv[1:]])
""")


def activated_server(server: str, listener: socket.socket, *args: str, strategy: str = "iterative",
                     env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """Start *server* with *listener* passed as fd 3 under LISTEN_FDS=1 (the launcher dup2s it)."""
    os.set_inheritable(listener.fileno(), True)

    def to_fd_3() -> None:
        os.dup2(listener.fileno(), 3)  # dup2 leaves the new descriptor inheritable

    return subprocess.Popen([sys.executable, "-c", ACTIVATE, server, "--strategy", strategy,
                             "--bind", "127.0.0.1:1", *args],  # --bind must be ignored: port 1 would fail
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env or child_env(), preexec_fn=to_fd_3, pass_fds=(3,), stdin=subprocess.DEVNULL)


@pytest.fixture
def tcp_listener():
    sock = socket.create_server(("127.0.0.1", 0), backlog=64)
    yield sock
    sock.close()


def stop(proc: subprocess.Popen[str]) -> str:
    """SIGTERM, expect exit status 0, and prove no worker or child outlived the server."""
    proc.terminate()
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr
    assert not reap_adopted(), "processes outlived the server"
    return stderr


def test_socket_activation_serves_the_passed_socket(strategy, tcp_listener):
    proc = activated_server("echo", tcp_listener, strategy=strategy)
    try:
        line = proc.stdout.readline()
        port = tcp_listener.getsockname()[1]
        assert line.strip() == f"listening on 127.0.0.1:{port}", line or proc.stderr.read()
        tcp_listener.close()  # only the server holds it now
        for _ in range(3):
            with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
                assert echo_exchange(sock, b"activated") == b"activated"
    finally:
        stderr = stop(proc)
    assert "Traceback" not in stderr


def test_socket_activation_of_a_udp_socket():
    listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    listener.bind(("127.0.0.1", 0))
    with listener:
        proc = activated_server("echo", listener)
        try:
            assert proc.stdout.readline().startswith("listening on udp:127.0.0.1:")
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
                client.settimeout(20)
                client.sendto(b"dgram", listener.getsockname())
                assert client.recv(100) == b"dgram"
        finally:
            stop(proc)


def test_listen_pid_of_another_process_is_ignored(tcp_listener):
    env = {"LISTEN_FDS": "1", "LISTEN_PID": "1"}
    assert listen_fds(env) == [] and env == {}


def test_listen_fds_not_a_socket_is_a_clear_error():
    read_fd, write_fd = os.pipe()
    code = textwrap.dedent(f"""
        import os, sys
        os.dup2({read_fd}, 3)
        os.environ.update(LISTEN_FDS="1", LISTEN_PID=str(os.getpid()))
        os.execv(sys.executable, [sys.executable, "-m", "framework", "serve", "echo"])
    """)
    try:
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=child_env(),
                                pass_fds=(read_fd,), timeout=30)
    finally:
        os.close(read_fd)
        os.close(write_fd)
    assert result.returncode == 1
    assert "descriptor 3 passed by LISTEN_FDS is not a socket" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("abstract", [False, True])
def test_sd_notify_ready_after_listening(tmp_path, abstract, tcp_listener):
    name = f"@forkthread-test-{os.getpid()}" if abstract else str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind("\0" + name[1:] if abstract else name)
        notify.settimeout(20)
        proc = activated_server("echo", tcp_listener, env=child_env(NOTIFY_SOCKET=name))
        try:
            assert proc.stdout.readline().startswith("listening on")
            assert notify.recv(100) == b"READY=1"
        finally:
            stop(proc)


def test_sd_notify_without_notify_socket_does_nothing():
    assert sd_notify("READY=1", {}) is False


# -- SO_REUSEPORT: several instances on one port -------------------------------------


def served_count(server: ServerProcess) -> int:
    """Connections *server* has served, from its SIGUSR1 status line (the master's, for a pool)."""
    mark = f"status: pid={server.pid} "

    def lines() -> list[str]:
        return [line for line in server.log().splitlines() if mark in line]

    before = len(lines())
    server.send_signal(signal.SIGUSR1)
    assert wait_for(lambda: len(lines()) > before, timeout=10), server.log()
    return int(re.search(r"served=(\d+)", lines()[-1]).group(1))


def test_two_reuse_port_instances_share_a_port_and_both_serve(serve, strategy):
    first = serve("echo", "--reuse-port", strategy=strategy)
    port = first.address.rpartition(":")[2]
    second = serve("echo", "--reuse-port", bind=f"127.0.0.1:{port}", strategy=strategy)
    assert second.address == first.address
    for _ in range(60):  # the kernel hashes each connection's source port to one listener
        with second.connect() as sock:
            assert echo_exchange(sock, b"who?") == b"who?"
    counts: list[int] = []

    def all_counted() -> bool:  # a pool's scoreboard may count a connection a moment after its end
        counts[:] = [served_count(first), served_count(second)]
        return sum(counts) == 60

    assert wait_for(all_counted, timeout=10, interval=0.2), counts
    assert min(counts) > 0, counts


def test_without_reuse_port_a_second_instance_cannot_bind(serve):
    first = serve("echo")
    result = subprocess.run([*SERVE, "echo", "--bind", first.address], capture_output=True, text=True,
                            env=child_env(), timeout=30)
    assert result.returncode == 1
    assert "cannot listen on" in result.stderr and "Address already in use" in result.stderr


# -- socket options --------------------------------------------------------------------


def test_keepalive_and_nodelay_are_set_on_accepted_connections():
    import threading

    from servers.echo import EchoServer

    seen: dict[str, int] = {}

    class Recording(EchoServer):
        def configure_connection(self, sock):
            super().configure_connection(sock)
            seen.update(
                keepalive=sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
                idle=sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
                interval=sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
                count=sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT),
                nodelay=sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY),
            )

    with Recording("127.0.0.1:0", keepalive=(61, 7, 4), nodelay=True, handle_signals=False) as server:
        thread = threading.Thread(target=server.serve_forever)
        thread.start()
        try:
            with socket.create_connection(server.address.sockaddr(), timeout=10) as sock:
                assert echo_exchange(sock, b"opts") == b"opts"
        finally:
            server.shutdown()
            thread.join(10)
    assert seen == {"keepalive": 1, "idle": 61, "interval": 7, "count": 4, "nodelay": 1}


@pytest.mark.needs_tool("ss")  # iproute2: reads the socket's keep-alive timer back
def test_keepalive_applies_under_every_strategy(serve, strategy):
    server = serve("echo", "--keepalive", "45,5,3", "--nodelay", strategy=strategy)
    port = server.address.rpartition(":")[2]
    with server.connect() as sock:
        sock.sendall(b"k")
        assert sock.recv(1) == b"k"  # served, so configure_connection has run
        ss = subprocess.run(["ss", "-Htno", "state", "established", f"( sport = :{port} )"],
                            capture_output=True, text=True, timeout=10)
    assert "timer:(keepalive,4" in ss.stdout, ss.stdout  # the server's end probes after 45 s idle


@pytest.mark.needs_tool("ss")  # iproute2: reads the listener's backlog back
def test_socket_options_from_the_command_line(serve):
    server = serve("echo", "--keepalive", "30,5,3", "--nodelay", "--backlog", "7")
    with server.connect() as sock:
        assert echo_exchange(sock, b"ok") == b"ok"
    port = server.address.rpartition(":")[2]
    ss = subprocess.run(["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True, timeout=10)
    assert ss.stdout.split()[2] == "7", ss.stdout  # Send-Q of a listening socket is its backlog


@pytest.mark.parametrize("bad", ["30,5", "30,5,x", "0,5,3", "30,5,3,1"])
def test_bad_keepalive_is_a_usage_error(bad):
    result = subprocess.run([*SERVE, "echo", "--keepalive", bad], capture_output=True, text=True,
                            env=child_env(), timeout=30)
    assert result.returncode == 2
    assert "--keepalive" in result.stderr and "Traceback" not in result.stderr
