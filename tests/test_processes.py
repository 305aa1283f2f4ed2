"""Fork hygiene: the direct fork runs what os.fork() runs, less the lock repairs a one-thread process needs not.

Each scenario runs in a fresh interpreter (hooks given to
``os.register_at_fork`` cannot be taken back, so none is registered in the
test process), with this checkout on its import path; the forking server
itself is checked black-box with a user's at-fork hook.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from framework import subinterpreters
from framework.processes import fork
from tests.support import ServerProcess, child_env, recv_all

#: Run in every scenario first: two hooks of each kind, recording into EVENTS.
PRELUDE = """
import gc, json, os, random, signal, sys, threading, time
from framework.processes import DirectFork, exit_child, fork

EVENTS = []
for n in (1, 2):
    os.register_at_fork(before=lambda n=n: EVENTS.append(f"before-{n}"),
                        after_in_parent=lambda n=n: EVENTS.append(f"parent-{n}"),
                        after_in_child=lambda n=n: EVENTS.append(f"child-{n}"))
DIRECT = DirectFork.find()

def fork_and_report(direct, report):
    '''Fork; the child sends report() as JSON and exits; return (parent's events, child's report).'''
    r, w = os.pipe()
    forked = fork(direct=direct)
    if forked.pid == 0:
        forked.release_signals()
        os.write(w, json.dumps(report()).encode())
        exit_child(0)
    os.close(w)
    with os.fdopen(r, "rb") as pipe:
        child = json.loads(pipe.read())
    os.waitpid(forked.pid, 0)
    return list(EVENTS), child
