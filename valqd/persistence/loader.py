"""Loading an AOF into an engine at start-up, and `valqd check-aof`.

Every record goes through `Engine.apply`, the same effect functions the live server runs.
A batch cut off at the end of the file (a crash mid-write) is dropped with a warning when
`aof-load-truncated` is on; damage anywhere else stops start-up, naming file and offset.
"""

import logging
import mmap
import os
import time
from dataclasses import dataclass
from typing import Callable, Generator, Iterator, Protocol

from ..config import MAX_DATABASES
from ..engine import Databases, Effect
from .format import AofCorruption, iter_batches, parse_records

log = logging.getLogger("valqd")
PROGRESS_EVERY_S = 1.0
LOAD_SLICE_RECORDS = 2000  # records replayed between two turns of the server's event loop
RELEASE_EVERY = 8 << 20  # bytes of the mapped file applied before their pages are given back


Apply = Callable[[Effect], None]


class Replayer(Protocol):
    """What an AOF loads into: a Databases (or one Engine)."""

    def replay(self, effect: Effect) -> None: ...

    def rearm_timers(self) -> None: ...


@dataclass
class LoadResult:
    records: int = 0
    good_size: int = 0  # bytes up to the end of the last intact batch
    file_size: int = 0
    loaded_size: int = 0  # bytes replayed so far
    seconds: float = 0.0

    @property
    def truncated_bytes(self) -> int:
        return self.file_size - self.good_size


def scan_steps(path: str, apply: Apply | None = None, progress: bool = False,
               result: LoadResult | None = None) -> Iterator[LoadResult]:
    """Check (and with `apply`, load) every batch, yielding `result` after every
    LOAD_SLICE_RECORDS records so that a caller can do other work between slices; raises
    AofCorruption.

    The file is mapped, not read: the pages of the batches already applied are given back
    every RELEASE_EVERY bytes, so loading costs the engine's memory plus a few megabytes,
    not plus the whole file (1M messages peaked at 435 MB when it was read whole)."""
    started = time.monotonic()
    if result is None:
        result = LoadResult()
    with open(path, "rb") as f:
        result.file_size = os.fstat(f.fileno()).st_size
        if result.file_size:
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
                batches = iter_batches(data, path)
                try:
                    yield from _apply_batches(batches, data, path, apply, progress, result)
                finally:
                    batches.close()  # the views of the mapping go before the mapping
    result.loaded_size = result.good_size
    result.seconds = time.monotonic() - started


def _apply_batches(batches: Generator[tuple[int, int, memoryview], None, int],
                   data: mmap.mmap, path: str, apply: Apply | None, progress: bool,
                   result: LoadResult) -> Iterator[LoadResult]:
    last_report = time.monotonic()
    slice_left = LOAD_SLICE_RECORDS
    released = 0  # the mapping's pages before this offset were given back
    while True:
        try:
            offset, end, payload = next(batches)
        except StopIteration as stop:
            result.good_size = stop.value
            return
        try:
            for effect in parse_records(payload):
                if apply is not None:
                    apply(effect)
                result.records += 1
                slice_left -= 1
                if not slice_left:
                    slice_left = LOAD_SLICE_RECORDS
                    result.loaded_size = offset
                    yield result
        except Exception as exc:  # a record that does not fit the schema or the state
            raise AofCorruption(path, offset, f"bad record ({exc})") from None
        finally:
            payload.release()
        result.loaded_size = end
        if end - released >= RELEASE_EVERY:
            upto = end - end % mmap.PAGESIZE
            data.madvise(mmap.MADV_DONTNEED, released, upto - released)
            released = upto
        if progress and time.monotonic() - last_report >= PROGRESS_EVERY_S:
            last_report = time.monotonic()
            log.info("Loading AOF: %d records, %.0f%%", result.records,
                     100 * end / result.file_size)


def scan(path: str, apply: Apply | None = None, progress: bool = False) -> LoadResult:
    """Check (and with `apply`, load) every batch at once; raises AofCorruption."""
    result = LoadResult()
    for _ in scan_steps(path, apply, progress, result):
        pass
    return result


