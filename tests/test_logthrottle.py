"""LogThrottle: a recurring condition warned about at its start, then at most every interval."""

from __future__ import annotations

import logging

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
