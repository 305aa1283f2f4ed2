"""The one signals/errno module: classification, wakeup pipe, record-then-dispatch handlers."""

from __future__ import annotations

import errno
import os
import signal
import threading

import pytest

from framework.lifecycle import ActiveConnections, Lifecycle, State
from framework.signals import (
    AcceptErrorKind,
    SignalDispatcher,
    Wakeup,
    classify_accept_error,
    is_peer_gone,
    retry_interrupted,
)


@pytest.mark.parametrize(("code", "kind"), [
    (errno.EAGAIN, AcceptErrorKind.RETRY), (errno.ECONNABORTED, AcceptErrorKind.RETRY),
    (errno.EINTR, AcceptErrorKind.RETRY), (errno.EMFILE, AcceptErrorKind.CAPACITY),
    (errno.ENFILE, AcceptErrorKind.CAPACITY), (errno.ENOBUFS, AcceptErrorKind.CAPACITY),
    (errno.ENOMEM, AcceptErrorKind.CAPACITY), (errno.EBADF, AcceptErrorKind.FATAL),
    (errno.EINVAL, AcceptErrorKind.FATAL),
])
def test_accept_errors_are_classified_once(code, kind):
    assert classify_accept_error(OSError(code, os.strerror(code))) is kind


def test_peer_gone():
    assert is_peer_gone(BrokenPipeError())
    assert is_peer_gone(ConnectionResetError())
    assert is_peer_gone(OSError(errno.ENOTCONN, "x"))
    assert not is_peer_gone(OSError(errno.EBADF, "x"))
    assert not is_peer_gone(ValueError())


def test_retry_interrupted():
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise InterruptedError
        return "done"

    assert retry_interrupted(flaky) == "done" and len(calls) == 3


def test_wakeup_pipe_wakes_and_drains():
    wakeup = Wakeup()
    try:
        for _ in range(100_000):  # far more than the pipe holds: a full pipe is still "awake"
            wakeup.wake()
        assert wakeup.drain()
        assert wakeup.drain() == b""
    finally:
        wakeup.close()
        wakeup.close()  # idempotent


def test_handlers_only_record_and_actions_run_at_dispatch():
    wakeup = Wakeup()
    dispatcher = SignalDispatcher(wakeup)
    seen = []
    previous = signal.getsignal(signal.SIGUSR2)
    dispatcher.install({signal.SIGUSR2: seen.append})
    try:
        os.kill(os.getpid(), signal.SIGUSR2)
        os.kill(os.getpid(), signal.SIGUSR2)
        assert seen == []  # nothing ran in the handler
        assert dispatcher.pending()
        assert os.read(wakeup.read_fd, 10)  # the C-level handler woke the pipe
        dispatcher.dispatch()
        assert seen == [signal.SIGUSR2, signal.SIGUSR2]
    finally:
        dispatcher.restore()
        wakeup.close()
    assert signal.getsignal(signal.SIGUSR2) == previous


def test_lifecycle_stop_from_another_thread_wakes_and_sets_deadline():
    lifecycle = Lifecycle(graceful_timeout=5)
    try:
        assert lifecycle.remaining() is None
        thread = threading.Thread(target=lifecycle.request_stop)
        thread.start()
        thread.join()
        assert lifecycle.state is State.STOPPING
        assert 0 < lifecycle.remaining() <= 5
        assert os.read(lifecycle.wakeup_fd(), 10)
        lifecycle.request_stop(graceful=False)  # a quick stop shortens the deadline
        assert lifecycle.past_deadline()
    finally:
        lifecycle.close()


def test_active_connections_abort_all_wakes_a_blocked_reader():
    import socket

    connections = ActiveConnections()
    left, right = socket.socketpair()
    with left, right:
        connections.add(left)
        got = []
        reader = threading.Thread(target=lambda: got.append(left.recv(10)))
        reader.start()
        assert connections.abort_all() == 1
        reader.join(5)
        assert got == [b""]
        connections.discard(left)
        assert len(connections) == 0 and connections.served == 1
