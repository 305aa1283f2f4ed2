"""The C library calls the standard library lacks: ``fork()`` itself, ``malloc_trim()``, ``prctl()``.

Made from ``_ctypes``, the C half of :mod:`ctypes`, and not from the
package: the package's Python half (its C types and their classes, with
:mod:`struct` and one more shared library beneath) is about 160 kB of
objects.  In a server that forks per connection every page of it is copied
by each fork and torn down by each exit, and only three functions are
called (docs/lab.md, "The seventh round").  What is used of ``_ctypes`` is
what :mod:`ctypes` itself is built from: a subclass of ``_SimpleCData``
per C type, of ``CFuncPtr`` per calling convention, and ``dlopen``.

Where ``_ctypes`` cannot be loaded (a Python built without it) each
name here is ``None`` or says so, and the callers do without.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

try:
    import _ctypes
except ImportError:  # a Python without ctypes: the callers do without
    _ctypes = None  # type: ignore[assignment]


class _Library:
    """What ``CFuncPtr`` reads of a library: its ``dlopen`` handle."""

    def __init__(self, handle: int) -> None:
        self._handle = handle


def _functions(*specs: tuple[str, str, tuple[str, ...], bool]) -> tuple[Callable[..., int] | None, ...]:
    """The C library's functions ``(name, result type, argument types, holds the interpreter lock)``.

    A type is a ``_SimpleCData`` code: ``"i"`` int, ``"L"`` unsigned long
    (and ``size_t``, which Linux makes the same).  A function that holds
    the interpreter lock is called as :class:`ctypes.PyDLL` calls (``fork``
    must: the child has to own the lock it wakes up with).  Each saves
    ``errno`` for :func:`get_errno`.  ``None`` for each when there is no
    ``_ctypes`` or no such function.
    """
    if _ctypes is None:
        return (None,) * len(specs)
    types: dict[str, Any] = {code: type(f"c_{code}", (_ctypes._SimpleCData,), {"_type_": code}) for code in "iL"}
    try:
        # None: the program itself and what it loaded, the C library among them (dlopen(3)).
        library = _Library(_ctypes.dlopen(None, os.RTLD_LOCAL))  # type: ignore[arg-type]
    except OSError:
        return (None,) * len(specs)
    kinds: dict[tuple[int, str], Any] = {}
    made: list[Callable[..., int] | None] = []
    for name, result, arguments, holds_lock in specs:
        flags = _ctypes.FUNCFLAG_CDECL | _ctypes.FUNCFLAG_USE_ERRNO
        if holds_lock:
            flags |= _ctypes.FUNCFLAG_PYTHONAPI
        kind = kinds.get((flags, result))
        if kind is None:
            kind = kinds[flags, result] = type("CFunction", (_ctypes.CFuncPtr,),
                                               {"_flags_": flags, "_restype_": types[result]})
        try:
            function = kind((name, library))
        except AttributeError:  # not in this C library
            made.append(None)
            continue
        function.argtypes = tuple(types[code] for code in arguments)
        made.append(function)
    return tuple(made)


#: ``fork()`` of the C library, called with the interpreter lock held: no at-fork hook of
#: CPython's runs (``processes.DirectFork`` runs those it must).  Returns -1 on failure
#: (then :func:`get_errno`).  None where there is no ``_ctypes``.
#: ``malloc_trim(pad)`` (glibc): returns 1 when memory went back to the kernel.  None elsewhere.
#: ``prctl(option, arg2, arg3, arg4, arg5)``: returns -1 on failure (then :func:`get_errno`).
fork, malloc_trim, prctl = _functions(("fork", "i", (), True),
                                      ("malloc_trim", "i", ("L",), False),
                                      ("prctl", "i", ("i", "L", "L", "L", "L"), False))


def get_errno() -> int:
    """The C ``errno`` saved by the last call, in this thread, of a function here."""
    return _ctypes.get_errno() if _ctypes is not None else 0
