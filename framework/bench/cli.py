"""``forkthread bench WORKLOAD`` (or ``MODULE:CLASS``): the sub-command, its options, and the run from start to files.

``forkthread bench MODULE:CLASS`` measures the user's own server (the
``server`` workload, :mod:`framework.bench.workloads.own`); options the
bench command does not know are ``forkthread serve`` options, passed
through to that server (checked first by the serve parser of its class).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any

from framework.bench.config import FULL, KIB, MIB, QUICK, BenchConfig, OwnServer, Scale
from framework.bench.machine import describe_machine, machine_summary
from framework.bench.report import Results
from framework.cli import CommandParser

WORKLOAD_NAMES = ["stevens", "echo-rr", "http", "idle", "work", "all", "wsgi"]
#: What ``all`` runs: the cost-of-the-model workloads.  ``work`` is about using the cores, so it runs on
#: its own, unpinned (``all`` is usually run with ``--pin``).
ALL = ["stevens", "echo-rr", "http", "idle"]
#: ``--client`` values that pick the HTTP load client; anything with a colon is a MODULE:FUNCTION.
LOAD_CLIENTS = ("auto", "wrk", "builtin")
#: ``--cpu-clock`` values.
CPU_CLOCKS = ("auto", "cgroup", "proc")
#: Serve options the lab sets itself for every model it starts.
LAB_SERVE_OPTIONS = ("--bind", "-b", "--strategy", "--inetd", "--log-level")


class BenchParser(CommandParser):
    """The ``bench`` parser: what it does not know is kept as ``serve_options`` (passed to MODULE:CLASS).

    Its errors are one line, as every ``forkthread`` parser's.
    """

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        """Parse, keeping unknown arguments in ``namespace.serve_options`` (:func:`run_bench` checks them)."""
        parsed, extras = super().parse_known_args(args, namespace)
        parsed.serve_options = [*getattr(parsed, "serve_options", []), *extras]
        return parsed, []


def _interrupt_on_sigterm() -> Any:
    """Make SIGTERM end a run as ^C does; return the previous handler (None: not the main thread).

    ^C unwinds through every server's and client's ``with`` block, so each is
    stopped in order and the partial results are written; a plain SIGTERM
    would end the lab at once and leave its running server behind.
    """
    if threading.current_thread() is not threading.main_thread():
        return None

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    return signal.signal(signal.SIGTERM, interrupt)

def _workload(text: str) -> str:
    if text in WORKLOAD_NAMES or ":" in text:
        return text
    raise argparse.ArgumentTypeError(f"invalid choice: {text!r} (choose from {', '.join(WORKLOAD_NAMES)},"
                                     " or MODULE:CLASS for your own server)")


def _client(text: str) -> str:
    if text in LOAD_CLIENTS or ":" in text:
        return text
    raise argparse.ArgumentTypeError(f"expected {', '.join(LOAD_CLIENTS)} or MODULE:FUNCTION, not {text!r}")


def _names(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise argparse.ArgumentTypeError("expected a comma-separated list")
    return names


def _positive_ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(name) for name in _names(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected whole numbers, not {text!r}") from None
    if any(value <= 0 for value in values):
        raise argparse.ArgumentTypeError(f"must be > 0: {text!r}")
    return values


def _size(text: str) -> int:
    units = {"k": KIB, "kib": KIB, "m": MIB, "mib": MIB, "": 1, "b": 1}
    lowered = text.strip().lower()
    number = lowered.rstrip("kmib")
    unit = lowered[len(number):]
    if not number.isdigit() or unit not in units or int(number) <= 0:
        raise argparse.ArgumentTypeError(f"not a size like 1k, 64k, 1m: {text!r}")
    return int(number) * units[unit]


def _sizes(text: str) -> tuple[int, ...]:
    return tuple(_size(name) for name in _names(text))


def add_parser(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``bench`` to the ``forkthread`` command (registered in ``framework.cli.EXTRA_COMMANDS``)."""
    from framework.argtypes import duration, positive_int

    bench = commands.add_parser(
        "bench", help="compare the concurrency models (and peers) under load",
        description="Measure each strategy, and peer servers, under one workload, or your own server"
                    " (MODULE:CLASS) under every model that carries it; write results.json, results.csv,"
                    " results.md and PNG plots into --out.  With MODULE:CLASS, other options are"
                    " `forkthread serve` options for your server (--workers, --threads, --timeout...).",
        allow_abbrev=False)  # an abbreviation could swallow a serve option meant for the server
    bench.__class__ = BenchParser  # add_parser() builds the subcommands' parser class; this one keeps extras
    bench.add_argument("workload", type=_workload, metavar="WORKLOAD",
                       help=f"what load to make: {', '.join(WORKLOAD_NAMES)}; or MODULE:CLASS, your own server")
    bench.add_argument("--strategies", type=_names, metavar="LIST",
                       help="comma-separated strategies to measure, or single variants such as"
                            " preforked:worker=poll (default: every registered strategy)")
    bench.add_argument("--servers", type=_names, metavar="LIST",
                       help="comma-separated peers to measure, e.g. nginx,gunicorn,asyncio,socketserver,"
                            "http.server; 'none' for no peers (default: every peer installed)")
    bench.add_argument("--quick", action="store_true", help="small counts and one repeat: under a minute")
    bench.add_argument("--out", type=Path, default=Path("bench-results"), metavar="DIR",
                       help="where results and plots go (default: %(default)s)")
    bench.add_argument("--repeat", type=positive_int, metavar="N",
                       help="repeats per measurement (default: 3, http 2; quick 1)")
    bench.add_argument("--pin", action="store_true", help="servers and clients on separate CPUs")
    bench.add_argument("--cpu-clock", choices=CPU_CLOCKS, default="auto",
                       help="how server CPU is read: a cgroup per server (microseconds, whole tree), /proc (clock"
                            " ticks), or auto: the cgroup where one can be made (default: %(default)s)")
    scale = bench.add_argument_group("load size (defaults: full run / --quick)")
    scale.add_argument("--clients", type=positive_int, metavar="K",
                       help=f"stevens: client processes ({FULL.clients} / {QUICK.clients})")
    scale.add_argument("--connections", type=positive_int, metavar="N",
                       help=f"stevens: connections per client process ({FULL.connections} / {QUICK.connections})")
    scale.add_argument("--bytes", type=positive_int, metavar="B", dest="nbytes",
                       help=f"stevens: bytes asked per connection ({FULL.nbytes})")
    scale.add_argument("--duration", type=duration, metavar="SECONDS",
                       help=f"echo-rr, http, work: seconds per load point ({FULL.duration:g}, work"
                            f" {FULL.work_duration:g} / {QUICK.duration:g}; wrk rounds up to whole s)")
    scale.add_argument("--concurrency", type=_positive_ints, metavar="LIST",
                       help="echo-rr, http, work: concurrent connections (1,10,100 / 10)")
    scale.add_argument("--work", action="append", metavar="SPEC",
                       help=f"work: what a request costs, cpu:MS, sleep:MS or cpu:MS,sleep:MS; repeat the option for"
                            f" several ({' '.join(FULL.work)} / {' '.join(QUICK.work)})")
    scale.add_argument("--sizes", type=_sizes, metavar="LIST", help="http: file sizes (1k,64k,1m / 1k)")
    scale.add_argument("--max-idle", type=positive_int, metavar="N",
                       help=f"idle: most connections held ({FULL.max_idle} / {QUICK.max_idle})")
    bench.add_argument("--client", type=_client, default="auto", metavar="auto|wrk|builtin|MODULE:FUNCTION",
                       help="http and --http: load client, auto uses wrk when installed (default: %(default)s);"
                            " MODULE:FUNCTION: a function called with a connected socket for one exchange"
                            " (raising means the exchange failed)")
    own = bench.add_argument_group("your own server (bench MODULE:CLASS): the exchange, one of --client"
                                   " MODULE:FUNCTION, --send, --http")
    own.add_argument("--send", metavar="TEXT|@FILE",
                     help="send TEXT (backslash escapes such as \\n decoded) or FILE's bytes as one request")
    own.add_argument("--expect-bytes", type=positive_int, metavar="N", help="with --send: the answer is N bytes")
    own.add_argument("--expect-line", action="store_true", help="with --send: the answer is one line")
    own.add_argument("--http", action="append", metavar="PATH",
                     help="HTTP requests for PATH (repeat for several, taken in turn)")
    own.add_argument("--method", default="GET", metavar="METHOD", help="with --http (default: %(default)s)")
    own.add_argument("--body", metavar="TEXT|@FILE", help="with --http: the request body")
    own.add_argument("--connection-per-exchange", action="store_true",
                     help="connect, do one exchange, close (Stevens' style); default: persistent connections")
    bench.add_argument("--tls", action="store_true",
                       help="http: measure over TLS, every strategy beside nginx with the same certificate"
                            " (needs wrk and openssl)")
    bench.set_defaults(func=run_bench)