"""


def run_scenario(body: str, logged: int = 0) -> dict[str, object]:
    """Run PRELUDE + *body* in a new interpreter; *body* prints one JSON object, returned here.

    Standard error must hold exactly *logged* failed-hook reports, and no other traceback.
    """
    script = PRELUDE + textwrap.dedent(body)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                          env=child_env(), check=False)
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("Traceback") == done.stderr.count("at-fork hook") == logged, done.stderr
    result: dict[str, object] = json.loads(done.stdout)
    return result


@pytest.mark.parametrize("how", ["direct", "os.fork"])
def test_every_registered_hook_runs_in_cpython_order(how):
    """Before hooks last-registered first, then the parent's or the child's in order: as os.fork() does."""
    result = run_scenario(f"""
        assert DIRECT is not None
        limbo = threading._active_limbo_lock
        parent, child = fork_and_report(DIRECT if {how!r} == "direct" else None, lambda: {{
            "events": EVENTS, "threading_hook_ran": threading._active_limbo_lock is not limbo,
            "random": random.random()}})
        print(json.dumps({{"parent": parent, "child": child, "random": random.random()}}))
    """)
    assert result["parent"] == ["before-2", "before-1", "parent-1", "parent-2"]
    child = result["child"]
    assert isinstance(child, dict)
    assert child["events"] == ["before-2", "before-1", "child-1", "child-2"]
    # random's reseed is an ordinary hook: it runs either way.
    assert child["random"] != result["random"]
    # threading's lock repair is the one difference: skipped by the direct fork only.
    assert child["threading_hook_ran"] is (how == "os.fork")


def test_a_second_thread_means_os_fork():
    """With another thread alive its locks may be held: the lock repairs must run, so os.fork() is used."""
    result = run_scenario("""
        release = threading.Event()
        helper = threading.Thread(target=release.wait)
        helper.start()
        limbo = threading._active_limbo_lock
        parent, child = fork_and_report(DIRECT, lambda: {
            "threading_hook_ran": threading._active_limbo_lock is not limbo,
            "threads": threading.active_count()})
        release.set()
        helper.join()
        # join() returns before the kernel has removed the thread: give it time to go.
        deadline = time.monotonic() + 30
        while not DIRECT.one_thread() and time.monotonic() < deadline:
            time.sleep(0.01)
        print(json.dumps({"one_thread_then": DIRECT.one_thread(), "child": child}))
    """)
    assert result["child"] == {"threading_hook_ran": True, "threads": 1}
    assert result["one_thread_then"] is True  # the helper gone, the direct fork is back


def test_a_frozen_heap_hides_the_hook_lists_so_os_fork_is_used():
    """gc.get_referrers() cannot see a frozen heap: find() then gives up rather than guess."""
    result = run_scenario("""
        gc.freeze()
        print(json.dumps({"found": DirectFork.find() is not None}))
    """)
    assert result == {"found": False}


def test_no_signal_caught_in_the_parent_is_handled_in_a_child():
    """Under a storm of SIGALRM, a child never runs the parent's handler for a signal caught before the fork.

    os.fork() clears such signals in the child; the direct fork holds every
    signal across the call and lets any handler already due run first.
    """
    result = run_scenario("""
        assert DIRECT is not None
        r, w = os.pipe()
        os.set_blocking(w, False)
        def note(signum, frame):
            try:
                os.write(w, b"%d\\n" % os.getpid())
            except BlockingIOError:
                pass
        signal.signal(signal.SIGALRM, note)
        signal.setitimer(signal.ITIMER_REAL, 0.0001, 0.0001)
        children = []
        for _ in range(200):
            forked = fork(direct=DIRECT)
            if forked.pid == 0:
                forked.release_signals()
                sum(range(1000))  # bytecode enough for a leaked handler to run
                os._exit(0)
            children.append(forked.pid)
            os.waitpid(forked.pid, 0)
        signal.setitimer(signal.ITIMER_REAL, 0)
        os.close(w)
        with os.fdopen(r, "rb") as pipe:
            pids = {int(line) for line in pipe.read().split()}
        print(json.dumps({"parent": os.getpid(), "pids": sorted(pids)}))
    """)
    assert result["pids"] == [result["parent"]]  # the handler ran, and in the parent only


def test_the_mask_is_restored_when_the_fork_raises():
    """An audit hook (or a signal handler due) may raise before any process is made: no signal stays held."""
    result = run_scenario("""
        def refuse(event, args):
            if event == "os.fork":
                raise RuntimeError("no forks here")  # not an OSError
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, [])
        sys.addaudithook(refuse)
        try:
            fork(direct=DIRECT)
        except RuntimeError as exc:
            raised = str(exc)
        print(json.dumps({"raised": raised, "restored": signal.pthread_sigmask(signal.SIG_BLOCK, []) == mask}))
    """)
    assert result == {"raised": "no forks here", "restored": True}


def test_no_process_made_is_oserror_after_the_parent_hooks():
    """fork() failing (EAGAIN) raises in the parent, as os.fork() does, after the parent hooks ran."""
    result = run_scenario("""
        import errno
        failing = DirectFork(lambda: -1, lambda: errno.EAGAIN, DIRECT.lists, DIRECT.skipped)
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, [])
        try:
            fork(direct=failing)
        except BlockingIOError as exc:
            raised = exc.errno == errno.EAGAIN
        print(json.dumps({"raised": raised, "events": EVENTS,
                          "restored": signal.pthread_sigmask(signal.SIG_BLOCK, []) == mask}))
    """)
    assert result == {"raised": True, "events": ["before-2", "before-1", "parent-1", "parent-2"], "restored": True}


def test_hooks_that_raise_are_reported_and_the_fork_goes_on():
    """A hook's exception, SystemExit included, is logged; the child goes on as the child, the parent as the parent."""
    result = run_scenario("""
        import logging
        logging.basicConfig(stream=sys.stderr)
        def leave():
            raise SystemExit(3)
        def fail():
            raise ValueError("parent hook")
        os.register_at_fork(after_in_child=leave, after_in_parent=fail)
        parent, child = fork_and_report(DIRECT, lambda: {"pid": os.getpid()})
        print(json.dumps({"child_reported": child["pid"] != os.getpid(), "parent": parent}))
    """, logged=2)
    assert result == {"child_reported": True, "parent": ["before-2", "before-1", "parent-1", "parent-2"]}


