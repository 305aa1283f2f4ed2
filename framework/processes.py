"""Fork hygiene, in one place: what every process this framework forks does before and after ``fork()``.

* **Before**: standard output and error are flushed (buffered text would
  otherwise be written twice, once by each process) and
  :data:`~framework.signals.SERVER_SIGNALS` are held (blocked) across the
  call, so a signal aimed at the child before it has its own handlers waits
  for them instead of being recorded by the parent's inherited handler and
  lost.
* **In the child**: descriptors it must not hold are closed, SIGCHLD goes back
  to its default (the parent's reaper must not run there), and once the
  child's own handlers are in place it calls :meth:`Forked.release_signals`.
* **Leaving**: a child never returns into the parent's code; it ends with
  :func:`exit_child`, which lets what was registered with :func:`at_child_exit`
  write its last lines (an access log's held lines), flushes logging and
  standard streams and calls ``os._exit``.
* **A direct fork** (:class:`DirectFork`, used where a child is made per
  connection): while the process has one thread, ``fork()`` straight from
  the C library, with every hook given to :func:`os.register_at_fork` run
  around it except the standard library's lock repairs, which only matter
  when another thread could hold a lock.  See the class for why and what
  it saves.
* **Threads.**  ``forkthread serve`` forks with one thread: a forking
  parent and a pre-forked master serve no connection, so no connection
  watch, pool or other thread of the framework's runs in them (the test
  suite checks it with the warning below made an error).  A process forks
  with other threads only when a program embeds the server outside its main
  thread, or has threads of its own; Python 3.12+ then warns that the child
  may deadlock (only the forking thread lives on in it, and a lock another
  thread held stays held).  For the framework's part that fork is safe,
  which :func:`_fork_among_threads` says where it is raised: the child runs
  only the serving code, enters its role with its own locks, pipes and
  counters (:meth:`~framework.strategies.base.Host.enter_child`), CPython's
  at-fork hooks re-make ``threading``'s and ``logging``'s locks, and it
  never returns into the program's code (:func:`exit_child`).  A lock of
  the program's own that another thread held at the fork, taken by its
  protocol in the child, is the program's to avoid (docs/strategies/forking.md).
* **A lean heap** (:func:`release_free_heap`): a process about to fork per
  connection gives the C heap's free pages back first, as each fork copies
  the page tables of every resident page.
* **Sub-interpreters.**  :func:`fork` refuses while one exists: the child
  would abort (CPython issue 139759).  The ``interpreters`` strategy never forks.
"""

from __future__ import annotations

import _signal
import gc
import logging
import operator
import os
import re
import signal
import sys
import threading
import warnings
import weakref
from collections.abc import Callable, Iterable
from collections.abc import Set as AbstractSet
from typing import NoReturn, Protocol

from framework.signals import SERVER_SIGNALS, raw_sigmask
from framework.subinterpreters import MACHINERY as _SUBINTERPRETERS_MACHINERY
from framework.subinterpreters import exist as _subinterpreters_exist

#: Looked up once, in the parent: a child leaving through exit_child() only reads it.
_LOG = logging.getLogger("forkthread")
#: The flush of a handler that needs none at exit (it flushes after every record).
_STREAM_FLUSH = logging.StreamHandler.flush

# The C functions under signal.pthread_sigmask() and signal.signal(): the
# wrappers turn every signal number into a ``Signals`` member and back.  On
# the fork path (once per connection under ``forking``) that is a dozen enum
# calls in the parent and as many in the child, whose every object touched
# is a page copied from the parent.  (The first is shared: framework.signals.)
_sigmask = raw_sigmask
_setsignal = _signal.signal
_SIG_DFL = int(signal.SIG_DFL)
# Plain numbers, not enum members: each member touched in a child is a page copied.
_SIG_BLOCK = int(signal.SIG_BLOCK)
_SIG_SETMASK = int(signal.SIG_SETMASK)
_SIGCHLD = int(signal.SIGCHLD)
#: What the direct fork holds across the call: every signal, so that none caught by the
#: parent's handlers can be pending in the child.  (A fault in those few microseconds
#: would kill the process without faulthandler's traceback: a fault there is a bug of
#: the interpreter's anyway.)
#: Plain numbers, as :data:`~framework.signals.SERVER_SIGNALS` and for the same reason.
_EVERY_SIGNAL = frozenset(int(signum) for signum in signal.valid_signals())

