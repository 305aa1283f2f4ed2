"""Fixtures shared by every test: the strategy matrix and leak-checked servers."""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from framework.harness.servers import ServerGroup
from tests.support import ServerProcess, become_subreaper, missing_requirement

# The plugin the package installs (entry point ``framework.pytest_plugin``), named here too so the
# suite has it where the package is not installed (PYTHONPATH=.); loaded once either way.
pytest_plugins = ("framework.pytest_plugin",)


def selected_strategies(config: pytest.Config) -> list[str]:
    """The plugin's selection (``--forkthread-strategies``, else FORKTHREAD_STRATEGIES, else all), for ``strategy``.

    Imported here, not at the top: pytest must load the plugin first (assertion rewriting).
    """
    from framework.pytest_plugin import selected_strategies as plugin_selection

    return plugin_selection(config)


TESTS = Path(__file__).resolve().parent

#: Test files of the comparison lab (framework/bench): by name, or anywhere under tests/lab/.
LAB_PREFIXES = ("test_bench_", "test_lab_")

#: FORKTHREAD_SUITE values: which test files are collected at all (unset: both).
SUITES = ("core", "lab")


def is_lab_file(path: Path) -> bool:
    """Whether *path* holds the lab's tests (they need the ``bench`` extra: matplotlib, gunicorn)."""
    return path.name.startswith(LAB_PREFIXES) or (path.parent.is_relative_to(TESTS)
                                                  and "lab" in path.parent.relative_to(TESTS).parts)


def selected_suite() -> str | None:
    """FORKTHREAD_SUITE: ``core`` (the six strategy environments), ``lab`` (tox -e lab) or unset (both)."""
    suite = os.environ.get("FORKTHREAD_SUITE", "").strip() or None
    if suite is not None and suite not in SUITES:
        raise pytest.UsageError(f"FORKTHREAD_SUITE must be one of {SUITES}, not {suite!r}")
    return suite


def pytest_configure(config: pytest.Config) -> None:
    become_subreaper()


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """Leave out the other suite's test files, unimported: the core environments have no matplotlib."""
    suite = selected_suite()
    if suite is None or not collection_path.name.startswith("test_") or collection_path.suffix != ".py":
        return None
    if is_lab_file(collection_path) != (suite == "lab"):
        return True
    return None


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "strategy" in metafunc.fixturenames:
        # Module scope, so a module-scoped fixture (one server per strategy for a whole
        # corpus) can take ``strategy`` too, and is then a matrix test like any other.
        metafunc.parametrize("strategy", selected_strategies(metafunc.config), scope="module")


def pytest_runtest_setup(item: pytest.Item) -> None:
    """``needs_tool(NAME, ...)``: skip when a program is missing, but fail under CI, which must have it."""
    missing = [name for marker in item.iter_markers("needs_tool") for name in marker.args
               if shutil.which(name) is None]
    if missing:
        missing_requirement(f"needs {', '.join(missing)} on PATH")


@pytest.fixture
def serve() -> Iterator[Callable[..., ServerProcess]]:
    """Start ``forkthread serve`` processes; at teardown stop them and prove nothing was left.

    Teardown sends SIGTERM, expects exit status 0, and then checks that no
    process the server created survives it (this test process is a
    subreaper, so orphans would be adopted here and seen).
    """
    group = ServerGroup()  # the plugin's: the same stop and leftover checks as forkthread_server's
    threads_before = set(threading.enumerate())

    def start(server: str, *args: str, **kwargs: object) -> ServerProcess:
        # Beyond the default 30 s graceful timeout: a slow stop fails on its status, not a hang.
        return group.add(ServerProcess(server, *args, **kwargs), stop_timeout=60)  # type: ignore[arg-type]

    yield start

    problems = group.finish()
    leaked_threads = set(threading.enumerate()) - threads_before
    if any(thread.is_alive() for thread in leaked_threads):
        problems.append(f"threads left behind: {leaked_threads}")
    if problems:
        pytest.fail("\n".join(problems))


#: A test that takes one of these runs once per strategy: the suite's own, or the plugin's.
MATRIX_FIXTURES = frozenset({"strategy", "forkthread_strategy"})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """With FORKTHREAD_MATRIX_ONLY set, keep only tests that run per strategy (:data:`MATRIX_FIXTURES`).

    tox sets it in every strategy environment but py3-iterative, so the
    strategy-independent tests (unit tests, the lab, the CLI) run once, not
    once per strategy.

    Tests marked ``only_strategies(NAME, ...)`` (a strategy's own tests: supervision of the
    pre-forked pool...) count as matrix tests, and run only when one of their strategies is selected.
    Tests from the lab's files are marked ``lab`` (``-m lab`` / ``-m "not lab"``).
    """
    selected = set(selected_strategies(config))
    matrix_only = bool(os.environ.get("FORKTHREAD_MATRIX_ONLY"))
    kept, dropped = [], []
    for item in items:
        if is_lab_file(Path(str(item.path))):
            item.add_marker(pytest.mark.lab)
        marker = item.get_closest_marker("only_strategies")
        if marker is not None:
            keep = bool(selected & set(marker.args))
        else:
            keep = not matrix_only or bool(MATRIX_FIXTURES & set(getattr(item, "fixturenames", ())))
        (kept if keep else dropped).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept
