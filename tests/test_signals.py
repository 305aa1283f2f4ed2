"""The one signals/errno module: classification, wakeup pipe, record-then-dispatch handlers."""

from __future__ import annotations

import errno
import os
import select
import signal
import threading

import pytest

from framework.lifecycle import ActiveConnections, Lifecycle, State
from framework.signals import (
    PIPE_READ_SIZE,
    SERVER_SIGNALS,
    AcceptErrorKind,
    Latch,
    LateWakeup,
    SignalDispatcher,
    Wakeup,
    classify_accept_error,
    is_peer_gone,
    retry_interrupted,
    start_thread_without_signals,
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


@pytest.mark.parametrize("written", [1, PIPE_READ_SIZE - 1, PIPE_READ_SIZE, PIPE_READ_SIZE + 5, 3 * PIPE_READ_SIZE])
def test_a_drain_returns_every_byte_whatever_the_read_size(written):
    # A drain stops at a short read (the pipe is empty): one that fills its read reads again.
    wakeup = Wakeup()
    try:
        for _ in range(written):
            wakeup.wake()
        assert len(wakeup.drain()) == written
        assert wakeup.drain() == b""
    finally:
        wakeup.close()


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


def _readable(fd: int) -> bool:
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(0))


def test_latch_set_before_its_pipe_is_made_is_readable_when_made():
    latch = Latch()
    try:
        latch.set()
        assert latch.is_set()
        assert _readable(latch.fileno())
        assert latch.fileno() == latch.fileno()  # made once
    finally:
        latch.close()


def test_latch_made_then_set_becomes_readable_and_stays_so():
    latch = Latch()
    try:
        fd = latch.fileno()
        assert not _readable(fd)
        latch.set()
        latch.set()
        assert _readable(fd) and _readable(fd)  # never drained
    finally:
        latch.close()


