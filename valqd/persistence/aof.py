"""The live append-only file: group commit, fsync policies, rewrite and disk faults.

The engine's journal appends effect records to `pending`. The server calls `commit()` once
per event-loop turn, before any reply of that turn leaves: one `write()` of one checksummed
batch, plus one `fsync()` under `appendfsync always`. Under `everysec` an executor thread
fsyncs once a second, so the event loop never waits for the disk; under `no` the OS decides.

Rewrite (`BGREWRITEAOF`, the automatic trigger): the process forks; the child writes the
engine's snapshot to a temporary file and exits, while the parent keeps serving, appending
to the old file as usual and noting where the batches it commits meanwhile lie in it (not
their bytes: memory would grow with the length of the rewrite). When the child is done, the
parent copies those stretches of the old file to the new one, fsyncs it, renames it over
the AOF and fsyncs the directory. A crash at any point leaves either the old complete file
or the new complete one. The new file is always of format version 2; a version 1 file (an
older valqd's) is appended to in version 1 until then (format.py).

Disk faults: a failed write is cut back off the file (`ftruncate`), its records move to
`unwritten`, which every later commit writes first, and `write_error` is set until a retry
succeeds. `pending` only holds the records of the current turn, so a turn that changed
nothing (a read, a MISCONF reply) is answered at once rather than held for the retry. So
that draining works on a full disk, a reserve file holds space for the lease and removal
records of every stored message; when the disk fills, the reserve is given back and those
records still fit.
"""

import contextlib
import errno
import glob
import logging
import os
import threading
import time

from typing import Callable, Final, Iterable

from ..engine import Effect, Journal
from .format import (MAGIC, MAGIC_V1, encode_batch, encode_batch_v1, encode_effect,
                     encode_effects)

log = logging.getLogger("valqd")

RESERVE_PER_MESSAGE = 128  # bytes kept free per stored message (a lease and a removal)
RESERVE_MIN = 1 << 20
SNAPSHOT_BATCH_BYTES = 1 << 20
COPY_CHUNK = 1 << 20


def fsync_directory(path: str) -> None:
    fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Abandoned(Exception):
    """The rewrite child's parent is gone: nobody will swap the new file in."""