#: An at-fork hook: what :func:`os.register_at_fork` takes.
Hook = Callable[[], object]


class Leaving(Protocol):
    """Something holding output a child must try to write before it leaves (a LineSink)."""

    def leave(self) -> None:
        """Write what can be written now, without waiting; count and report the rest."""


#: Held weakly (by id): a closed and dropped sink is no longer called.  A dict of
#: references rather than a WeakSet: a child with nothing registered only tests the
#: dict, where iterating a WeakSet calls a dozen Python functions (each a page copied).
_AT_CHILD_EXIT: dict[int, weakref.ref[Leaving]] = {}


def at_child_exit(what: Leaving) -> None:
    """Have :func:`exit_child` call ``what.leave()`` (in any forked child, while *what* lives)."""
    key = id(what)
    # The callback runs when *what* dies, before its id can be reused.
    _AT_CHILD_EXIT[key] = weakref.ref(what, lambda ref: _AT_CHILD_EXIT.pop(key, None))


#: Makes a :class:`Forked` in C, without its Python ``__new__`` (see the class).
_new_tuple = tuple.__new__

#: ``sys.modules``, bound once: :func:`fork` asks it whether sub-interpreters could exist.
_MODULES = sys.modules


class Forked(tuple):  # type: ignore[type-arg]  # (pid, mask)
    """The result of :func:`fork`: the child's pid (0 in the child) and the mask to restore.

    A tuple, made by ``tuple.__new__`` in C, with its fields read through
    ``operator.itemgetter`` (C too): it is made twice per connection under
    ``forking``, once in the child, where each Python function called for the
    first time (an ``__init__``, a dataclass's, with ``object.__setattr__``
    per field) is a page or more copied from the parent.
    """

    __slots__ = ()

    def __new__(cls, pid: int, mask: AbstractSet[int]) -> Forked:
        """``Forked(pid, mask)`` (:func:`fork` makes them with ``tuple.__new__`` directly)."""
        return tuple.__new__(cls, (pid, mask))

    #: The child's pid in the parent, 0 in the child.
    pid: int = property(operator.itemgetter(0))  # type: ignore[assignment]
    #: The signal mask from before the fork.
    mask: AbstractSet[int] = property(operator.itemgetter(1))  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Forked(pid={self.pid}, mask={set(self.mask)!r})"

    def release_signals(self) -> None:
        """Restore the signal mask from before the fork (the child: once its handlers are in place)."""
        _sigmask(_SIG_SETMASK, self[1])


