"""Peers measured in the same run: stdlib socketserver, asyncio and uvloop, http.server, gunicorn, nginx.

And, for ``nbytes`` (the ``stevens`` workload), each model's floor
(:mod:`framework.bench.floor_peer`): the least a Python server of it does.

Each peer says which protocols it can serve; a peer whose program is
missing becomes a note instead of a row.  nginx gets a configuration
written into a temporary directory (loopback only, one worker, pid file
and logs in that directory) and is stopped by its PID.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import re
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable

from framework.bench.processes import ServerCommand, free_port
from framework.bench.targets import Context, Target, child_env

#: How to get the lab's extras: from a checkout (the package is not on an index).
BENCH_EXTRA = "pip install '.[bench]' in the checkout"


@dataclasses.dataclass(frozen=True)
class Peer:
    """A server that is not forkthread, for one or more protocols."""

    name: str
    protocols: frozenset[str]
    command: Callable[[Context], ServerCommand]
    #: Returns why the peer cannot run here, or None.
    missing: Callable[[], str | None] = lambda: None
    #: Whether the lab can run it with TLS (``bench http --tls``).
    tls: bool = False


#: :mod:`framework.bench.socketserver_peer`, run by path so that the ``framework`` package is not imported.
SOCKETSERVER_PEER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "socketserver_peer.py")


#: :mod:`framework.bench.floor_peer`, run by path for the same reason.
FLOOR_PEER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "floor_peer.py")


def _floor(model: str) -> Callable[[Context], ServerCommand]:
    """The floor of *model* (:mod:`framework.bench.floor_peer`): the least a Python server of it does."""

    def command(context: Context) -> ServerCommand:
        return ServerCommand([sys.executable, "-P", FLOOR_PEER, f"floor-{model}-{context.protocol}"], env=child_env())

    return command


def _stdlib(kind: str) -> Callable[[Context], ServerCommand]:
    """A stdlib peer: *kind* is its KIND without the protocol.

    The socketserver peers run :data:`SOCKETSERVER_PEER` (``-P``: its folder
    stays off the import path); the event-loop ones
    :mod:`framework.bench.peer_servers`.
    """

    def command(context: Context) -> ServerCommand:
        lean_script = kind.startswith("socketserver-")
        program = ["-P", SOCKETSERVER_PEER] if lean_script else ["-m", "framework.bench.peer_servers"]
        argv = [sys.executable, *program, f"{kind}-{context.protocol}", *context.peer_options]
        return ServerCommand(argv, env=child_env())

    return command


def _uvloop_missing() -> str | None:
    # Under CI the peer must run (and fail loudly when uvloop is absent), never be skipped quietly.
    if importlib.util.find_spec("uvloop") is None and os.environ.get("CI") != "true":
        return f"uvloop is not installed ({BENCH_EXTRA})"
    return None


def _http_server(context: Context) -> ServerCommand:
    argv = [sys.executable, "-u", "-m", "http.server", "0", "--bind", "127.0.0.1", "--directory", context.root]
    return ServerCommand(argv, ready_pattern=re.compile(r"Serving HTTP on (?P<host>\S+) port (?P<port>\d+)"),
                         env=child_env())


def _gunicorn(worker_class: str) -> Callable[[Context], ServerCommand]:
    def command(context: Context) -> ServerCommand:
        port = free_port()
        argv = [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}", "--workers", str(os.cpu_count() or 1),
                "--worker-class", worker_class, "--log-level", "warning", "--graceful-timeout", "10",
                "framework.bench.wsgi_static:app"]
        if worker_class == "gthread":
            argv[-1:-1] = ["--threads", "4"]
        return ServerCommand(argv, ready_pattern=None, port=port,
                             env=child_env({"FORKTHREAD_BENCH_ROOT": context.root}))

    return command


def _gunicorn_missing() -> str | None:
    if importlib.util.find_spec("gunicorn") is None:
        return f"gunicorn is not installed ({BENCH_EXTRA})"
    return None


def wsgi_env(context: Context) -> dict[str, str]:
    """A WSGI peer's environment: the current directory (the user's app) and this checkout on the import path."""
    env = child_env(context.env)
    env["PYTHONPATH"] = os.pathsep.join([os.getcwd(), env["PYTHONPATH"]])
    return env


def _wsgi_gunicorn(worker_class: str) -> Callable[[Context], ServerCommand]:
    """gunicorn with one worker (sync; gthread with 8 threads, as issue 21's table), no access log."""

    def command(context: Context) -> ServerCommand:
        port = free_port()
        threads = ["--threads", "8"] if worker_class == "gthread" else []
        argv = [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}", "--workers", "1",
                "--worker-class", worker_class, *threads, "--log-level", "warning", "--graceful-timeout", "10",
                context.app]
        return ServerCommand(argv, ready_pattern=None, port=port, env=wsgi_env(context))

    return command


