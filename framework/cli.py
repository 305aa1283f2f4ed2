"""The ``forkthread`` command: ``serve``, ``list`` and the other sub-commands.

Usage errors print one line (``PROG: error: ...``, no usage block) and exit
2; a server that cannot listen prints one line and exits 1; SIGTERM or SIGINT
stop a server gracefully with exit status 0.  No traceback reaches the user
for any of these.  PROG is the name the program was started by (a script
that calls :func:`main` or :func:`serve_main` reports itself by its own
name; ``python -m framework`` and the console script say ``forkthread``).
An option the chosen strategy does not use is warned about
(:meth:`Strategy.honoured_options <framework.strategies.base.Strategy.honoured_options>`).
"""

from __future__ import annotations

import argparse
import atexit
import dataclasses
import gc
import importlib
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NoReturn

from framework import __version__
from framework.activation import ActivationError, inetd_socket, listen_fds
from framework.address import Address, AddressError, parse_address
from framework.argtypes import backlog, count_up_to, duration, file_mode, non_negative_int, optional_duration
from framework.argtypes import positive_float as positive_float  # re-exported: the lab's command line uses them
from framework.argtypes import positive_int as positive_int
from framework.limits import MAX_THREADS, MAX_WORKERS
from framework.registry import server_class, server_targets
from framework.server import DEFAULT_GRACEFUL_TIMEOUT, DEFAULT_TIMEOUT, Server
from framework.strategies import STRATEGIES, UnknownStrategyError, create_strategy, strategy_class
from framework.strategies.base import ServeError, StrategyOptions, default_workers

if TYPE_CHECKING:
    import ssl

PROG = "forkthread"

#: Extra sub-commands: (module, function) pairs whose function adds a parser.
#: Each module is imported only when the parser is built, and a sub-command
#: whose module fails to import is left out rather than breaking the rest.
EXTRA_COMMANDS: dict[str, str] = {"client": "servers.client:add_parser", "bench": "framework.bench.cli:add_parser"}


class UsageError(Exception):
    """Bad command-line input detected after parsing (exit status 2)."""


#: Kept for callers of the old name: the ``--timeout`` type (seconds, 0 for never).
optional_timeout = optional_duration


def program_name(default: str = PROG) -> str:
    """The name to report this program by: the script's own (``sys.argv[0]``), else *default*.

    ``python -m framework`` passes ``forkthread`` itself, and the console
    script is called ``forkthread``; ``python -c`` has no name of its own.
    A ``python -m PACKAGE`` script is called by its package's name.
    """
    path = sys.argv[0] if sys.argv else ""
    name = os.path.basename(path)
    if name == "__main__.py":
        name = os.path.basename(os.path.dirname(os.path.abspath(path)))
    return name if name and name not in ("-c", "-m") else default


def help_width() -> int:
    """The width argparse would ask :mod:`shutil` for: ``COLUMNS``, else the terminal's, else 80; less 2.

    Asked here, not by argparse's formatter: that imports :mod:`shutil` for
    it at a parser's first ``add_argument``, and shutil loads zlib, bz2 and
    lzma, six shared libraries, which a server forking per connection would
    copy at every fork and tear down at every exit (docs/lab.md, "The
    seventh round").
    """
    try:
        columns = int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
        except (AttributeError, ValueError, OSError):  # no stdout, or not a terminal
            columns = 0
    return (columns or 80) - 2


class HelpFormatter(argparse.HelpFormatter):
    """argparse's formatter, told its width (:func:`help_width`) rather than asking :mod:`shutil`."""

    def __init__(self, prog: str, indent_increment: int = 2, max_help_position: int = 24,
                 width: int | None = None) -> None:
        super().__init__(prog, indent_increment, max_help_position, help_width() if width is None else width)


class CommandParser(argparse.ArgumentParser):
    """An :class:`argparse.ArgumentParser` whose errors are one line: ``PROG: error: MESSAGE``.

    argparse prints the whole usage block first, and the one line that
    matters comes last; ``--help`` still shows the usage.  A parser with a
    :attr:`choice_hint` adds it to an "invalid choice" error (``serve upper``:
    the ``MODULE:CLASS`` form).  Help is laid out by :class:`HelpFormatter`
    unless the caller names another.
    """

    #: Said after an "invalid choice" error of this parser's positional argument.
    choice_hint = ""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        """Print *message* on one line and exit 2."""
        if self.choice_hint and "invalid choice" in message:
            message = f"{message}; {self.choice_hint}"
        self.exit(2, f"{self.prog}: error: {message}\n")


