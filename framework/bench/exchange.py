"""One exchange with a user's server, as the lab performs it: a client function, a fixed request, or HTTP.

``forkthread bench MODULE:CLASS`` describes its load in one of three ways
(issue 24): ``--client MODULE:FUNCTION`` (a function called with a
connected socket; raising means the exchange failed), ``--send`` with
``--expect-bytes N`` or ``--expect-line`` (no code needed), or ``--http
PATH`` (a GET, or ``--method``/``--body``, answered 2xx/3xx).  Each becomes
a blocking callable taking a connected socket: the same callable times the
unloaded exchange in the lab (:func:`alone_ms`) and runs in the load
generators (``kind: exchange`` of :mod:`framework.bench.loadgen`), so both
see the same exchange.  An :class:`ExchangeSpec` travels to the load
generators as JSON.
"""

from __future__ import annotations

import dataclasses
import itertools
import socket
import statistics
import time
from collections.abc import Callable
from typing import Any

from framework.bench import procfs

#: What the lab calls to perform one exchange on a connected socket.
ExchangeFunction = Callable[[socket.socket], object]

#: Most bytes of an answer line or an HTTP head the built-in exchanges read before calling it broken.
MAX_HEAD = 65536


#: What an exchange returns when the server said it closes the connection (HTTP ``Connection: close``):
#: the caller opens a new one for the next exchange.
CLOSED = "closed by the server"


class ExchangeError(Exception):
    """The server's answer was not the one the load description expects (one line: the reason)."""


@dataclasses.dataclass(frozen=True)
class ExchangeSpec:
    """What one exchange is (JSON-ready via :func:`dataclasses.asdict`)."""

    #: ``function``, ``send`` or ``http``.
    kind: str
    #: function: ``MODULE:FUNCTION``.
    function: str = ""
    #: send: the request bytes (latin-1 text); expect a line, or *expect_bytes* bytes.
    send: str = ""
    expect_bytes: int = 0
    expect_line: bool = False
    #: http: the paths (taken in turn), method and body.
    paths: tuple[str, ...] = ()
    method: str = "GET"
    body: str = ""

    def describe(self) -> str:
        """The load in a few words, for the report."""
        if self.kind == "function":
            return f"your client function {self.function}"
        if self.kind == "http":
            return f"HTTP {self.method} {', '.join(self.paths)}" + (f" with a {len(self.body)}-byte body"
                                                                     if self.body else "")
        expected = "a line" if self.expect_line else f"{self.expect_bytes} bytes"
        return f"send {len(self.send.encode('latin-1'))} bytes, expect {expected}"


def load_function(target: str) -> ExchangeFunction:
    """Import ``MODULE:FUNCTION`` (the current directory first on the import path) and return it.

    Raises :class:`ValueError` with a one-line reason when it cannot.
    """
    from framework.cli import UsageError, import_named

    try:
        function = import_named(target, "MODULE:FUNCTION (e.g. myclient:exchange)")
    except UsageError as exc:
        raise ValueError(str(exc)) from None
    if not callable(function):
        raise ValueError(f"{target} is not callable")
    return function


def _recv(sock: socket.socket) -> bytes:
    data = sock.recv(65536)
    if not data:
        raise ExchangeError("the server closed the connection mid-exchange")
    return data


def send_exchange(request: bytes, expect_bytes: int, expect_line: bool) -> ExchangeFunction:
    """Send *request*; read one line, or exactly *expect_bytes* bytes (an answer that goes on is an error)."""

    def exchange(sock: socket.socket) -> None:
        sock.sendall(request)
        answer = b""
        while True:
            answer += _recv(sock)
            if expect_line:
                if answer.endswith(b"\n"):
                    if answer.count(b"\n") > 1:
                        raise ExchangeError(f"more than one line answered: {answer[:60]!r}")
                    return
                if len(answer) > MAX_HEAD:
                    raise ExchangeError("answer line too long")
            elif len(answer) >= expect_bytes:
                if len(answer) > expect_bytes:
                    raise ExchangeError(f"answer of {len(answer)} bytes, expected {expect_bytes}")
                return

    return exchange


def _http_request(method: str, path: str, body: bytes, close: bool) -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: forkthread-bench\r\n"
    if body or method in ("POST", "PUT", "PATCH"):
        head += f"Content-Length: {len(body)}\r\n"
    if close:
        head += "Connection: close\r\n"
    return head.encode("latin-1") + b"\r\n" + body


def _read_http_response(sock: socket.socket, method: str) -> str | None:
    """Read one response whole: a 2xx or 3xx status, and a body by Content-Length or chunked.

    Returns :data:`CLOSED` when the server closes the connection after it
    (``Connection: close``, or HTTP/1.0 without keep-alive).
    """
    data = b""
    while (end := data.find(b"\r\n\r\n")) < 0:
        if len(data) > MAX_HEAD:
            raise ExchangeError("response head too long")
        data += _recv(sock)
    head, rest = data[:end].decode("latin-1"), data[end + 4:]
    status_line, *fields = head.split("\r\n")
    parts = status_line.split(" ", 2)
    if len(parts) < 2 or not parts[1].isdigit() or parts[1][0] not in "23":
        raise ExchangeError(f"answered {status_line[:60]!r}")
    headers = {name.strip().lower(): value.strip() for name, _, value in (field.partition(":") for field in fields)}
    connection = headers.get("connection", "").lower()
    closes = "close" in connection or (parts[0] == "HTTP/1.0" and "keep-alive" not in connection)
    if method == "HEAD" or parts[1] in ("204", "304"):
        return CLOSED if closes else None
    if "chunked" in headers.get("transfer-encoding", "").lower():
        while not rest.endswith(b"0\r\n\r\n"):  # enough for a load client: the last chunk and no trailers
            rest += _recv(sock)
        return CLOSED if closes else None
    if "content-length" not in headers:
        raise ExchangeError("response without Content-Length or chunked body")
    remaining = int(headers["content-length"]) - len(rest)
    while remaining > 0:
        remaining -= len(_recv(sock))
    return CLOSED if closes else None