def test_latch_made_by_many_threads_at_once_is_one_pipe():
    latch = Latch()
    try:
        barrier = threading.Barrier(8)
        seen: list[int] = []

        def ask() -> None:
            barrier.wait(10)
            seen.append(latch.fileno())

        threads = [threading.Thread(target=ask) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
        assert len(set(seen)) == 1 and seen[0] >= 0
    finally:
        latch.close()


def test_a_closed_latch_makes_no_pipe():
    latch = Latch()
    latch.close()
    assert latch.fileno() == -1
    latch.set()  # nobody is left to tell: no error
    assert latch.is_set()


def test_a_forked_child_keeps_a_latch_only_while_nothing_of_it_is_shared():
    fresh, made, stopped, closed, busy = Latch(), Latch(), Latch(), Latch(), Latch()
    try:
        made.fileno()
        stopped.set()
        closed.close()
        assert fresh.kept_by_child()
        assert not made.kept_by_child()  # its pipe is the parent's too
        assert not stopped.kept_by_child()
        assert not closed.kept_by_child()
        with busy._making:  # another thread of the parent's was making the pipe at the fork
            assert not busy.kept_by_child()
        assert busy.kept_by_child()
    finally:
        for latch in (fresh, made, stopped, closed, busy):
            latch.close()


@pytest.mark.parametrize("late_wakeup", [False, True], ids=["wakeup-at-fork", "late-wakeup"])
@pytest.mark.parametrize("pipe_made", [False, True], ids=["no-latch-pipe", "latch-pipe"])
def test_a_forked_childs_stop_is_its_own(pipe_made: bool, late_wakeup: bool):
    # The child keeps or replaces the latch (see above); either way its stop reaches neither
    # the parent's latch nor the parent's wakeup pipe, and the parent's callbacks stay behind.
    lifecycle = Lifecycle()
    called: list[str] = []
    lifecycle.call_when_stopping(lambda: called.append("parent's"))
    if pipe_made:
        lifecycle.stop_latch.fileno()
    parent_wakeup, parent_latch = lifecycle.wakeup.fileno(), lifecycle.stop_latch
    report_r, report_w = os.pipe()
    try:
        pid = os.fork()
        if pid == 0:  # the child: report, then leave at once
            status = 1
            try:
                lifecycle.after_fork_in_child(late_wakeup=late_wakeup)
                lifecycle.request_stop()
                facts = (lifecycle.wakeup.fileno() != parent_wakeup, lifecycle.stopping, not called,
                         (lifecycle.stop_latch is parent_latch) is not pipe_made, lifecycle.stop_latch.is_set())
                os.write(report_w, bytes(int(fact) for fact in facts))
                status = 0
            finally:
                os._exit(status)
        os.close(report_w)
        report_w = -1
        with os.fdopen(report_r, "rb") as report:
            report_r = -1
            facts = report.read()
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert facts == b"\x01" * 5
        assert not lifecycle.stopping and not parent_latch.is_set()
        assert not _readable(parent_wakeup)
        if pipe_made:
            assert not _readable(parent_latch.fileno())
    finally:
        for fd in (report_r, report_w):
            if fd >= 0:
                os.close(fd)
        lifecycle.close()


def _open_fds(*fds: int) -> list[bool]:
    opened = []
    for fd in fds:
        try:
            os.fstat(fd)
            opened.append(True)
        except OSError:
            opened.append(False)
    return opened


def test_a_late_wakeup_makes_its_pipe_at_the_first_question_and_keeps_what_came_before():
    parents = Wakeup()
    late = LateWakeup(parents, None)
    try:
        assert late.drain() == b""  # nothing made, nothing to read, the parent's pipe untouched
        late.wake()  # nobody polls yet: remembered
        parents_fds = (parents.read_fd, parents.write_fd)
        assert _open_fds(*parents_fds) == [True, True]
        fd = late.fileno()
        assert fd not in parents_fds and late.fileno() == fd
        assert _readable(fd)  # the wake that came first
        assert _open_fds(*parents_fds) == [False, False]  # the parent's descriptors, closed in the making
        late.drain()
        assert not _readable(fd)
        late.wake()
        assert _readable(fd)
    finally:
        late.close()
        parents.read_fd = parents.write_fd = -1  # closed by the making


def test_a_late_wakeup_wakes_for_a_signal_recorded_before_it_was_made():
    # The signal's byte went to the parent's pipe (the process's wakeup descriptor then);
    # the making sees the queue and writes one of its own.
    parents = Wakeup()
    pending = [True]
    late = LateWakeup(parents, lambda: bool(pending))
    previous = signal.set_wakeup_fd(parents.write_fd, warn_on_full_buffer=False)
    try:
        fd = late.fileno()
        assert signal.set_wakeup_fd(-1) == late.write_fd  # the signals now wake the child's own pipe
        assert _readable(fd)
    finally:
        signal.set_wakeup_fd(previous)
        late.close()


def test_a_late_wakeup_never_made_closes_the_parents_descriptors():
    parents = Wakeup()
    fds = (parents.read_fd, parents.write_fd)
    LateWakeup(parents, None).close()
    assert _open_fds(*fds) == [False, False]


def test_only_the_named_signals_reach_the_unheard_listener():
    # LastResort listens for stop signals; a SIGCHLD per connection (forking) must not call it.
    wakeup = Wakeup()
    dispatcher = SignalDispatcher(wakeup)
    heard: list[int] = []
    dispatcher.unheard = heard.append
    dispatcher.unheard_signals = frozenset({int(signal.SIGTERM)})
    try:
        dispatcher._record(int(signal.SIGCHLD), None)
        dispatcher._record(int(signal.SIGTERM), None)
        assert heard == [int(signal.SIGTERM)]
        assert dispatcher.pending()  # both are queued for dispatch all the same
    finally:
        wakeup.close()


def test_stop_request_sets_the_latch_before_waking_the_loop():
    # A main-thread loop woken by the wakeup pipe reads the latch's flag at once.
    lifecycle = Lifecycle()
    seen: list[bool] = []
    original = lifecycle.wakeup.wake

    def wake() -> None:
        seen.append(lifecycle.stop_latch.is_set())
        original()

    lifecycle.wakeup.wake = wake  # type: ignore[method-assign]
    try:
        lifecycle.request_stop()
        assert seen == [True]
    finally:
        lifecycle.close()


def test_a_thread_started_without_signals_blocks_them_from_its_first_instruction():
    """The mask is inherited at creation, not set by the thread: no window for the kernel to pick it."""
    seen: list[set[int]] = []
    before = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    thread = threading.Thread(target=lambda: seen.append(set(signal.pthread_sigmask(signal.SIG_BLOCK, []))))
    assert start_thread_without_signals(thread.start) is None
    thread.join(30)
    assert seen and seen[0] >= SERVER_SIGNALS
    assert signal.pthread_sigmask(signal.SIG_BLOCK, []) == before  # the caller's own mask is back
