"""Signals under load: storms lose nothing, SIGTERM always stops promptly, a stop under load is graceful."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import socket
import subprocess
import threading
import time

import pytest

from tests.reliability_support import Bounded, bytes_wrong, echo_roundtrip, open_clients, report, run_threads
from tests.support import ServerProcess, echo_exchange, pool_ready, process_state, recv_all, wait_for


def signal_storm(server: ServerProcess, signums: list[int], stop: threading.Event, bound: Bounded,
                 pause: float = 0.001) -> dict[int, int]:
    """Send *signums* round-robin to the server and its descendants until *stop* or *bound*.

    Counts, per signal, the ``kill`` calls that reached a live process (the
    kernel took the signal; several pending ones of a kind may merge into one).
    """
    sent = dict.fromkeys(signums, 0)
    tree: set[int] = set()
    looked = 0.0
    while not stop.is_set() and bound.more():
        if time.monotonic() - looked > 0.25:  # reading /proc is slow: refresh the tree now and then
            tree, looked = server.tree(), time.monotonic()
        signum = signums[bound.done % len(signums)]
        # Workers and per-connection children get USR1 and CHLD too; HUP is the master's.
        targets = {server.pid} | (tree if signum in (signal.SIGCHLD, signal.SIGUSR1) else set())
        for pid in targets:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)
                sent[signum] += 1
        time.sleep(pause)
    return sent


def storm_during_transfers(serve, strategy: str, clients: int, size: int, storm_count: int,
                           rounds: int = 200) -> None:
    server = serve("echo", "--workers", "2", "--log-level", "warning", strategy=strategy)
    signums = [signal.SIGUSR1, signal.SIGCHLD]
    if strategy == "preforked":
        signums = signums * 5 + [signal.SIGHUP]  # reload: every worker replaced, in-flight ones finish
    payloads = [os.urandom(size) for _ in range(clients)]
    stop = threading.Event()
    counts: dict[int, int] = {}
    storm = threading.Thread(target=lambda: counts.update(
        signal_storm(server, signums, stop, Bounded(storm_count, 30), pause=0.002)))
    transfers = []
    compared = [0, 0]  # bytes compared, bytes that differed or were missing

    def client(index: int) -> None:
        # Transfer again and again for as long as the storm lasts (bounded in count too).
        bound = Bounded(rounds, 60)
        while bound.more() and (storm.is_alive() or bound.done <= 2):
            with server.connect(timeout=60) as sock:
                answer = echo_exchange(sock, payloads[index], chunk=4096)
            expected = payloads[index]
            compared[0] += len(expected)
            compared[1] += bytes_wrong(answer, expected)
            assert answer == expected
            transfers.append(index)

    storm.start()
    try:
        errors = run_threads(client, clients, timeout=90)
    finally:
        stop.set()
        storm.join(30)
    assert not errors, errors[:3]
    assert server.proc.poll() is None, server.log()
    assert echo_roundtrip(server, b"after the storm") == b"after the storm"
    assert "Traceback" not in server.log(), server.log()
    report("signal-storm", strategy=strategy, transfers=len(transfers), bytes_compared=compared[0],
           bytes_wrong=compared[1], **{f"{signal.Signals(signum).name}_sent": sent for signum, sent in counts.items()})


def test_signal_storm_during_transfers(serve, strategy):
    storm_during_transfers(serve, strategy, clients=4, size=256 * 1024, storm_count=400)


@pytest.mark.slow
def test_signal_storm_during_transfers_long(serve, strategy):
    storm_during_transfers(serve, strategy, clients=8, size=128 * 1024, storm_count=3000, rounds=2000)


# -- SIGTERM right after start: the wakeup descriptor closes the check-then-block race -------------


def sigterm_right_after_start(serve, strategy: str, delays: list[float]) -> None:
    clean_exits = 0
    for delay in delays:
        server = serve("echo", "--workers", "2", strategy=strategy)
        time.sleep(delay)
        server.send_signal(signal.SIGTERM)
        try:
            # A lost wakeup blocks in poll for ever: only that misses this deadline.
            status = server.proc.wait(60)
        except subprocess.TimeoutExpired:
            pytest.fail(f"no exit 60 s after SIGTERM sent {delay * 1000:.1f} ms after start:\n{server.log()}")
        assert status == 0, f"exit status {status} for SIGTERM {delay * 1000:.1f} ms after start\n{server.log()}"
        clean_exits += status == 0
    report("sigterm-race", strategy=strategy, starts=len(delays), signals_sent=len(delays), exits_status_0=clean_exits)


def test_sigterm_right_after_start_always_exits_promptly(serve, strategy):
    sigterm_right_after_start(serve, strategy, [0, 0, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.05])


@pytest.mark.slow
def test_sigterm_right_after_start_many_timings(serve, strategy):
    sigterm_right_after_start(serve, strategy, [i * 0.001 for i in range(25)])


# -- graceful stop under load -------------------------------------------------------------------


def graceful_under_load(serve, strategy: str, clients: int, *options: str) -> None:
    # Requests in progress: a work line half sent (an echo session with nothing unanswered
    # would be idle, and closed once quiet at the stop).  Each full line is answered "ok".
    # The graceful timeout is a deadline only a hang misses: the test ends every request
    # itself, one by one, and a loaded machine must not turn that into a forced end.
    graceful = 60.0
    server = serve("work", "--work", "cpu:0", "--workers", "2", "--graceful-timeout", str(graceful),
                   "--timeout", "120", *options, strategy=strategy)
    pool_ready(server, strategy, workers=2)
    socks = []
    try:
        open_clients(server, clients, b"first half %d;", into=socks)
        # Which requests has the server accepted?  A probe line each ("ok" once accepted); under
        # iterative or a small pool the rest wait in the backlog, unaccepted.  Not a fixed wait, which
        # a loaded machine outlasts: the first answer is waited for (a deadline only a hang misses),
        # then answers are taken while they keep coming.  A probe answered later still is one of the
        # others below, and every way those can end is accepted there.
        for sock in socks:
            sock.sendall(b"\n")
        accepted: list[int] = []
        waiting = {sock: index for index, sock in enumerate(socks)}
        while waiting:
            readable, _, _ = select.select(list(waiting), [], [], 0.5 if accepted else 60)
            if not readable:
                break
            for sock in readable:
                index = waiting.pop(sock)
                assert sock.recv(65536) == b"ok\n"
                sock.sendall(b"first half %d;" % index)  # a request in progress again, as the stop begins
                accepted.append(index)
        assert accepted, "no client was being served 60 s after its probe"
        started = time.monotonic()
        server.send_signal(signal.SIGTERM)
        # New connections are refused once stopping has started.
        assert wait_for(lambda: refused(server), timeout=30), "a new connection was still taken after SIGTERM"
        # Every accepted request completes, byte-exact: its connection holds half a line, so the
        # stop never takes it for idle.
        completed = compared = 0
        for index in accepted:
            sock = socks[index]
            sock.setblocking(True)
            sock.settimeout(graceful)
            try:
                sock.sendall(b"second half %d\n" % index)
                sock.shutdown(socket.SHUT_WR)
                answer = recv_all(sock)
            except OSError as exc:
                pytest.fail(f"accepted request {index} cut short: {exc!r}\n{server.log()}")
            assert answer == b"ok\n", f"accepted request {index} cut short: {answer!r}\n{server.log()}"
            completed += 1
            compared += len(answer)
        # The others end cleanly: served in full, refused/reset, or -- a probe answered only after
        # the look above -- closed once idle at the stop after that answer; never cut short.
        refused_or_reset = served_later = closed_idle = 0
        for index, sock in enumerate(socks):
            if index in accepted:
                continue
            sock.setblocking(True)
            sock.settimeout(graceful)
            try:
                sock.sendall(b"second half\n")
                sock.shutdown(socket.SHUT_WR)
                answer = recv_all(sock)
            except OSError:
                refused_or_reset += 1
                continue
            assert answer in (b"", b"ok\n", b"ok\nok\n"), answer
            refused_or_reset += answer == b""
            closed_idle += answer == b"ok\n"
            served_later += answer == b"ok\nok\n"
            compared += len(answer)
        status = server.proc.wait(graceful + 60)  # a deadline only a hang misses
        elapsed = time.monotonic() - started  # a figure for the docs, not a bound
    finally:
        for sock in socks:
            sock.close()
    assert status == 0, server.log()
    assert "Traceback" not in server.log()
    assert "ended at the graceful deadline" not in server.log(), server.log()
    report("graceful", strategy=f"[{' '.join([strategy, *options])}]", clients=clients, accepted=len(accepted),
           completed=completed, served_from_backlog=served_later, closed_idle_after_probe=closed_idle,
           ended_unserved=refused_or_reset, bytes_compared=compared, exit_status=status,
           exit_seconds=f"{elapsed:.2f}")


def refused(server: ServerProcess) -> bool:
    try:
        with server.connect(timeout=2) as sock:
            sock.settimeout(0.5)
            sock.recv(1)  # a backlog that is reset later reads as ConnectionResetError
    except (ConnectionRefusedError, ConnectionResetError):
        return True
    except (TimeoutError, OSError):
        return False
    return False


def test_sigterm_with_100_active_clients(serve, strategy):
    graceful_under_load(serve, strategy, clients=100)


@pytest.mark.only_strategies("preforked")
@pytest.mark.parametrize("accept", ["lock", "reuseport", "passfd"])
def test_sigterm_with_100_active_clients_preforked_accept_modes(serve, strategy, accept):
    if strategy != "preforked":
        pytest.skip("accept modes are the pre-forked pool's")
    graceful_under_load(serve, strategy, 100, "--accept", accept)


@pytest.mark.only_strategies("preforked")
def test_preforked_master_signals_right_after_start(serve, strategy):
    # HUP, TTIN and TTOU sent the moment the server says it listens must reach the master's
    # actions (reload, one worker more, one fewer), not their defaults (end or stop the process).
    if strategy != "preforked":
        pytest.skip("only the pre-forked master handles HUP, TTIN and TTOU")
    for signum, burst in ((signal.SIGHUP, 200), (signal.SIGTTIN, 1), (signal.SIGTTOU, 1)):
        server = serve("echo", "--workers", "2", strategy=strategy)
        for _ in range(burst):  # a burst covers the moments between the announcement and the master's loop
            server.send_signal(signum)
            time.sleep(0.001)
        time.sleep(0.3)
        assert server.proc.poll() is None, f"{signal.Signals(signum).name} ended the master\n{server.log()}"
        assert process_state(server.pid) != "T", f"{signal.Signals(signum).name} stopped the master"
        assert echo_roundtrip(server, b"alive") == b"alive"


def test_stalled_clients_cannot_hold_a_stop_beyond_the_graceful_timeout(serve, strategy):
    # Clients that never finish their request (an nbytes count without its newline: not between
    # messages, so not closed as idle): the stop waits --graceful-timeout for them, no longer.
    # Their idle timeout is an hour, so only the graceful deadline can end them inside the 60 s wait.
    graceful = 2.0
    server = serve("nbytes", "--workers", "2", "--graceful-timeout", str(graceful), "--timeout", "3600",
                   strategy=strategy)
    pool_ready(server, strategy, workers=2)
    socks = []
    try:
        open_clients(server, 10, b"1%d", into=socks)
        time.sleep(0.3)
        started = time.monotonic()
        server.send_signal(signal.SIGTERM)
        status = server.proc.wait(60)
        elapsed = time.monotonic() - started  # a figure for the docs, not a bound
        for sock in socks:  # every connection was ended: end-of-file or a reset, never a hang
            sock.settimeout(30)
            try:
                recv_all(sock)
            except ConnectionResetError:
                pass
    finally:
        for sock in socks:
            sock.close()
    assert status == 0, server.log()
    assert elapsed >= graceful * 0.8, f"stop after {elapsed:.1f} s, before --graceful-timeout {graceful}"
    report("graceful-deadline", strategy=strategy, stalled_clients=len(socks), graceful_timeout=graceful,
           exit_seconds=f"{elapsed:.2f}")
