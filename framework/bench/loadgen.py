"""A load-generating client process: ``python -m framework.bench.loadgen SPEC_JSON``.

The lab starts K of these so that the load is made by several processes
(as in UNP ch. 30), not by threads sharing one interpreter lock.  Each
prints ``ready``, waits for ``go`` on standard input (so all start
together; ``go T`` also hands over the lab's start time, so that the
``exchange`` kind ends at one deadline for all), runs its load, and prints one JSON result line.  Every load is
bounded both in count and in time.

Kinds (``spec["kind"]``):

``nbytes``
    N short connections one after the other; each sends ``B\\n`` and reads
    the B bytes until the server closes.
``rr``
    C persistent connections doing request/response (``"protocol"``:
    ``echo``, ``http``, or ``line``: one answer line starting ``ok``)
    until a deadline or a request count.
``exchange``
    C connections, a thread each, performing the exchanges of a user's
    server (:mod:`framework.bench.exchange`) until a deadline or a count;
    persistent, or one connection per exchange.  A failed exchange is
    counted by its reason, and its connection replaced.
``idle``
    Open connections one by one, each proven served by a one-byte echo;
    after every ``step`` connections (and at the end) print ``held N``
    and wait for ``more`` or ``stop`` (the lab measures the server's
    memory meanwhile).
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import socket
import sys
import threading
import time
from collections import Counter
from typing import Any

#: Latency samples kept per process (a uniform subsample beyond this).
MAX_SAMPLES = 20000


def _connect(host: str, port: int, timeout: float) -> socket.socket:
    sock = socket.create_connection((host, port), timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _thin(samples: list[float]) -> list[float]:
    if len(samples) <= MAX_SAMPLES:
        return samples
    step = len(samples) / MAX_SAMPLES
    return [samples[int(i * step)] for i in range(MAX_SAMPLES)]


def run_nbytes(spec: dict[str, Any]) -> dict[str, Any]:
    """N sequential connections, each asking for B bytes."""
    host, port, count, size = spec["host"], spec["port"], spec["connections"], spec["bytes"]
    deadline = time.monotonic() + spec["duration"]
    request = b"%d\n" % size
    done = errors = 0
    latencies = []
    started = time.monotonic()
    for _ in range(count):
        if time.monotonic() >= deadline:
            break
        begin = time.monotonic()
        try:
            with _connect(host, port, spec.get("timeout", 10.0)) as sock:
                sock.sendall(request)
                received = 0
                while True:
                    data = sock.recv(65536)
                    if not data:
                        break
                    received += len(data)
        except OSError:
            errors += 1
            continue
        if received == size:
            done += 1
            latencies.append(time.monotonic() - begin)
        else:
            errors += 1
    return {"done": done, "errors": errors, "elapsed": time.monotonic() - started, "latencies": _thin(latencies)}


class _Exchange:
    """One persistent connection doing request/response; knows when a response is complete."""

    def __init__(self, sock: socket.socket, protocol: str, request: bytes) -> None:
        self.sock = sock
        self.protocol = protocol
        self.request = request
        self.started = 0.0
        self.round_trips = 0
        self._reset()

    def _reset(self) -> None:
        self.head = bytearray()
        self.remaining: int | None = len(self.request) if self.protocol == "echo" else None
        self.close_after = False

    def send(self) -> None:
        self._reset()
        self.started = time.monotonic()
        self.sock.sendall(self.request)

    def feed(self, data: bytes) -> bool:
        """Take received bytes; return True when the response is complete."""
        if self.protocol == "line":
            self.head += data
            if not self.head.endswith(b"\n"):
                if len(self.head) > 65536:
                    raise ValueError("answer line too long")
                return False
            if not self.head.startswith(b"ok"):
                raise ValueError(f"bad answer {bytes(self.head[:40])!r}")
            return True
        if self.remaining is None:  # http: still reading the head
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                if len(self.head) > 65536:
                    raise ValueError("response head too long")
                return False
            head = bytes(self.head[:end]).lower()
            self.close_after = head.startswith(b"http/1.0") and b"connection: keep-alive" not in head
            self.close_after = self.close_after or b"connection: close" in head
            if not head.startswith((b"http/1.1 200", b"http/1.0 200")):
                raise ValueError(f"bad response {head[:40]!r}")
            length = head.find(b"content-length:")
            if length < 0:
                raise ValueError("response without Content-Length")
            line_end = head.find(b"\r\n", length)
            content_length = int(head[length + 15:line_end if line_end >= 0 else None])
            self.remaining = content_length - (len(self.head) - end - 4)
        else:
            self.remaining -= len(data)
        return self.remaining <= 0


def run_rr(spec: dict[str, Any]) -> dict[str, Any]:
    """C persistent connections doing request/response until the deadline or the request cap."""
    host, port, protocol = spec["host"], spec["port"], spec["protocol"]
    request = spec["request"].encode("latin-1")
    max_requests = spec.get("max_requests", 10**9)
    timeout = spec.get("timeout", 10.0)
    selector = selectors.DefaultSelector()
    errors = done = 0
    latencies: list[float] = []
    exchanges: list[_Exchange] = []
    starved = 0

    def open_exchange() -> _Exchange | None:
        nonlocal errors
        try:
            sock = _connect(host, port, timeout)
        except OSError:
            errors += 1
            return None
        sock.setblocking(False)
        exchange = _Exchange(sock, protocol, request)
        selector.register(sock, selectors.EVENT_READ, exchange)
        return exchange

    def retire(exchange: _Exchange) -> None:
        selector.unregister(exchange.sock)
        exchange.sock.close()

    for _ in range(spec["connections"]):
        exchange = open_exchange()
        if exchange is not None:
            exchanges.append(exchange)
    started = time.monotonic()
    deadline = started + spec["duration"]
    for exchange in exchanges:
        exchange.send()
    buffer = bytearray(262144)
    while selector.get_map() and done < max_requests:
        now = time.monotonic()
        if now >= deadline:
            break
        for key, _ in selector.select(deadline - now):
            exchange = key.data
            try:
                count = exchange.sock.recv_into(buffer)
                if count == 0:
                    raise ConnectionResetError("server closed mid-response")
                complete = exchange.feed(buffer[:count])
            except (OSError, ValueError):
                errors += 1
                retire(exchange)
                replacement = open_exchange()
                if replacement is not None:
                    exchanges.append(replacement)
                    replacement.send()
                continue
            if not complete:
                continue
            done += 1
            exchange.round_trips += 1
            latencies.append(time.monotonic() - exchange.started)
            if exchange.close_after:  # HTTP/1.0 or Connection: close: one request per connection
                retire(exchange)
                exchange = open_exchange()
                if exchange is None:
                    continue
                exchanges.append(exchange)
            if time.monotonic() < deadline and done < max_requests:
                exchange.send()
    elapsed = time.monotonic() - started
    starved = sum(1 for exchange in exchanges[: spec["connections"]] if exchange.round_trips == 0)
    for key in list(selector.get_map().values()):
        key.fileobj.close()  # type: ignore[union-attr]
    selector.close()
    return {"done": done, "errors": errors, "elapsed": elapsed, "latencies": _thin(latencies),
            "starved": starved}


def run_exchange(spec: dict[str, Any]) -> dict[str, Any]:
    """C connections, one thread each, doing the user's exchanges until the deadline or the request cap.

    As the ``rr`` kind, only what is done by the deadline counts: an
    exchange still waiting then is left behind (its thread is a daemon and
    this process ends), and a connection with none done by then is starved.
    """
    from framework.bench.exchange import CLOSED, failure, make_exchange, spec_from_json

    host, port, timeout = spec["host"], spec["port"], spec.get("timeout", 10.0)
    per_exchange = bool(spec.get("per_exchange"))
    exchange = make_exchange(spec_from_json(spec["exchange"]), per_exchange)
    max_requests = spec.get("max_requests", 10**9)
    lock = threading.Lock()
    failures: Counter[str] = Counter()
    latencies: list[float] = []
    served = [0] * spec["connections"]
    go, over = threading.Event(), threading.Event()
    deadline = [0.0]

    def record(index: int, began: float, failed: str = "") -> None:
        with lock:  # after the deadline nothing counts: the figures are taken then
            if over.is_set():
                return
            if failed:
                failures[failed] += 1
            else:
                served[index] += 1
                latencies.append(time.monotonic() - began)
                if sum(served) >= max_requests:
                    over.set()

    def connection(index: int) -> None:
        sock: socket.socket | None = None
        try:
            sock = _connect(host, port, timeout)
            sock.settimeout(timeout)
        except OSError as exc:
            sock = None
            go.wait()
            record(index, 0.0, failure(exc))
        go.wait()
        while not over.is_set() and time.monotonic() < deadline[0]:
            began = time.monotonic()
            try:
                if sock is None:
                    sock = _connect(host, port, timeout)
                    sock.settimeout(timeout)
                said = exchange(sock)
            except Exception as exc:  # the user's function may raise anything: a failed exchange
                record(index, began, failure(exc))
                if sock is not None:
                    sock.close()
                    sock = None
                continue
            record(index, began)
            if per_exchange or said is CLOSED:
                sock.close()
                sock = None
        if sock is not None:
            sock.close()

    threads = [threading.Thread(target=connection, args=(index,), daemon=True) for index in range(spec["connections"])]
    for thread in threads:
        thread.start()
    started = spec.get("started_at") or time.monotonic()
    deadline[0] = started + spec["duration"]
    go.set()
    over.wait(max(0.0, deadline[0] - time.monotonic()))
    with lock:
        over.set()
        elapsed = time.monotonic() - started
        result = {"done": sum(served), "errors": sum(failures.values()), "elapsed": elapsed,
                  "latencies": _thin(list(latencies)), "starved": sum(1 for count in served if count == 0),
                  "failures": dict(failures)}
    for thread in threads:  # a moment for the threads between exchanges to close their sockets
        thread.join(max(0.0, started + spec["duration"] + 0.2 - time.monotonic()))
    return result


#: idle: connections opened and probed together (well under any listen backlog).
IDLE_BATCH = 64
#: idle: extra time a batch gets per connection in it (a fork or a thread each, on a busy machine).
IDLE_SECONDS_PER_CONNECTION = 0.05


def _probe_batch(host: str, port: int, count: int, timeout: float, first: int) -> tuple[list[socket.socket], str]:
    """Open *count* connections, send a byte on each, and keep those echoed in time, in order.

    The batch has *timeout* plus :data:`IDLE_SECONDS_PER_CONNECTION` per
    connection to be answered.

    Returns the served ones and, when not all were, why it stopped (connections
    are served in the order they were accepted, so the first unanswered one ends it).
    """
    socks: list[socket.socket] = []
    connect_failure = ""
    for _ in range(count):
        try:
            socks.append(_connect(host, port, timeout))
        except OSError as exc:
            connect_failure = f"connect failed: {exc.strerror or exc}"
            break
    for sock in socks:
        try:
            sock.sendall(b"x")
        except OSError:
            pass
    timeout += IDLE_SECONDS_PER_CONNECTION * len(socks)
    deadline = time.monotonic() + timeout
    served: list[socket.socket] = []
    reason = ""
    for index, sock in enumerate(socks):
        if not reason:
            sock.settimeout(max(0.001, deadline - time.monotonic()))
            try:
                answered = sock.recv(1) == b"x"
            except OSError:
                answered = False
            if answered:
                served.append(sock)
                continue
            reason = f"connection {first + index} not served within {timeout:.2g}s"
        sock.close()
    return served, reason or connect_failure


def run_idle(spec: dict[str, Any]) -> dict[str, Any]:
    """Open proven-served idle connections in steps, reporting after each step."""
    host, port = spec["host"], spec["port"]
    probe_timeout = spec.get("probe_timeout", 1.0)
    deadline = time.monotonic() + spec["duration"]
    step = spec["step"]
    held: list[socket.socket] = []
    reported = 0
    reason = "reached the maximum"
    try:
        while len(held) < spec["max"]:
            if time.monotonic() >= deadline:
                reason = "time limit"
                break
            count = min(IDLE_BATCH, spec["max"] - len(held), step - len(held) % step)
            served, failed = _probe_batch(host, port, count, probe_timeout, len(held) + 1)
            held += served
            if failed:
                reason = failed
                break
            if len(held) % step == 0:
                print(f"held {len(held)}", flush=True)
                reported = len(held)
                if sys.stdin.readline().strip() != "more":
                    reason = "stopped by the lab"
                    break
        if held and reported != len(held):  # let the lab measure the last count too
            print(f"held {len(held)}", flush=True)
            sys.stdin.readline()
    finally:
        count = len(held)
        for sock in held:
            sock.close()
    return {"held": count, "reason": reason}


KINDS = {"nbytes": run_nbytes, "rr": run_rr, "exchange": run_exchange, "idle": run_idle}


def main() -> int:
    """Run the load described by ``sys.argv[1]`` (JSON) and print its result as JSON."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's ^C is the lab's to handle; it ends us
    spec = json.loads(sys.argv[1])
    if spec.get("cpus"):
        os.sched_setaffinity(0, spec["cpus"])
    run = KINDS[spec["kind"]]
    print("ready", flush=True)
    words = sys.stdin.readline().split()
    if not words or words[0] != "go":
        return 1
    if len(words) > 1:
        spec["started_at"] = float(words[1])  # the lab's start: one deadline for every generator
    result = run(spec)
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
