"""The pytest plugin: your server as a real process, under every concurrency strategy, checked at the end.

Installed with the package (entry point ``pytest11``).  It costs nothing
until a test asks for ``forkthread_server``: loading it imports pytest and
``os`` only, adds one option and one marker; the harness
(:mod:`framework.harness`), the subreaper and the strategy matrix come
with the first test that uses the fixture (hypothesis's entry-point plugin
is the model).

* ``forkthread_server(target, **options)`` runs ``forkthread serve target``
  with the options by their long names and returns a
  :class:`~framework.harness.servers.ServerHandle`.
* A test that uses it runs once per strategy (``test_x[forking]``):
  ``--forkthread-strategies LIST``, else ``FORKTHREAD_STRATEGIES``, else
  every registered strategy this Python can run; one that cannot carry the
  server (a ``socketserver`` handler under poll) skips, with the
  framework's reason.
* When the test ends, each server is stopped with SIGTERM and must exit 0
  within its graceful timeout; nothing of its process tree may be left; its
  log may hold no traceback or error unless the test is marked
  ``forkthread_expect_errors`` (or starts it with ``expect_errors=True``);
  a Unix socket file must be gone.  A broken check fails the test itself.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Generator, Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from framework.harness.servers import ServerGroup, ServerHandle

#: The variable tox sets per environment (the factor scheme of the project's own tox.ini).
STRATEGIES_VARIABLE = "FORKTHREAD_STRATEGIES"
#: The marker that lets a test's servers log errors (a test that provokes them on purpose).
EXPECT_ERRORS = "forkthread_expect_errors"
#: The fixture that carries the test's strategy, parametrized by :func:`pytest_generate_tests`.
STRATEGY_FIXTURE = "forkthread_strategy"

_GROUP: pytest.StashKey[ServerGroup] = pytest.StashKey()


def pytest_addoption(parser: pytest.Parser) -> None:
    """``--forkthread-strategies LIST``."""
    group = parser.getgroup("forkthread", "forkthread servers under every concurrency strategy")
    group.addoption("--forkthread-strategies", dest="forkthread_strategies", metavar="LIST", default=None,
                    help="comma-separated strategies for tests using forkthread_server"
                         f" (default: ${STRATEGIES_VARIABLE}, else every strategy this Python can run)")


def pytest_configure(config: pytest.Config) -> None:
    """Declare the marker (``--strict-markers`` accepts it); refuse unknown strategies before collecting."""
    config.addinivalue_line(
        "markers", f"{EXPECT_ERRORS}: the test's forkthread servers may log errors and tracebacks")
    if _chosen(config):
        selected_strategies(config)  # a usage error now, one line, not a collection error per test file


def _chosen(config: pytest.Config) -> list[str]:
    """The strategies named by ``--forkthread-strategies``, else by FORKTHREAD_STRATEGIES (empty: none named)."""
    chosen = config.getoption("forkthread_strategies") or os.environ.get(STRATEGIES_VARIABLE, "")
    return [name.strip() for name in chosen.split(",") if name.strip()]


def selected_strategies(config: pytest.Config) -> list[str]:
    """The strategies to run: ``--forkthread-strategies``, else ``FORKTHREAD_STRATEGIES``, else every one
    this Python runs (``interpreters`` from Python 3.13 on).

    An unknown name is a usage error, said once, before any test runs.
    """
    from framework.strategies import STRATEGIES, available_strategies

    names = _chosen(config)
    if not names:
        return available_strategies()
    unknown = [name for name in names if name not in STRATEGIES]
    if unknown:
        raise pytest.UsageError(f"unknown strategies {', '.join(unknown)} in --forkthread-strategies or"
                                f" {STRATEGIES_VARIABLE} (choose from {', '.join(STRATEGIES)})")
    return names


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Run each test that uses ``forkthread_server`` once per selected strategy, named in its id."""
    if "forkthread_server" not in metafunc.fixturenames:
        return
    if any(STRATEGY_FIXTURE in marker.args[0] for marker in metafunc.definition.iter_markers("parametrize")):
        return  # the test chose its own strategies
    # Unasked, a strategy this Python cannot run is left out; asked for, it skips with the reason.
    names = selected_strategies(metafunc.config)
    metafunc.parametrize(STRATEGY_FIXTURE, names, ids=names)


@pytest.fixture
def forkthread_strategy(request: pytest.FixtureRequest) -> str:
    """The strategy this run of the test uses (the id in its brackets)."""
    param: str | None = getattr(request, "param", None)
    return param or selected_strategies(request.config)[0]


@pytest.fixture
def forkthread_server(request: pytest.FixtureRequest,
                      forkthread_strategy: str) -> Iterator[Callable[..., ServerHandle]]:
    """``forkthread_server(target, **options)``: start a server under this test's strategy; see the module docstring.

    *target* is a :class:`~framework.server.Server` subclass or ``"module:Class"``;
    *options* are ``forkthread serve`` options by long name (``workers=2``,
    ``max_connections=3``, ``tls_cert=path``, ``nodelay=True``), plus
    ``bind="unix"`` (a fresh Unix socket path) and ``expect_errors=True``.
    """
    from framework.harness.process import ServerStartError
    from framework.harness.reaper import become_subreaper, is_subreaper
    from framework.harness.servers import ServerGroup, StrategyRefused

    # While the test runs, a server's orphans are adopted here, where the checks see them;
    # afterwards this process is as it was (a test without the fixture sees no subreaper).
    adopting = not is_subreaper()
    if adopting:
        become_subreaper()
    group = ServerGroup(forkthread_strategy, expect_errors=request.node.get_closest_marker(EXPECT_ERRORS) is not None)
    request.node.stash[_GROUP] = group

    def start(target: Any, **options: Any) -> ServerHandle:
        try:
            return group.start(target, **options)
        except StrategyRefused as exc:
            reason, skip = str(exc), True
        except ServerStartError as exc:
            reason, skip = str(exc), False
        # Outside the except clauses: the reason is the whole story, without our traceback chained to it.
        if skip:
            pytest.skip(reason)
        pytest.fail(reason, pytrace=False)

    yield start
    # Normally finished at the end of the test's call (pytest_runtest_call); here when the call never ran.
    try:
        problems = group.finish()
    finally:
        if adopting:
            become_subreaper(False)
    if problems:
        pytest.fail("\n\n".join(problems), pytrace=False)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, object, object]:
    """Stop and check the test's servers as part of the test, so a broken check fails the test itself."""
    try:
        result = yield
    except BaseException:
        group = item.stash.get(_GROUP, None)
        if group is not None and (problems := group.finish()):
            item.add_report_section("call", "forkthread", "\n\n".join(problems))
        raise
    group = item.stash.get(_GROUP, None)
    if group is not None and (problems := group.finish()):
        pytest.fail("\n\n".join(problems), pytrace=False)
    return result