def _waitress(context: Context) -> ServerCommand:
    """waitress with its default 4 threads (waitress-serve's own runner)."""
    port = free_port()
    argv = [sys.executable, "-m", "waitress", f"--listen=127.0.0.1:{port}", "--threads=4", context.app]
    return ServerCommand(argv, ready_pattern=None, port=port, env=wsgi_env(context))


def _program(name: str) -> str | None:
    """A console script beside this interpreter (its venv), or on PATH."""
    here = os.path.dirname(sys.executable)
    return shutil.which(name, path=here) or shutil.which(name)


def _uwsgi(context: Context) -> ServerCommand:
    """uWSGI (pyuwsgi): one process, no master, HTTP/1.1 keep-alive socket, no request log; SIGTERM stops it."""
    port = free_port()
    program = _program("uwsgi")
    assert program is not None
    argv = [program, "--http11-socket", f"127.0.0.1:{port}", "--module", context.app, "--processes", "1",
            "--pythonpath", os.getcwd(), "--disable-logging", "--die-on-term", "--need-app", "--ignore-sigpipe",
            "--ignore-write-errors", "--disable-write-exception"]
    return ServerCommand(argv, ready_pattern=None, port=port, env=wsgi_env(context))


def _granian(context: Context) -> ServerCommand:
    """granian's WSGI interface, one worker, its default threads, no access log."""
    port = free_port()
    program = _program("granian")
    assert program is not None
    argv = [program, "--interface", "wsgi", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
            "--no-access-log", "--log-level", "warning", context.app]
    return ServerCommand(argv, ready_pattern=None, port=port, env=wsgi_env(context))


def _module_missing(module: str, what: str) -> Callable[[], str | None]:
    def missing() -> str | None:
        return None if importlib.util.find_spec(module) is not None else f"{what} is not installed"

    return missing


def _program_missing(name: str, what: str) -> Callable[[], str | None]:
    def missing() -> str | None:
        return None if _program(name) is not None else f"{what} is not installed (no {name} program)"

    return missing


def nginx_binary() -> str | None:
    """The nginx program, on PATH or in /usr/sbin."""
    return shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")


NGINX_CONF = """\
worker_processes 1;
daemon off;
master_process on;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    types {{ text/html html; application/octet-stream bin; }}
    default_type application/octet-stream;
    server {{
        listen 127.0.0.1:{port}{ssl};
        root {root};
{tls}    }}
}}
"""

#: With ``--tls``: the forkthread defaults (TLS 1.2 and 1.3, the library's ciphers, no session cache).
NGINX_TLS = """\
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.2 TLSv1.3;
"""


def _nginx(context: Context) -> ServerCommand:
    binary = nginx_binary()
    assert binary is not None
    tmp = tempfile.mkdtemp(prefix="forkthread-nginx-")
    port = free_port()
    conf = os.path.join(tmp, "nginx.conf")
    with open(conf, "w") as file:
        tls = NGINX_TLS.format(cert=context.tls_cert, key=context.tls_key) if context.tls_cert else ""
        file.write(NGINX_CONF.format(tmp=tmp, port=port, root=context.root, ssl=" ssl" if tls else "", tls=tls))
    # -e (nginx >= 1.19.5) keeps even the error log written before the config is read in tmp.
    argv = [binary, "-p", tmp, "-c", conf, "-e", os.path.join(tmp, "error.log")]
    return ServerCommand(argv, ready_pattern=None, port=port, stop_signal=signal.SIGQUIT,  # SIGQUIT: graceful
                         ready_file=os.path.join(tmp, "nginx.pid"),
                         cleanup=lambda: shutil.rmtree(tmp, ignore_errors=True))