def write_snapshot(path: str, effects: Iterable[Effect], parent_pid: int = 0) -> int:
    """Write a complete AOF holding `effects` to `path`, fsynced; returns its size. With
    `parent_pid`, raise Abandoned when that process has gone (checked per batch)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        _write_all(fd, MAGIC)
        size = len(MAGIC)
        payload = bytearray()
        for effect in effects:
            payload += encode_effect(effect)
            if len(payload) >= SNAPSHOT_BATCH_BYTES:
                if parent_pid and os.getppid() != parent_pid:
                    raise Abandoned
                size += _write_all(fd, encode_batch(bytes(payload)))
                payload.clear()
        if payload:
            size += _write_all(fd, encode_batch(bytes(payload)))
        os.fsync(fd)
        return size
    finally:
        os.close(fd)


_os_write: Final = os.write  # compiled, a constant: no module attribute looked up per write


def _write_all(fd: int, data: bytes) -> int:
    written = _os_write(fd, data)
    if written < len(data):  # a short write: a signal, or the disk filled up meanwhile
        view = memoryview(data)[written:]
        while view:
            view = view[_os_write(fd, view):]
    return len(data)


class AppendOnlyFile:
    def __init__(self, path: str, fsync_policy: str = "everysec") -> None:
        self.path = path
        self.fsync_policy = fsync_policy
        self.pending: list[Effect] = []  # records of this event-loop turn, encoded at commit
        self.append = self.pending.append  # the engine's journal: no Python frame per record
        self.unwritten = bytearray()  # records of a failed write, written before anything newer
        self._fd_lock = threading.Lock()
        self._fsync_thread: threading.Thread | None = None
        self.fd = -1
        self.size = 0  # bytes of the file known to be written completely
        self.base_size = 0  # size right after the last rewrite (for the automatic trigger)
        self.v1_batches = False  # a version 1 file: appended to in version 1 until rewritten
        self.synced_size = 0
        self.write_error: str | None = None
        self.rewrite_pid = 0
        self.rewrite_scheduled = False  # BGREWRITEAOF inside EXEC: started by housekeeping
        self.rewrite_started = 0.0
        # while a rewrite runs: what to append to the new file, in order; (start, end) of
        # the old file, or the bytes of a batch the old file holds mixed with older records
        self.rewrite_tail: list[tuple[int, int] | bytes] | None = None
        self.snapshot_covers = 0  # leading bytes of `unwritten` the rewrite's snapshot holds
        self.rewrites = 0
        self.last_rewrite_ok = True
        self.last_rewrite_seconds = -1
        self.reserve_path = path + ".reserve"
        self.reserve_fd = -1
        self.reserve_size = 0
        # tests may set a function of the batch that raises OSError
        self.write_fault: Callable[[bytes], None] | None = None

    def journal_for(self, database: int) -> Journal:
        """The journal of one database: database 0's records go in as they are (the hot
        path: no Python frame per record); another's are framed by ("select", n) ...
        ("select", 0), consecutive ones sharing one frame, so that every batch ends in
        database 0 and a torn batch never leaves the loader in another database."""
        pending = self.pending
        if database == 0:
            return pending.append
        # `leave`: this frame's own end, found by identity; typed as an Effect (one object),
        # not tuple[str, int], which mypyc keeps unboxed and boxes anew at every `is`
        enter: Effect = ("select", database)
        leave: Effect = ("select", 0)

        def journal(effect: Effect) -> None:
            if pending and pending[-1] is leave:
                pending[-1] = effect
            else:
                pending.append(enter)
                pending.append(effect)
            pending.append(leave)
        return journal

    # -- opening and closing ---------------------------------------------------------------

    def open(self) -> None:
        for stale in glob.glob(os.path.join(os.path.dirname(os.path.abspath(self.path)),
                                            "temp-rewriteaof-*.aof")):
            os.unlink(stale)
        self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self.size = os.fstat(self.fd).st_size
        if self.size == 0:
            self.size = _write_all(self.fd, MAGIC)
            os.fsync(self.fd)
            fsync_directory(self.path)
        else:
            with open(self.path, "rb") as f:
                self.v1_batches = f.read(len(MAGIC_V1)) == MAGIC_V1
        self.base_size = self.synced_size = self.size
        self.reserve_fd = os.open(self.reserve_path, os.O_RDWR | os.O_CREAT, 0o644)
        self.reserve_size = os.fstat(self.reserve_fd).st_size

    def close(self) -> None:
        """Write what is pending, fsync and close (SHUTDOWN, SIGTERM)."""
        self._join_fsync()
        if self.fd < 0:
            return
        if not self.commit():
            log.warning("Could not write the last %d bytes of records to the AOF at shutdown",
                        len(self.unwritten))
        try:
            os.fsync(self.fd)
        except OSError as exc:
            log.warning("fsync of the AOF at shutdown failed: %s", exc.strerror)
        os.close(self.fd)
        self.fd = -1
        if self.reserve_fd >= 0:
            os.close(self.reserve_fd)
            self.reserve_fd = -1
        if self.rewrite_pid:
            self._kill_rewrite_child()

    # -- the journal and group commit ------------------------------------------------------

    def commit(self) -> bool:
        """Write the pending records as one batch (and fsync under `always`)."""
        pending, unwritten = self.pending, self.unwritten
        if unwritten:  # after the records of a failed write, in the same batch
            unwritten += encode_effects(pending)
            payload = bytes(unwritten)
        elif pending:  # the usual case: this turn's records alone, encoded once
            payload = encode_effects(pending)
        else:
            return True
        pending.clear()
        batch = encode_batch_v1(payload) if self.v1_batches else encode_batch(payload)
        start = self.size
        try:
            self._write(batch)
        except OSError as exc:
            if not unwritten:  # kept for the next commit, whatever happens now
                unwritten += payload
            if exc.errno == errno.ENOSPC and self.reserve_size:
                self._release_reserve()
                try:
                    self._write(batch)
                except OSError as again:
                    return self._failed(again)
                self._failed(exc)  # written, but the disk is full: stop taking new data
            else:
                return self._failed(exc)
        tail = self.rewrite_tail
        if tail is not None:
            if not self.snapshot_covers:
                if tail and type(tail[-1]) is tuple and tail[-1][1] == start:
                    tail[-1] = (tail[-1][0], self.size)
                else:
                    tail.append((start, self.size))
            elif len(self.unwritten) > self.snapshot_covers:  # the snapshot holds the rest
                # (for the new file: version 2, whatever the old one is)
                tail.append(encode_batch(bytes(self.unwritten[self.snapshot_covers:])))
            self.snapshot_covers = 0
        if unwritten:
            unwritten.clear()
        return True

    def _write(self, batch: bytes) -> None:
        try:
            if self.write_fault is not None:
                self.write_fault(batch)
            _write_all(self.fd, batch)
            if self.fsync_policy == "always":
                os.fsync(self.fd)
                self.synced_size = self.size + len(batch)
        except OSError:
            try:  # never leave half a batch behind
                os.ftruncate(self.fd, self.size)
            except OSError:
                pass
            raise
        self.size += len(batch)

    def _failed(self, exc: OSError) -> bool:
        reason = exc.strerror or str(exc)
        if self.write_error is None:
            log.warning("Error writing to the AOF file: %s", reason)
        self.write_error = reason
        return False

    def fsync(self) -> None:
        """The `everysec` fsync; runs on an executor thread. The lock keeps a rewrite from
        closing the descriptor (whose number could then be reused) under it."""
        with self._fd_lock:
            size = self.size
            os.fsync(self.fd)
            self.synced_size = size

    def fsync_in_background(self) -> None:
        """The `everysec` fsync on a thread of its own, which ends with it: a thread pool's
        idle threads would still be alive when a rewrite forks."""
        self._fsync_thread = threading.Thread(target=self._background_fsync,
                                              name="aof-fsync", daemon=True)
        self._fsync_thread.start()

    @property
    def fsync_running(self) -> bool:
        return self._fsync_thread is not None and self._fsync_thread.is_alive()

    def _background_fsync(self) -> None:
        try:
            self.fsync()
        except OSError as exc:
            log.warning("Background AOF fsync failed: %s", exc.strerror)

    def _join_fsync(self) -> None:
        if self._fsync_thread is not None:
            self._fsync_thread.join()
            self._fsync_thread = None

    def needs_fsync(self) -> bool:
        return self.fsync_policy == "everysec" and self.synced_size != self.size

    # -- disk-full reserve -----------------------------------------------------------------

    def ensure_reserve(self, stored_messages: int) -> bool:
        """Size the reserve to `stored_messages`: grown a quarter at a time, cut back once it
        is more than twice what they need (after PURGE, DELETE, a drained backlog); clears a
        write error once writes and the reserve both succeed again. Called about once a
        second."""
        if self.write_error is not None and not self.commit():
            return False
        wanted = max(RESERVE_MIN, stored_messages * RESERVE_PER_MESSAGE)
        if self.reserve_size > 2 * wanted:
            try:
                os.ftruncate(self.reserve_fd, wanted)
                self.reserve_size = wanted
            except OSError as exc:  # kept as it is: too large is safe
                log.warning("Can't shrink the disk reserve: %s", exc.strerror)
        elif wanted > self.reserve_size:
            wanted = max(wanted, self.reserve_size + self.reserve_size // 4)
            try:
                os.posix_fallocate(self.reserve_fd, 0, wanted)
            except OSError as exc:
                if self.write_error is None:
                    log.warning("Can't reserve %d bytes of disk for draining: %s", wanted,
                                exc.strerror)
                self.write_error = exc.strerror or str(exc)
                return False
            self.reserve_size = wanted
        if self.write_error is not None:
            log.warning("AOF writes work again")
            self.write_error = None
        return True

    def _release_reserve(self) -> None:
        os.ftruncate(self.reserve_fd, 0)
        self.reserve_size = 0
        log.warning("Disk full: released the reserve so that acks and deletes still work")

    # -- rewrite ---------------------------------------------------------------------------

    @property
    def rewriting(self) -> bool:
        return self.rewrite_pid != 0

    def temp_path(self, pid: int) -> str:
        return os.path.join(os.path.dirname(os.path.abspath(self.path)),
                            f"temp-rewriteaof-{pid}.aof")

    def start_rewrite(self, snapshot: Callable[[], Iterable[Effect]]) -> bool:
        """Fork a child that writes `snapshot()` to a temporary file; False if running."""
        if self.rewrite_pid:
            return False
        self.rewrite_scheduled = False
        self.commit()  # everything up to the fork belongs to the snapshot, not after it
        self.snapshot_covers = len(self.unwritten)  # applied, so in the snapshot, if unwritten
        self.rewrite_started = time.monotonic()
        self._join_fsync()  # no thread may be alive at the fork (at most one short fsync)
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:  # the child: write and leave, touching nothing of the parent's
            code = 1
            temp = self.temp_path(os.getpid())
            try:
                # first let go of every inherited descriptor but stdio: listening and client
                # sockets (if the parent dies, a restart must find its port free and clients
                # must see the close), the data directory's lock, the AOF itself
                os.closerange(3, os.sysconf("SC_OPEN_MAX"))
                write_snapshot(temp, snapshot(), parent)
                code = 0
            except Abandoned:
                with contextlib.suppress(OSError):  # a restarted server may have removed it
                    os.unlink(temp)
            finally:
                os._exit(code)
        self.rewrite_pid = pid
        self.rewrite_tail = []
        log.info("Background append only file rewriting started by pid %d", pid)
        return True

    def poll_rewrite(self) -> None:
        """Finish the rewrite if the child is done."""
        if not self.rewrite_pid:
            return
        pid, status = os.waitpid(self.rewrite_pid, os.WNOHANG)
        if pid == 0:
            return
        temp = self.temp_path(self.rewrite_pid)
        tail = self.rewrite_tail or []
        covered, self.snapshot_covers = self.snapshot_covers, 0
        self.rewrite_pid = 0
        self.rewrite_tail = None
        if os.waitstatus_to_exitcode(status) != 0:
            log.warning("Background AOF rewrite failed (child exit status %d)",
                        os.waitstatus_to_exitcode(status))
            self._rewrite_done(False, temp)
            return
        try:
            fd = os.open(temp, os.O_WRONLY | os.O_APPEND)
            try:
                self._append_tail(fd, tail)
                os.fsync(fd)
            finally:
                os.close(fd)
            self._swap_in(temp)
        except OSError as exc:
            log.warning("Background AOF rewrite failed: %s", exc.strerror)
            self._rewrite_done(False, temp)
            return
        del self.unwritten[:covered]  # the new file holds them
        self._rewrite_done(True, None)

    def _append_tail(self, fd: int, tail: list[tuple[int, int] | bytes]) -> None:
        """Append what was committed during the rewrite to the new file at `fd`."""
        source = os.open(self.path, os.O_RDONLY)
        try:
            for piece in tail:
                if type(piece) is bytes:
                    _write_all(fd, piece)
                    continue
                start, end = piece
                while start < end:
                    chunk = os.pread(source, min(COPY_CHUNK, end - start), start)
                    if not chunk:
                        raise OSError(errno.EIO, "the AOF ended before its committed size")
                    _write_all(fd, chunk)
                    start += len(chunk)
        finally:
            os.close(source)

    def rewrite_now(self, snapshot: Callable[[], Iterable[Effect]]) -> None:
        """SAVE: write the snapshot in this process and swap it in."""
        if self.rewrite_pid:
            self._kill_rewrite_child()
        self.commit()
        temp = self.temp_path(os.getpid())
        started = time.monotonic()
        write_snapshot(temp, snapshot())
        self._swap_in(temp)
        self.unwritten.clear()  # a failed write's records are in the snapshot
        self.rewrite_started = started
        self._rewrite_done(True, None)

    def _swap_in(self, temp: str) -> None:
        """Make the rewritten file at `temp` (version 2, as write_snapshot writes) the AOF."""
        os.rename(temp, self.path)
        fsync_directory(self.path)
        with self._fd_lock:
            old = self.fd
            self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)
            self.size = self.base_size = self.synced_size = os.fstat(self.fd).st_size
            os.close(old)
        self.v1_batches = False

    def _rewrite_done(self, ok: bool, temp: str | None) -> None:
        if temp is not None and os.path.exists(temp):
            os.unlink(temp)
        self.last_rewrite_ok = ok
        self.last_rewrite_seconds = int(time.monotonic() - self.rewrite_started)
        if ok:
            self.rewrites += 1
            log.info("Background AOF rewrite finished successfully")

    def _kill_rewrite_child(self) -> None:
        try:
            os.kill(self.rewrite_pid, 9)
            os.waitpid(self.rewrite_pid, 0)
        except OSError:
            pass
        temp = self.temp_path(self.rewrite_pid)
        if os.path.exists(temp):
            os.unlink(temp)
        self.rewrite_pid = 0
        self.rewrite_tail = None
        self.snapshot_covers = 0

    def should_auto_rewrite(self, percentage: int, min_size: int) -> bool:
        if self.rewrite_pid or not percentage or self.size < min_size:
            return False
        return self.size >= self.base_size * (100 + percentage) // 100

    # -- INFO ------------------------------------------------------------------------------

    def info_fields(self) -> list[str]:
        in_progress = int(bool(self.rewrite_pid))
        return [
            "aof_enabled:1",
            f"aof_rewrite_in_progress:{in_progress}",
            f"aof_rewrite_scheduled:{int(self.rewrite_scheduled)}",
            f"aof_last_rewrite_time_sec:{self.last_rewrite_seconds}",
            f"aof_current_rewrite_time_sec:"
            f"{int(time.monotonic() - self.rewrite_started) if in_progress else -1}",
            f"aof_last_bgrewrite_status:{'ok' if self.last_rewrite_ok else 'err'}",
            f"aof_rewrites:{self.rewrites}",
            f"aof_last_write_status:{'ok' if self.write_error is None else 'err'}",
            f"aof_current_size:{self.size}",
            f"aof_base_size:{self.base_size}",
            f"aof_buffer_length:{len(self.unwritten)}",
            f"aof_fsync_policy:{self.fsync_policy}",
            f"aof_reserve_size:{self.reserve_size}",
        ]