def fork(close_in_child: Iterable[int] = (), direct: DirectFork | None = None) -> Forked:
    """Fork with standard streams flushed and the server's signals held; see the module docstring.

    In the parent the mask is restored before this returns; in the child
    the signals stay held until :meth:`Forked.release_signals`.  With
    *direct*, and while this process has one thread, the fork is
    :meth:`DirectFork.fork` (every signal held across it), else
    :func:`os.fork`.  Raises :class:`OSError` (EAGAIN, ENOMEM) in the
    parent when no process could be made.
    """
    # The usual answer without a call (its function and code object are pages written per fork).
    if _SUBINTERPRETERS_MACHINERY in _MODULES and _subinterpreters_exist():
        raise RuntimeError("cannot fork while a sub-interpreter exists: the child would abort (CPython issue 139759)")
    _flush_standard_streams()
    close_fds = list(close_in_child)  # evaluated before the fork: nothing lazy runs in the child
    held = SERVER_SIGNALS
    # Checked here (and in DirectFork.fork again if a before hook ran): holding every signal
    # in this thread keeps caught signals out of the child only while no other thread can catch one.
    alone = _one_thread()
    if direct is not None and alone:
        held = _EVERY_SIGNAL
    elif not alone:
        direct = None
        _fork_among_threads()
    mask = _sigmask(_SIG_BLOCK, held)
    try:
        pid = os.fork() if direct is None else direct.fork(alone=True)
    except BaseException:  # no process made (OSError), or a signal handler or audit hook raised first
        _sigmask(_SIG_SETMASK, mask)
        raise
    if pid:
        _sigmask(_SIG_SETMASK, mask)
        return _new_tuple(Forked, (pid, mask))
    for fd in close_fds:
        try:
            os.close(fd)
        except OSError:
            pass
    global _parents_sigchld_handler
    # Kept, not dropped: the parent's handler (a bound method) would be freed here, and
    # a free writes to pages shared with the parent (each then copied).
    _parents_sigchld_handler = _setsignal(_SIGCHLD, _SIG_DFL)
    return _new_tuple(Forked, (0, mask))


#: In a forked child: the SIGCHLD handler the parent had (see fork()).
_parents_sigchld_handler: object = None


#: What Python 3.12+ says when a process with several threads calls os.fork().
_FORK_AMONG_THREADS = r"This process \(pid=\d+\) is multi-threaded, use of fork\(\) may lead to deadlocks"


def _fork_among_threads() -> None:
    """Silence Python's fork-with-threads warning for this module's fork only, before that fork.

    The fork is safe for the framework's part (module docstring, "Threads").
    The filter names this module and the message, so any other fork of the
    program still warns; it is added only when a fork among threads really
    happens (each time: a test harness may reset the filters), so a process
    that forks with one thread keeps Python's warning armed.
    """
    warnings.filterwarnings("ignore", message=_FORK_AMONG_THREADS, category=DeprecationWarning,
                            module=re.escape(__name__) + r"\Z")


def exit_child(status: int) -> NoReturn:
    """Leave a forked child for good: flush every logging handler and the standard streams, then ``os._exit``."""
    if _AT_CHILD_EXIT:
        for ref in list(_AT_CHILD_EXIT.values()):
            what = ref()
            try:
                if what is not None:
                    what.leave()
            except Exception:  # nothing may keep us from exiting
                pass
    _flush_on_exit()
    os._exit(status)


def rehearse_exit(rounds: int) -> None:
    """Flush, *rounds* times, what :func:`exit_child` flushes: so that a child per connection exits warm.

    For a process about to fork a child per connection, as the serving path
    is rehearsed (:mod:`framework.rehearsal`): the flushing code then runs
    specialized by the interpreter in every child, not cold (each generic
    attribute lookup writes to a page the child shares with its parent).
    Flushing what holds nothing changes nothing.
    """
    for _ in range(rounds):
        _flush_on_exit()


def _flush_on_exit() -> None:
    for handler in (*logging.root.handlers, *_LOG.handlers):
        # A StreamHandler (or FileHandler) flushes after every record it writes:
        # flushing it again would only copy pages of logging's objects.
        if type(handler).flush is _STREAM_FLUSH:
            continue
        try:
            handler.flush()
        except Exception:  # a broken stream must not keep us from exiting
            pass
    _flush_standard_streams()


def release_free_heap() -> bool:
    """Hand the C library's free heap pages back to the kernel (glibc's ``malloc_trim(0)``); False where there is none.

    ``fork()`` copies the page-table entry of every resident page, and the
    child's exit tears it down: free pages too.  A server's start-up
    (imports, argument parsing) leaves several hundred kilobytes free in the
    C heap, which a server forking per connection would otherwise copy and
    tear down at every connection.  Call it once, before the first fork.
    """
    from framework import libc  # only here: loaded already by a process that forks per connection (DirectFork)

    if libc.malloc_trim is None:  # no ctypes, or not glibc
        return False
    libc.malloc_trim(0)
    return True


