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
  :func:`exit_child`, which flushes logging and standard streams and calls
  ``os._exit``.
"""

from __future__ import annotations

import _signal
import dataclasses
import logging
import os
import signal
import sys
from collections.abc import Iterable
from typing import NoReturn

from framework.signals import SERVER_SIGNALS

#: Looked up once, in the parent: a child leaving through exit_child() only reads it.
_LOG = logging.getLogger("forkthread")

# The C functions under signal.pthread_sigmask() and signal.signal(): the
# wrappers turn every signal number into a ``Signals`` member and back.  On
# the fork path (once per connection under ``forking``) that is a dozen enum
# calls in the parent and as many in the child, whose every object touched
# is a page copied from the parent.
_sigmask = _signal.pthread_sigmask
_setsignal = _signal.signal
_SIG_DFL = int(signal.SIG_DFL)


@dataclasses.dataclass(frozen=True)
class Forked:
    """The result of :func:`fork`: the child's pid (0 in the child) and the mask to restore."""

    pid: int
    mask: frozenset[int]

    def release_signals(self) -> None:
        """Restore the signal mask from before the fork (the child: once its handlers are in place)."""
        _sigmask(signal.SIG_SETMASK, self.mask)


def fork(close_in_child: Iterable[int] = ()) -> Forked:
    """Fork with standard streams flushed and the server's signals held; see the module docstring.

    In the parent the mask is restored before this returns; in the child
    the signals stay held until :meth:`Forked.release_signals`.  Raises
    :class:`OSError` (EAGAIN, ENOMEM) in the parent when no process could be made.
    """
    _flush_standard_streams()
    close_fds = list(close_in_child)  # evaluated before the fork: nothing lazy runs in the child
    mask = frozenset(_sigmask(signal.SIG_BLOCK, SERVER_SIGNALS))
    try:
        pid = os.fork()
    except OSError:
        _sigmask(signal.SIG_SETMASK, mask)
        raise
    if pid:
        _sigmask(signal.SIG_SETMASK, mask)
        return Forked(pid, mask)
    for fd in close_fds:
        try:
            os.close(fd)
        except OSError:
            pass
    _setsignal(signal.SIGCHLD, _SIG_DFL)
    return Forked(0, mask)


def exit_child(status: int) -> NoReturn:
    """Leave a forked child for good: flush every logging handler and the standard streams, then ``os._exit``."""
    for handler in (*logging.root.handlers, *_LOG.handlers):
        try:
            handler.flush()
        except Exception:  # a broken stream must not keep us from exiting
            pass
    _flush_standard_streams()
    os._exit(status)


def _flush_standard_streams() -> None:
    # try/except, not contextlib.suppress: no context-manager object per call on the fork path.
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # a closed or broken stream: nothing to flush
            pass
