"""Work that must stay bounded: what one client gets per turn of the event loop, and what
routine commands cost as the number of queues grows. Bounds are checked structurally (how
many commands run between two turns, how large a reply is), never by wall-clock time;
bench/ measures the times."""

import asyncio
import threading

import pytest
import uvloop

from support import ThreadedServer, Wire, encode_command, send_in_thread
from valqd.server import COMMANDS_PER_TURN

LOOPS = {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}


class TurnProbe:
    """Runs once per turn of the server's event loop and keeps the largest number of
    commands the server ran between two of its runs."""

    def __init__(self, server: ThreadedServer) -> None:
        self.server = server
        self.last = 0
        self.most = 0
        self.stopped = threading.Event()
        server.loop.call_soon_threadsafe(self._start)

    def _start(self) -> None:
        self.last = self.server.server.state.total_commands
        self.server.loop.call_soon(self._turn)

    def _turn(self) -> None:
        total = self.server.server.state.total_commands
        self.most = max(self.most, total - self.last)
        self.last = total
        if not self.stopped.is_set():
            self.server.loop.call_soon(self._turn)


@pytest.mark.parametrize("loop", LOOPS)
def test_a_long_pipeline_runs_a_bounded_share_per_turn(loop):
    """A client that pipelines 30,000 commands gets at most COMMANDS_PER_TURN of them run
    per turn of the event loop, so every other client is served between two shares.
    (uvloop runs callbacks and reads in two phases of one turn: a continuation and a fresh
    read may both run a share between two runs of the probe.)"""
    count = 30_000
    with ThreadedServer(loop_factory=LOOPS[loop]) as server:
        greedy, other = Wire(server.port), Wire(server.port)
        assert other.call("VALQ", "CREATE", "q") == b"created q"
        probe = TurnProbe(server)
        sender = send_in_thread(greedy, encode_command(["VALQ", "PUSH", "q", "x" * 100]) * count)
        assert other.call("PING") == b"PONG"
        replies = greedy.replies(count)
        sender.join(10)
        probe.stopped.set()
        assert replies[-1] == b"%d" % count
        assert other.call("PING") == b"PONG"
        shares = 1 if loop == "asyncio" else 2
        assert 0 < probe.most <= shares * COMMANDS_PER_TURN