def config_from_arguments(args: argparse.Namespace) -> BenchConfig:
    """The :class:`BenchConfig` the parsed command line asks for."""
    base = QUICK if args.quick else FULL
    overrides = {name: getattr(args, name) for name in
                 ("clients", "connections", "nbytes", "duration", "concurrency", "sizes", "max_idle", "repeat")
                 if getattr(args, name) is not None}
    if args.repeat is not None:
        overrides["http_repeat"] = args.repeat
    if args.duration is not None:
        overrides["work_duration"] = args.duration
    if args.work:
        overrides["work"] = tuple(args.work)
    scale: Scale = dataclasses.replace(base, **overrides)
    own = own_server(args) if is_own(args) else None
    workloads = ["server"] if own else ALL if args.workload == "all" else [args.workload]
    client = "auto" if ":" in args.client else args.client
    return BenchConfig(workloads=workloads, out=args.out, scale=scale, quick=args.quick, pin=args.pin,
                       strategies=args.strategies, servers=args.servers, client=client, tls=args.tls, own=own,
                       cgroups=args.cpu_clock != "proc")


def _text_or_file(option: str, text: str, escapes: bool) -> str:
    """TEXT (backslash escapes decoded when *escapes*) or @FILE's bytes, as latin-1 text (one byte a character)."""
    from framework.cli import UsageError

    if text.startswith("@"):
        try:
            return Path(text[1:]).read_bytes().decode("latin-1")
        except OSError as exc:
            raise UsageError(f"{option} {text}: {exc.strerror or exc}") from None
    try:
        data = text.encode("latin-1", "backslashreplace")
        return data.decode("unicode_escape").encode("latin-1").decode("latin-1") if escapes else data.decode("latin-1")
    except (UnicodeError, ValueError) as exc:
        raise UsageError(f"{option}: {exc}") from None


