"""``forkthread bench WORKLOAD``: the sub-command, its options, and the run from start to files."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path

from framework.bench.config import FULL, KIB, MIB, QUICK, BenchConfig, Scale
from framework.bench.machine import describe_machine, machine_summary
from framework.bench.report import Results

WORKLOAD_NAMES = ["stevens", "echo-rr", "http", "idle", "work", "all"]
#: What ``all`` runs: the cost-of-the-model workloads.  ``work`` is about using the cores, so it runs on
#: its own, unpinned (``all`` is usually run with ``--pin``).
ALL = ["stevens", "echo-rr", "http", "idle"]


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
        description="Measure each strategy, and peer servers, under one workload; write results.json, "
                    "results.csv, results.md and PNG plots into --out.")
    bench.add_argument("workload", choices=WORKLOAD_NAMES, help="what load to make")
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
    bench.add_argument("--client", choices=("auto", "wrk", "builtin"), default="auto",
                       help="http: load client; auto uses wrk when installed (default: %(default)s)")
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
    workloads = ALL if args.workload == "all" else [args.workload]
    return BenchConfig(workloads=workloads, out=args.out, scale=scale, quick=args.quick, pin=args.pin,
                       strategies=args.strategies, servers=args.servers, client=args.client, tls=args.tls)


def run_bench(args: argparse.Namespace) -> int:
    """Run the chosen workloads, print the tables, write the files; exit status 0 when all ran."""
    from framework.bench.targets import variant_keys
    from framework.bench.workloads import WORKLOADS
    from framework.cli import UsageError
    from framework.strategies import STRATEGIES

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
    machine = describe_machine()
    config.progress(f"machine: {machine_summary(machine)}")
    settings = {"workload": args.workload, "quick": config.quick, "repeat": config.scale.repeat, "pin": config.pin,
                "fd_limit": fd_limit, **{key: value for key, value in dataclasses.asdict(config.scale).items()
                                         if key != "repeat"}}
    results = Results(machine=machine, settings=settings, notes=config.notes)
    started = time.monotonic()
    try:
        for name in config.workloads:
            config.progress(f"{name}: starting")
            results.workloads.append(WORKLOADS[name](config))
    except KeyboardInterrupt:
        results.notes.append("interrupted: partial results")
        print("interrupted: writing partial results", file=sys.stderr)
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
