"""Unit tests of the bundled stream protocols, fed whole and one byte at a time."""

from __future__ import annotations

import re

import pytest

from framework.testing import RecordingTransport, feed
from servers.daytime import DaytimeProtocol, daytime_line
from servers.echo import EchoProtocol

PAYLOAD = bytes(range(256)) * 4 + b"\r\n\0"


@pytest.mark.parametrize("chunk_size", [None, 1, 7])
def test_echo_returns_every_byte_in_order(chunk_size):
    transport = RecordingTransport()
    protocol = EchoProtocol()
    protocol.connection_made(transport)
    result = feed(protocol, PAYLOAD, chunk_size=chunk_size, eof=True)
    assert transport.output() == PAYLOAD
    assert not result  # half-close: finish sending, then close


def test_echo_empty():
    transport = RecordingTransport()
    protocol = EchoProtocol()
    protocol.connection_made(transport)
    assert not feed(protocol, b"", eof=True)
    assert transport.output() == b""


@pytest.mark.parametrize("utc", [False, True])
def test_daytime_writes_one_line_and_closes(utc):
    transport = RecordingTransport()
    protocol = DaytimeProtocol(utc=utc)
    protocol.connection_made(transport)
    assert transport.closed
    assert re.fullmatch(rb"\w{3} \w{3} [ \d]\d \d\d:\d\d:\d\d \d{4}\r\n", transport.output())
    feed(protocol, b"ignored", chunk_size=1)
    assert transport.output().count(b"\r\n") == 1


def test_daytime_line_is_ctime_format():
    assert daytime_line(utc=True, now=0) == b"Thu Jan  1 00:00:00 1970\r\n"
