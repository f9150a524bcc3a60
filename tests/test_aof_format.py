"""The AOF without processes: the file format, the loader, check-aof and AppendOnlyFile.

Histories are built with a real `Engine` whose journal is an `AppendOnlyFile`, one commit per
"event-loop turn", so every batch boundary and every record in these files is exactly what the
server writes.
"""

import errno
import itertools
import logging
import os
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest

from support import CHILD_ENV
from valqd.commands.context import ServerState, Session
from valqd.commands.dispatch import Dispatcher
from valqd.commands.table import TABLE
from valqd.config import MAX_DATABASES, Config
from valqd.engine import Databases, Engine, make_settings
from valqd.engine.engine import RECORD_KINDS
from valqd.persistence import aof as aof_module
from valqd.persistence import format as format_module
from valqd.persistence.aof import AppendOnlyFile, write_snapshot
from valqd.persistence.format import (MAGIC, MAGIC_V1, SCHEMAS, AofCorruption, decode_effect,
                                      encode_batch, encode_batch_v1, encode_effect,
                                      iter_batches, parse_records)
from valqd.persistence.loader import LoadResult, check_aof, load, scan

T0 = 1_700_000_000_000
DATA = Path(__file__).parent / "data"
# the batches of the files a History writes: today's (version 2), an older valqd's (version
# 1, appended to as it is), and version 2 holding version 1 batches too (a rewritten version
# 1 file keeps those committed while the rewrite ran), here every other one
LAYOUTS = ["v2", "v1", "mixed"]
BIN = b"bin\x00\xff\r\n q"
BODIES = [b"", b"\x00", b"\r\n*3\r\n$4\r\nVALQ\r\n", bytes(range(256)), "ünï".encode(),
          b"B 12 00000000 0000\n", b"x" * 5000]


class LogCapture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture
def valqd_log():
    """The `valqd` logger's messages (independent of propagate/handlers set elsewhere)."""
    logger = logging.getLogger("valqd")
    handler = LogCapture()
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield handler.messages
    logger.removeHandler(handler)
    logger.setLevel(old_level)


class History:
    """An engine journaling into an AppendOnlyFile; `turn()` commits one batch and records
    the digest, the record count and the file size after it."""

    def __init__(self, path, fsync_policy: str = "no", layout: str = "v2") -> None:
        self.path = str(path)
        if layout == "v1":  # as an older valqd left it: the magic line alone
            write(self.path, MAGIC_V1)
        self.layout = layout
        self.aof = AppendOnlyFile(self.path, fsync_policy)
        self.aof.open()
        assert self.aof.v1_batches == (layout == "v1")
        self.records = 0
        self.effects: list[tuple] = []
        self.engine = Engine(journal=self._journal)
        self.now = T0
        # after batch k (0-based): (file size, records so far, digest)
        self.after: list[tuple[int, int, str]] = []

    def _journal(self, effect: tuple) -> None:
        self.records += 1
        self.effects.append(effect)
        self.aof.append(effect)

    def turn(self) -> bool:
        if self.layout == "mixed":
            self.aof.v1_batches = len(self.after) % 2 == 1
        ok = self.aof.commit()
        if ok:
            self.after.append((self.aof.size, self.records, self.engine.digest()))
        return ok

    def build(self, turns: int = 6) -> "History":
        """Queues with ready, in-flight, delayed and DLQ messages, binary names and bodies."""
        e = self.engine
        e.create_queue(b"plain", make_settings())
        e.create_queue(BIN, make_settings(3600, 1, 600))
        e.create_queue(b"long", make_settings(7200, 7, 604800))
        self.turn()
        for n in range(turns):
            self.now += 1000
            for body in BODIES if n == 0 else BODIES[:-1]:  # the big body once
                e.push(b"plain", body + b"%d" % n, self.now)
            e.push(b"long", b"delayed %d" % n, self.now, delay=100000 + n)
            pushed = e.push(BIN, BODIES[n % len(BODIES)], self.now)
            e.pop(b"long", self.now)  # nothing ready there: no record
            e.push(b"long", b"leased %d" % n, self.now)
            e.pop(b"long", self.now)
            e.pop(BIN, self.now)
            if n % 2:
                e.extend(BIN, pushed, 0, self.now)  # the lease ends now: max 1 attempt, DLQ
                e.tick(self.now)
            delivered = e.pop(b"plain", self.now)
            if n % 3 == 0 and delivered is not None:
                e.ack(b"plain", delivered[0])
            self.turn()
        return self

    def batches(self) -> list[tuple[int, int]]:
        with open(self.path, "rb") as f:
            data = f.read()
        return [(offset, end) for offset, end, _ in iter_batches(data, self.path)]

    def close(self) -> None:
        self.aof.close()


def loaded(path, allow_truncated: bool = True):
    engine = Engine()
    result = load(str(path), engine, allow_truncated)
    return engine, result


