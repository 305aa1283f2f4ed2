"""``forkthread serve wsgi --app MODULE:CALLABLE``: a WSGI application under any strategy.

The application is imported once, in the main process, before anything is
served (a forked child or pre-forked worker inherits it, as with gunicorn's
``--preload``): an application that cannot be imported or called stops the
command with one line and exit status 2.  Each connection is an
:class:`~servers.http.protocol.HttpProtocol` -- the static server's parser,
limits and keep-alive -- answered by a :class:`~servers.wsgi.exchange.WsgiResponder`.
"""

from __future__ import annotations

import argparse
import logging
import threading
from typing import Any

from framework.address import Address
from framework.argtypes import positive_int
from servers.http.protocol import HttpProtocol
from servers.http.server import HttpBaseServer
from servers.wsgi.environ import ServerFacts
from servers.wsgi.exchange import WsgiResponder, file_wrapper
from servers.wsgi.loading import Application, load_app

#: Default ``--max-body``: the largest request body accepted (waitress's default too).
DEFAULT_MAX_BODY = 1 << 30
#: Default ``--forwarded-allow-ips`` (gunicorn's): a proxy on this host.
DEFAULT_FORWARDED_ALLOW = "127.0.0.1,::1"

errors_log = logging.getLogger("forkthread.wsgi.errors")


class ErrorStream:
    """``wsgi.errors``: what an application writes there goes to the log, a line per record.

    One stream serves every thread of the process: a line in progress is
    kept per thread, so two applications' lines never mix.
    """

    def __init__(self) -> None:
        self._local = threading.local()

    @property
    def _pending(self) -> str:
        return getattr(self._local, "pending", "")

    @_pending.setter
    def _pending(self, text: str) -> None:
        self._local.pending = text

    def write(self, text: str) -> int:
        """Log each complete line of *text* (the rest waits for its end or a flush)."""
        lines = (self._pending + text).split("\n")
        self._pending = lines.pop()
        for line in lines:
            errors_log.error("%s", line)
        return len(text)

    def writelines(self, lines: list[str]) -> None:
        """Write each of *lines*."""
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        """Log what is pending."""
        if self._pending:
            errors_log.error("%s", self._pending)
            self._pending = ""


def _root_path(text: str) -> str:
    """argparse type: ``--root-path``, "" or a path starting with ``/`` (its trailing ``/`` dropped)."""
    if text and (not text.startswith("/") or any(not " " < char <= "~" for char in text)):
        raise argparse.ArgumentTypeError(f"must be a path starting with '/', without spaces or controls, not {text!r}")
    return text.rstrip("/")


def _concurrency(strategy: Any) -> tuple[bool, bool]:
    """(wsgi.multithread, wsgi.multiprocess) for *strategy*: may the application run at once in
    several threads of one process, in several processes?"""
    name = strategy.name
    if name == "preforked":
        return _concurrency(strategy.inner)[0], True
    known = {"iterative": (False, False), "forking": (False, True), "threading": (True, False),
             "prethreaded": (True, False), "poll": (getattr(strategy, "threads", 2) > 1, False)}
    return known.get(name, (True, True))


class WsgiServer(HttpBaseServer):
    """Serves the WSGI application *app* (a callable, or ``MODULE:CALLABLE`` text to import).

    *root_path* is ``SCRIPT_NAME``; *forwarded_allow_ips* the peers whose
    ``X-Forwarded-For`` and ``X-Forwarded-Proto`` are believed (comma
    separated, ``*`` for any); *max_body* the largest request body accepted
    (413 beyond).  The rest: :class:`~servers.http.server.HttpBaseServer`.
    """

    name = "wsgi"
    description = "a WSGI application (PEP 3333): --app MODULE:CALLABLE, under any strategy"
    #: Blocking applications are the rule: a thread per connection carries them without an event loop.
    default_strategy = "threading"

    def __init__(self, *args: Any, app: Application | str, root_path: str = "",
                 forwarded_allow_ips: str = DEFAULT_FORWARDED_ALLOW, max_body: int = DEFAULT_MAX_BODY,
                 **kwargs: Any) -> None:
        self.app: Application = load_app(app) if isinstance(app, str) else app
        self.root_path = root_path
        self.forwarded_allow = frozenset(part.strip() for part in forwarded_allow_ips.split(",") if part.strip())
        self.max_body = max_body
        self._facts: ServerFacts | None = None
        super().__init__(*args, **kwargs)

    def protocol_factory(self) -> HttpProtocol:
        """A connection answered by the application."""
        facts = self._facts
        if facts is None:
            facts = self._facts = self._server_facts()
        return self.connection_for(WsgiResponder(self.app, facts, self.max_body))

    def _server_facts(self) -> ServerFacts:
        address: Address = self.address
        multithread, multiprocess = _concurrency(self.strategy)
        if address.is_unix:
            name, port = "localhost", ""
        else:
            name, port = address.host, str(address.port)
        return ServerFacts(root_path=self.root_path, forwarded_allow=self.forwarded_allow, multithread=multithread,
                           multiprocess=multiprocess, url_scheme="https" if self.tls is not None else "http",
                           server_name=name, server_port=port, errors=ErrorStream(), file_wrapper=file_wrapper)

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """``--app``, ``--root-path``, ``--forwarded-allow-ips``, ``--max-body``, and the HTTP options."""
        parser.add_argument("--app", required=True, metavar="MODULE:CALLABLE",
                            help="the WSGI application: MODULE:NAME or MODULE:FACTORY() (imported with the"
                                 " current directory first on the path)")
        parser.add_argument("--root-path", type=_root_path, default="", metavar="PATH",
                            help="the application's mount point: SCRIPT_NAME, taken off the front of PATH_INFO")
        parser.add_argument("--forwarded-allow-ips", default=DEFAULT_FORWARDED_ALLOW, metavar="IPS",
                            help="believe X-Forwarded-For/-Proto only from these peers (comma separated, '*': any;"
                                 " default: %(default)s)")
        parser.add_argument("--max-body", type=positive_int, default=DEFAULT_MAX_BODY, metavar="BYTES",
                            help="the largest request body accepted, or 413 (default: %(default)s)")
        super().add_arguments(parser)

    @classmethod
    def options_from_arguments(cls, args: argparse.Namespace) -> dict[str, object]:
        """Pass the options above to the constructor."""
        return {**super().options_from_arguments(args), "app": args.app, "root_path": args.root_path,
                "forwarded_allow_ips": args.forwarded_allow_ips, "max_body": args.max_body}
