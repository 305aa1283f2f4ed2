"""``forkthread serve http``: the static-file server and its command-line options.

:class:`HttpBaseServer` is what every server on the HTTP core shares (the
header timeout, the access log, a graceful stop that ends keep-alive
connections): the static-file server here, the WSGI server of :mod:`servers.wsgi`.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from framework import Server
from framework.argtypes import duration
from servers.http.access_log import AccessLog
from servers.http.paths import DOTFILES
from servers.http.protocol import DEFAULT_HEADER_TIMEOUT, HttpProtocol, Responder
from servers.http.site import StaticSite


def _field_value(text: str) -> str:
    """A header value given on the command line: visible ASCII, spaces and tabs, nothing else."""
    if not text.strip() or any(not (char == "\t" or " " <= char <= "~") for char in text):
        raise argparse.ArgumentTypeError(f"must be visible ASCII without control characters, not {text!r}")
    return text.strip()


class HttpBaseServer(Server):
    """What every server on the HTTP core shares.

    *header_timeout* bounds how long a request head may take to arrive
    (slowloris), and then how long a body nobody reads may take (such
    bodies are skipped); *access_log* is a file name, ``-`` for standard
    output, or None for no access log.
    """

    default_port = 8080
    #: A response is a head then a body: it must not wait for a delayed ACK (Nagle).
    default_nodelay = True
    #: Over TLS, say by ALPN that HTTP/1.1 is spoken (a client offering h2 falls back to it).
    alpn_protocols = ("http/1.1",)

    def __init__(self, *args: Any, header_timeout: float = DEFAULT_HEADER_TIMEOUT, access_log: str | None = None,
                 **kwargs: Any) -> None:
        self.header_timeout = header_timeout
        try:
            self.access_log = AccessLog.open(access_log) if access_log else None
        except OSError as exc:
            raise ValueError(f"cannot open access log {access_log!r}: {exc.strerror}") from None
        super().__init__(*args, **kwargs)

    def connection_for(self, responder: Responder) -> HttpProtocol:
        """The protocol of one connection answered by *responder*."""
        return HttpProtocol(responder, header_timeout=self.header_timeout, access_log=self.access_log,
                            stopping=self._stopping)

    def _stopping(self) -> bool:
        # Read at call time: a forked worker gets a fresh lifecycle.
        return self.lifecycle.stopping

    def status(self) -> str:
        """The status line, with the access log's dropped lines and write errors."""
        line = super().status()
        return line if self.access_log is None else f"{line} {self.access_log.status()}"

    def server_close(self) -> None:
        """Close the listener, then the access log."""
        super().server_close()
        if self.access_log is not None:
            self.access_log.close()

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """The options every HTTP server has: header timeout and access log."""
        parser.add_argument("--header-timeout", type=duration, default=DEFAULT_HEADER_TIMEOUT,
                            metavar="SECONDS",
                            help="a request head must arrive within this time, or 408; a request body nobody"
                                 " reads (skipped) too, or the connection closes (default: %(default)s)")
        parser.add_argument("--access-log", metavar="FILE",
                            help="write a Common Log Format line per request to FILE ('-': standard output)")

    @classmethod
    def options_from_arguments(cls, args: argparse.Namespace) -> dict[str, object]:
        """Pass the options above to the constructor."""
        return {"header_timeout": args.header_timeout, "access_log": args.access_log}


class HttpServer(HttpBaseServer):
    """A static-file HTTP/1.1 server for the files under *root*.

    *listing* lists directories without ``index.html``; *follow_symlinks*
    follows symbolic links that stay inside the root (others are refused);
    *dotfiles* ``"deny"`` refuses hidden names but ``/.well-known/``, ``"allow"`` serves them;
    *cache_control* is the ``Cache-Control`` value of successful responses
    (None: no such field).  The rest: :class:`HttpBaseServer`.
    """

    name = "http"
    description = "static files over HTTP/1.1 (GET, HEAD, ranges, conditional requests)"
    #: Keep-alive connections last: one event loop serves them all at once.
    default_strategy = "poll"

    def __init__(self, *args: Any, root: str = ".", listing: bool = False, follow_symlinks: bool = False,
                 dotfiles: str = "deny", cache_control: str | None = None, **kwargs: Any) -> None:
        self.site = StaticSite(root, listing=listing, follow_symlinks=follow_symlinks, dotfiles=dotfiles,
                               cache_control=cache_control)
        super().__init__(*args, **kwargs)

    def protocol_factory(self) -> HttpProtocol:
        """A protocol for one connection, sharing the site (and its file cache)."""
        return self.connection_for(self.site)

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """The options: root, listing, symbolic links, dot-files, header timeout, access log, ``Cache-Control``."""
        parser.add_argument("--root", default=os.curdir, metavar="DIR",
                            help="serve the files under DIR (default: the current directory)")
        parser.add_argument("--listing", action="store_true",
                            help="list directories that have no index.html (default: 404)")
        parser.add_argument("--follow-symlinks", action="store_true",
                            help="follow symbolic links that stay inside the root (default: refuse every link)")
        parser.add_argument("--dotfiles", choices=DOTFILES, default="deny",
                            help="serve and list hidden names such as .env and .git/ (default: deny, 404;"
                                 " /.well-known/ is always served)")
        super().add_arguments(parser)
        parser.add_argument("--cache-control", type=_field_value, metavar="VALUE",
                            help="send 'Cache-Control: VALUE' with successful responses (e.g. max-age=3600)")

    @classmethod
    def options_from_arguments(cls, args: argparse.Namespace) -> dict[str, object]:
        """Pass the options above to the constructor."""
        return {**super().options_from_arguments(args), "root": args.root, "listing": args.listing,
                "follow_symlinks": args.follow_symlinks, "dotfiles": args.dotfiles,
                "cache_control": args.cache_control}
