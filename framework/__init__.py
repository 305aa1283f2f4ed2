"""forkthread: write socket servers once, run them under any concurrency model.

The public names: :class:`Server` (subclass it), :class:`Protocol` and
:class:`Transport` (what a connection says, sans-I/O), :class:`Strategy`
(how connections are carried) and :class:`Address`.
"""

from framework.address import Address, AddressError, parse_address
from framework.protocol import Protocol, Transport
from framework.server import Server
from framework.strategies.base import Strategy, StrategyOptions

__version__ = "0.1.0"

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