def http_exchange(paths: tuple[str, ...], method: str, body: bytes, close: bool = False) -> ExchangeFunction:
    """One request per call, to each path in turn; the response read whole."""
    turn = itertools.cycle(paths)

    def exchange(sock: socket.socket) -> str | None:
        sock.sendall(_http_request(method, next(turn), body, close))
        return _read_http_response(sock, method)

    return exchange


def make_exchange(spec: ExchangeSpec, per_exchange: bool = False) -> ExchangeFunction:
    """The callable performing one exchange of *spec* (*per_exchange*: HTTP says ``Connection: close``)."""
    if spec.kind == "function":
        return load_function(spec.function)
    if spec.kind == "http":
        return http_exchange(spec.paths, spec.method, spec.body.encode("latin-1"), per_exchange)
    return send_exchange(spec.send.encode("latin-1"), spec.expect_bytes, spec.expect_line)


def spec_from_json(data: dict[str, Any]) -> ExchangeSpec:
    """The :class:`ExchangeSpec` a load generator was handed."""
    return ExchangeSpec(**{**data, "paths": tuple(data.get("paths", ()))})


def failure(exc: BaseException) -> str:
    """One short line naming why an exchange failed (the key failures are counted by)."""
    if isinstance(exc, ExchangeError):
        return str(exc)
    if isinstance(exc, (ConnectionResetError, BrokenPipeError)):
        return "the server closed the connection mid-exchange"
    if isinstance(exc, (TimeoutError, socket.timeout)):
        return "no answer in time"
    text = str(exc).splitlines()[0][:80] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


@dataclasses.dataclass(frozen=True)
class Alone:
    """The exchange done alone, one after another: its wall time, and how much of it the server computed or waited."""

    wall_ms: float
    #: The server's threads on a CPU, per exchange (schedstat: every thread of the server's tree).
    cpu_ms: float
    #: What is left of the wall time once the server's and this client's running and waiting for a CPU are
    #: taken off: the exchange waiting for something else (a sleep, a disk, another service).
    wait_ms: float


def alone(host: str, port: int, exchange: ExchangeFunction, server_pid: int, per_exchange: bool = False,
          least: int = 5, seconds: float = 0.2, most: int = 200, warm: int = 3, timeout: float = 30.0) -> Alone:
    """The exchange done alone, nothing else running: at least *least* times and *seconds*, at most *most* times.

    *warm* exchanges come first, unmeasured: a server's first requests pay
    for imports and caches.  They are also the warm-up of the point: a
    server (a pre-forked worker) that cannot do one exchange fails here,
    with the reason, before any load is made.  A failure now and then is
    left to the load to count.
    """
    with _Connection(host, port, timeout, per_exchange) as connection:
        connection.run(exchange, warm, 0.0, 2 * warm + 2)
        server0, client0 = procfs.tree_schedstat(server_pid), procfs.thread_schedstat()
        began = time.perf_counter()
        times = connection.run(exchange, least, seconds, most)
        wall = time.perf_counter() - began
        server1, client1 = procfs.tree_schedstat(server_pid), procfs.thread_schedstat()
    busy = sum(after - before for after, before in zip(server1 + client1, server0 + client0, strict=True)) / 1e9
    return Alone(wall_ms=statistics.median(times) * 1e3, cpu_ms=max(0.0, server1[0] - server0[0]) / 1e6 / len(times),
                 wait_ms=max(0.0, wall - busy) * 1e3 / len(times))


class _Connection:
    """Exchanges one after another on one connection (a new one after a failure, or each time when *per_exchange*)."""

    def __init__(self, host: str, port: int, timeout: float, per_exchange: bool) -> None:
        self.address, self.timeout, self.per_exchange = (host, port), timeout, per_exchange
        self.sock: socket.socket | None = None

    def __enter__(self) -> _Connection:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def run(self, exchange: ExchangeFunction, least: int, seconds: float, most: int) -> list[float]:
        """Exchanges until *least* succeeded and *seconds* passed (at most *most* tries): their times."""
        times: list[float] = []
        failed = ""
        began = time.perf_counter()
        for _ in range(2 * most):
            if len(times) >= most or (len(times) >= least and time.perf_counter() - began >= seconds):
                break
            if self.sock is None:
                self.sock = socket.create_connection(self.address, self.timeout)
                self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                self.sock.settimeout(self.timeout)
            started = time.perf_counter()
            try:
                said = exchange(self.sock)
            except Exception as exc:
                failed = failure(exc)
                self.close()
                continue
            times.append(time.perf_counter() - started)
            if self.per_exchange or said is CLOSED:
                self.close()
        if not times and least:
            raise ExchangeError(f"no exchange succeeded alone: {failed}")
        return times