def test_hooks_registered_meanwhile_unhashable_ones_and_threads_a_hook_starts():
    """A before hook registering a child hook, a hook that cannot be hashed, a before hook starting a thread."""
    result = run_scenario("""
        class Unhashable:
            def __eq__(self, other):
                return self is other
            def __call__(self):
                EVENTS.append("unhashable")
        os.register_at_fork(after_in_child=Unhashable())
        def register_more():
            if not any(event == "late" for event in EVENTS):
                os.register_at_fork(after_in_child=lambda: EVENTS.append("late"))
        os.register_at_fork(before=register_more)
        limbo = threading._active_limbo_lock
        _, quiet = fork_and_report(DIRECT, lambda: {
            "events": EVENTS, "threading_hook_ran": threading._active_limbo_lock is not limbo})
        release = threading.Event()
        helpers = []
        def start_a_thread():
            if not helpers:
                helpers.append(threading.Thread(target=release.wait))
                helpers[0].start()
        os.register_at_fork(before=start_a_thread)
        _, threaded = fork_and_report(DIRECT, lambda: {
            "threading_hook_ran": threading._active_limbo_lock is not limbo, "threads": threading.active_count()})
        release.set()
        helpers[0].join()
        print(json.dumps({"quiet": quiet, "threaded": threaded}))
    """)
    quiet = result["quiet"]
    assert isinstance(quiet, dict)
    assert quiet["events"][-3:] == ["child-2", "unhashable", "late"]
    assert quiet["threading_hook_ran"] is False
    # A thread appeared after the check: nothing is skipped, the child is repaired as os.fork() would.
    assert result["threaded"] == {"threading_hook_ran": True, "threads": 1}


SERVER_MODULE = """
import os
import socketserver
import threading

from framework.server import Server

#: Filled in each forked child by the hook below.
HOOKED = []
os.register_at_fork(after_in_child=lambda: HOOKED.append(os.getpid()))
#: Replaced in a child by os.fork() (threading's lock repair), kept by the direct fork.
LIMBO = threading._active_limbo_lock


class SayPid(socketserver.BaseRequestHandler):
    def handle(self):
        direct = threading._active_limbo_lock is LIMBO
        self.request.sendall(("%d %s %s" % (os.getpid(), direct, HOOKED)).encode())


class HookedServer(Server):
    handler = SayPid
"""


def test_a_forking_servers_children_run_the_users_at_fork_hooks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A user's library that resets state in each child (a pool, a seed) keeps working under ``forking``."""
    (tmp_path / "hooked.py").write_text(SERVER_MODULE)
    monkeypatch.chdir(tmp_path)
    server = ServerProcess("hooked:HookedServer", strategy="forking")
    try:
        pids = set()
        for _ in range(3):
            with server.connect() as sock:
                pid, direct, hooked = recv_all(sock).decode().split(" ", 2)
            assert hooked == f"[{pid}]"  # the hook ran once, in this very child
            assert direct == "True"  # made by the direct fork
            pids.add(pid)
        assert len(pids) == 3
        assert server.stop() == 0
        assert "Traceback" not in server.log()
    finally:
        server.kill()
        server.close()


def test_a_leaving_child_writes_what_is_held_and_nothing_dropped():
    # exit_child(): a registered sink writes its held lines, one dropped meanwhile is not
    # called, and a buffering logging handler is flushed (a StreamHandler flushed already).
    result = run_scenario("""
        import logging, logging.handlers
        from framework.processes import at_child_exit

        r, w = os.pipe()

        class Sink:
            def __init__(self, name):
                self.name = name
            def leave(self):
                os.write(w, f"{self.name} left;".encode())

        kept, dropped = Sink("kept"), Sink("dropped")
        at_child_exit(kept)
        at_child_exit(dropped)
        del dropped
        target = logging.StreamHandler(os.fdopen(w, "w", closefd=False))
        held = logging.handlers.MemoryHandler(100, flushLevel=logging.CRITICAL, target=target)
        logger = logging.getLogger("forkthread")
        logger.addHandler(held)
        logger.addHandler(logging.StreamHandler(os.fdopen(w, "w", closefd=False)))
        forked = fork()
        if forked.pid == 0:
            forked.release_signals()
            logger.warning("a line")
            exit_child(0)
        os.close(w)
        with os.fdopen(r) as pipe:
            written = pipe.read()
        os.waitpid(forked.pid, 0)
        logger.removeHandler(held)
        print(json.dumps({"written": written}))
    """)
    written = str(result["written"])
    assert "kept left;" in written and "dropped" not in written
    assert written.count("a line") == 2  # the StreamHandler's, then the MemoryHandler's, at the exit