class StrategyOption(argparse.Action):
    """Stores an option's value and notes it was given: the options the strategy ignores are warned about.

    Every option whose ``dest`` is a :class:`StrategyOptions` field is added
    with this action (see :func:`_add_strategy_options`).
    """

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        """Store *values* and add the option to ``namespace.given_strategy_options``."""
        setattr(namespace, self.dest, values)
        namespace.given_strategy_options = getattr(namespace, "given_strategy_options", frozenset()) | {self.dest}


#: The largest IDLE, INTERVAL and COUNT the kernel accepts for ``--keepalive``.
KEEPALIVE_LIMITS = (32767, 32767, 127)


def keepalive_triple(text: str) -> tuple[int, int, int]:
    """argparse type: ``IDLE,INTERVAL,COUNT`` for TCP keep-alive, three whole numbers > 0."""
    parts = text.split(",")
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(f"expected IDLE,INTERVAL,COUNT (e.g. 60,10,5), not {text!r}")
    try:
        idle, interval, count = (positive_int(part) for part in parts)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected three whole numbers > 0, not {text!r}") from None
    # Linux's limits (MAX_TCP_KEEPIDLE, MAX_TCP_KEEPINTVL, MAX_TCP_KEEPCNT): above them every
    # connection's setsockopt would fail, after the server had started.
    if idle > KEEPALIVE_LIMITS[0] or interval > KEEPALIVE_LIMITS[1] or count > KEEPALIVE_LIMITS[2]:
        most_seconds, _, most_count = KEEPALIVE_LIMITS
        raise argparse.ArgumentTypeError(
            f"IDLE and INTERVAL must be at most {most_seconds} s, COUNT at most {most_count}, not {text!r}"
        )
    return idle, interval, count


def _add_socket_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("socket and deployment options")
    group.add_argument("--backlog", type=backlog, default=1024, metavar="N",
                       help="listen backlog (default: %(default)s; the kernel caps it at somaxconn)")
    group.add_argument("--reuse-port", action="store_true",
                       help="set SO_REUSEPORT: instances share one port, the kernel spreads connections")
    group.add_argument("--keepalive", type=keepalive_triple, metavar="IDLE,INTERVAL,COUNT",
                       help="TCP keep-alive on connections: probe after IDLE s of silence, every INTERVAL s, "
                            "give up after COUNT probes")
    group.add_argument("--nodelay", action="store_true", default=None,
                       help="TCP_NODELAY on connections (no Nagle delay; some servers, like http, set it anyway)")
    group.add_argument("--socket-mode", type=file_mode, metavar="MODE",
                       help="permission bits of the unix:PATH socket file, set before it listens (e.g. 600: "
                            "only this user may connect; default: 777 less the umask)")
    group.add_argument("--inetd", action="store_true",
                       help="serve the one connection on standard input (inetd nowait, systemd Accept=yes)")


def _add_tls_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("TLS options (TCP and Unix streams, every strategy; see docs/tls.md)")
    group.add_argument("--tls-cert", metavar="FILE",
                       help="serve TLS with this PEM certificate chain (the server's certificate first)")
    group.add_argument("--tls-key", metavar="FILE", help="the PEM private key (default: read from --tls-cert)")
    group.add_argument("--tls-password-file", metavar="FILE",
                       help="the private key's pass phrase, on the first line of FILE")
    group.add_argument("--tls-client-ca", metavar="FILE",
                       help="require a client certificate signed by a CA in this PEM file")


def tls_context(args: argparse.Namespace, address: Address) -> ssl.SSLContext | None:
    """The TLS context the ``--tls-*`` options ask for (None without ``--tls-cert``).

    Raises :class:`UsageError` for options that make no sense together and
    :class:`framework.tls.TlsConfigError` (one line) for files that do not load.
    """
    given = [name for name in ("tls_cert", "tls_key", "tls_password_file", "tls_client_ca") if getattr(args, name)]
    if not given:
        return None
    if address.is_datagram:
        raise UsageError("TLS options need a stream address (TCP or unix:), not udp:")
    if args.tls_cert is None:
        raise UsageError(f"--{given[0].replace('_', '-')} needs --tls-cert")
    from framework.tls import server_context  # loads OpenSSL: only when TLS is asked for

    # The server sets its own ALPN names on the context (Server.alpn_protocols).
    return server_context(args.tls_cert, args.tls_key, password_file=args.tls_password_file,
                          client_ca=args.tls_client_ca)