def _one_thread() -> bool:
    # DirectFork.one_thread(), without the class and staticmethod looked up on the fork path.
    try:
        return os.stat("/proc/self/task").st_nlink == 3
    except OSError:
        return False


def _flush_standard_streams() -> None:
    # try/except, not contextlib.suppress: no context-manager object per call on the fork path.
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # a closed or broken stream: nothing to flush
            pass


class DirectFork:
    """``fork()`` from the C library, with the at-fork hooks a one-thread process needs.

    :func:`os.fork` runs, in every child, the hooks registered with
    :func:`os.register_at_fork`.  The standard library's own ones
    (``threading`` rebuilds its thread table and locks, ``logging`` its
    locks) repair what *another* thread might have held at the fork.  In a
    process with one thread there is nothing to repair, and yet their
    bytecode writes to pages shared with the parent, each one then copied:
    without them a short connection under ``forking`` takes about 40 page
    faults and 6% CPU less (``forkthread bench stevens``; docs/lab.md,
    "The direct fork").

    So, while the process has one thread (:meth:`one_thread`), :meth:`fork`
    calls the C library's ``fork()`` (its own ``pthread_atfork`` handlers
    run: malloc and stdio stay consistent) and runs every other registered
    hook in CPython's order: ``before`` hooks last-registered first, then
    the ``parent`` or ``child`` ones.  A hook registered later (a library
    resetting its pool, ``random`` reseeding, ``coverage``) runs as with
    :func:`os.fork`; so does the ``os.fork`` audit event, and a hook that
    raises is reported and the fork goes on.  Should a before hook start
    a thread, nothing is skipped (nor should an audit hook, unless
    :func:`fork`, which checks just before the audit event, passes *alone*).  What else :func:`os.fork`
    does in the child is a no-op with one thread (locks re-made, other
    threads' states dropped), except for three things:

    * signals caught by the parent and not yet handled are cleared: here
      the caller holds every signal across the call, and this method's
      first bytecode runs any handler already due, so none is pending;
    * ``threading`` drops thread objects of threads already gone (they
      stay listed until the child forks with :func:`os.fork` itself);
    * the child's ``threading.main_thread().native_id`` keeps the parent's
      thread id (``threading.get_native_id()`` is right).
    """

    def __init__(self, libc_fork: Callable[[], int], get_errno: Callable[[], int],
                 lists: tuple[list[Hook], list[Hook], list[Hook]], skipped: Iterable[Hook]) -> None:
        #: The C library's fork(), called with the interpreter lock held.
        self.libc_fork = libc_fork
        #: Returns the C ``errno`` of the last call through ``libc_fork``.
        self.get_errno = get_errno
        #: CPython's own lists of ``before``, ``parent`` and ``child`` hooks: live,
        #: so later registrations are seen.
        self.lists = lists
        #: The hooks skipped: their only job is the other threads' locks.
        self.skipped = tuple(skipped)
        # By identity: a hook may be any callable, hashable or not.
        self._skipped_ids = frozenset(id(hook) for hook in self.skipped)
        # The hooks to run, in running order, and the list lengths they were
        # made from (their total count: hooks are never unregistered, so the same count means the same lists).
        self._made_from = -1
        self._hooks: tuple[tuple[Hook, ...], ...] = ((), (), ())

    @classmethod
    def find(cls) -> DirectFork | None:
        """The direct fork of this interpreter, or None where it cannot be set up (use :func:`os.fork`).

        CPython keeps the hooks in three lists of its own, which the first
        call finds through marker hooks it registers (no-ops, skipped here),
        as the one list holding each marker.  Call it before
        :func:`gc.freeze`: :func:`gc.get_referrers` does not search frozen
        objects.
        """
        if sys.implementation.name != "cpython":
            return None
        global _markers_registered  # once per process: hooks cannot be taken back
        if not _markers_registered:
            os.register_at_fork(before=_before_marker, after_in_parent=_parent_marker,
                                after_in_child=_child_marker)
            _markers_registered = True
        lists = tuple(_the_list_holding(marker) for marker in (_before_marker, _parent_marker, _child_marker))
        before, parent, child = lists
        if before is None or parent is None or child is None:
            return None
        from framework import libc  # only here: a process that never forks per connection need not load it

        if libc.fork is None:
            return None
        lock_repairs = (getattr(threading, "_after_fork", None),
                        getattr(logging, "_after_at_fork_child_reinit_locks", None),
                        getattr(logging, "_acquireLock", None), getattr(logging, "_releaseLock", None))
        skipped = [hook for hook in lock_repairs if hook is not None]
        return cls(libc.fork, libc.get_errno, (before, parent, child),
                   [*skipped, _before_marker, _parent_marker, _child_marker])

    @staticmethod
    def one_thread() -> bool:
        """Whether this process has one thread (``/proc/self/task`` links 2 + one per thread)."""
        return _one_thread()

    def fork(self, alone: bool = False) -> int:
        """Fork as :func:`os.fork` would, less the skipped hooks; hold every signal around the call.

        *alone*: the caller has just found this process with one thread
        (:meth:`one_thread`); it is then asked again only if a before hook
        ran, which may have started a thread (a second ``stat`` per fork
        spared, and its result's objects: pages copied in a forking parent).
        Returns the child's pid in the parent and 0 in the child; raises
        :class:`OSError` in the parent when no process could be made.
        """
        sys.audit("os.fork")
        hooks = self._current()
        before = hooks[0]
        if before:
            _run(before)
        checked = not before and alone
        if not checked:
            alone = _one_thread()
            if not alone:  # then skip nothing: take logging's lock too, as os.fork() would have
                _run(tuple(hook for hook in self.lists[0][::-1] if id(hook) in self._skipped_ids))
        pid: int = self.libc_fork()
        failure = self.get_errno() if pid < 0 else 0  # before any hook's own calls overwrite it
        if not checked:
            # The lists again: a before hook may have registered more (CPython reads them afresh too).
            hooks = self._current() if alone else self._all()
        # (Tested first: most processes register none, and a call is a cost in a fresh child.)
        if pid == 0:
            if hooks[2]:
                _run(hooks[2])
            return 0
        if hooks[1]:
            _run(hooks[1])
        if pid < 0:
            raise OSError(failure, os.strerror(failure))
        return pid

    def _current(self) -> tuple[tuple[Hook, ...], ...]:
        """``(before, parent, child)`` hooks to run, in order, less the skipped ones."""
        before, parent, child = self.lists
        # Hooks are never unregistered: the same count means the same lists.
        made_from = len(before) + len(parent) + len(child)
        if made_from != self._made_from:
            self._hooks = tuple(tuple(hook for hook in hooks if id(hook) not in self._skipped_ids)
                                for hooks in (before[::-1], parent, child))
            self._made_from = made_from
        return self._hooks

    def _all(self) -> tuple[tuple[Hook, ...], ...]:
        """``(before, parent, child)`` hooks in order, the skipped ones included."""
        before, parent, child = self.lists
        return tuple(before[::-1]), tuple(parent), tuple(child)


def _run(hooks: tuple[Hook, ...]) -> None:
    for hook in hooks:
        try:
            hook()
        except BaseException:  # as os.fork(): any exception is reported and the fork goes on
            _LOG.exception("at-fork hook %r failed", hook)


# The markers by which DirectFork.find() recognizes CPython's hook lists.
def _before_marker() -> None:
    pass


def _parent_marker() -> None:
    pass


def _child_marker() -> None:
    pass


#: True once the markers are registered (hooks cannot be taken back: once per process).
_markers_registered = False


def _the_list_holding(hook: object) -> list[Hook] | None:
    """The one list that refers to *hook*, or None if none or several do."""
    holders = [ref for ref in gc.get_referrers(hook) if type(ref) is list]
    return holders[0] if len(holders) == 1 else None