def test_the_free_c_heap_goes_back_to_the_kernel():
    # glibc's malloc_trim(0) through ctypes: the pages of a freed block leave the resident set.
    result = run_scenario("""
        from framework.processes import release_free_heap

        def resident_kb():
            with open("/proc/self/status") as status:
                return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))

        release_free_heap()
        keep = [bytearray(200_000) for _ in range(50)]  # over malloc's mmap threshold: rises it
        for block in keep:
            block[::4096] = b"x" * len(block[::4096])
        small = [bytes(3000) for _ in range(20_000)]  # ~60 MB in the brk heap, below the threshold
        pin = bytes(3000)  # above them: their free space is not at the heap's top, which free() trims itself
        del keep
        before = resident_kb()
        del small
        after_free = resident_kb()
        released = release_free_heap()
        print(json.dumps({"pinned": len(pin), "released": released, "before": before, "after_free": after_free,
                          "after_trim": resident_kb()}))
    """)
    assert result["released"] is True
    assert int(result["after_trim"]) < int(result["after_free"]) - 10_000, result


def test_the_core_does_not_import_random_platform_or_resource():
    """Importing random registers its reseed as an at-fork hook, run in every child a forking server makes.

    The core imports it (and tempfile, which imports it) only where a pre-forked pool needs it.
    ``platform`` and ``resource`` are imported only by the functions that need them: a module
    loaded is heap, and for ``resource`` five mappings, that every fork copies.
    ``-S``: without site-packages, whose ``.pth`` files may import them themselves.
    """
    script = textwrap.dedent("""
        import importlib, pkgutil, sys
        # Every module below but the lab and the test harness (servers never import them).
        TOOLS = ("framework.bench", "framework.harness", "framework.pytest_plugin")
        def load(package):
            for module in pkgutil.iter_modules(package.__path__, package.__name__ + "."):
                if module.name in TOOLS or module.name.endswith(".__main__"):
                    continue
                loaded = importlib.import_module(module.name)
                if module.ispkg:
                    load(loaded)
        load(importlib.import_module("framework"))
        load(importlib.import_module("servers"))
        print(sorted(name for name in ("random", "tempfile", "platform", "resource") if name in sys.modules))
    """)
    done = subprocess.run([sys.executable, "-S", "-c", script], capture_output=True, text=True, timeout=60,
                          env=child_env(), check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize("name", ["forking", "preforked"])
def test_a_serving_process_forks_with_one_thread(name):
    """``forkthread serve`` never forks while it has threads (Python 3.12+ warns then: made an error here).

    A forking parent and a pre-forked master serve no connection themselves,
    so no thread of the framework's runs in them when they fork.
    """
    env = child_env(PYTHONWARNINGS="error:This process (pid=:DeprecationWarning")
    server = ServerProcess("echo", strategy=name, env=env)
    try:
        for _ in range(3):
            with server.connect() as sock:
                sock.sendall(b"one thread\n")
                sock.shutdown(socket.SHUT_WR)
                assert recv_all(sock) == b"one thread\n"
        assert server.stop() == 0
        assert "Warning" not in server.log()
    finally:
        server.kill()
        server.close()


@pytest.mark.skipif(subinterpreters.unavailable() is not None, reason="no sub-interpreters on this Python")
def test_no_fork_while_a_sub_interpreter_exists():
    """A child forked while a sub-interpreter exists would abort (CPython issue 139759): refused, clearly."""
    interpreter = subinterpreters.Interpreter()
    try:
        assert subinterpreters.exist()
        with pytest.raises(RuntimeError, match="139759"):
            fork()
    finally:
        interpreter.close()
    assert not subinterpreters.exist()
