"""forkthread: write socket servers once, run them under any concurrency model.

The public names: :class:`Server` (subclass it), :class:`Protocol` and
:class:`Transport` (what a connection says, sans-I/O), :class:`Strategy`
(how connections are carried) and :class:`Address`.  They are imported on
first use (PEP 562): importing one submodule alone — the pytest plugin,
which pytest loads in every run of every project where forkthread is
installed — does not load the server machinery.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from framework.address import Address, AddressError, parse_address
    from framework.protocol import Protocol, Transport
    from framework.server import Server
    from framework.strategies.base import Strategy, StrategyOptions

__version__ = "0.1.0"

#: Each public name and the module that defines it.
_PUBLIC = {
    "Address": "framework.address",
    "AddressError": "framework.address",
    "parse_address": "framework.address",
    "Protocol": "framework.protocol",
    "Transport": "framework.protocol",
    "Server": "framework.server",
    "Strategy": "framework.strategies.base",
    "StrategyOptions": "framework.strategies.base",
}

__all__ = [
    "Address",
    "AddressError",
    "Protocol",
    "Server",
    "Strategy",
    "StrategyOptions",
    "Transport",
    "__version__",
    "parse_address",
]


def __getattr__(name: str) -> object:
    """Import a public name on first use, then keep it here."""
    try:
        module = _PUBLIC[name]
    except KeyError:
        raise AttributeError(f"module 'framework' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_PUBLIC})
