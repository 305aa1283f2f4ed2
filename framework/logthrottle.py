"""Warnings about conditions anyone can cause again and again, logged without flooding the log."""

from __future__ import annotations

import logging
import math
import threading
import time

log = logging.getLogger("forkthread")


class LogThrottle:
    """Warns about a recurring condition when it starts, then at most every *interval* seconds.

    Conditions anyone can cause again and again (running out of
    descriptors) must not flood the log: the warnings left out are counted
    and the count goes with the next one.
    """

    def __init__(self, interval: float = 10.0) -> None:
        self.interval = interval
        self._last = -math.inf
        self._suppressed = 0
        self._claim = threading.Lock()
        #: True from a warning until :meth:`reset`: a caller on a hot path tests this
        #: before it calls :meth:`reset`, which then costs an attribute read when all is well.
        self.reporting = False

    @property
    def suppressed(self) -> int:
        """Warnings left out since the last one logged."""
        return self._suppressed

    def reset(self) -> None:
        """The condition is over: the next warning is logged at once."""
        self._last = -math.inf
        self._suppressed = 0
        self.reporting = False

    def warning(self, message: str) -> None:
        """Log *message* now, or count it when the last warning is less than *interval* old."""
        self.reporting = True
        with self._claim:  # threads sharing one throttle (a pre-threaded pool's) report once between them
            now = time.monotonic()
            if now - self._last < self.interval:
                self._suppressed += 1
                return
            # Claimed before logging: logging writes, so another thread may run meanwhile.
            self._last = now
            suppressed, self._suppressed = self._suppressed, 0
        extra = f" ({suppressed} more since the last report)" if suppressed else ""
        log.warning("%s%s", message, extra)