def _nginx_missing() -> str | None:
    return None if nginx_binary() else "nginx is not installed"


PEERS: list[Peer] = [
    Peer("socketserver iterative", frozenset({"nbytes", "echo", "work"}), _stdlib("socketserver-iterative")),
    Peer("socketserver threading", frozenset({"nbytes", "echo", "work"}), _stdlib("socketserver-threading")),
    Peer("socketserver forking", frozenset({"nbytes", "echo", "work"}), _stdlib("socketserver-forking")),
    Peer("floor iterative", frozenset({"nbytes"}), _floor("iterative")),
    Peer("floor threads", frozenset({"nbytes"}), _floor("threads")),
    Peer("floor forks", frozenset({"nbytes"}), _floor("forks")),
    Peer("asyncio", frozenset({"echo"}), _stdlib("asyncio-streams")),
    Peer("asyncio protocol", frozenset({"echo", "nbytes"}), _stdlib("asyncio-protocol")),
    Peer("uvloop", frozenset({"echo"}), _stdlib("uvloop-streams"), _uvloop_missing),
    Peer("uvloop protocol", frozenset({"echo", "nbytes"}), _stdlib("uvloop-protocol"), _uvloop_missing),
    Peer("asyncio executor", frozenset({"work"}), _stdlib("asyncio-executor")),
    Peer("asyncio inline", frozenset({"work"}), _stdlib("asyncio-inline")),
    Peer("uvloop executor", frozenset({"work"}), _stdlib("uvloop-executor"), _uvloop_missing),
    Peer("uvloop inline", frozenset({"work"}), _stdlib("uvloop-inline"), _uvloop_missing),
    Peer("http.server", frozenset({"http"}), _http_server),
    Peer("gunicorn sync", frozenset({"http"}), _gunicorn("sync"), _gunicorn_missing),
    Peer("gunicorn gthread", frozenset({"http"}), _gunicorn("gthread"), _gunicorn_missing),
    Peer("nginx", frozenset({"http"}), _nginx, _nginx_missing, tls=True),
    Peer("gunicorn sync", frozenset({"wsgi"}), _wsgi_gunicorn("sync"), _gunicorn_missing),
    Peer("gunicorn gthread", frozenset({"wsgi"}), _wsgi_gunicorn("gthread"), _gunicorn_missing),
    Peer("waitress", frozenset({"wsgi"}), _waitress, _module_missing("waitress", "waitress")),
    Peer("uwsgi", frozenset({"wsgi"}), _uwsgi, _program_missing("uwsgi", "uWSGI (pyuwsgi)")),
    Peer("granian", frozenset({"wsgi"}), _granian, _program_missing("granian", "granian")),
]
#: How each WSGI peer is built, for the verdict (see :mod:`framework.bench.verdict`): one process each.
WSGI_TRAITS: dict[str, frozenset[str]] = {
    "gunicorn sync": frozenset({"one-at-a-time"}),
    "gunicorn gthread": frozenset({"threads"}),
    "waitress": frozenset({"loop", "threads"}),
    "uwsgi": frozenset({"one-at-a-time"}),
    "granian": frozenset({"threads"}),
}


def peer_key(name: str) -> str:
    """The ``--servers`` spelling of a peer name (``gunicorn-sync``)."""
    return name.replace(" ", "-").replace(".", "-").lower()


def peer_targets(protocol: str, chosen: list[str] | None, tls: bool = False) -> list[Target]:
    """A target (or a skip note) per peer that speaks *protocol* (over TLS with *tls*), filtered by ``--servers``."""
    targets = []
    for peer in PEERS:
        if protocol not in peer.protocols:
            continue
        if chosen is not None and not any(peer_key(peer.name).startswith(peer_key(want)) for want in chosen):
            continue
        reason = "the lab runs it without TLS only" if tls and not peer.tls else peer.missing()
        targets.append(Target(name=peer.name, kind="peer", command=None if reason else peer.command, skip=reason))
    return targets