def load_steps(path: str, engine: Replayer, allow_truncated: bool = True,
               result: LoadResult | None = None) -> Iterator[LoadResult]:
    """Replay the AOF at `path` into `engine`, a slice of records per step (the server
    serves clients between steps); cut off a truncated tail if allowed."""
    if result is None:
        result = LoadResult()
    if not os.path.exists(path):
        return
    yield from scan_steps(path, engine.replay, True, result)
    engine.rearm_timers()
    if result.truncated_bytes:
        if not allow_truncated:
            raise AofCorruption(path, result.good_size, "unexpected end of file "
                                "(aof-load-truncated is no)")
        log.warning("!!! Warning: short read while loading the AOF file %s!!! "
                    "AOF loaded anyway because aof-load-truncated is enabled; "
                    "dropped the last %d bytes", path, result.truncated_bytes)
        with open(path, "r+b") as f:
            f.truncate(result.good_size)
            os.fsync(f.fileno())
    log.info("DB loaded from append only file: %.3f seconds, %d records",
             result.seconds, result.records)


def load(path: str, engine: Replayer, allow_truncated: bool = True) -> LoadResult:
    """Replay the AOF at `path` into `engine` at once; cut off a truncated tail if allowed."""
    result = LoadResult()
    for _ in load_steps(path, engine, allow_truncated, result):
        pass
    return result


def check_aof(path: str, fix: bool, yes: bool = False,
              ask: Callable[[str], str] = input) -> int:
    """`valqd check-aof [--fix [--yes]] FILE`: replay the file through the server's engine,
    as start-up does (so a file the server would refuse never passes), report, and with
    `--fix` cut it at the damage, after asking (`ask`, unless `yes`), keeping the bytes cut
    off in a backup file next to it."""
    try:
        # as many databases as a server may have: the file names the ones it uses
        result = scan(path, Databases(MAX_DATABASES).replay)
        bad_offset, reason = (result.good_size, "truncated") if result.truncated_bytes \
            else (None, "")
    except AofCorruption as exc:
        result = LoadResult(file_size=os.path.getsize(path))
        bad_offset, reason = exc.offset, exc.reason
    except OSError as error:  # (not `exc` again: compiled, `exc` holds an AofCorruption)
        print(f"Cannot open file {path}: {error.strerror}")
        return 1
    if bad_offset is None:
        print(f"AOF analyzed: filename={path}, size={result.file_size}, "
              f"records={result.records}, ok")
        return 0
    dropped = result.file_size - bad_offset
    print(f"AOF analyzed: filename={path}, size={result.file_size}, ok_up_to={bad_offset}, "
          f"diff={dropped}, problem={reason}")
    if not fix:
        print("AOF is not valid. Use the --fix option to try fixing it.")
        return 1
    if not yes:
        try:
            answer = ask(f"This will shrink the AOF from {result.file_size} bytes, with "
                         f"{dropped} bytes, to {bad_offset} bytes\nContinue? [y/N]: ")
        except EOFError:
            answer = ""
        if answer.strip().lower() not in ("y", "yes"):
            print("Nothing changed.")
            return 1
    backup = _backup_path(path, bad_offset)
    with open(path, "r+b") as f:
        f.seek(bad_offset)
        with open(backup, "xb") as saved:
            while chunk := f.read(1 << 20):
                saved.write(chunk)
            saved.flush()
            os.fsync(saved.fileno())
        f.truncate(bad_offset)
        os.fsync(f.fileno())
    print(f"Successfully truncated AOF {path} to {bad_offset} bytes ({dropped} bytes dropped, "
          f"kept in {backup})")
    return 0


def _backup_path(path: str, offset: int) -> str:
    """A file name next to `path` that is not taken, for the bytes cut off at `offset`."""
    backup, n = f"{path}.cut-at-{offset}", 1
    while os.path.exists(backup):
        backup, n = f"{path}.cut-at-{offset}.{n}", n + 1
    return backup
