"""The verdict of the ``work`` workload: per work kind, the models ranked, each with a reason from its numbers.

Nothing here is a hand-written conclusion about a model.  Each reason is
picked by a rule over measured figures (below, with its thresholds), and
names a mechanism only from what the rule saw plus the model's structure
(its *traits*: ``threads`` in one interpreter, ``processes``,
``interpreters`` each with its own GIL, an event ``loop``,
``one-at-a-time``), which is how the model is built, not how it performed.  The figures a rule uses, per row:

* *cores used* = server tree CPU seconds / wall seconds of the point;
* *requests in flight* = throughput x the work's own time (cpu + sleep
  ms): by Little's law, how many requests the server was working on at
  once on average;
* *serving processes* = processes in the server tree (the master of a
  multi-process server not counted);
* *queued*: the median latency is at least :data:`QUEUED` times the
  work's own time (requests waited for something besides their work);
* *busiest share*: the share of the tree's CPU used by its busiest process;
* *other cores*, *client cores*: CPU used meanwhile by every other
  process on the machine, and by the lab's own load generators; the CPUs
  less both are the cores *available* to the server.

The rules, first match wins (thresholds are the constants below):

1. sleep in the work, C >= 2, in flight >= OVERLAP x C: the waits overlap;
2. sleep in the work, C >= 2, BUSY_PROCESSES to ONE_AT_A_TIME requests in
   flight per serving process: one at a time per process (an event loop:
   a blocked loop; several processes: one connection per process);
3. cpu in the work, C >= 2, 2+ CPUs, queued or starved, and cores used
   between SATURATED x (one core, or the cores other processes and the
   load generators left, when fewer) and ONE_CORE: one core did it all (threads in one interpreter: the GIL;
   an event loop; one connection at a time; several processes: the
   busiest one's share, or the cores others used);
4. cpu in the work, cores > ONE_CORE: computes in parallel;
5. sleep in the work, C >= 2, fewer than BUSY_PROCESSES requests in flight
   per serving process: processes waiting for a CPU;
6. sleep in the work, C >= 2: a bounded pool (between one and C at once);
7. otherwise the cores used and requests in flight.

Starved connections, and other processes' use of the CPUs when at least
SHARED cores, are added to any reason.

The recommendation (:func:`recommend`) then picks, at each concurrency
judged, among the models within :data:`TIE` of the best throughput that
starved no connection, the one with the least anonymous memory (fewest
processes): the same service for less.  Its words say what the exchange
is made of (computing or waiting, from the figures) and why the chosen
model's structure fits it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

from framework.bench.report import Row
from servers.work import WorkSpec, parse_spec

__all__ = ["Figures", "Verdict", "WorkSpec", "advice", "figures", "format_ms", "reason", "recommend",
           "recommendations", "render", "verdicts", "work_spec"]

#: At most this many cores used counts as one core ...
ONE_CORE = 1.25
#: ... and at least this share of one core (or of what other processes left of the CPUs, when less)
#: as that core kept busy.
SATURATED = 0.6
#: A process that used at least this share of the tree's CPU did the work nearly alone.
BUSIEST = 0.6
#: Cores used by other processes (and the load generators) that count as sharing the CPUs.
SHARED = 0.5
#: At most this many requests in flight per serving process counts as one at a time ...
ONE_AT_A_TIME = 1.25
#: ... and at least this many as every serving process busy.
BUSY_PROCESSES = 0.5
#: At least this share of the connections in flight counts as the waits overlapping.
OVERLAP = 0.75
#: A median latency this many times the work's own time means requests queued.
QUEUED = 1.5
#: Models with at least this share of the best throughput serve as well as it.
TIE = 0.9


@dataclasses.dataclass(frozen=True)
class Figures:
    """What the rules read from one row."""

    target: str
    traits: frozenset[str]
    spec: WorkSpec
    connections: int
    req_per_s: float
    p99_ms: float | None
    p50_ms: float | None
    cores: float
    processes: int
    starved: int
    busiest_share: float | None = None
    other_cores: float = 0.0
    client_cores: float = 0.0
    pss_mib: float | None = None

    @property
    def in_flight(self) -> float:
        """Requests being worked on at once, on average (Little's law over the work's own time)."""
        return self.req_per_s * (self.spec.cpu_ms + self.spec.sleep_ms) / 1000.0

    def available(self, cpus: int) -> float:
        """Cores the server could have had: the CPUs less what other processes and the load generators used."""
        return max(0.0, cpus - self.other_cores - self.client_cores)

    @property
    def serving(self) -> int:
        """Processes that serve (a multi-process server's master only supervises)."""
        return max(1, self.processes - 1) if self.processes > 1 else 1

    @property
    def queued(self) -> bool:
        """True when the median request waited at least :data:`QUEUED` times its own work."""
        service = self.spec.cpu_ms + self.spec.sleep_ms
        return self.p50_ms is not None and service > 0 and self.p50_ms >= QUEUED * service


def work_spec(row: Row) -> WorkSpec:
    """What a ``work`` row's requests cost: its ``--work`` spec."""
    return parse_spec(str(row.params["work"]))


def figures(row: Row, spec_of: Callable[[Row], WorkSpec] = work_spec) -> Figures | None:
    """The rule inputs of a row (None when it has no throughput to judge); *spec_of* says what a request costs."""
    metrics = row.metrics
    rate = metrics.get("req_per_s")
    if not rate:
        return None
    return Figures(
        target=row.target, traits=frozenset(row.traits), spec=spec_of(row), pss_mib=metrics.get("pss_mib"),
        connections=int(row.params["connections"]), req_per_s=rate, p99_ms=metrics.get("p99_ms"),
        p50_ms=metrics.get("p50_ms"), cores=metrics.get("cores_used") or 0.0,
        processes=int(metrics.get("processes") or 1), starved=int(metrics.get("starved") or 0),
        busiest_share=metrics.get("busiest_share"), other_cores=metrics.get("other_cores") or 0.0,
        client_cores=metrics.get("client_cores") or 0.0)


def _single_core_mechanism(item: Figures) -> str:
    workers = "sub-interpreters" if "interpreters" in item.traits else "processes" if "processes" in item.traits else ""
    if workers:  # interpreters before threads: each sub-interpreter has a GIL of its own
        if workers == "processes" and item.busiest_share is not None and item.busiest_share >= BUSIEST:
            return f"one process did {item.busiest_share:.0%} of the work"
        if item.other_cores + item.client_cores >= SHARED:
            return (f"the CPUs were shared: other processes used {item.other_cores:.1f} cores,"
                    f" the load generators {item.client_cores:.1f}")
        return f"one core's worth of work reached the {workers}"
    if "loop" in item.traits:
        return "one event loop"
    if "threads" in item.traits:
        return "GIL"
    if "one-at-a-time" in item.traits:
        return "one connection at a time"
    return "one core"


def _serial_mechanism(traits: frozenset[str]) -> str:
    if "loop" in traits:
        return "blocked loop"
    if "one-at-a-time" in traits:
        return "one connection at a time"
    if "processes" in traits:
        return "one connection per process"
    return "serialised"


def reason(item: Figures, cpus: int) -> str:
    """One line saying why *item* did what it did, chosen by the first rule that matches."""
    kind = item.spec.kind
    contended = item.connections >= 2
    waited = item.queued or item.starved > 0
    if item.spec.sleep_ms and contended and item.in_flight >= OVERLAP * item.connections:
        why = f"{item.in_flight:.0f} of {item.connections} requests in flight under {kind} work — waits overlap"
    elif (item.spec.sleep_ms and contended
          and BUSY_PROCESSES * item.serving <= item.in_flight <= ONE_AT_A_TIME * item.serving):
        per = f" ({item.serving} processes)" if item.serving > 1 else ""
        why = (f"{item.in_flight:.1f} requests at a time{per} under {kind} work"
               f" — {_serial_mechanism(item.traits)}")
    elif (item.spec.cpu_ms and contended and cpus >= 2 and waited
          and SATURATED * min(1.0, item.available(cpus)) <= item.cores <= ONE_CORE):
        why = f"{item.cores:.1f} cores used of {cpus} under {kind} work — {_single_core_mechanism(item)}"
    elif item.spec.cpu_ms and item.cores > ONE_CORE:
        why = f"{item.cores:.1f} cores used of {cpus} under {kind} work — computes in parallel"
    elif item.spec.sleep_ms and contended and item.in_flight < BUSY_PROCESSES * item.serving:
        why = (f"{item.in_flight:.1f} requests in flight in {item.serving} processes under {kind} work"
               " — processes waiting for a CPU")
    elif item.spec.sleep_ms and contended:
        why = (f"{item.in_flight:.1f} of {item.connections} requests in flight under {kind} work"
               " — bounded pool")
    else:
        why = f"{item.cores:.1f} cores used, {item.in_flight:.1f} requests in flight"
    if item.starved:
        why += f"; {item.starved} of {item.connections} connections starved"
    if item.other_cores >= SHARED and "other processes used" not in why:
        why += f"; other processes used {item.other_cores:.1f} cores meanwhile"
    return why


@dataclasses.dataclass
class Verdict:
    """One work kind at one concurrency: the models by throughput and by p99, with reasons."""

    work: str
    connections: int
    by_throughput: list[Figures]
    by_p99: list[Figures]
    reasons: dict[str, str]


def verdicts(rows: Sequence[Row], cpus: int, spec_of: Callable[[Row], WorkSpec] = work_spec,
             every_concurrency: bool = False) -> list[Verdict]:
    """Per work kind (in run order), at its highest concurrency (or at each): the rankings.

    By p99, lower first; a model that starved connections comes after
    every one that did not (its p99 leaves the starved ones out).
    """
    out = []
    for work in dict.fromkeys(str(spec_of(row)) for row in rows):
        mine = [row for row in rows if str(spec_of(row)) == work]
        levels = sorted({int(row.params["connections"]) for row in mine})
        for level in levels if every_concurrency else levels[-1:]:
            items = [item for row in mine if int(row.params["connections"]) == level
                     if (item := figures(row, spec_of)) is not None]
            by_rate = sorted(items, key=lambda item: -item.req_per_s)
            by_p99 = sorted(items, key=lambda item: (item.starved > 0, item.p99_ms if item.p99_ms is not None
                                                     else float("inf")))
            out.append(Verdict(work, level, by_rate, by_p99, {item.target: reason(item, cpus) for item in items}))
    return out


def recommend(verdict: Verdict) -> Figures | None:
    """The model to use at this point: of those within :data:`TIE` of the best rate, none starved, the leanest."""
    if not verdict.by_throughput:
        return None
    serving = [item for item in verdict.by_throughput if not item.starved] or verdict.by_throughput
    best = serving[0]
    level = [item for item in serving if item.req_per_s >= TIE * best.req_per_s]
    return min(level, key=lambda item: item.pss_mib if item.pss_mib is not None else float("inf"))


def advice(pick: Figures, verdict: Verdict, cpus: int) -> str:
    """Why *pick* fits, in the words a user acts on: what the exchange is made of and what the model does with it."""
    spec, traits = pick.spec, pick.traits
    others = [item for item in verdict.by_throughput if item is not pick]
    slowest = min(others, key=lambda item: item.req_per_s, default=None)
    contrast = (f"; {slowest.target} managed {slowest.req_per_s:,.0f}/s ({verdict.reasons[slowest.target]})"
                if slowest is not None and slowest.req_per_s < TIE * pick.req_per_s else "")
    if spec.cpu_ms and not spec.sleep_ms:
        what = f"each exchange holds the CPU (~{spec.cpu_ms:.3g} ms of computing)"
        if "processes" in traits:
            why = (f"threads in one interpreter share one core (the GIL) and an event loop is one thread;"
                   f" {pick.target} runs processes and used {pick.cores:.1f} of {cpus} cores")
        else:
            why = f"{pick.target} used {pick.cores:.1f} of {cpus} cores"
    elif spec.sleep_ms and not spec.cpu_ms:
        what = f"each exchange mostly waits (~{spec.sleep_ms:.3g} ms)"
        if "threads" in traits and "processes" not in traits:
            why = ("one thread per connection overlaps the waits in one process (least memory);"
                   " a single event loop or one connection at a time serves one exchange at once")
        elif "processes" in traits:
            why = f"{pick.target} overlaps the waits in processes ({pick.processes} processes)"
        else:
            why = verdict.reasons[pick.target]
    else:
        what = f"each exchange computes (~{spec.cpu_ms:.3g} ms) and waits (~{spec.sleep_ms:.3g} ms)"
        why = verdict.reasons[pick.target]
    return f"{pick.target} ({pick.req_per_s:,.0f}/s) — {what}: {why}{contrast}."


def recommendations(found: Sequence[Verdict], cpus: int, label: Callable[[Verdict], str]) -> list[str]:
    """One Markdown bullet per verdict: the model to use and why."""
    lines = []
    for verdict in found:
        pick = recommend(verdict)
        if pick is not None:
            lines.append(f"- {label(verdict)}: use {advice(pick, verdict, cpus)}")
    return lines


def render(found: Sequence[Verdict], cpus: int) -> str:
    """The verdicts as Markdown (also readable on a terminal), ending with the recommendation per work kind."""
    lines: list[str] = []
    for verdict in found:
        lines += ["", f"#### {verdict.work} at {verdict.connections} connections", "", "By throughput:", ""]
        lines += [f"{rank}. {item.target}: {item.req_per_s:,.0f} req/s — {verdict.reasons[item.target]}"
                  for rank, item in enumerate(verdict.by_throughput, 1)]
        lines += ["", "By p99 latency (models that starved connections last):", ""]
        lines += [f"{rank}. {item.target}: p99 {format_ms(item.p99_ms)}"
                  + (f", {item.starved} of {item.connections} connections starved" if item.starved else "")
                  for rank, item in enumerate(verdict.by_p99, 1)]
    advice_lines = recommendations(found, cpus, lambda verdict: f"{verdict.work} at {verdict.connections} connections")
    if advice_lines:
        lines += ["", f"**Recommendation** (of the models within {1 - TIE:.0%} of the best rate, none starving,"
                  " the one with the least memory):", "", *advice_lines]
    return "\n".join(lines).strip("\n")


def format_ms(value: float | None) -> str:
    """A latency in ms for the verdict text (``-`` for none)."""
    return "-" if value is None else f"{value:,.1f} ms"
