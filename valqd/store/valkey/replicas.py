"""store-wait-replicas and store-wait-aof: a write is answered only once Valkey's WAIT (or
WAITAOF) says enough replicas (or AOFs) have it.

One WAIT per connection per turn of the event loop, sent behind every write that connection
carried in the turn, answers for all of them: a connection's commands run in order, so the
replicas that acknowledged the WAIT have every write before it. On a cluster each primary
has its connection (router.py), so a turn that wrote to three primaries sends three WAITs,
each on its own primary. An error reply (nothing written: the library validates before it
writes; or a redirection the router follows) passes at once, without waiting, and so does
a pop that took nothing (nothing a client relies on was written).
"""

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

from .connection import Callback, Client, Reply, ReplyError, StoreUnavailable

POPS = frozenset((b"valq_pop", b"valq_pop_woken", b"valq_mpop"))  # FCALL's function


@dataclass(eq=False)
class _Write:
    callback: Callback
    reply: Reply = None
    answered: bool = False  # an error reply, passed on at once


class ReplicaWait:
    """Hold the replies of writes until a WAIT behind them answered (see the module)."""

    def __init__(self, replicas: int, aof: bool, timeout_ms: int) -> None:
        """`replicas`: how many replicas must have a write; `aof`: the primary's AOF and
        theirs must have fsynced it (WAITAOF 1 replicas); `timeout_ms`: how long to wait."""
        self.replicas = replicas
        self.aof = aof
        self.timeout_ms = timeout_ms
        self.command: list[bytes] = (
            [b"WAITAOF", b"1", b"%d" % replicas, b"%d" % timeout_ms] if aof else
            [b"WAIT", b"%d" % replicas, b"%d" % timeout_ms])
        self._turn: dict[Client, list[_Write]] = {}

    def send(self, client: Client, args: Sequence[bytes | str | int],
             callback: Callback) -> None:
        """Send the write `args` on `client`; `callback` gets its reply once the turn's WAIT
        on `client` answered (a `NOREPLICAS` error when too few had it), or at once when
        the reply is an error or no reply will come."""
        write = _Write(callback)
        pop = len(args) > 1 and args[0] == b"FCALL" and args[1] in POPS

        def answered(reply: Reply) -> None:
            if isinstance(reply, (ReplyError, StoreUnavailable)) or \
                    (pop and reply in (None, b"", [])):
                write.answered = True
                callback(reply)
            else:
                write.reply = reply

        client.send(args, answered)
        batch = self._turn.get(client)
        if batch is None:
            batch = self._turn[client] = []
            asyncio.get_running_loop().call_soon(self._send_wait, client)
        batch.append(write)

    def _send_wait(self, client: Client) -> None:
        batch = self._turn.pop(client)

        def waited(reply: Reply) -> None:
            short = self.shortfall(reply)
            for write in batch:
                if not write.answered:
                    write.callback(write.reply if short is None else short)

        client.send(self.command, waited)

    def shortfall(self, reply: Reply) -> ReplyError | None:
        """None when WAIT's (WAITAOF's) `reply` says the writes reached what was asked for;
        else the error that the writes' clients get (the writes were applied)."""
        if isinstance(reply, (ReplyError, StoreUnavailable)):
            return ReplyError(f"NOREPLICAS the change was applied, but whether the "
                              f"replicas have it is unknown: {self.command[0].decode()} "
                              f"answered {reply}")
        if self.aof:
            local, got = reply if type(reply) is list and len(reply) == 2 else (0, 0)
            if local >= 1 and got >= self.replicas:
                return None
            return ReplyError(
                f"NOREPLICAS the change was applied, but {local} of the 1 local AOF and {got} "
                f"of the {self.replicas} replicas' AOFs store-wait-aof asks for had it "
                f"fsynced within {self.timeout_ms} ms")
        got = reply if type(reply) is int else 0
        if got >= self.replicas:
            return None
        return ReplyError(
            f"NOREPLICAS the change was applied, but {got} of the {self.replicas} replicas "
            f"store-wait-replicas asks for acknowledged it within {self.timeout_ms} ms")
