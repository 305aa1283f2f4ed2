"""The example project in docs/examples/adder: its own test suite passes, under each strategy, as its tox.ini runs it.

pytest runs there in a subprocess, on the project's own configuration (its
pyproject.toml), with the plugin as the installed entry point loads it
(``-p framework.pytest_plugin``: the same plugin where the package is not
installed).
"""

from __future__ import annotations

import re
import subprocess
import sys

from tests.support import ROOT, child_env

EXAMPLE = ROOT / "docs" / "examples" / "adder"


def test_the_example_projects_tests_pass(strategy):
    env = child_env(FORKTHREAD_STRATEGIES=strategy)  # what its tox.ini sets per environment
    env.pop("PYTEST_ADDOPTS", None)
    done = subprocess.run([sys.executable, "-m", "pytest", "-p", "framework.pytest_plugin", "-p", "no:cacheprovider",
                           "-q"], cwd=EXAMPLE, env=env, capture_output=True, text=True, timeout=600, check=False)
    report = done.stdout + done.stderr
    assert done.returncode == 0, report
    # 104 sans-I/O tests, and 4 that run the server: one skipped under iterative (one client at a time).
    expected = "107 passed, 1 skipped" if strategy == "iterative" else "108 passed"
    assert re.search(rf"^{expected} in ", report, re.MULTILINE), report
