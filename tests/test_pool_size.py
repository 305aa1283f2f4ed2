"""A pool's default size: a poll worker per CPU the server may use; other workers, one per CPU of the machine."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import pytest

from framework.strategies import STRATEGIES
from framework.strategies.base import StrategyOptions, default_workers
from tests.support import proc_children, wait_for

pytestmark = pytest.mark.only_strategies("preforked")


@contextlib.contextmanager
def on_one_cpu() -> Iterator[None]:
    """This process (and what it starts meanwhile) on one of its CPUs, as ``taskset`` would place a server."""
    usable = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(usable)})
    try:
        yield
    finally:
        os.sched_setaffinity(0, usable)


def test_poll_workers_follow_the_usable_cpus_other_workers_the_machines():
    with on_one_cpu():
        assert default_workers("poll") == 1
        assert StrategyOptions(worker="poll").pool_size() == 1
        assert default_workers("iterative") == default_workers("threads") == (os.cpu_count() or 1)
        assert StrategyOptions(worker="iterative").pool_size() == (os.cpu_count() or 1)
    assert default_workers("poll") == len(os.sched_getaffinity(0))
    assert StrategyOptions(worker="poll", workers=3).pool_size() == 3  # given is given


@pytest.mark.parametrize("kind", ["poll", "iterative"])
def test_a_pinned_pool_forks_the_default_number_of_workers(serve, kind):
    if kind == "poll" and "poll" not in STRATEGIES:
        pytest.skip("--worker poll needs the poll strategy")
    with on_one_cpu():
        server = serve("echo", "--worker", kind, strategy="preforked")
    expected = 1 if kind == "poll" else (os.cpu_count() or 1)
    assert wait_for(lambda: len(proc_children(server.pid)) == expected, timeout=30)
    with server.connect() as sock:  # and it serves
        sock.sendall(b"ping\n")
        assert sock.recv(100) == b"ping\n"