def assert_same_state(loaded_engine: Engine, live: Engine) -> None:
    """Equal digests, and equal indexes too: a record applied twice can leave a duplicate
    key in an index that the digest (built from the records) does not show."""
    assert loaded_engine.digest() == live.digest()
    assert loaded_engine.queue_names() == live.queue_names()
    for name in live.queue_names():
        a, b = loaded_engine.queues[name], live.queues[name]
        assert (list(a.ready), list(a.lease_order), list(a.delayed_order), list(a.dead_order)) \
            == (list(b.ready), list(b.lease_order), list(b.delayed_order), list(b.dead_order))
        assert (a.leases, a.delayed, a.dead) == (b.leases, b.delayed, b.dead)


def _batch_kinds(data: bytes) -> list[bytes]:
    """The first byte of every batch's header: b"B" (format version 1) or b"C"."""
    return [data[offset:offset + 1] for offset, _, _ in iter_batches(data, "x")]


def write(path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)


# -- the format ----------------------------------------------------------------------------

def test_every_engine_record_kind_has_a_schema():
    assert {kind.encode() for kind in RECORD_KINDS} == set(SCHEMAS)


def test_effects_survive_encoding(tmp_path):
    history = History(tmp_path / "a.aof").build()
    history.close()
    assert history.effects
    for effect in history.effects:
        assert list(parse_records(memoryview(encode_effect(effect)))) == [effect]
    payload = b"".join(encode_effect(e) for e in history.effects)
    assert list(parse_records(memoryview(payload))) == history.effects


def test_snapshot_records_survive_encoding(tmp_path):
    history = History(tmp_path / "a.aof").build()
    history.close()
    snapshot = list(history.engine.snapshot())
    payload = b"".join(encode_effect(e) for e in snapshot)
    assert list(parse_records(memoryview(payload))) == snapshot


def test_encode_effect_shape():
    assert encode_effect(("remove", b"q", 12)) == b"*3\r\n$6\r\nremove\r\n$1\r\nq\r\n:12\r\n"
    # an int past int64 (a due time from a delay near 2^64 s) goes as a bulk string
    assert encode_effect(("defer", b"q", 1, 2**70)) == \
        b"*4\r\n$5\r\ndefer\r\n$1\r\nq\r\n:1\r\n$22\r\n%d\r\n" % 2**70
    assert encode_effect(("flush",)) == b"*1\r\n$5\r\nflush\r\n"


# around the tables' edge (SMALL = 1024), the times of records in a row equal or not
EDGE_INTS = [0, 1, 1023, 1024, 1025, T0, 2**63 - 1]
EDGE_BYTES = [b"", b"q", BIN, b"n" * 1023, b"n" * 1024, b"n" * 1025]


