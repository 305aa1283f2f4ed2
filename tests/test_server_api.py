"""The Server base class used from Python: lifecycle, hooks, faults, timeouts, clean-up."""

from __future__ import annotations

import logging
import os
import socket
import threading

import pytest

from framework import Protocol, Server
from servers.echo import EchoServer
from tests.support import echo_exchange, open_fds_unchanged, recv_all


class Crashing(Protocol):
    def data_received(self, data: bytes) -> None:
        if data.startswith(b"crash"):
            raise RuntimeError("boom in the handler")
        self.transport.write(data)


class CrashingServer(Server):
    protocol = Crashing


class Picky(EchoServer):
    def verify_request(self, sock, peer):
        return False


def run_in_thread(server: Server) -> threading.Thread:
    thread = threading.Thread(target=server.serve_forever, name="serve_forever")
    thread.start()
    return thread


def test_shutdown_from_another_thread_is_prompt_and_leaves_nothing():
    with open_fds_unchanged():
        server = EchoServer("127.0.0.1:0", handle_signals=False)
        with server:
            thread = run_in_thread(server)
            with socket.create_connection((server.address.host, server.address.port)) as sock:
                assert echo_exchange(sock, b"abc") == b"abc"
            server.shutdown()  # waits for serve_forever to return: a hang fails on pytest-timeout
            thread.join(60)
            assert not thread.is_alive()


def test_shutdown_before_serve_forever_is_not_lost():
    with EchoServer("127.0.0.1:0", handle_signals=False) as server:
        server.shutdown(wait=False)
        thread = run_in_thread(server)
        thread.join(5)
        assert not thread.is_alive()


def test_shutdown_from_the_serving_thread_does_not_deadlock():
    class SelfStopping(Protocol):
        def data_received(self, data: bytes) -> None:
            server.shutdown()  # would deadlock in socketserver (bpo-39797)
            self.transport.write(data)

    class Server_(Server):
        protocol = SelfStopping

    server = Server_("127.0.0.1:0", handle_signals=False)
    with server:
        thread = run_in_thread(server)
        with socket.create_connection((server.address.host, server.address.port)) as sock:
            sock.sendall(b"stop")
            assert sock.recv(4) == b"stop"
        thread.join(5)
        assert not thread.is_alive()


def test_crashing_handler_ends_one_connection_and_is_logged(caplog):
    caplog.set_level(logging.ERROR, logger="forkthread")
    with CrashingServer("127.0.0.1:0", handle_signals=False) as server:
        thread = run_in_thread(server)
        try:
            with socket.create_connection((server.address.host, server.address.port)) as sock:
                sock.sendall(b"crash now")
                assert recv_all(sock) == b""  # that connection ends
            with socket.create_connection((server.address.host, server.address.port)) as sock:
                assert echo_exchange(sock, b"still serving") == b"still serving"
        finally:
            server.shutdown()
            thread.join(5)
    faults = [record for record in caplog.records if "handler failed" in record.getMessage()]
    assert len(faults) == 1 and faults[0].exc_info is not None


def test_verify_request_false_closes_without_serving():
    with Picky("127.0.0.1:0", handle_signals=False) as server:
        thread = run_in_thread(server)
        try:
            with socket.create_connection((server.address.host, server.address.port)) as sock:
                sock.sendall(b"x")
                try:
                    assert recv_all(sock) == b""
                except ConnectionResetError:
                    pass  # closed with our byte unread: a reset is the kernel's way of saying no
        finally:
            server.shutdown()
            thread.join(5)


def test_idle_timeout_closes_a_silent_connection():
    with EchoServer("127.0.0.1:0", timeout=0.3, handle_signals=False) as server:
        thread = run_in_thread(server)
        try:
            with socket.create_connection((server.address.host, server.address.port), timeout=10) as sock:
                assert recv_all(sock) == b""
        finally:
            server.shutdown()
            thread.join(5)


def test_graceful_timeout_cuts_a_connection_that_never_ends():
    with EchoServer("127.0.0.1:0", timeout=None, graceful_timeout=0.3, handle_signals=False) as server:
        thread = run_in_thread(server)
        with socket.create_connection((server.address.host, server.address.port), timeout=10) as sock:
            sock.sendall(b"a")
            assert sock.recv(1) == b"a"
            server.shutdown(wait=False)
            thread.join(10)
            assert not thread.is_alive()
            assert recv_all(sock) == b""


def test_iterative_serves_the_second_client_after_the_first_leaves():
    with EchoServer("127.0.0.1:0", strategy="iterative", handle_signals=False) as server:
        thread = run_in_thread(server)
        try:
            address = (server.address.host, server.address.port)
            first = socket.create_connection(address, timeout=10)
            first.sendall(b"1")
            assert first.recv(1) == b"1"
            second = socket.create_connection(address, timeout=10)  # queued in the backlog
            second.sendall(b"2")
            second.settimeout(0.5)
            with pytest.raises(TimeoutError):
                second.recv(1)
            first.close()
            second.settimeout(10)
            assert second.recv(1) == b"2"
            second.close()
        finally:
            server.shutdown()
            thread.join(5)


def test_unix_socket_file_removed_at_close(tmp_path):
    path = tmp_path / "srv.sock"
    with EchoServer(f"unix:{path}", handle_signals=False) as server:
        assert str(server.address) == f"unix:{path}"
        assert path.exists()
    assert not path.exists()


def test_server_without_protocol_explains_itself():
    class Empty(Server):
        pass

    with Empty("127.0.0.1:0", handle_signals=False) as server, pytest.raises(NotImplementedError):
        server.protocol_factory()


def test_unsupported_strategy_is_refused():
    class OnlyIterative(EchoServer):
        supported_strategies = frozenset({"iterative"})

    with pytest.raises(ValueError, match="does not run under"):
        OnlyIterative("127.0.0.1:0", strategy=_other_strategy())


def _other_strategy() -> str:
    from framework.strategies import STRATEGIES

    others = [name for name in STRATEGIES if name != "iterative"]
    if not others:
        pytest.skip("only the iterative strategy is registered")
    return others[0]


def test_status_line_names_strategy_and_counts():
    with EchoServer("127.0.0.1:0", handle_signals=False) as server:
        status = server.status()
    assert "strategy=threading" in status and "served=0" in status and f"pid={os.getpid()}" in status


def test_refusal_is_asked_of_the_class_before_anything_binds():
    """One rule for the constructor and the pytest plugin: which strategies can carry a server class."""
    import socketserver

    from framework.strategies import StrategyOptions, create_strategy

    class Handled(Server):
        handler = socketserver.StreamRequestHandler

    class OnlyIterative(EchoServer):
        supported_strategies = frozenset({"iterative"})

    poll = create_strategy("poll")
    assert "runs a blocking handler, which strategy poll cannot carry" in (Handled.refusal(poll) or "")
    assert Handled.refusal(create_strategy("threading")) is None
    pool_of_loops = create_strategy("preforked", StrategyOptions(worker="poll"))
    assert Handled.refusal(pool_of_loops) is not None  # a pool of event loops: as its inner strategy
    assert Handled.refusal(create_strategy("preforked")) is None
    assert EchoServer.refusal(poll) is None
    assert "does not run under strategy 'poll'" in (OnlyIterative.refusal(poll) or "")
    with pytest.raises(ValueError, match="cannot carry"):
        Handled("127.0.0.1:0", strategy=poll, handle_signals=False)
