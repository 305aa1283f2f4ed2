"""The lab's CPU clock: a cgroup per server counts its whole tree to the microsecond, and no process outlives it."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from framework.bench import cgroup, procfs
from framework.bench.cli import cpu_clock_setting
from framework.bench.config import FULL, BenchConfig
from framework.bench.processes import RunningServer, ServerCommand
from tests.support import process_state

#: A "server" that spends CPU where /proc's sample of a live tree cannot see it exactly: in a
#: child it reaps, in a thread that ends, and in a grandchild it orphans (which outlives it).
#: It prints the orphan's pid and "ready", then waits for SIGTERM.
TREE = r"""
import os, signal, sys, threading, time

def burn(seconds):
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass

child = os.fork()
if child == 0:
    burn(0.15)
    os._exit(0)
os.waitpid(child, 0)
thread = threading.Thread(target=burn, args=(0.15,))
thread.start()
thread.join()
read_end, write_end = os.pipe()
middle = os.fork()
if middle == 0:
    if os.fork() == 0:  # the orphan: it sleeps on after the server is gone
        os.write(write_end, b"%d\n" % os.getpid())
        time.sleep(60)
        os._exit(0)
    os._exit(0)
os.waitpid(middle, 0)
orphan = int(os.read(read_end, 32))
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
print(f"orphan {orphan} ready", flush=True)
while True:
    time.sleep(1)