def test_the_hot_records_are_encoded_as_any_record_is():
    """push, lease and the removals have encoders of their own (the cost of every job): the
    bytes must be those of the field-by-field encoder every other record goes through."""
    effects = []
    for n, (number, name) in enumerate(itertools.product(EDGE_INTS, EDGE_BYTES)):
        effects += [("push", name, number, T0, T0, 0, name),
                    ("push", name, n, number, number, 0, name),
                    ("push", name, n, T0, T0 + number, n % 3 - 1, b"body"),
                    ("push", name, n, T0, 2**70, 0, b"far"),
                    ("lease", name, number, T0 + n // 4, number, number),
                    ("hold", name, n, number, 1, number),
                    ("remove", name, number), ("take", name, n), ("cancel", name, n),
                    ("drop", name, number)]
    for effect in effects:
        assert encode_effect(effect) == format_module._encode_fields(effect), effect
    payload = b"".join(encode_effect(e) for e in effects)
    assert list(parse_records(memoryview(payload))) == effects


@pytest.mark.parametrize("fields", [
    [], [b"nosuch", b"q"], [b"remove", b"q"], [b"remove", b"q", b"1", b"2"],
    [b"remove", b"q", [b"1"]], [b"remove", b"q", b"one"],
])
def test_decode_effect_rejects_what_does_not_fit(fields):
    with pytest.raises(ValueError):
        decode_effect(fields)


def _check(kind: bytes, length: int, crc: int) -> int:
    """The header's check as the format's docstring defines it, for either version."""
    if kind == b"B":
        return zlib.crc32(b"B %d %08x" % (length, crc)) & 0xFFFF
    return (length * 40503 + crc) % 65521


@pytest.mark.parametrize("kind, encode", [(b"C", encode_batch), (b"B", encode_batch_v1)])
@pytest.mark.parametrize("body", [b"", b"x" * 954, b"x" * 955, b"x" * 956, b"x" * 5000])
def test_batch_header(kind, encode, body):
    payload = encode_effect(("push", b"q", 1, T0, T0, 0, body))  # 1023, 1024, 1025 bytes too
    batch = encode(payload)
    header, _, rest = batch.partition(b"\n")
    crc = zlib.crc32(payload)
    assert header == b"%b %d %08x %04x" % (kind, len(payload), crc, _check(kind, len(payload), crc))
    assert rest == payload
    for magic in (MAGIC, MAGIC_V1) if kind == b"B" else (MAGIC,):
        data = magic + batch + batch
        assert [bytes(p) for _, _, p in iter_batches(data, "x")] == [payload, payload]


def test_a_version_2_batch_in_a_version_1_file_is_corruption():
    batch = encode_batch(encode_effect(("flush",)))
    with pytest.raises(AofCorruption) as info:
        list(iter_batches(MAGIC_V1 + encode_batch_v1(b"") + batch + encode_batch_v1(b""), "x"))
    assert (info.value.offset, info.value.reason) == (len(MAGIC_V1) + len(encode_batch_v1(b"")),
                                                      "bad batch header")


@pytest.mark.parametrize("magic, encode", [(MAGIC, encode_batch), (MAGIC_V1, encode_batch_v1)])
def test_every_change_of_one_byte_of_a_batch_header_is_refused(magic, encode):
    """In a batch followed by another (so that no change can pass for a cut-off end): every
    other value of every byte of its header, which includes every change of one digit of the
    length (which could otherwise make the batch look cut short)."""
    batch = encode(encode_effect(("push", b"q", 123456, T0, T0, 0, b"x" * 1234)))
    header_size = batch.index(b"\n") + 1
    after = encode(encode_effect(("remove", b"q", 123456)))
    for position in range(header_size):
        for value in range(256):
            if value == batch[position]:
                continue
            data = magic + batch[:position] + bytes([value]) + batch[position + 1:] + after
            with pytest.raises(AofCorruption) as info:
                list(iter_batches(data, "x"))
            assert info.value.offset == len(magic), (position, value)


# -- loading -------------------------------------------------------------------------------

@pytest.mark.parametrize("layout", LAYOUTS)
def test_load_replays_every_batch(tmp_path, valqd_log, layout):
    history = History(tmp_path / "a.aof", layout=layout).build()
    history.close()
    engine, result = loaded(history.path)
    with open(history.path, "rb") as f:
        data = f.read()
    assert data.startswith(MAGIC_V1 if layout == "v1" else MAGIC)
    assert set(_batch_kinds(data)) == {"v2": {b"C"}, "v1": {b"B"}, "mixed": {b"B", b"C"}}[layout]
    size, records, digest = history.after[-1]
    assert (result.records, result.file_size, result.good_size) == (records, size, size)
    assert result.truncated_bytes == 0
    assert engine.digest() == digest
    assert_same_state(engine, history.engine)
    assert any("DB loaded from append only file" in m for m in valqd_log)


def test_missing_file_loads_nothing(tmp_path):
    engine, result = loaded(tmp_path / "none.aof")
    assert result.records == 0 and engine.queues == {}


@pytest.mark.parametrize("data", [b"", MAGIC, MAGIC[:5], MAGIC[:-1], MAGIC_V1, MAGIC_V1[:-1]])
def test_empty_or_cut_magic_loads_empty(tmp_path, data):
    path = tmp_path / "a.aof"
    write(path, data)
    engine, result = loaded(path)
    assert result.records == 0 and engine.queues == {}


def test_bad_magic_is_corruption_at_zero(tmp_path):
    path = tmp_path / "a.aof"
    write(path, b"*2\r\n$3\r\nSET\r\n")
    with pytest.raises(AofCorruption) as info:
        loaded(path)
    assert info.value.offset == 0 and str(path) in str(info.value)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_truncation_at_every_offset_of_the_last_batch(tmp_path, valqd_log, layout):
    history = History(tmp_path / "full.aof", layout=layout).build(3)
    history.close()
    with open(history.path, "rb") as f:
        data = f.read()
    last_start, last_end = history.batches()[-1]
    assert last_end == len(data)
    good_size, good_records, good_digest = history.after[-2]
    assert good_size == last_start
    path = tmp_path / "cut.aof"
    for cut in range(last_start + 1, last_end):
        write(path, data[:cut])
        valqd_log.clear()
        engine, result = loaded(path)
        assert result.records == good_records, cut
        assert result.good_size == last_start and result.truncated_bytes == cut - last_start
        assert engine.digest() == good_digest, cut
        assert os.path.getsize(path) == last_start, cut  # the torn tail was cut off
        assert any(f"dropped the last {cut - last_start} bytes" in m for m in valqd_log), cut
    # and a cut exactly at a batch boundary is simply a shorter, intact file
    write(path, data[:last_start])
    engine, result = loaded(path)
    assert result.truncated_bytes == 0 and engine.digest() == good_digest


@pytest.mark.parametrize("zeros", [1, 7, 31, 32, 33, 4096])
def test_a_tail_of_zero_bytes_loads(tmp_path, valqd_log, zeros):
    history = History(tmp_path / "a.aof").build(3)
    history.close()
    size, records, digest = history.after[-1]
    with open(history.path, "ab") as f:
        f.write(b"\0" * zeros)
    engine, result = loaded(history.path)
    assert (result.records, result.truncated_bytes) == (records, zeros)
    assert engine.digest() == digest
    assert os.path.getsize(history.path) == size
    assert any("dropped the last" in m for m in valqd_log)


@pytest.mark.parametrize("zeros", [1, 10, "payload", "all"])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_last_batch_ending_in_zeros_is_truncation(tmp_path, zeros, layout):
    """Power loss: the file's size was updated but its last blocks were never written."""
    history = History(tmp_path / "a.aof", layout=layout).build(3)
    history.close()
    with open(history.path, "rb") as f:
        data = bytearray(f.read())
    start, end = history.batches()[-1]
    payload_start = data.index(b"\n", start) + 1
    first_zero = {"payload": payload_start, "all": start}.get(zeros) or end - zeros
    data[first_zero:] = b"\0" * (len(data) - first_zero)
    write(history.path, bytes(data) + b"\0" * 100)
    engine, result = loaded(history.path)
    _, records, digest = history.after[-2]
    assert (result.records, result.good_size) == (records, start)
    assert engine.digest() == digest


def test_aof_load_truncated_no_refuses(tmp_path):
    history = History(tmp_path / "a.aof").build(3)
    history.close()
    start, end = history.batches()[-1]
    with open(history.path, "r+b") as f:
        f.truncate(end - 3)
    with pytest.raises(AofCorruption) as info:
        loaded(history.path, allow_truncated=False)
    assert info.value.offset == start and f"offset {start}" in str(info.value)
    assert os.path.getsize(history.path) == end - 3  # left as it was


def _flipped(data: bytes, position: int, mask: int = 0x01) -> bytes:
    return data[:position] + bytes([data[position] ^ mask]) + data[position + 1:]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_flipped_byte_anywhere_in_a_middle_batch_is_refused_with_its_offset(tmp_path, layout):
    history = History(tmp_path / "a.aof", layout=layout).build(4)
    history.close()
    with open(history.path, "rb") as f:
        data = f.read()
    batches = history.batches()
    start, end = batches[len(batches) // 2]
    path = tmp_path / "flipped.aof"
    for position in range(start, end):
        for mask in (0x01, 0x80):
            write(path, _flipped(data, position, mask))
            with pytest.raises(AofCorruption) as info:
                scan(str(path), Engine().apply)
            assert info.value.offset == start, (position, mask)
            assert f"at offset {start}" in str(info.value)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_flipped_payload_byte_and_length_digit(tmp_path, layout):
    history = History(tmp_path / "a.aof", layout=layout).build(4)
    history.close()
    with open(history.path, "rb") as f:
        data = f.read()
    start, end = history.batches()[2]
    path = tmp_path / "x.aof"
    payload_at = data.index(b"\n", start) + 1
    write(path, _flipped(data, (payload_at + end) // 2))
    with pytest.raises(AofCorruption) as info:
        loaded(path)
    assert (info.value.offset, info.value.reason) == (start, "checksum mismatch")
    assert str(path) in str(info.value)
    length_digit = start + 2  # "C <length> ..." (or "B")
    assert data[length_digit:length_digit + 1].isdigit()
    changed = b"9" if data[length_digit:length_digit + 1] != b"9" else b"1"
    write(path, data[:length_digit] + changed + data[length_digit + 1:])
    size_before = os.path.getsize(path)
    with pytest.raises(AofCorruption) as info:
        loaded(path)
    assert (info.value.offset, info.value.reason) == (start, "bad batch header")
    assert os.path.getsize(path) == size_before  # corruption is never "repaired" by loading


@pytest.mark.parametrize("layout", LAYOUTS)
def test_corrupt_last_batch_is_not_truncation(tmp_path, layout):
    history = History(tmp_path / "a.aof", layout=layout).build(3)
    history.close()
    with open(history.path, "rb") as f:
        data = f.read()
    start, end = history.batches()[-1]
    write(history.path, _flipped(data, end - 5))
    with pytest.raises(AofCorruption) as info:
        loaded(history.path)
    assert info.value.offset == start


def test_a_record_that_does_not_fit_is_corruption(tmp_path):
    path = tmp_path / "a.aof"
    good = encode_effect(("create", b"q", 30, 5, 86400))
    write(path, MAGIC + encode_batch(good) + encode_batch(encode_effect(("remove", b"q", 99))))
    with pytest.raises(AofCorruption) as info:
        loaded(path)
    assert info.value.offset == len(MAGIC) + len(encode_batch(good))
    assert "bad record" in info.value.reason


@pytest.mark.parametrize("kind", [b"B", b"C"])
def test_negative_batch_length_is_corruption_not_a_loop(tmp_path, kind):
    header = b"%b -20 %08x %04x\n" % (kind, zlib.crc32(b""), _check(kind, -20, zlib.crc32(b"")))
    assert len(header) == 20  # a length pointing back at its own header
    data = MAGIC + header + encode_batch(encode_effect(("flush",)))
    with pytest.raises(AofCorruption) as info:
        list(itertools.islice(iter_batches(data, "x"), 5))
    assert info.value.offset == len(MAGIC)


# -- check-aof -------------------------------------------------------------------------------

@pytest.mark.parametrize("layout", LAYOUTS)
def test_check_aof_ok(tmp_path, capsys, layout):
    history = History(tmp_path / "a.aof", layout=layout).build(2)
    history.close()
    assert check_aof(history.path, fix=False) == 0
    assert f"records={history.records}, ok" in capsys.readouterr().out


def test_check_aof_reads_a_file_of_an_older_valqd(tmp_path, capsys):
    assert check_aof(str(V1_FILE), fix=False) == 0
    assert f"records={V1_RECORDS}, ok" in capsys.readouterr().out
    path = tmp_path / "a.aof"
    data = V1_FILE.read_bytes()
    last = [offset for offset, _, _ in iter_batches(data, "x")][-1]
    path.write_bytes(_flipped(data, last + 2))  # the last batch's length
    assert check_aof(str(path), fix=False) == 1
    assert f"ok_up_to={last}, diff={len(data) - last}, problem=bad batch header" in \
        capsys.readouterr().out


@pytest.mark.parametrize("layout", LAYOUTS)
def test_check_aof_reports_and_fixes_corruption(tmp_path, capsys, layout):
    history = History(tmp_path / "a.aof", layout=layout).build(4)
    history.close()
    with open(history.path, "rb") as f:
        data = f.read()
    start, end = history.batches()[3]
    write(history.path, _flipped(data, end - 3))
    assert check_aof(history.path, fix=False) == 1
    out = capsys.readouterr().out
    assert f"ok_up_to={start}" in out and "--fix" in out
    assert os.path.getsize(history.path) == len(data)  # reporting changes nothing
    assert check_aof(history.path, fix=True, ask=lambda prompt: "n") == 1  # asked: no
    assert os.path.getsize(history.path) == len(data)
    prompts = []
    assert check_aof(history.path, fix=True, ask=lambda p: prompts.append(p) or "y") == 0
    assert prompts == [f"This will shrink the AOF from {len(data)} bytes, with "
                       f"{len(data) - start} bytes, to {start} bytes\nContinue? [y/N]: "]
    out = capsys.readouterr().out
    assert f"to {start} bytes" in out and f"kept in {history.path}.cut-at-{start}" in out
    with open(f"{history.path}.cut-at-{start}", "rb") as f:
        assert f.read() == _flipped(data, end - 3)[start:]  # the bytes cut, kept
    engine, result = loaded(history.path)
    _, records, digest = history.after[2]
    assert (result.records, engine.digest()) == (records, digest)
    assert check_aof(history.path, fix=False) == 0


def test_check_aof_reports_and_fixes_truncation(tmp_path, capsys):
    history = History(tmp_path / "a.aof").build(3)
    history.close()
    start, end = history.batches()[-1]
    with open(history.path, "r+b") as f:
        f.truncate(end - 1)
    assert check_aof(history.path, fix=False) == 1
    assert f"ok_up_to={start}" in capsys.readouterr().out
    assert check_aof(history.path, fix=True, yes=True) == 0
    assert os.path.getsize(history.path) == start
    assert os.path.getsize(f"{history.path}.cut-at-{start}") == end - 1 - start


def test_check_aof_missing_file(tmp_path, capsys):
    assert check_aof(str(tmp_path / "nope.aof"), fix=False) == 1
    assert "Cannot open file" in capsys.readouterr().out


# -- AppendOnlyFile ------------------------------------------------------------------------------

def test_open_writes_magic_and_removes_stale_rewrite_temps(tmp_path):
    stale = tmp_path / "temp-rewriteaof-12345.aof"
    stale.write_bytes(b"half a snapshot")
    aof = AppendOnlyFile(str(tmp_path / "a.aof"))
    aof.open()
    try:
        assert not stale.exists()
        assert (tmp_path / "a.aof").read_bytes() == MAGIC
        assert aof.size == aof.base_size == len(MAGIC)
    finally:
        aof.close()


def test_group_commit_is_one_batch(tmp_path):
    history = History(tmp_path / "a.aof", "always")
    e = history.engine
    e.create_queue(b"q", make_settings())
    for n in range(50):
        e.push(b"q", b"m%d" % n, T0)
    assert history.aof.pending
    assert history.turn()
    assert not history.aof.pending
    size = history.aof.size
    assert history.turn() and history.aof.size == size  # nothing pending: nothing written
    history.close()
    assert len(history.batches()) == 1
    assert os.path.getsize(history.path) == size
    engine, result = loaded(history.path)
    assert result.records == 51 and engine.digest() == e.digest()


def test_close_writes_what_is_pending(tmp_path):
    history = History(tmp_path / "a.aof")
    history.engine.create_queue(b"q", make_settings())
    history.engine.push(b"q", b"last words", T0)
    history.close()
    engine, _ = loaded(history.path)
    assert engine.digest() == history.engine.digest()


def _fault(code: int):
    def fail(batch: bytes) -> None:
        raise OSError(code, os.strerror(code))
    return fail


def test_write_error_keeps_records_and_recovers(tmp_path):
    history = History(tmp_path / "a.aof").build(2)
    aof, e = history.aof, history.engine
    size = aof.size
    aof.write_fault = _fault(errno.EIO)
    e.push(b"plain", b"during the fault", T0)
    assert not history.turn()
    assert aof.write_error == os.strerror(errno.EIO)
    assert "aof_last_write_status:err" in aof.info_fields()
    assert os.path.getsize(history.path) == aof.size == size  # nothing half-written
    assert not aof.pending  # a later turn that writes nothing is not held for the retry
    e.push(b"plain", b"still during the fault", T0)
    assert not history.turn()
    aof.write_fault = None
    assert aof.ensure_reserve(e.message_count())
    assert aof.write_error is None and "aof_last_write_status:ok" in aof.info_fields()
    history.close()
    engine, _ = loaded(history.path)
    assert engine.digest() == e.digest()


def test_partial_write_is_cut_back(tmp_path):
    history = History(tmp_path / "a.aof").build(2)
    aof = history.aof
    size = aof.size

    def half_then_full(batch: bytes) -> None:
        os.write(aof.fd, batch[:len(batch) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    aof.write_fault = half_then_full
    history.engine.push(b"plain", b"torn", T0)
    assert aof.reserve_size == 0  # no reserve: nothing to fall back on
    assert not history.turn()
    assert os.path.getsize(history.path) == size
    engine, result = loaded(history.path)
    assert result.truncated_bytes == 0
    aof.write_fault = None
    assert history.turn()
    history.close()
    engine, _ = loaded(history.path)
    assert engine.digest() == history.engine.digest()


def test_disk_full_uses_the_reserve_then_refuses_new_data(tmp_path):
    history = History(tmp_path / "a.aof").build(2)
    aof, e = history.aof, history.engine
    assert aof.ensure_reserve(e.message_count())
    assert aof.reserve_size >= aof_module.RESERVE_MIN
    assert os.path.getsize(aof.reserve_path) == aof.reserve_size

    def full_unless_reserve_released(batch: bytes) -> None:
        if aof.reserve_size:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    aof.write_fault = full_unless_reserve_released
    pushed = e.push(b"plain", b"fits thanks to the reserve", T0)
    assert history.turn()  # written after giving the reserve back: the reply may go out
    assert aof.reserve_size == 0 and os.path.getsize(aof.reserve_path) == 0
    assert aof.write_error == os.strerror(errno.ENOSPC)
    # the server refuses new data (MISCONF) while acks and deletes still get written
    e.ack(b"plain", pushed)
    while (delivered := e.pop(b"long", T0)) is not None:
        e.ack(b"long", delivered[0])
    e.delete_queue(BIN)
    assert history.turn()
    aof.write_fault = None  # (fallocate is not faulted: the reserve comes back at once)
    assert aof.ensure_reserve(e.message_count())
    assert aof.write_error is None and aof.reserve_size >= aof_module.RESERVE_MIN
    history.close()
    engine, _ = loaded(history.path)
    assert engine.digest() == e.digest()


def test_misconf_from_the_dispatcher(tmp_path):
    """The command layer over an AppendOnlyFile with an injected fault, no sockets."""
    aof = AppendOnlyFile(str(tmp_path / "a.aof"))
    aof.open()
    databases = Databases()
    engine = databases[0]
    engine.journal = aof.append
    state = ServerState(engine, Config({"appendonly": "yes"}), TABLE, lambda: T0,
                        databases=databases)
    state.aof = aof
    run = Dispatcher(state).execute
    session = Session(1)
    assert aof.ensure_reserve(0)
    assert run(session, [b"VALQ", b"CREATE", b"q"]) == b"$9\r\ncreated q\r\n"
    assert run(session, [b"VALQ", b"PUSH", b"q", b"a"]) == b"$1\r\n1\r\n"
    assert aof.commit()

    def full_unless_reserve_released(batch: bytes) -> None:
        if aof.reserve_size:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    aof.write_fault = full_unless_reserve_released
    assert run(session, [b"VALQ", b"PUSH", b"q", b"b"]) == b"$1\r\n2\r\n"
    assert aof.commit()  # on disk thanks to the reserve
    reply = run(session, [b"VALQ", b"PUSH", b"q", b"c"])
    assert reply.startswith(b"-MISCONF Errors writing to the AOF file: No space left on device")
    assert run(session, [b"VALQ", b"CREATE", b"other"]).startswith(b"-MISCONF")
    assert run(session, [b"VALQ", b"ACK", b"q", b"1"]) == b"$5\r\nack 1\r\n"
    assert run(session, [b"VALQ", b"POP", b"q"]).startswith(b"*4\r\n")
    assert run(session, [b"PING"]) == b"+PONG\r\n"
    assert aof.commit()
    aof.write_fault = None
    assert aof.ensure_reserve(engine.message_count())
    assert run(session, [b"VALQ", b"PUSH", b"q", b"c"]) == b"$1\r\n3\r\n"
    aof.close()
    loaded_engine, _ = loaded(aof.path)
    assert loaded_engine.digest() == engine.digest()


# -- rewrite -------------------------------------------------------------------------------------

def test_write_snapshot_is_a_loadable_minimal_log(tmp_path):
    history = History(tmp_path / "a.aof").build()
    history.close()
    path = str(tmp_path / "snap.aof")
    size = write_snapshot(path, history.engine.snapshot())
    assert size == os.path.getsize(path)
    engine, _ = loaded(path)
    assert engine.digest() == history.engine.digest()


def test_save_rewrites_in_place_and_keeps_appending(tmp_path):
    history = History(tmp_path / "a.aof").build()
    aof, e = history.aof, history.engine
    e.push(b"plain", b"pending at SAVE", T0)
    aof.rewrite_now(e.snapshot)
    assert aof.size == aof.base_size == os.path.getsize(history.path)
    assert aof.rewrites == 1 and aof.last_rewrite_ok
    e.push(b"plain", b"after SAVE", T0)
    assert history.turn()
    history.close()
    engine, _ = loaded(history.path)
    assert engine.digest() == e.digest()
    assert not list(tmp_path.glob("temp-rewriteaof-*"))


def _finish_rewrite(aof: AppendOnlyFile, timeout: float = 10.0) -> None:
    for _ in range(int(timeout / 0.01)):
        aof.poll_rewrite()
        if not aof.rewriting:
            return
        time.sleep(0.01)
    raise AssertionError("the rewrite child did not finish")


@pytest.mark.parametrize("layout", ["v2", "v1"])
def test_background_rewrite_keeps_writes_made_meanwhile(tmp_path, layout):
    history = History(tmp_path / "a.aof", layout=layout).build()
    aof, e = history.aof, history.engine
    assert aof.start_rewrite(e.snapshot)
    assert not aof.start_rewrite(e.snapshot)  # one at a time
    forked_at = aof.size
    for n in range(20):
        e.push(b"plain", b"during rewrite %d" % n, T0 + n)
        delivered = e.pop(b"plain", T0 + n)
        if n % 2 and delivered is not None:
            e.ack(b"plain", delivered[0])
        assert history.turn()
    # what was committed meanwhile is remembered as where it lies in the old file, not as
    # bytes in memory (which grew with the length of the rewrite)
    assert aof.rewrite_tail == [(forked_at, aof.size)]
    _finish_rewrite(aof)
    assert aof.rewrites == 1 and aof.last_rewrite_ok
    assert aof.size == os.path.getsize(history.path)
    e.push(b"plain", b"after rewrite", T0)
    assert history.turn()
    history.close()
    engine, _ = loaded(history.path)
    assert_same_state(engine, e)
    assert not list(tmp_path.glob("temp-rewriteaof-*"))
    # the new file is of version 2, the batches copied from a version 1 file as they were
    with open(history.path, "rb") as f:
        data = f.read()
    kinds = _batch_kinds(data)
    assert data.startswith(MAGIC) and kinds[-1] == b"C"
    assert (b"B" in kinds) == (layout == "v1")


# written by valqd at ee00d54 (format version 1) from: two queues in database 0 (a binary
# name, settings), pushes (a delayed, a prioritized, a deduplicated, a 5000-byte one), a POP of
# three then an ACK, an EXTEND and a NACK with a reason, a NOACK POP, an MPUSH, a PAUSE; a
# queue with a message in database 3. DEBUG DIGEST said V1_DIGEST before its SHUTDOWN.
V1_FILE = DATA / "appendonly-v1.aof"
V1_RECORDS = 31
V1_DIGEST = "91a4055cfbc6f6afa7a73f1d4166b39e08df3462"


def _loaded_databases(path) -> tuple[Databases, LoadResult]:
    databases = Databases(MAX_DATABASES)
    return databases, load(str(path), databases)


def test_a_file_of_an_older_valqd_loads_as_it_was_written(tmp_path):
    assert V1_FILE.read_bytes().startswith(MAGIC_V1)
    databases, result = _loaded_databases(V1_FILE)
    assert (result.records, result.truncated_bytes) == (V1_RECORDS, 0)
    assert databases.digest() == V1_DIGEST
    assert databases.engines[0].queue_names() == [b"bin\x00\xff\r\n q", b"jobs"]
    assert databases.engines[3].queue_names() == [b"other"]
    snapshot = str(tmp_path / "snapshot.aof")  # the same state in version 2
    write_snapshot(snapshot, databases.snapshot())
    assert _loaded_databases(snapshot)[0].digest() == V1_DIGEST


def test_a_version_1_file_is_appended_to_in_version_1_until_save_rewrites_it(tmp_path):
    path = tmp_path / "appendonly.aof"
    path.write_bytes(V1_FILE.read_bytes())
    databases, _ = _loaded_databases(path)
    aof = AppendOnlyFile(str(path), "no")  # then opened for appending, as the server does
    aof.open()
    for index, engine in enumerate(databases.engines):
        engine.journal = aof.journal_for(index)
    databases.journal = aof.append
    assert aof.v1_batches

    def push_and_reload(body: bytes) -> bytes:
        databases.engines[0].push(b"jobs", body, T0)
        databases.engines[3].push(b"other", body, T0)
        assert aof.commit()
        assert _loaded_databases(path)[0].digest() == databases.digest()
        data = path.read_bytes()
        return data[:len(MAGIC)] + _batch_kinds(data)[-1]

    assert push_and_reload(b"appended in version 1") == MAGIC_V1 + b"B"
    aof.rewrite_now(databases.snapshot)
    assert not aof.v1_batches
    assert push_and_reload(b"appended after SAVE") == MAGIC + b"C"
    aof.close()


@pytest.mark.parametrize("retry", ["before_swap", "after_swap"])
def test_rewrite_started_during_a_write_error_applies_nothing_twice(tmp_path, retry):
    """Records whose write failed are already in the fork's snapshot: they must reach the
    new file once, through the snapshot, and never again from the retry."""
    history = History(tmp_path / "a.aof").build(2)
    aof, e = history.aof, history.engine
    aof.write_fault = _fault(errno.EIO)
    e.push(b"plain", b"unwritten before the fork", T0)
    assert not history.turn()
    assert aof.start_rewrite(e.snapshot)
    e.push(b"plain", b"unwritten after the fork", T0)
    assert not history.turn()
    if retry == "before_swap":
        aof.write_fault = None
        assert history.turn()
        _finish_rewrite(aof)
    else:
        _finish_rewrite(aof)
        aof.write_fault = None
        assert history.turn()
    e.push(b"plain", b"after everything", T0)
    assert history.turn()
    history.close()
    engine, _ = loaded(history.path)
    assert_same_state(engine, e)


def test_auto_rewrite_trigger(tmp_path):
    aof = AppendOnlyFile(str(tmp_path / "a.aof"))
    aof.size, aof.base_size = 150, 100
    assert not aof.should_auto_rewrite(100, 64)
    aof.size = 200
    assert aof.should_auto_rewrite(100, 64)
    assert not aof.should_auto_rewrite(100, 1000)  # below the minimum size
    assert not aof.should_auto_rewrite(0, 64)  # disabled


def test_disk_reserve_follows_the_stored_messages_down_as_well_as_up(tmp_path):
    """The reserve is sized to the messages stored now: it grows with a backlog and is cut
    back once they are gone (it used to keep its largest size for ever)."""
    aof = AppendOnlyFile(str(tmp_path / "a.aof"))
    aof.open()
    assert aof.ensure_reserve(100_000)
    grown = aof.reserve_size
    assert grown >= 100_000 * aof_module.RESERVE_PER_MESSAGE
    assert os.path.getsize(aof.reserve_path) == grown
    assert aof.ensure_reserve(60_000) and aof.reserve_size == grown  # not for every dip
    assert aof.ensure_reserve(10)
    assert aof.reserve_size == aof_module.RESERVE_MIN
    assert os.path.getsize(aof.reserve_path) == aof_module.RESERVE_MIN
    aof.close()
    reopened = AppendOnlyFile(str(tmp_path / "a.aof"))
    reopened.open()
    assert reopened.reserve_size == aof_module.RESERVE_MIN
    reopened.close()


_PEAK_OF_LOAD = """
import sys
from valqd.engine import Engine
from valqd.persistence.loader import load

def peak():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))

engine = Engine()
before = peak()
load(sys.argv[1], engine)
assert engine.queues[b"q"].id_sequence == int(sys.argv[2]) and not engine.message_count()
print(peak() - before)
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs Linux's /proc")
def test_loading_does_not_hold_the_whole_file_in_memory(tmp_path):
    """An AOF of over 40 MB whose messages are all acked: loading it leaves nothing, and must
    not cost the file's size in memory on the way (it was read whole: 1M messages peaked at
    435 MB). Measured as the growth of the peak resident memory of a process that loads it."""
    path = tmp_path / "big.aof"
    body = b"x" * 16384
    count = 3000
    with open(path, "wb") as f:
        f.write(MAGIC)
        f.write(encode_batch(encode_effect(("create", b"q", 30, 5, 86400))))
        for first in range(1, count + 1, 100):
            ids = range(first, first + 100)
            payload = b"".join(encode_effect(("push", b"q", i, T0, 0, 0, body)) for i in ids)
            payload += b"".join(encode_effect(("remove", b"q", i)) for i in ids)
            f.write(encode_batch(payload))
    size = path.stat().st_size
    assert size > 40 << 20
    child = subprocess.run([sys.executable, "-c", _PEAK_OF_LOAD, str(path), str(count)],
                           capture_output=True, text=True, timeout=120, env=CHILD_ENV)
    assert child.returncode == 0, child.stderr
    assert int(child.stdout) < size // 3
