"""The WSGI apps of ``forkthread bench wsgi``: the four loads of issue 21, one module every server imports.

``hello`` answers 13 bytes, ``json`` 1 KiB of JSON, ``sleep`` waits 20 ms
and ``cpu`` computes 2 ms (pure Python, GIL held: :func:`servers.work.spin`,
calibrated once by the lab and handed to every server in
``FORKTHREAD_BENCH_CALIBRATION`` so that each does the same work).  Every
answer has a Content-Length, so every server can keep the connection open.
Standard library only; forkthread and every peer serve the same callables
(``framework.bench.wsgi_apps:hello`` ...).
"""

from __future__ import annotations

import json as _json
import os
import time
from collections.abc import Callable, Iterable
from typing import Any

#: name -> what it does, for the report.
APPS: dict[str, str] = {
    "hello": "hello-world, 13 bytes",
    "json": "a 1 KiB JSON response",
    "sleep": "waits 20 ms, then 13 bytes",
    "cpu": "computes 2 ms (pure Python, GIL held), then 13 bytes",
}
HELLO = b"Hello, world!"


def _json_document(size: int = 1024) -> bytes:
    """A JSON document of exactly *size* bytes: a list of items, padded by a string field."""
    items = {"items": [{"id": index, "name": f"item {index}", "ok": True} for index in range(20)], "pad": ""}
    text = _json.dumps(items).encode()
    items["pad"] = "x" * (size - len(text))
    return _json.dumps(items).encode()


#: The JSON document, exactly 1 KiB.
JSON = _json_document()
SLEEP_SECONDS = 0.020
CPU_MS = 2.0
#: Iterations of servers.work.spin per CPU millisecond (the lab's calibration; measured here when not given).
_PER_MS = int(os.environ.get("FORKTHREAD_BENCH_CALIBRATION", "0") or 0)


def _answer(start_response: Callable[..., Any], body: bytes, content_type: str = "text/plain") -> list[bytes]:
    start_response("200 OK", [("Content-Type", content_type), ("Content-Length", str(len(body)))])
    return [body]


def hello(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """13 bytes."""
    return _answer(start_response, HELLO)


def json(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """1 KiB of JSON."""
    return _answer(start_response, JSON, "application/json")


def sleep(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """A 20 ms wait (a database, another service), then 13 bytes."""
    time.sleep(SLEEP_SECONDS)
    return _answer(start_response, HELLO)


_work: Any = None


def cpu(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """2 ms of pure-Python computation, then 13 bytes."""
    global _work
    if _work is None:  # first request: the import stays light for the three other apps
        from servers.work import Work, WorkSpec

        _work = Work(WorkSpec(cpu_ms=CPU_MS), _PER_MS or None)
    _work.cpu()
    return _answer(start_response, HELLO)
