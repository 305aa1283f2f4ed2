"""A plain WSGI application with one route per behaviour a test looks at."""

from __future__ import annotations

import json
import os
import time
import wsgiref.validate
from typing import Any

HELLO = b"Hello, World!"

#: Where /stream and /slow-close record that close() was called: a file named by the query.
MARKS = os.environ.get("WSGI_TEST_MARKS", "/tmp")


class Streamed:
    """An iterable whose close() leaves a mark on disk, so a test can see it was called."""

    def __init__(self, total: int, mark: str, step: int = 65536) -> None:
        self.total = total
        self.mark = mark
        self.step = step

    def __iter__(self) -> Any:
        block = bytes(range(256)) * (self.step // 256)
        left = self.total
        while left > 0:
            piece = block[:min(left, self.step)]
            left -= len(piece)
            yield piece

    def close(self) -> None:
        if self.mark:
            with open(os.path.join(MARKS, self.mark), "w") as file:
                file.write("closed")


def _query(environ: dict[str, Any]) -> dict[str, str]:
    return dict(part.partition("=")[::2] for part in environ["QUERY_STRING"].split("&") if part)


def app(environ: dict[str, Any], start_response: Any) -> Any:
    """Routes: / (hello), /echo, /environ, /raise, /raise-late, /stream, /sleep, /bad-header, /write, /file."""
    path = environ["PATH_INFO"]
    query = _query(environ)
    if path == "/echo":
        body = environ["wsgi.input"].read()
        start_response("200 OK", [("Content-Type", "application/octet-stream"), ("Content-Length", str(len(body)))])
        return [body]
    if path == "/digest":
        import hashlib

        digest = hashlib.sha256()
        size = 0
        stream = environ["wsgi.input"]
        while data := stream.read(65536):
            digest.update(data)
            size += len(data)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [f"{size} {digest.hexdigest()}".encode()]
    if path == "/echo-sized":
        body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        start_response("200 OK", [("Content-Type", "application/octet-stream"), ("Content-Length", str(len(body)))])
        return [body]
    if path == "/block":
        # Answers once the test creates the mark file (an event, not a duration), or after 30 s.
        mark = os.path.join(MARKS, query["mark"])
        deadline = time.monotonic() + 30
        while not os.path.exists(mark) and time.monotonic() < deadline:
            time.sleep(0.01)
    if path == "/echo-lines":
        lines = list(environ["wsgi.input"])
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"%d\n" % len(lines), *lines]
    if path.startswith("/environ"):
        data = {key: value for key, value in environ.items() if isinstance(value, (str, bool, int, tuple))}
        start_response("200 OK", [("Content-Type", "application/json")])
        return [json.dumps(data).encode()]
    if path == "/raise":
        raise RuntimeError("boom before the response")
    if path == "/raise-late":
        start_response("200 OK", [("Content-Type", "text/plain")])

        def late() -> Any:
            yield b"part one\n"
            raise RuntimeError("boom after the head")
        return late()
    if path == "/stream":
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return Streamed(int(query.get("size", "1048576")), query.get("mark", ""))
    if path == "/sleep":
        time.sleep(float(query.get("seconds", "1")))
    if path == "/bad-header":
        start_response("200 OK", [("Content-Type", "text/plain"), ("X-Bad", "a\r\nInjected: yes")])
        return [b"never sent"]
    if path == "/hop":
        start_response("200 OK", [("Connection", "close")])
        return [b"never sent"]
    if path == "/write":
        write = start_response("200 OK", [("Content-Type", "text/plain")])
        write(b"written ")
        return [b"and returned"]
    if path == "/short":
        start_response("200 OK", [("Content-Length", "100")])
        return [b"only this"]
    if path == "/file":
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return environ["wsgi.file_wrapper"](open(query["name"], "rb"))
    if path == "/nocontent":
        start_response("204 No Content", [])
        return [b""]
    if path == "/errors":
        environ["wsgi.errors"].write("a line for the log\n")
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(HELLO)))])
    return [HELLO]


#: The same application inside wsgiref's validator: any breach of PEP 3333 by the server raises.
validated = wsgiref.validate.validator(app)


def make_app() -> Any:
    """A factory, for ``--app tests.wsgi_apps.plain:make_app()``."""
    return app


not_callable = 42
