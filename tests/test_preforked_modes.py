"""The conformance matrix again, under every preforked accept mode x worker kind.

Each test here delegates to the one of the same name in test_conformance.py,
with ``serve`` bound to ``--strategy preforked --accept MODE --worker KIND``.
Worker kinds whose inner strategy is not registered are skipped.
"""

from __future__ import annotations

import pytest

from framework.strategies import STRATEGIES
from framework.strategies.preforked import WORKER_KINDS
from tests import test_conformance as conformance
from tests.support import wait_for

ACCEPT_MODES = ["shared", "lock", "reuseport", "passfd"]

pytestmark = pytest.mark.only_strategies("preforked")


# The iterative workers are the quick core; threads and poll workers repeat
# the matrix over their inner strategies (marked slow: deselect with -m "not slow").
@pytest.fixture(params=[
    pytest.param((mode, kind), id=f"{mode}-{kind}", marks=() if kind == "iterative" else pytest.mark.slow)
    for kind in WORKER_KINDS for mode in ACCEPT_MODES
])
def variant(request: pytest.FixtureRequest) -> tuple[str, str]:
    mode, kind = request.param
    if WORKER_KINDS[kind] not in STRATEGIES:
        pytest.skip(f"--worker {kind} needs the {WORKER_KINDS[kind]} strategy")
    return mode, kind


@pytest.fixture
def serve_variant(serve, variant):
    mode, kind = variant

    def start(server, *args, **kwargs):
        process = serve(server, *args, "--workers", "2", "--accept", mode, "--worker", kind, **kwargs)
        # "listening on" comes before the master forks; tests that take a baseline
        # of the master's descriptors want the pool complete first.
        assert wait_for(lambda: process.log().count(") ready") >= 2, timeout=20), process.log()
        return process

    return start


@pytest.mark.parametrize("bind", ["127.0.0.1:0", "[::1]:0", "unix"])
def test_echo_4mib_byte_exact(serve_variant, variant, bind, tmp_path):
    if bind == "unix" and variant[0] == "reuseport":
        pytest.skip("SO_REUSEPORT is for TCP and UDP (see test_reuseport_refuses_unix_address)")
    conformance.test_echo_4mib_byte_exact(serve_variant, "preforked", bind, tmp_path)


def test_echo_empty_transfer(serve_variant):
    conformance.test_echo_empty_transfer(serve_variant, "preforked")


def test_echo_single_bytes_with_nul_cr_lf(serve_variant):
    conformance.test_echo_single_bytes_with_nul_cr_lf(serve_variant, "preforked")


def test_daytime_concurrent_clients(serve_variant):
    conformance.test_daytime_concurrent_clients(serve_variant, "preforked")


def test_sigterm_stops_promptly_with_status_0(serve_variant):
    conformance.test_sigterm_stops_promptly_with_status_0(serve_variant, "preforked")


def test_sigint_stops_with_status_0(serve_variant):
    conformance.test_sigint_stops_with_status_0(serve_variant, "preforked")


def test_sigusr1_logs_one_status_line(serve_variant):
    conformance.test_sigusr1_logs_one_status_line(serve_variant, "preforked")


def test_sigusr1_during_transfer_loses_nothing(serve_variant):
    conformance.test_sigusr1_during_transfer_loses_nothing(serve_variant, "preforked")


def test_reset_clients_leave_no_descriptors_or_zombies(serve_variant):
    conformance.test_reset_clients_leave_no_descriptors_or_zombies(serve_variant, "preforked")
