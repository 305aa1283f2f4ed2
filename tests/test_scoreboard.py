"""The pre-forked pool's scoreboard: what a worker stores through its view, its master reads; close() lets go."""

from __future__ import annotations

import os
import socket

from framework.strategies.scoreboard import Scoreboard, ScoredConnections


def test_a_workers_counts_reach_its_master_across_a_fork():
    board = Scoreboard(slots=4)
    try:
        slot = board.allocate()
        assert slot is not None
        pid = os.fork()
        if pid == 0:  # the worker: counts two connections, one of them still open
            status = 1
            try:
                connections = ScoredConnections(board, slot)
                a, b = socket.socketpair()
                connections.add(a)
                connections.add(b)
                connections.discard(a)
                a.close()
                status = 0
            finally:
                os._exit(status)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert board.read(slot) == (2, 1)
        other = board.allocate()
        assert other is not None and board.read(other) == (0, 0)  # slots do not overlap
    finally:
        board.close()


def test_served_is_reported_after_every_connection_and_close_releases_the_views():
    board = Scoreboard(slots=2)
    seen: list[int] = []
    connections = ScoredConnections(board, 1, seen.append)
    a, b = socket.socketpair()
    with a, b:
        connections.add(a)
        connections.discard(a)
        connections.add(b)
        assert seen == [1, 2]
        assert board.read(1) == (2, 1)
        board.beat(1, 12.5)
        assert board.read(1) == (2, 1) and board.last_beat(1) == 12.5  # the beat is beside the counters
    board.close()  # a view still exported would make this raise BufferError


def test_an_event_loops_counts_are_published_as_they_are_and_count_for_max_requests():
    """A poll worker's loop keeps its own connections and hands over only its counts."""
    board = Scoreboard(slots=1)
    seen: list[int] = []
    connections = ScoredConnections(board, 0, seen.append)
    connections.publish_counts(1, 1)
    connections.publish_counts(2, 2)
    connections.publish_counts(2, 1)  # an end: nothing more served
    assert board.read(0) == (2, 1)
    assert seen == [1, 2]
    assert connections.served == 2 and len(connections) == 0  # no socket was registered
    board.close()
