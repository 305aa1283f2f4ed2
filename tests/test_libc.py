"""framework.libc: the C library's fork, malloc_trim and prctl, made from _ctypes alone."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys

from framework import libc
from tests.support import child_env

PR_SET_PDEATHSIG = 1
PR_GET_PDEATHSIG = 2


def test_the_functions_are_found_in_this_c_library():
    assert libc.fork is not None and libc.malloc_trim is not None and libc.prctl is not None


def test_a_failed_call_leaves_its_errno():
    assert libc.prctl is not None
    assert libc.prctl(-1, 0, 0, 0, 0) == -1
    assert libc.get_errno() == errno.EINVAL


def test_prctl_takes_its_arguments_as_the_kernel_reads_them():
    # Set in a process of its own (the parent-death signal is this one's to keep), read back
    # through ctypes, the outside judge.
    script = ("import ctypes, signal; from framework import libc\n"
              f"assert libc.prctl({PR_SET_PDEATHSIG}, int(signal.SIGTERM), 0, 0, 0) == 0\n"
              "got = ctypes.c_int(0)\n"
              f"assert ctypes.CDLL(None).prctl({PR_GET_PDEATHSIG}, ctypes.byref(got), 0, 0, 0) == 0\n"
              "print(got.value)")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                          env=child_env(), check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(int(signal.SIGTERM))


def test_malloc_trim_answers_whether_it_released_anything():
    assert libc.malloc_trim is not None
    assert libc.malloc_trim(0) in (0, 1)


def test_fork_makes_a_child_that_holds_the_interpreter():
    assert libc.fork is not None
    read_end, write_end = os.pipe()
    pid = libc.fork()
    if pid == 0:  # the child runs Python at once: it owns the interpreter lock it woke with
        try:
            os.write(write_end, str(os.getpid()).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    try:
        with os.fdopen(read_end, "rb") as pipe:
            assert pipe.read() == str(pid).encode()
    finally:
        _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_loading_it_loads_neither_ctypes_nor_struct():
    script = "import sys, framework.libc; print(sorted(m for m in ('ctypes', 'struct', '_struct') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-S", "-c", script], capture_output=True, text=True, timeout=60,
                          env=child_env(), check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
