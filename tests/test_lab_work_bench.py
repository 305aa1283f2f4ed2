"""``forkthread bench work --quick`` end to end: every row, every file, a verdict derived from the rows.

Structure and derivation only, never speed: the verdict is recomputed from
the rows written, and the mechanisms it names are checked where the
measured figures make the rule fire.
"""

from __future__ import annotations

import csv
import os

import pytest

from framework.bench import verdict
from framework.bench.config import QUICK
from framework.bench.peers import PEERS
from framework.bench.report import Row
from framework.bench.workloads.work import FORMS
from framework.strategies import STRATEGIES, available_strategies
from servers.work import handler_supported
from tests.test_bench_cli import assert_rows_or_notes, bench, load, workload

WORK_PEERS = [peer.name for peer in PEERS if "work" in peer.protocols]


def forms(strategies: list[str] = list(STRATEGIES)) -> list[str]:  # noqa: B006 (read only)
    return [label for strategy in strategies for label, _, _ in FORMS.get(strategy, [(strategy, [], set())])]


@pytest.mark.timeout(300)
def test_work_quick_end_to_end(tmp_path):
    out = tmp_path / "out"
    done = bench("work", "--quick", "--out", str(out), timeout=240.0)
    assert done.returncode == 0, done.stderr
    results = load(out)
    report = workload(results, "work")
    assert (out / "work.png").exists()
    assert {path.name for path in out.glob("work_cores_*.png")} == {
        f"work_cores_{spec.replace(':', '').replace(',', '_')}.png" for spec in QUICK.work}

    # a row for every strategy form (protocol style), every handler form or a note why not, every peer
    for spec in QUICK.work:
        rows = [row for row in report["rows"] if row["params"]["work"] == spec]
        named = {"rows": rows, "notes": report["notes"]}
        assert_rows_or_notes(named, [*forms(), *[f"{form} handler" for form in forms()], *WORK_PEERS])
        targets = {row["target"] for row in rows}
        # A strategy this Python cannot run (interpreters before 3.13) has a note instead.
        assert set(forms(available_strategies())) <= targets, report["notes"]
        assert {"socketserver threading", "socketserver forking", "asyncio executor", "asyncio inline"} <= targets
        if os.environ.get("CI") == "true":
            assert {"uvloop executor", "uvloop inline"} <= targets
        if not handler_supported():
            assert not any(target.endswith(" handler") for target in targets)
        for row in rows:
            for key in ("req_per_s", "p50_ms", "p99_ms", "cores_used", "pss_mib", "processes", "starved",
                        "load_avg", "other_cores"):
                assert key in row["metrics"], (row["target"], key)

    with (out / "results.csv").open() as file:
        assert sum(1 for _ in csv.DictReader(file)) == len(report["rows"])

    # the verdict is what the rules make of the rows written
    rows = [Row(**{**row, "params": row["params"]}) for row in report["rows"]]
    cpus = results["machine"]["cpus"]
    assert report["summary"] == verdict.render(verdict.verdicts(rows, cpus), cpus)
    markdown = (out / "results.md").read_text()
    assert "### Verdict" in markdown and report["summary"] in markdown
    assert "work: verdict" in done.stdout

    def reason(spec: str, target: str) -> str:
        line = next(line for line in report["summary"].split("\n#### ")
                    if line.startswith(f"#### {spec} ") or line.startswith(f"{spec} "))
        return next(text for text in line.splitlines() if text.split(": ", 1)[0].split(". ", 1)[-1] == target
                    and "req/s" in text)

    assert "— GIL" in reason("cpu:2", "threading"), report["summary"]
    assert "— blocked loop" in reason("sleep:20", "asyncio inline"), report["summary"]
    assert "— blocked loop" in reason("sleep:20", "poll"), report["summary"]
