"""The comparison lab: ``forkthread bench WORKLOAD`` measures what each concurrency model costs.

Servers run as real processes; load comes from separate client processes;
server CPU is charged to the whole process tree (reaped children included).
Modules, one job each: :mod:`~framework.bench.cli` (the sub-command),
:mod:`~framework.bench.config` (run settings), :mod:`~framework.bench.machine`
(what the machine is), :mod:`~framework.bench.procfs` (reading ``/proc``),
:mod:`~framework.bench.processes` (a server under test),
:mod:`~framework.bench.loadgen` and :mod:`~framework.bench.clients` (load),
:mod:`~framework.bench.wrk` (the wrk client), :mod:`~framework.bench.targets`
and :mod:`~framework.bench.peers` (what is measured; the peers themselves in
:mod:`~framework.bench.socketserver_peer`, :mod:`~framework.bench.peer_servers`
and :mod:`~framework.bench.wsgi_static`),
:mod:`~framework.bench.session` (what every workload shares),
:mod:`~framework.bench.workloads` (stevens, echo-rr, http, idle),
:mod:`~framework.bench.report` and :mod:`~framework.bench.plots` (output).
"""
