"""framework.drivers.offload and the event loop's hand-off: jobs beside a loop, in real threads."""

from __future__ import annotations

import socket
import threading
import time

from framework.drivers.nonblocking import HIGH_WATER, EventLoop
from framework.drivers.offload import WorkerPool
from framework.protocol import Port, Protocol


def test_a_blocked_job_does_not_hold_the_next_one():
    # Regression: with one idle thread, two jobs submitted back to back both counted on it,
    # so the second waited behind the first however long that one blocked.
    pool = WorkerPool(4)
    release = threading.Event()
    ran = threading.Event()
    try:
        pool.submit(lambda: None)
        deadline = time.monotonic() + 10
        while pool.busy and time.monotonic() < deadline:
            time.sleep(0.01)  # the one thread is idle again
        pool.submit(lambda: release.wait(30))
        pool.submit(ran.set)
        assert ran.wait(20), "the second job waited for the first"
    finally:
        release.set()
        pool.close()


def test_pool_never_exceeds_its_threads_and_runs_every_job():
    pool = WorkerPool(3)
    lock = threading.Lock()
    running = peak = done = 0

    def job() -> None:
        nonlocal running, peak, done
        with lock:
            running += 1
            peak = max(peak, running)
        time.sleep(0.001)
        with lock:
            running -= 1
            done += 1

    for _ in range(200):
        pool.submit(job)
    pool.close(timeout=30)
    assert done == 200 and peak <= 3


def test_call_soon_threadsafe_from_many_threads_runs_every_callback():
    # Wake-ups are coalesced (one byte in the pipe at a time): none may be lost.  Each thread
    # waits for its callback before queueing the next: round trips, as jobs make.
    loop = EventLoop()
    loop.worker_pool()  # opens the pipe back to the loop
    per_thread, threads = 2000, 4
    stalled: list[int] = []
    stop = threading.Event()

    def caller(number: int) -> None:
        for _ in range(per_thread):
            ran = threading.Event()
            loop.call_soon_threadsafe(ran.set)
            if not ran.wait(10):
                stalled.append(number)
                return
            if stop.is_set():
                return

    workers = [threading.Thread(target=caller, args=(number,)) for number in range(threads)]
    for worker in workers:
        worker.start()
    try:
        while any(worker.is_alive() for worker in workers):
            loop.run_once(0.5)
        assert not stalled, "a callback never ran"
    finally:
        stop.set()
        for worker in workers:
            while worker.is_alive():
                loop.run_once(0.1)
                worker.join(0.01)
        loop.close()


class _Streaming(Protocol):
    """Offloads one job that writes *total* bytes through its port (as an application would)."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.written = 0
        self.failed: BaseException | None = None
        self.finished = threading.Event()

    def connection_made(self, transport):  # type: ignore[no-untyped-def]
        self.transport = transport
        transport.offload(self.job)

    def job(self, port: Port) -> None:
        block = b"x" * 65536
        try:
            while self.written < self.total:
                port.write(block)
                self.written += len(block)
        except ConnectionError as exc:
            self.failed = exc
        finally:
            self.finished.set()


def test_a_slow_reader_holds_the_job_back_and_a_gone_one_stops_it():
    loop = EventLoop()
    server, client = socket.socketpair()
    protocol = _Streaming(1 << 30)
    try:
        loop.add_connection(server, "peer", protocol)
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            loop.run_once(0.05)  # nobody reads: the job must stop at the high-water marks
        held = protocol.written
        assert held < 4 * HIGH_WATER + (1 << 20), f"the job wrote {held} bytes for a reader that reads nothing"
        client.close()
        deadline = time.monotonic() + 20
        while not protocol.finished.is_set() and time.monotonic() < deadline:
            loop.run_once(0.05)
        assert protocol.finished.is_set() and isinstance(protocol.failed, ConnectionError)
    finally:
        loop.close()
        client.close()