def _add_strategy_options(parser: argparse.ArgumentParser) -> None:
    """The ``--strategy`` option and one option per :class:`StrategyOptions` field.

    Each field's option uses the :class:`StrategyOption` action, so that
    :func:`warn_ignored_options` knows which ones were given.
    """
    defaults = StrategyOptions()
    group = parser.add_argument_group("strategy options (each strategy uses the ones that apply)")
    group.add_argument("--strategy", "-s", default=None, metavar="NAME",
                       help=f"concurrency model: {', '.join(STRATEGIES)} (default: the server's own, see"
                            " `forkthread list`)")
    group.add_argument("--max-connections", type=positive_int, metavar="N", action=StrategyOption,
                       help="forking, threading, poll: serve at most N connections at once; others wait")
    group.add_argument("--threads", type=count_up_to(MAX_THREADS), default=defaults.threads, metavar="N",
                       action=StrategyOption,
                       help="prethreaded, preforked --worker threads: threads per process; poll: threads that run"
                            f" applications (serve wsgi) beside the event loop (default: %(default)s, at most"
                            f" {MAX_THREADS})")
    group.add_argument("--prethreaded-accept", choices=("shared", "lock", "handoff"),
                       default=defaults.prethreaded_accept, action=StrategyOption,
                       help="prethreaded: every idle thread waits and the kernel wakes one per connection (shared,"
                            " the default), threads take turns under a mutex (lock), or the main thread accepts"
                            " (handoff)")
    group.add_argument("--workers", type=count_up_to(MAX_WORKERS), default=defaults.workers, metavar="N",
                       action=StrategyOption,
                       help="preforked, interpreters: worker processes or sub-interpreters (default: with --worker"
                            f" poll one per CPU this process may use, here {default_workers('poll')}; otherwise the"
                            f" machine's CPU count, here {default_workers('iterative')}; at most {MAX_WORKERS})")
    group.add_argument("--accept", choices=("shared", "lock", "reuseport", "passfd"), default=defaults.accept,
                       action=StrategyOption, help="preforked: how workers get connections (default: %(default)s)")
    group.add_argument("--worker", choices=("iterative", "threads", "poll"), default=defaults.worker,
                       action=StrategyOption,
                       help="preforked, interpreters: each worker's inner strategy (default: %(default)s)")
    group.add_argument("--selector", choices=("poll", "epoll", "select"), default=defaults.selector,
                       action=StrategyOption, help="poll: the selector (default: %(default)s)")
    group.add_argument("--max-requests", type=non_negative_int, default=defaults.max_requests, metavar="N",
                       action=StrategyOption,
                       help="preforked, interpreters: recycle a worker after N connections (0: never)")
    group.add_argument("--max-requests-jitter", type=non_negative_int, default=defaults.max_requests_jitter,
                       metavar="N", action=StrategyOption,
                       help="preforked, interpreters: add 0..N to each worker's --max-requests")
    group.add_argument("--worker-timeout", type=optional_duration, default=defaults.worker_timeout, metavar="SECONDS",
                       action=StrategyOption,
                       help="preforked: kill and replace a worker silent (no heartbeat) this long (default: never)")


def strategy_options(args: argparse.Namespace) -> StrategyOptions:
    """The :class:`StrategyOptions` the parsed *args* ask for (a field without an option keeps its default)."""
    return StrategyOptions(**{field.name: getattr(args, field.name)
                              for field in dataclasses.fields(StrategyOptions) if hasattr(args, field.name)})


def ignored_options(strategy_name: str, options: StrategyOptions, given: frozenset[str]) -> list[str]:
    """The options in *given* (``StrategyOptions`` field names) the strategy *strategy_name* does not use, as flags."""
    honoured = strategy_class(strategy_name).honoured_options(options)
    return [f"--{name.replace('_', '-')}" for name in sorted(given - honoured)]


class _Refusing(CommandParser):
    """A serve parser that raises instead of exiting: a bad pass-through option is the caller's one line."""

    def error(self, message: str) -> NoReturn:
        """Raise ValueError(*message*)."""
        raise ValueError(message)


def serve_arguments(cls: type[Server], options: Sequence[str]) -> argparse.Namespace:
    """*options* parsed as ``forkthread serve`` parses them for server class *cls* (ValueError when they are bad)."""
    parser = _Refusing(prog="forkthread serve", add_help=False)
    add_server_options(parser, cls)
    return parser.parse_args(options)