#: The options that only describe an exchange with your own server.
OWN_OPTIONS = ("send", "expect_bytes", "expect_line", "http", "body", "connection_per_exchange")


def is_own(args: argparse.Namespace) -> bool:
    """Whether the command measures your own server: ``MODULE:CLASS``, or ``wsgi`` (your app, or the bundled ones)."""
    return ":" in args.workload or args.workload == "wsgi"


def wsgi_app(options: list[str]) -> str:
    """The ``--app MODULE:CALLABLE`` among serve *options* ("" when there is none)."""
    for index, word in enumerate(options):
        if word == "--app" and index + 1 < len(options):
            return options[index + 1]
        if word.startswith("--app="):
            return word.partition("=")[2]
    return ""


def own_servers(config: BenchConfig) -> list[OwnServer]:
    """What the run measures: your server, or under ``bench wsgi`` without ``--app`` one per bundled app."""
    from framework.bench.wsgi_apps import APPS

    own = config.own
    if own is None:
        return []
    if own.target != "wsgi" or own.app:
        return [own]
    return [dataclasses.replace(own, app=f"framework.bench.wsgi_apps:{name}", label=name,
                                serve_options=("--app", f"framework.bench.wsgi_apps:{name}", *own.serve_options))
            for name in APPS]


def own_server(args: argparse.Namespace) -> OwnServer:
    """``bench MODULE:CLASS`` (or ``wsgi``): the server class loaded, exchange and serve options checked; UsageError."""
    from framework.bench.exchange import ExchangeSpec, load_function
    from framework.bench.workloads.own import own_class
    from framework.cli import UsageError, serve_arguments

    wsgi = args.workload == "wsgi"
    cls = own_class(args.workload)
    if wsgi and not args.http and not args.send and ":" not in args.client:
        args.http = ["/"]  # a WSGI app speaks HTTP: GET / unless told otherwise
    function = args.client if ":" in args.client else ""
    given = [name for name, value in (("--client MODULE:FUNCTION", function), ("--send", args.send),
                                      ("--http", args.http)) if value]
    if len(given) != 1:
        raise UsageError(f"bench {args.workload}: describe the exchange with exactly one of --client MODULE:FUNCTION,"
                         f" --send or --http{' (given: ' + ', '.join(given) + ')' if given else ''}")
    if args.send is not None and (args.expect_bytes is None) == (not args.expect_line):
        raise UsageError("--send needs exactly one of --expect-bytes N or --expect-line")
    if args.send is None and (args.expect_bytes is not None or args.expect_line):
        raise UsageError("--expect-bytes and --expect-line go with --send")
    if args.http is None and (args.body is not None or args.method != "GET"):
        raise UsageError("--method and --body go with --http")
    if function:
        try:
            load_function(function)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        exchange = ExchangeSpec(kind="function", function=function)
    elif args.send is not None:
        request = _text_or_file("--send", args.send, escapes=True)
        if not request:
            raise UsageError("--send: nothing to send")
        exchange = ExchangeSpec(kind="send", send=request, expect_bytes=args.expect_bytes or 0,
                                expect_line=args.expect_line)
    else:
        bad = [path for path in args.http if not path.startswith("/") or any(char in path for char in " \r\n")]
        if bad:
            raise UsageError(f"--http {bad[0]!r}: a path starts with / and has no spaces")
        if not args.method.isascii() or not args.method.isalpha():
            raise UsageError(f"--method {args.method!r}: not an HTTP method")
        body = _text_or_file("--body", args.body, escapes=False) if args.body is not None else ""
        exchange = ExchangeSpec(kind="http", paths=tuple(args.http), method=args.method.upper(), body=body)
    options = list(args.serve_options)
    lab_owned = [word for word in options if word.split("=")[0] in LAB_SERVE_OPTIONS]
    if lab_owned:
        raise UsageError(f"{lab_owned[0].split('=')[0]}: the lab sets it for every model it starts"
                         " (choose models with --strategies)")
    app = wsgi_app(options) if wsgi else ""
    if cls is not None:
        try:
            serve_arguments(cls, options if app or not wsgi else ["--app", "x:y", *options])
        except ValueError as exc:
            raise UsageError(f"serve option for {args.workload}: {exc}") from None
    elif wsgi and [word for word in options if word != "--app" and not word.startswith("--app=") and word != app]:
        raise UsageError("bench wsgi: this forkthread has no `serve wsgi`, so no serve option but --app is known")
    if app:
        try:
            from framework.cli import import_named

            if not callable(import_named(app.removesuffix("()"), "MODULE:CALLABLE (e.g. myapp:app)")):
                raise UsageError(f"--app {app}: not callable")
        except UsageError as exc:
            raise UsageError(f"--app: {exc}") from None
    return OwnServer(target=args.workload, exchange=exchange, serve_options=tuple(options),
                     per_exchange=args.connection_per_exchange, app=app)


