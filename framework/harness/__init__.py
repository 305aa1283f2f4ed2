"""The test harness: servers run as real processes, and what they leave behind, found in ``/proc``.

The project's own tests and the pytest plugin (:mod:`framework.pytest_plugin`)
share it, one job a module: :mod:`~framework.harness.proctree` (reading a
process tree from ``/proc``), :mod:`~framework.harness.reaper` (a subreaper
that adopts and reaps what a server leaks), :mod:`~framework.harness.process`
(a ``forkthread serve`` process, started and stopped),
:mod:`~framework.harness.checks` (what a stopped server must not leave
behind), :mod:`~framework.harness.servers` (the servers one test starts,
by target and options, checked together) and
:mod:`~framework.harness.polling` (waiting for an event).
Standard library only; nothing here imports pytest, and no server imports
anything here.
"""
