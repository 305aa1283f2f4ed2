"""Concurrency strategies, by command-line name, imported only when used.

Each entry maps a name to ``module:Class``.  Adding a strategy is one line
here and one module; no server changes.
"""

from __future__ import annotations

import importlib

from framework.strategies.base import Strategy, StrategyOptions

#: name -> "module:Class"; the order is the order of ``forkthread list``.
STRATEGIES: dict[str, str] = {
    "iterative": "framework.strategies.iterative:IterativeStrategy",
    "forking": "framework.strategies.forking:ForkingStrategy",
    "threading": "framework.strategies.thread_per_connection:ThreadingStrategy",
    "prethreaded": "framework.strategies.prethreaded:PrethreadedStrategy",
    "preforked": "framework.strategies.preforked:PreforkedStrategy",
    "poll": "framework.strategies.poll:PollStrategy",
    "interpreters": "framework.strategies.interpreters:InterpretersStrategy",
}


class UnknownStrategyError(LookupError):
    """No strategy has that name."""


def strategy_class(name: str) -> type[Strategy]:
    """Return the strategy class registered as *name*."""
    try:
        target = STRATEGIES[name]
    except KeyError:
        raise UnknownStrategyError(
            f"unknown strategy {name!r} (choose from {', '.join(STRATEGIES)})"
        ) from None
    module_name, _, class_name = target.partition(":")
    cls: type[Strategy] = getattr(importlib.import_module(module_name), class_name)
    return cls


def available_strategies() -> list[str]:
    """The registered strategies this Python can run (``interpreters`` needs 3.13), in registry order."""
    return [name for name in STRATEGIES if strategy_class(name).unavailable() is None]


def create_strategy(name: str, options: StrategyOptions | None = None) -> Strategy:
    """Build the strategy *name* from *options* (defaults when None)."""
    return strategy_class(name).from_options(options or StrategyOptions())


__all__ = ["STRATEGIES", "Strategy", "StrategyOptions", "UnknownStrategyError", "available_strategies",
           "create_strategy", "strategy_class"]
