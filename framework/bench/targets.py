"""What is measured: forkthread strategies (and their variants) as server commands.

Rows come from :data:`framework.strategies.STRATEGIES` at run time, so a
strategy registered later shows up without touching the lab.  Variants
(pre-forked accept modes and worker kinds, pre-threaded accept modes) are
extra rows in the ``stevens`` workload, as in UNP ch. 30.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Callable
from pathlib import Path

from framework.bench.processes import ServerCommand
from framework.strategies import STRATEGIES, strategy_class

#: The checkout (or site-packages) directory holding ``framework`` and ``servers``.
ROOT = Path(__file__).resolve().parent.parent.parent

#: strategy -> [(row label, extra serve options)]; the first entry is the strategy's default form.
VARIANTS: dict[str, list[tuple[str, list[str]]]] = {
    "prethreaded": [
        ("prethreaded shared", ["--prethreaded-accept", "shared"]),
        ("prethreaded lock", ["--prethreaded-accept", "lock"]),
        ("prethreaded handoff", ["--prethreaded-accept", "handoff"]),
    ],
    "preforked": [
        ("preforked shared", ["--accept", "shared"]),
        ("preforked lock", ["--accept", "lock"]),
        ("preforked reuseport", ["--accept", "reuseport"]),
        ("preforked passfd", ["--accept", "passfd"]),
        ("preforked worker=threads", ["--worker", "threads"]),
        ("preforked worker=poll", ["--worker", "poll"]),
    ],
}


@dataclasses.dataclass
class Context:
    """What a workload asks of every server: the protocol, and options for forkthread servers."""

    #: The forkthread server to run (``nbytes``, ``echo``, ``http``).
    server: str
    #: What the peers must speak: ``nbytes``, ``echo`` or ``http``.
    protocol: str
    #: Extra ``forkthread serve`` options (``--root DIR``, ``--timeout 0``).
    server_options: list[str] = dataclasses.field(default_factory=list)
    #: http: the directory of files served.
    root: str = ""
    #: With ``--tls``: the certificate and key every server (forkthread and peers) serves TLS with.
    tls_cert: str = ""
    tls_key: str = ""
    #: Extra options for the lab's own peers (``--work SPEC``).
    peer_options: list[str] = dataclasses.field(default_factory=list)
    #: wsgi: the application every server serves (``MODULE:CALLABLE``).
    app: str = ""
    #: Extra environment for every server, forkthread's and the peers' (a calibration...).
    env: dict[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Target:
    """One row source: a server the lab starts, or a reason it cannot."""

    name: str
    kind: str  # "forkthread" or "peer"
    #: Builds the command for a workload's :class:`Context`.
    command: Callable[[Context], ServerCommand] | None
    strategy: str | None = None
    skip: str | None = None
    #: How the model is built, for the work verdict (see :mod:`framework.bench.verdict`).
    traits: frozenset[str] = frozenset()


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for lab subprocesses: this checkout first on the import path."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")]))
    env.update(extra or {})
    return env


def serve_command(server: str, strategy: str, options: list[str], server_options: list[str],
                  env: dict[str, str] | None = None) -> ServerCommand:
    """``python -m framework serve SERVER --bind 127.0.0.1:0 --strategy S ...`` (*env*: extra environment)."""
    argv = [sys.executable, "-m", "framework", "serve", server, "--bind", "127.0.0.1:0", "--strategy", strategy,
            "--log-level", "warning", *options, *server_options]
    return ServerCommand(argv, env=child_env(env))


def variant_key(label: str) -> str:
    """``preforked worker=poll`` -> ``preforked:worker=poll``: how ``--strategies`` names a variant."""
    return label.replace(" ", ":")


def variant_keys() -> list[str]:
    """Every variant's ``--strategies`` name (``preforked:worker=poll``, ``prethreaded:handoff``...)."""
    return [variant_key(label) for forms in VARIANTS.values() for label, _ in forms]


def strategy_targets(variants: bool, chosen: list[str] | None) -> list[Target]:
    """A target per registered strategy (and per variant with *variants*), filtered by *chosen*.

    *chosen* may also name single variants (:func:`variant_key`): they get a
    row of their own, labelled as the variant, in any workload.
    """
    targets = []
    for strategy in STRATEGIES:
        forms = VARIANTS.get(strategy, [(strategy, [])])
        picked: list[tuple[str, list[str]]] = []
        if chosen is None or strategy in chosen:
            picked = [(label if variants else strategy, options) for label, options in
                      (forms if variants else forms[:1])]
        picked += [(label, options) for label, options in forms
                   if chosen is not None and variant_key(label) in chosen and label != strategy
                   and label not in {name for name, _ in picked}]
        for name, options in picked:

            def command(context: Context, strategy: str = strategy, options: list[str] = options) -> ServerCommand:
                return serve_command(context.server, strategy, options, context.server_options)

            # A strategy this Python cannot run (interpreters before 3.13) keeps its row, skipped with the reason.
            targets.append(Target(name=name, kind="forkthread", command=command, strategy=strategy,
                                  skip=strategy_class(strategy).unavailable()))
    return targets