def check_servers(names: list[str] | None) -> None:
    """Raise UsageError for a ``--servers`` name that is no peer (``none`` alone means no peers)."""
    from framework.bench.peers import PEERS, peer_key
    from framework.cli import UsageError

    if names is None or [name.lower() for name in names] == ["none"]:
        return
    keys = list(dict.fromkeys(peer_key(peer.name) for peer in PEERS))
    unknown = [name for name in names if not any(key.startswith(peer_key(name)) for key in keys)]
    if unknown:
        raise UsageError(f"--servers: no peer named {', '.join(unknown)} (choose from {', '.join(keys)}, or none)")


def own_settings(own: OwnServer | None) -> dict[str, object]:
    """What the settings line says of your own server (nothing for the lab's workloads)."""
    if own is None:
        return {}
    return {"exchange": own.exchange.describe(), "serve_options": " ".join(own.serve_options) or "none",
            "connection_per_exchange": own.per_exchange}


def cpu_clock_setting(config: BenchConfig) -> str:
    """How server CPU is read in this run; without a cgroup, a note on what that costs in precision.

    ``config.cgroups`` is turned off when no cgroup can be made here, so that
    no server tries one.
    """
    from framework.bench import cgroup

    if config.cgroups and cgroup.available():
        return "cgroup v2, microseconds"
    config.cgroups = False
    config.notes.append(
        "server CPU was read from /proc in clock ticks (no cgroup v2 could be made here): each sample of a"
        " live server reads low by up to a tick (10 ms) per process, so small figures, and trees of several"
        " processes, read high")
    return "/proc, clock ticks"


