"""The work verdict's rules on synthetic numbers: each reason follows from the figures, not from a name."""

from __future__ import annotations

import pytest

from framework.bench import verdict
from framework.bench.report import Row


def row(target: str, traits: set[str], work: str, connections: int, req_per_s: float, cores: float,
        p50_ms: float, p99_ms: float, processes: int = 1, starved: int = 0, **extra: float) -> Row:
    metrics: dict[str, float | None] = {"req_per_s": req_per_s, "cores_used": cores, "p50_ms": p50_ms,
                                        "p99_ms": p99_ms, "processes": float(processes), "starved": float(starved),
                                        **extra}
    return Row("work", target, "forkthread", None, {"work": work, "connections": connections}, metrics,
               traits=sorted(traits))


def reason_of(item: Row, cpus: int = 2) -> str:
    figures = verdict.figures(item)
    assert figures is not None
    return verdict.reason(figures, cpus)


def test_threads_stuck_at_one_core_under_cpu_work_is_the_gil():
    text = reason_of(row("threading", {"threads"}, "cpu:2", 10, 500, 1.0, 20.0, 40.0))
    assert text == "1.0 cores used of 2 under cpu work — GIL"


def test_gil_on_a_busy_machine_is_judged_against_the_cores_left():
    # other processes took 1.5 of 2 cores: 0.4 cores is most of what was left
    busy = row("threading", {"threads"}, "cpu:2", 10, 196, 0.4, 40.0, 110.0, other_cores=1.5, client_cores=0.02)
    assert reason_of(busy) == "0.4 cores used of 2 under cpu work — GIL; other processes used 1.5 cores meanwhile"
    # on a quiet machine 0.5 cores is a pool or a light load, not one saturated core
    quiet = row("asyncio executor", {"loop", "threads"}, "cpu:2,sleep:20", 100, 272, 0.55, 300.0, 350.0)
    assert reason_of(quiet).endswith("— bounded pool")


def test_the_same_numbers_on_an_event_loop_name_the_loop_and_on_one_at_a_time_the_connection():
    assert reason_of(row("poll", {"loop"}, "cpu:2", 10, 500, 1.0, 20.0, 40.0)).endswith("— one event loop")
    text = reason_of(row("iterative", {"one-at-a-time"}, "cpu:2", 10, 500, 1.0, 2.0, 3.0, starved=9))
    assert text == "1.0 cores used of 2 under cpu work — one connection at a time; 9 of 10 connections starved"


def test_threads_using_both_cores_are_not_blamed_on_the_gil():
    text = reason_of(row("threads in processes", {"threads", "processes"}, "cpu:2", 10, 950, 1.9, 10.0, 20.0))
    assert text == "1.9 cores used of 2 under cpu work — computes in parallel"


def test_unqueued_light_load_is_not_the_gil():
    # one core busy but nobody waited: the model was not the limit
    assert "GIL" not in reason_of(row("threading", {"threads"}, "cpu:2", 10, 500, 1.0, 2.0, 3.0))


def test_one_core_on_one_cpu_machine_is_not_the_gil():
    assert "GIL" not in reason_of(row("threading", {"threads"}, "cpu:2", 10, 500, 1.0, 20.0, 40.0), cpus=1)


def test_one_request_at_a_time_under_sleep_work_on_a_loop_is_the_blocked_loop():
    # 20 ms sleeps, 48 req/s: 0.96 requests in flight
    text = reason_of(row("asyncio inline", {"loop"}, "sleep:20", 10, 48, 0.02, 200.0, 210.0))
    assert text == "1.0 requests at a time under sleep work — blocked loop"


def test_one_per_process_counts_serving_processes_not_the_master():
    text = reason_of(row("preforked worker=poll", {"loop", "processes"}, "sleep:20", 10, 96, 0.02, 100.0, 160.0,
                         processes=3))
    assert text == "1.9 requests at a time (2 processes) under sleep work — blocked loop"


def test_many_processes_one_connection_each_and_processes_short_of_cpu():
    bounded = row("socketserver forking", {"processes"}, "sleep:20", 100, 1835, 0.03, 20.0, 47.0, processes=41,
                  starved=60)
    assert reason_of(bounded) == ("36.7 requests at a time (40 processes) under sleep work — one connection per"
                                  " process; 60 of 100 connections starved")
    slow = row("forking", {"processes"}, "cpu:2,sleep:20", 100, 251, 0.5, 300.0, 1500.0, processes=39, starved=53)
    assert reason_of(slow) == ("5.5 requests in flight in 38 processes under cpu+sleep work — processes waiting"
                               " for a CPU; 53 of 100 connections starved")


def test_overlapping_waits_and_bounded_pools():
    assert reason_of(row("threading", {"threads"}, "sleep:20", 10, 480, 0.02, 20.5, 22.0)) == (
        "10 of 10 requests in flight under sleep work — waits overlap")
    assert reason_of(row("asyncio executor", {"loop", "threads"}, "sleep:20", 100, 285, 0.1, 340.0, 360.0)) == (
        "5.7 of 100 requests in flight under sleep work — bounded pool")


def test_gil_under_mixed_work_when_the_cpu_part_saturates_a_core():
    # cpu:2,sleep:20 at 100 connections: 480 req/s is 0.96 s of CPU per second: one core, queued
    text = reason_of(row("threading", {"threads"}, "cpu:2,sleep:20", 100, 480, 1.0, 200.0, 260.0))
    assert text == "1.0 cores used of 2 under cpu+sleep work — GIL"