"""

READY = re.compile(r"orphan (?P<port>\d+) ready")
#: How far /proc's figure may run ahead of the cgroup's for the same tree: five clock ticks.
CLOCK_AGREEMENT = 5 / os.sysconf("SC_CLK_TCK")


def _own_group_or_skip() -> None:
    if not cgroup.available():
        # Not a program .ci/run installs: without a cgroup v2 the lab reads /proc, as tested below.
        pytest.skip("no cgroup v2 can be made here (not root, or no writable cgroup2 mount)")


def _alive(pid: int) -> bool:
    return process_state(pid) not in (None, "Z")


def test_a_servers_cgroup_counts_its_reaped_children_ended_threads_and_orphans():
    _own_group_or_skip()
    server = RunningServer(ServerCommand([sys.executable, "-c", TREE], ready_pattern=READY))
    try:
        assert server.cpu_clock == "cgroup"
        group = server.group
        assert group is not None and server.pid in group.pids()
        orphan = server.port  # the READY pattern's number: the orphan's pid
        assert orphan in group.pids()
        # /proc is read first (the tree may still run meanwhile).  The two clocks agree within a
        # few ticks, in either direction: /proc rounds each task to a clock tick, and the
        # cgroup's cpu.stat is summed lazily (CI saw /proc 0.63 s against the cgroup's 0.61).
        from_proc = procfs.tree_cpu_seconds(server.pid)
        sample = server.cpu_seconds()
        # The reaped child and the ended thread, each 0.15 s, counted exactly in a live sample.
        assert sample >= 0.3
        assert from_proc <= sample + CLOCK_AGREEMENT, (from_proc, sample)
    finally:
        stopped = server.stop()
    assert stopped.status == 0 and not stopped.killed
    assert stopped.cpu_seconds >= sample
    # The orphan (no longer in the server's tree) ended with its server, and the group is gone.
    deadline = time.monotonic() + 10
    while _alive(orphan) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not _alive(orphan)
    assert not os.path.exists(group.directory)


def test_without_a_cgroup_the_lab_reads_proc():
    server = RunningServer(ServerCommand([sys.executable, "-c", TREE], ready_pattern=READY), own_cgroup=False)
    orphan = server.port
    try:
        assert server.group is None and server.cpu_clock == "/proc"
        assert server.cpu_seconds() >= 0.0
        stopped = server.stop()
        assert stopped.status == 0
        assert stopped.cpu_seconds >= 0.3  # wait4: the reaped child and the thread, exactly
    finally:
        os.kill(orphan, signal.SIGKILL)  # no cgroup to end it with its server: ours to end


def test_the_unified_hierarchy_is_found_in_mountinfo(tmp_path: Path):
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(
        "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n"
        "33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct\n"
        "41 31 0:38 / /sys/fs/cgroup/unified rw,relatime shared:9 - cgroup2 cgroup2 rw\n")
    assert cgroup.unified_mount(str(mountinfo)) == "/sys/fs/cgroup/unified"
    mountinfo.write_text("31 23 0:28 / /sys/fs/cgroup rw - tmpfs tmpfs rw\nnot a mount line\n")
    assert cgroup.unified_mount(str(mountinfo)) is None
    assert cgroup.unified_mount(str(tmp_path / "absent")) is None


def test_usage_is_read_from_cpu_stat(tmp_path: Path):
    (tmp_path / "cpu.stat").write_text("usage_usec 1234567\nuser_usec 1000000\nsystem_usec 234567\n")
    assert cgroup.read_usage_usec(str(tmp_path)) == 1234567
    (tmp_path / "cpu.stat").write_text("user_usec 1\n")
    with pytest.raises(ValueError, match="usage_usec"):
        cgroup.read_usage_usec(str(tmp_path))


def test_the_results_say_which_clock_measured_them(tmp_path: Path):
    config = BenchConfig(workloads=["stevens"], out=tmp_path, scale=FULL)
    setting = cpu_clock_setting(config)
    if cgroup.available():
        assert setting.startswith("cgroup") and not config.notes and config.cgroups
    else:
        assert setting.startswith("/proc") and "clock ticks" in config.notes[0] and not config.cgroups
    asked_for_proc = BenchConfig(workloads=["stevens"], out=tmp_path, scale=FULL, cgroups=False)
    assert cpu_clock_setting(asked_for_proc).startswith("/proc") and not asked_for_proc.cgroups


def test_cpu_clock_proc_runs_every_server_without_a_cgroup(tmp_path: Path):
    """``--cpu-clock proc`` measures the old way (to compare with results from before the cgroup clock)."""
    from framework.bench import session
    from framework.bench.cli import config_from_arguments
    from framework.bench.targets import Context
    from framework.cli import build_parser

    args = build_parser().parse_args(["bench", "stevens", "--cpu-clock", "proc", "--out", str(tmp_path)])
    config = config_from_arguments(args)
    assert not config.cgroups
    target = next(target for target in session.targets(config, Context(server="nbytes", protocol="nbytes"))
                  if target.name == "iterative")
    with session.start(config, target, Context(server="nbytes", protocol="nbytes")) as server:
        assert server.cpu_clock == "/proc"


def test_cpu_clock_cgroup_where_none_can_be_made_is_one_line_and_status_2(tmp_path: Path):
    if cgroup.available():
        pytest.skip("a cgroup can be made here: the refusal cannot be seen")
    result = subprocess.run([sys.executable, "-m", "framework", "bench", "stevens", "--quick", "--cpu-clock", "cgroup",
                             "--out", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "--cpu-clock cgroup" in result.stderr


def test_groups_of_labs_that_are_gone_are_swept_and_others_are_not():
    _own_group_or_skip()
    parent = cgroup.own_group(cgroup.unified_mount() or "")
    child = os.fork()
    if child == 0:
        os._exit(0)
    os.waitpid(child, 0)  # a PID no lab has any more
    stale = os.path.join(parent, f"{cgroup.PREFIX}{child}-1-server")
    mine = os.path.join(parent, f"{cgroup.PREFIX}{os.getpid()}-999-server")  # a running lab's
    os.mkdir(stale)
    os.mkdir(mine)
    try:
        group = cgroup.ServerGroup.create()
        assert group is not None
        group.remove()
        assert not os.path.exists(stale)
        assert os.path.exists(mine)
    finally:
        for directory in (stale, mine):
            if os.path.exists(directory):
                os.rmdir(directory)
