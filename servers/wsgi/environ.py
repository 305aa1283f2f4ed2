"""A request as a PEP 3333 environ, built in one place (as gunicorn's ``http/wsgi.py`` does).

:class:`EnvironFactory` holds what is the same for every request of one
connection (the peer, the scheme, the server's own flags); :meth:`EnvironFactory.environ`
adds what one request head says.  A keep-alive client mostly repeats its
head byte for byte, and the parser then hands back the same
:class:`~servers.http.parser.RequestHead`: its environ is kept and copied,
not rebuilt.

Rules kept here: ``PATH_INFO`` is the path with its %-escapes decoded, as
bytes read as latin-1 (PEP 3333's "bytes in unicode"); ``SCRIPT_NAME`` is
``--root-path``, taken off the front of the path when the path starts with
it; header fields become ``HTTP_*`` (repeated fields joined with ``, `` by
the parser), except those whose name holds ``_`` (dropped: ``X_Auth`` must
not pass for ``X-Auth``, the ambiguity behind CVE-2015-0219);
``X-Forwarded-For`` and ``X-Forwarded-Proto`` count only from the peers
``--forwarded-allow-ips`` trusts, and are dropped from the environ
otherwise.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Any
from urllib.parse import unquote_to_bytes

from servers.http.access_log import peer_host
from servers.http.parser import RequestHead

#: Field names that go to CGI names of their own, not ``HTTP_*``.
_CGI_FIELDS = {b"content-type": "CONTENT_TYPE", b"content-length": "CONTENT_LENGTH"}
_FORWARDED = (b"x-forwarded-for", b"x-forwarded-proto")
_DEFAULT_PORTS = {"http": "80", "https": "443"}


@dataclasses.dataclass(frozen=True)
class ServerFacts:
    """What every environ of one server says the same way."""

    #: ``--root-path``: the application's mount point ("" or "/prefix", no trailing slash).
    root_path: str
    #: Peers whose ``X-Forwarded-*`` fields are believed (``"*"``: every peer).
    forwarded_allow: frozenset[str]
    multithread: bool
    multiprocess: bool
    #: ``https`` under TLS.
    url_scheme: str
    #: The address listened on (SERVER_NAME and SERVER_PORT when a request names no Host).
    server_name: str
    server_port: str
    #: ``wsgi.errors`` and ``wsgi.file_wrapper``.
    errors: Any
    file_wrapper: Any


def _split_host(host: str, default_port: str) -> tuple[str, str]:
    """``name:port`` / ``[v6]:port`` / ``name`` -> (name, port)."""
    if host.startswith("["):
        end = host.find("]")
        name, rest = host[1:end], host[end + 1:]
        return name, rest[1:] if rest.startswith(":") else default_port
    name, colon, port = host.rpartition(":")
    return (name, port) if colon and port.isdigit() else (host, default_port)


def path_of(target: bytes) -> tuple[bytes, bytes]:
    """The path and query of a request target (origin form, absolute form, ``*``, authority form).

    A fragment (``#...``, which clients should not send but some do) is neither.
    """
    if b"#" in target:
        target = target.partition(b"#")[0]
    path, _, query = target.partition(b"?")
    if not path.startswith(b"/"):
        scheme, sep, rest = path.partition(b"://")
        if sep and scheme.isalpha():
            slash = rest.find(b"/")
            path = rest[slash:] if slash >= 0 else b"/"
        elif path != b"*":
            path = b""  # authority form (CONNECT host:port)
    return path, query


class EnvironFactory:
    """Environs for the requests of one connection from *peer* (the transport's text)."""

    __slots__ = ("_facts", "_last", "_last_request", "_remote_addr", "_remote_port", "_trusted")

    def __init__(self, facts: ServerFacts, peer: str) -> None:
        self._facts = facts
        host = peer_host(peer)
        if host == peer:  # no port: a Unix socket
            self._remote_addr, self._remote_port = "", ""
        else:
            self._remote_addr, self._remote_port = host, peer.rpartition(":")[2]
        allow = facts.forwarded_allow
        self._trusted = "*" in allow or self._remote_addr in allow or (not self._remote_addr and "unix" in allow)
        self._last_request: RequestHead | None = None
        self._last: dict[str, Any] = {}

    def environ(self, request: RequestHead) -> dict[str, Any]:
        """A fresh environ for *request* (``wsgi.input`` still to be set by the caller)."""
        if request is not self._last_request:
            self._last = self._build(request)
            self._last_request = request
        return self._last.copy()

    def _build(self, request: RequestHead) -> dict[str, Any]:
        facts = self._facts
        fields = request.fields
        raw_path, query = path_of(request.target)
        path = unquote_to_bytes(raw_path).decode("latin-1")
        script_name = facts.root_path
        if script_name and (path == script_name or path.startswith(script_name + "/")):
            path = path[len(script_name):]
        scheme = facts.url_scheme
        remote_addr = self._remote_addr
        if self._trusted:
            proto = fields.get(b"x-forwarded-proto")
            if proto is not None and proto.strip().lower() in (b"http", b"https"):
                scheme = proto.strip().lower().decode("ascii")
            forwarded_for = fields.get(b"x-forwarded-for")
            if forwarded_for is not None:
                # The last address is the one the trusted proxy added; those before it came from the client.
                last = forwarded_for.rpartition(b",")[2].strip().decode("latin-1")
                if last:
                    remote_addr = last
        host = fields.get(b"host")
        if host:
            server_name, server_port = _split_host(host.decode("latin-1"), _DEFAULT_PORTS[scheme])
        else:
            server_name, server_port = facts.server_name, facts.server_port
        environ: dict[str, Any] = {
            "REQUEST_METHOD": request.method.decode("ascii"),
            "SCRIPT_NAME": script_name,
            "PATH_INFO": path,
            "QUERY_STRING": query.decode("latin-1"),
            "RAW_URI": request.target.decode("latin-1"),
            "SERVER_NAME": server_name,
            "SERVER_PORT": server_port,
            "SERVER_PROTOCOL": f"HTTP/{request.version[0]}.{request.version[1]}",
            "SERVER_SOFTWARE": _SOFTWARE,
            "REMOTE_ADDR": remote_addr,
            "REMOTE_PORT": self._remote_port,
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": scheme,
            "wsgi.errors": facts.errors,
            "wsgi.multithread": facts.multithread,
            "wsgi.multiprocess": facts.multiprocess,
            "wsgi.run_once": False,
            "wsgi.file_wrapper": facts.file_wrapper,
            "wsgi.input_terminated": True,
        }
        for name, value in fields.items():
            key = _CGI_FIELDS.get(name)
            if key is None:
                if b"_" in name or (name in _FORWARDED and not self._trusted):
                    continue
                key = "HTTP_" + name.decode("ascii").upper().replace("-", "_")
            environ[key] = value.decode("latin-1")
        if request.chunked:
            environ.pop("CONTENT_LENGTH", None)  # the length is the decoded body's (set once it is read)
        return environ


def _software() -> str:
    from servers.http.responses import SERVER_NAME

    return f"{SERVER_NAME} Python/{sys.version_info[0]}.{sys.version_info[1]}"


_SOFTWARE = _software()