def strategy_refusal(cls: type[Server], strategy: str, options: Sequence[str]) -> str | None:
    """Why *strategy*, with these serve *options*, cannot carry server class *cls* (:meth:`Server.refusal`), or None.

    The options are parsed as ``serve`` parses them (``--worker poll`` makes
    a pre-forked pool an event loop per worker).  Raises ValueError for
    options that do not parse, and whatever building the strategy raises
    (an interpreter that cannot run it).  Asked by the lab and by the
    pytest plugin before they start a server.
    """
    args = serve_arguments(cls, ["--strategy", strategy, *options])
    return cls.refusal(create_strategy(strategy, strategy_options(args)))


def add_server_options(parser: argparse.ArgumentParser, cls: type[Server]) -> None:
    """Add the options of ``forkthread serve`` for server class *cls* to *parser*."""
    parser.add_argument("--bind", "-b", default=f"127.0.0.1:{cls.default_port}", metavar="ADDR",
                        help="HOST:PORT, [V6]:PORT, unix:PATH or udp:HOST:PORT; port 0 picks a free port;"
                             " ignored under systemd socket activation (default: %(default)s)")
    parser.add_argument("--log-level", default="info",
                        choices=("debug", "info", "warning", "error", "critical"),
                        help="log verbosity on standard error (default: %(default)s)")
    parser.add_argument("--timeout", type=optional_duration, default=DEFAULT_TIMEOUT, metavar="SECONDS",
                        help="close a connection idle this long; 0 for never (default: %(default)s)")
    parser.add_argument("--graceful-timeout", type=duration, default=DEFAULT_GRACEFUL_TIMEOUT,
                        metavar="SECONDS", help="at stop, let connections finish this long (default: %(default)s)")
    _add_socket_options(parser)
    _add_tls_options(parser)
    _add_strategy_options(parser)
    cls.add_arguments(parser)
    parser.set_defaults(func=run_serve, server_cls=cls, given_strategy_options=frozenset())


def import_named(target: str, form: str) -> object:
    """Import ``MODULE:NAME`` (the current directory first on the import path) and return that attribute.

    Raises :class:`UsageError` with a one-line reason (*form* says what was
    expected) when the module cannot be imported (missing, or its import
    raises) or has no such attribute.
    """
    module_name, _, name = target.partition(":")
    if not module_name or not name:
        raise UsageError(f"{target!r}: expected {form}")
    cwd = os.getcwd()
    if sys.path[:1] != [cwd]:
        sys.path.insert(0, cwd)  # a console script starts with its own directory first, not ours
    try:
        module = importlib.import_module(module_name)
    except (Exception, SystemExit) as exc:
        raise UsageError(f"cannot import {module_name!r} for {target}: {type(exc).__name__}: {exc}") from None
    found = getattr(module, name, None)
    if found is None:
        raise UsageError(f"module {module_name!r} has no {name!r}")
    return found


def load_server_target(target: str) -> type[Server]:
    """Import ``MODULE:CLASS`` (the current directory first on the import path) and return the class.

    Raises :class:`UsageError` with a one-line reason when the module cannot
    be imported (missing, or its import raises), has no such attribute, or
    the attribute is not a :class:`~framework.server.Server` subclass.
    """
    cls = import_named(target, "MODULE:CLASS (e.g. myservers:UpperServer)")
    if not (isinstance(cls, type) and issubclass(cls, Server)):
        raise UsageError(f"{target} is not a forkthread Server subclass")
    if not _speaks(cls):
        raise UsageError(f"{target} sets neither `protocol` nor `handler` (nor `datagram_protocol`)")
    return cls


def _speaks(cls: type[Server]) -> bool:
    """True when *cls* says what is spoken on a connection or a datagram socket."""
    return (cls.protocol is not None or cls.handler is not None or cls.datagram_protocol is not None
            or cls.protocol_factory is not Server.protocol_factory
            or cls.datagram_protocol_factory is not Server.datagram_protocol_factory)


