"""framework.testing: feed() at random points, seeded, finds framing bugs and is reproducible."""

from __future__ import annotations

import pytest

from framework import Protocol
from framework.testing import RecordingTransport, feed, random_chunks

LINES = b"one\ntwo\nthree\n"


class Lines(Protocol):
    """Upper-cases complete lines, buffering the rest: correct under any split."""

    def connection_made(self, transport) -> None:  # type: ignore[no-untyped-def]
        super().connection_made(transport)
        self.pending = b""

    def data_received(self, data: bytes) -> None:
        *complete, self.pending = (self.pending + data).split(b"\n")
        for line in complete:
            self.transport.write(line.upper() + b"\n")


class Naive(Protocol):
    """Assumes one read holds whole lines: the framing bug random splits exist to find."""

    def data_received(self, data: bytes) -> None:
        for line in data.split(b"\n")[:-1]:
            self.transport.write(line.upper() + b"\n")


def output(protocol: Protocol, **how: int) -> bytes:
    transport = RecordingTransport()
    protocol.connection_made(transport)
    feed(protocol, LINES, **how)
    return transport.output()


def test_random_chunks_are_reproducible_and_cover_every_split_size():
    data = bytes(range(40))
    splits = [random_chunks(data, seed) for seed in range(200)]
    assert all(b"".join(chunks) == data for chunks in splits)
    assert random_chunks(data, 7) == random_chunks(data, 7)
    assert len({tuple(len(chunk) for chunk in chunks) for chunks in splits}) > 150
    assert any(len(chunks) == 1 for chunks in splits) and any(len(chunks) == len(data) for chunks in splits)
    assert random_chunks(b"", 1) == [] and random_chunks(b"x", 1) == [b"x"]


def test_a_seed_finds_the_framing_bug_and_names_it():
    assert output(Naive()) == b"ONE\nTWO\nTHREE\n"  # whole input hides the bug
    failing = [seed for seed in range(50) if output(Naive(), seed=seed) != b"ONE\nTWO\nTHREE\n"]
    assert failing
    assert output(Naive(), seed=failing[0]) == output(Naive(), seed=failing[0])  # the seed reproduces it


@pytest.mark.parametrize("seed", range(50))
def test_a_correct_protocol_passes_every_seed(seed):
    assert output(Lines(), seed=seed) == b"ONE\nTWO\nTHREE\n"


def test_chunk_size_and_seed_do_not_mix():
    with pytest.raises(ValueError, match="not both"):
        feed(Lines(), b"x", chunk_size=1, seed=1)
