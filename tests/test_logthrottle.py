"""LogThrottle: a recurring condition warned about at its start, then at most every interval."""

from __future__ import annotations

import logging
import threading

import pytest

from framework.logthrottle import LogThrottle


def test_reporting_marks_a_condition_from_its_warning_to_its_reset(caplog: pytest.LogCaptureFixture):
    # Hot paths call reset() only while reporting: it must be true whenever a reset would change anything.
    throttle = LogThrottle(interval=3600.0)
    assert not throttle.reporting
    with caplog.at_level(logging.WARNING, logger="forkthread"):
        throttle.warning("out of descriptors")
        assert throttle.reporting
        throttle.warning("out of descriptors")  # within the interval: counted, not logged
        assert throttle.suppressed == 1
        throttle.reset()
        assert not throttle.reporting and throttle.suppressed == 0
        throttle.warning("out of descriptors")  # the condition is back: logged at once
    assert [record.getMessage() for record in caplog.records] == ["out of descriptors"] * 2


def test_threads_sharing_a_throttle_report_once_while_the_first_report_is_being_written():
    # Was: the interval was claimed only after the log call; threads of a pre-threaded pool that
    # ran out of descriptors together each logged while the first report was still being written.
    throttle = LogThrottle(interval=3600.0)
    writing, written = threading.Event(), threading.Event()
    messages: list[str] = []

    class SlowHandler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append(record.getMessage())
            if threading.current_thread() is not threading.main_thread():
                writing.set()  # the first report is being written ...
                written.wait(10)  # ... and stays so until the other warnings were made

    logger = logging.getLogger("forkthread")
    handler = SlowHandler()
    logger.addHandler(handler)
    first = threading.Thread(target=throttle.warning, args=("out of descriptors",))
    try:
        first.start()
        assert writing.wait(10)
        for _ in range(5):
            throttle.warning("out of descriptors")
        written.set()
        first.join(10)
    finally:
        written.set()
        logger.removeHandler(handler)
    assert not first.is_alive()
    assert messages == ["out of descriptors"]
    assert throttle.suppressed == 5