def _add_serve_parser(commands: argparse._SubParsersAction, only: str | None = None) -> None:  # type: ignore[type-arg]
    serve = commands.add_parser("serve", help="run a server",
                                description="Run a server under a strategy: a bundled NAME, or MODULE:CLASS.")
    if isinstance(serve, CommandParser):
        serve.choice_hint = "or your own server as MODULE:CLASS (e.g. myservers:UpperServer)"
    servers = serve.add_subparsers(dest="server", metavar="SERVER", required=True)
    if only is not None and ":" in only:
        # `serve MODULE:CLASS`: the user's own Server subclass, with every option a bundled one has.
        cls = load_server_target(only)
        add_server_options(servers.add_parser(only, help=cls.description, description=cls.description), cls)
        return
    from servers import SERVERS

    # `serve NAME` with a bundled NAME imports that server alone: a serving process
    # stays small, and every fork (a child per connection) copies its page tables.
    names = [only] if only in SERVERS else list(server_targets())
    for name in names:
        try:
            cls = server_class(name)
        except Exception as exc:  # a broken plug-in must not take the command down
            logging.getLogger("forkthread").warning("server %s unavailable: %s", name, exc)
            continue
        parser = servers.add_parser(name, help=cls.description, description=cls.description)
        add_server_options(parser, cls)


def configure_logging(level: str) -> None:
    """Log to standard error, one line per record, with the process id (workers log too)."""
    logging.basicConfig(
        level=getattr(logging, level.upper()), stream=sys.stderr,
        format="%(asctime)s [%(process)d] %(levelname)s %(name)s: %(message)s",
    )


def freeze_heap_at_exit() -> None:
    """At this process's exit, freeze the heap before the interpreter's final collections.

    Python's teardown runs full garbage collections, each of which visits
    every object the process ever made and still holds (modules, classes,
    functions: the framework, the server and what they import).  For a
    server that is a few milliseconds of CPU at every stop (on 3.11, 6-7 ms
    of the 10 ms a stopped server spends ending), spent to find nothing:
    the serving paths leave no reference cycles behind.  Frozen
    (:func:`gc.freeze`, from the first ``atexit`` handler), those objects are
    skipped; what the teardown itself frees is still freed, by reference
    counting as always.  Python does not promise finalizers of objects
    still alive at exit (``__del__`` in the data model), so nothing promised
    is lost.
    """
    atexit.unregister(gc.freeze)  # once, however often serve runs in this process (tests call main())
    atexit.register(gc.freeze)


