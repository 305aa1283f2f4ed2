"""A tiny WSGI static-file app, so gunicorn can be measured on the ``http`` workload.

The directory comes from ``FORKTHREAD_BENCH_ROOT``; ``/NAME`` serves the
file NAME in it through ``wsgi.file_wrapper`` (gunicorn sends it with
sendfile), anything else is 404.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any

ROOT = os.environ.get("FORKTHREAD_BENCH_ROOT", ".")


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """Serve one file of ROOT, or 404."""
    name = environ.get("PATH_INFO", "/").lstrip("/")
    path = os.path.join(ROOT, name)
    if not name or "/" in name or name.startswith(".") or not os.path.isfile(path):
        start_response("404 Not Found", [("Content-Type", "text/plain"), ("Content-Length", "10")])
        return [b"not found\n"]
    size = os.path.getsize(path)
    start_response("200 OK", [("Content-Type", "application/octet-stream"), ("Content-Length", str(size))])
    file = open(path, "rb")  # noqa: SIM115 - the file wrapper closes it
    wrapper: Callable[[Any, int], Iterable[bytes]] | None = environ.get("wsgi.file_wrapper")
    if wrapper is not None:
        return wrapper(file, 65536)
    with file:
        return [file.read()]