def test_processes_at_one_core_say_which_figure_explains_it():
    busiest = row("preforked worker=poll", {"loop", "processes"}, "cpu:2", 10, 600, 1.2, 15.0, 40.0, processes=3,
                  busiest_share=0.8)
    assert reason_of(busiest).endswith("— one process did 80% of the work")
    shared = row("forking", {"processes"}, "cpu:2", 10, 500, 1.0, 20.0, 40.0, processes=11, busiest_share=0.1,
                 other_cores=0.9, client_cores=0.1)
    assert reason_of(shared).endswith("— the CPUs were shared: other processes used 0.9 cores, the load generators 0.1")


def test_other_load_is_mentioned_beside_any_reason():
    text = reason_of(row("forking", {"processes"}, "cpu:2", 10, 700, 1.4, 12.0, 30.0, other_cores=0.6))
    assert text == "1.4 cores used of 2 under cpu work — computes in parallel; other processes used 0.6 cores meanwhile"


def test_rankings_use_the_highest_concurrency_and_put_starving_models_last_by_p99():
    rows = [
        row("a", {"threads"}, "cpu:2", 1, 450, 0.9, 2.0, 2.5),
        row("a", {"threads"}, "cpu:2", 10, 500, 1.0, 20.0, 40.0),
        row("b", {"processes"}, "cpu:2", 10, 900, 1.9, 10.0, 30.0),
        row("c", {"one-at-a-time"}, "cpu:2", 10, 480, 1.0, 2.0, 3.0, starved=9),
        row("d", {"loop"}, "sleep:20", 10, 48, 0.02, 200.0, 210.0),
        row("e", set(), "sleep:20", 10, 0, 0.0, 0.0, 0.0),  # no answers: nothing to rank
    ]
    found = verdict.verdicts(rows, cpus=2)
    assert [(item.work, item.connections) for item in found] == [("cpu:2", 10), ("sleep:20", 10)]
    cpu = found[0]
    assert [item.target for item in cpu.by_throughput] == ["b", "a", "c"]
    assert [item.target for item in cpu.by_p99] == ["b", "a", "c"]
    assert cpu.reasons["a"].endswith("GIL")
    assert [item.target for item in found[1].by_throughput] == ["d"]
    text = verdict.render(found, 2)
    assert "### cpu:2 at 10 connections" in text and "1. b: 900 req/s — 1.9 cores used of 2" in text
    assert "3. c: p99 3.0 ms, 9 of 10 connections starved" in text


@pytest.mark.parametrize("cores", [0.0, 0.5, 1.0, 1.3, 2.0])
@pytest.mark.parametrize("rate", [1.0, 50.0, 500.0])
@pytest.mark.parametrize("work", ["cpu:2", "sleep:20", "cpu:2,sleep:20"])
def test_every_combination_gets_exactly_one_line(cores, rate, work):
    for traits in ({"threads"}, {"loop"}, {"processes"}, {"one-at-a-time"}, set()):
        text = reason_of(row("x", traits, work, 10, rate, cores, 30.0, 60.0))
        assert text and "\n" not in text


def test_the_recommendation_is_the_leanest_of_the_models_as_fast_as_the_best():
    rows = [
        row("threading", {"threads"}, "cpu:2", 10, 480, 1.0, 20.0, 40.0, pss_mib=10.0),
        row("forking", {"processes"}, "cpu:2", 10, 900, 1.9, 10.0, 30.0, processes=11, pss_mib=40.0),
        row("preforked", {"processes"}, "cpu:2", 10, 870, 1.9, 10.0, 30.0, processes=3, pss_mib=15.0),
        row("poll", {"loop"}, "cpu:2", 10, 990, 1.9, 10.0, 30.0, starved=3, pss_mib=5.0),  # starving: never chosen
    ]
    (found,) = verdict.verdicts(rows, cpus=2)
    pick = verdict.recommend(found)
    assert pick is not None and pick.target == "preforked"
    text = verdict.advice(pick, found, 2)
    assert text.startswith("preforked (870/s) — each exchange holds the CPU (~2 ms of computing): threads in one"
                           " interpreter share one core (the GIL)")
    assert "threading managed 480/s" in text
    rendered = verdict.render([found], 2)
    assert rendered.splitlines()[-1].startswith("- cpu:2 at 10 connections: use preforked (870/s)")


def test_a_waiting_exchange_recommends_threads_in_one_process_when_they_keep_up():
    rows = [
        row("iterative", {"one-at-a-time"}, "sleep:20", 10, 48, 0.02, 200.0, 210.0, pss_mib=9.0),
        row("threading", {"threads"}, "sleep:20", 10, 470, 0.1, 21.0, 25.0, pss_mib=10.0),
        row("forking", {"processes"}, "sleep:20", 10, 490, 0.2, 21.0, 25.0, processes=11, pss_mib=40.0),
    ]
    (found,) = verdict.verdicts(rows, cpus=2)
    pick = verdict.recommend(found)
    assert pick is not None and pick.target == "threading"
    assert "one thread per connection overlaps the waits" in verdict.advice(pick, found, 2)


def test_every_concurrency_gets_a_verdict_when_asked_and_the_spec_can_come_from_elsewhere():
    rows = [row("a", {"threads"}, "cpu:2", connections, 100.0 * connections, 1.0, 2.0, 3.0) for connections in (1, 10)]
    found = verdict.verdicts(rows, cpus=2, spec_of=lambda _: verdict.WorkSpec(sleep_ms=5.0), every_concurrency=True)
    assert [(item.work, item.connections) for item in found] == [("sleep:5", 1), ("sleep:5", 10)]