def run_serve(args: argparse.Namespace) -> int:
    """``forkthread serve``: bind, print ``listening on ADDRESS``, serve until stopped.

    Under systemd socket activation (``LISTEN_FDS``) the passed socket is
    served instead of binding ``--bind``; with ``--inetd`` the one connection
    on standard input is served and nothing is printed on standard output.
    READY=1 goes to ``NOTIFY_SOCKET`` once the server handles signals.
    """
    configure_logging(args.log_level)
    freeze_heap_at_exit()
    prog = args.prog
    strategy_name = args.strategy or args.server_cls.default_strategy
    try:
        address = parse_address(args.bind)
        options = strategy_options(args)
        strategy = create_strategy(strategy_name, options)
        activated = [] if args.inetd else listen_fds()
    except (AddressError, UnknownStrategyError, ValueError) as exc:
        raise UsageError(str(exc)) from None
    except ActivationError as exc:
        print(f"{prog}: socket activation: {exc}", file=sys.stderr)
        return 1
    ignored = ignored_options(strategy_name, options, args.given_strategy_options)
    if ignored:
        logging.getLogger("forkthread").warning("%s: ignored by the %s strategy", ", ".join(ignored), strategy_name)
    for extra in activated[1:]:
        logging.getLogger("forkthread").warning("socket activation: serving only the first socket; closing %s", extra)
        extra.close()
    cls = args.server_cls
    try:
        tls = tls_context(args, address)
    except ValueError as exc:  # framework.tls.TlsConfigError: a file that does not load
        print(f"{prog}: {exc}", file=sys.stderr)
        return 1
    try:
        server = cls(address, strategy, timeout=args.timeout, graceful_timeout=args.graceful_timeout,
                     backlog=args.backlog, reuse_port=args.reuse_port, keepalive=args.keepalive,
                     nodelay=args.nodelay, listener=activated[0] if activated else None,
                     bind=not args.inetd, tls=tls, socket_mode=args.socket_mode,
                     **cls.options_from_arguments(args))
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    except OSError as exc:
        print(f"{prog}: cannot listen on {address}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    if args.inetd:
        return _serve_inetd(server, prog)
    server.exit_past_deadline()  # this process is the server's: nothing may keep it past a stop's deadline
    with server:
        try:
            # Announced only once SIGTERM/SIGINT are handled: a test or supervisor may signal at once.
            server.serve_forever(ready=lambda: print(f"listening on {server.address}", flush=True))
        except ServeError as exc:
            print(f"{prog}: {exc}", file=sys.stderr)
            return exc.exit_status
    return 0


def _serve_inetd(server: Server, prog: str) -> int:
    """Serve the connection on standard input with the blocking driver, then exit."""
    try:
        sock, peer = inetd_socket(0)
    except ActivationError as exc:
        print(f"{prog}: --inetd: {exc}", file=sys.stderr)
        return 1
    try:
        server.serve_connected(sock, peer)
    finally:
        server.server_close()
    return 0


def run_list(args: argparse.Namespace) -> int:
    """``forkthread list``: the servers and strategies available, one line each."""
    print("servers (default strategy):")
    for name in server_targets():
        try:
            cls = server_class(name)
            description = f"{'(' + cls.default_strategy + ')':<13} {cls.description}"
        except Exception as exc:
            description = f"(unavailable: {exc})"
        print(f"  {name:<12} {description}")
    print("strategies:")
    for name in STRATEGIES:
        print(f"  {name:<12} {strategy_class(name).description}")
    return 0


def build_parser(argv: Sequence[str] | None = None, prog: str = PROG) -> argparse.ArgumentParser:
    """The command-line parser.  Given *argv*, only what its command needs is imported.

    ``serve`` and ``list`` do not import the lab or the clients, and
    ``serve NAME`` imports only that server: see :func:`_add_serve_parser`.
    ``serve MODULE:CLASS`` imports that class (:func:`load_server_target`),
    and raises :class:`UsageError` when it cannot.
    """
    words = [word for word in (argv or ()) if not word.startswith("-")]
    command = words[0] if words else None
    parser = CommandParser(prog=prog, description="Socket servers under interchangeable concurrency models.")
    parser.add_argument("--version", action="version", version=f"{prog} {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_serve_parser(commands, only=words[1] if command == "serve" and len(words) > 1 else None)
    commands.add_parser("list", help="list servers and strategies").set_defaults(func=run_list)
    for name, target in EXTRA_COMMANDS.items():
        if command in ("serve", "list") or (command in EXTRA_COMMANDS and command != name):
            continue  # not needed to parse this command line
        module_name, _, function_name = target.partition(":")
        add_parser: Callable[[argparse._SubParsersAction], None] = getattr(  # type: ignore[type-arg]
            __import__(module_name, fromlist=[function_name]), function_name
        )
        add_parser(commands)
    return parser


def serve_main(cls: type[Server], argv: Sequence[str] | None = None) -> int:
    """The ``forkthread serve`` command line for one server class: for your own servers' scripts.

    ``sys.exit(serve_main(MyServer))`` gives a script ``--bind``,
    ``--strategy`` and every other serve option, the ``listening on`` line,
    signal handling and exit statuses, exactly as ``forkthread serve``.
    """
    parser = CommandParser(prog=program_name(cls.name or cls.__name__), description=cls.description or None)
    add_server_options(parser, cls)
    return _run(parser, argv)


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """Run the command line; return the exit status.

    *prog* is the name messages start with (default: :func:`program_name`).
    """
    if argv is None:
        argv = sys.argv[1:]
    if prog is None:
        prog = program_name()
    try:
        parser = build_parser(argv, prog)
    except UsageError as exc:  # `serve MODULE:CLASS` that cannot be loaded
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    return _run(parser, argv)


def _run(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> int:
    try:
        try:
            args = parser.parse_args(argv, argparse.Namespace(prog=parser.prog))
            try:
                status: int = args.func(args)
            except UsageError as exc:
                parser.exit(2, f"{parser.prog}: error: {exc}\n")
            except KeyboardInterrupt:
                return 130
            except BrokenPipeError:
                raise
            except OSError as exc:
                # A file or directory named on the command line that cannot be written
                # (``bench --out /proc/x``): one line, as for an address that cannot listen.
                where = f"{exc.filename}: " if exc.filename else ""
                print(f"{parser.prog}: {where}{exc.strerror or exc}", file=sys.stderr)
                return 1
            return status
        finally:
            # Buffered output is written here, where a vanished reader can still be
            # handled, not in the interpreter's final flush ("Exception ignored").
            sys.stdout.flush()
    except BrokenPipeError:
        # Whoever read our standard output has gone (``forkthread list | head -1``):
        # nothing more to say, and no traceback.  Point stdout at /dev/null so
        # the interpreter's final flush does not fail again (Python's signal docs' recipe).
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 1