def run_bench(args: argparse.Namespace) -> int:
    """Run the chosen workloads, print the tables, write the files; exit status 0 when all ran."""
    from framework.bench.targets import variant_keys
    from framework.bench.workloads import WORKLOADS
    from framework.cli import UsageError
    from framework.strategies import STRATEGIES

    if not is_own(args):
        if args.serve_options:
            raise UsageError(f"unrecognized arguments: {' '.join(args.serve_options)}")
        mine = [name for name in OWN_OPTIONS if getattr(args, name)]
        if mine or ":" in args.client:
            option = "--" + (mine[0] if mine else "client").replace("_", "-")
            raise UsageError(f"{option} is for your own server: forkthread bench MODULE:CLASS {option} ...")
    check_servers(args.servers)
    if args.cpu_clock == "cgroup":
        from framework.bench import cgroup

        if not cgroup.available():
            raise UsageError("--cpu-clock cgroup: no cgroup v2 can be made here (it needs a writable cgroup2"
                             " mount, usually root)")
    config = config_from_arguments(args)
    if "work" in config.workloads:
        from framework.bench.workloads.work import check_specs

        try:
            check_specs(config.scale.work)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    unknown = [name for name in config.strategies or [] if name not in STRATEGIES and name not in variant_keys()]
    if unknown:
        raise UsageError(f"unknown strategies {', '.join(unknown)} (choose from {', '.join(STRATEGIES)},"
                         f" or a variant: {', '.join(variant_keys())})")
    if config.out.exists() and not config.out.is_dir():
        raise UsageError(f"--out {config.out}: not a directory")
    if config.client == "wrk":
        from framework.bench.wrk import available

        if not available():
            raise UsageError("--client wrk: wrk is not installed")
    try:  # before measuring: a run must not end in a directory it cannot write
        config.out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        print(f"forkthread: cannot write results into {config.out}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    config.place_cpus()
    fd_limit = config.raise_fd_limit()
    cpu_clock = cpu_clock_setting(config)
    machine = describe_machine()
    config.progress(f"machine: {machine_summary(machine)}")
    settings = {"workload": args.workload, **own_settings(config.own), "quick": config.quick,
                "repeat": config.scale.repeat, "pin": config.pin, "cpu_clock": cpu_clock,
                "fd_limit": fd_limit, **{key: value for key, value in dataclasses.asdict(config.scale).items()
                                         if key != "repeat"}}
    results = Results(machine=machine, settings=settings, notes=config.notes)
    started = time.monotonic()
    previous_sigterm = _interrupt_on_sigterm()
    try:
        for own in own_servers(config):
            config.progress(f"{own.label or own.target}: starting")
            results.workloads.append(WORKLOADS["server"](dataclasses.replace(config, own=own)))
        for name in [] if config.own else config.workloads:
            config.progress(f"{name}: starting")
            results.workloads.append(WORKLOADS[name](config))
    except KeyboardInterrupt:
        results.notes.append("interrupted: partial results")
        print("interrupted: writing partial results", file=sys.stderr)
    finally:
        if previous_sigterm is not None:
            signal.signal(signal.SIGTERM, previous_sigterm)
    results.seconds = time.monotonic() - started
    machine["load_average_end"] = " ".join(f"{value:.2f}" for value in os.getloadavg()[:2])
    try:
        paths = results.write(config.out)
    except OSError as exc:
        print(f"forkthread: cannot write results into {config.out}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    print(results.text())
    print(f"\nwrote {', '.join(str(path) for path in paths)}"
          + "".join(f", {config.out / plot}" for report in results.workloads for plot in report.plots))
    return 0
