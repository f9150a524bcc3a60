"""The worker runtime against a real valqd: every message processed once, failures to the
DLQ with their reason, leases kept alive, nothing lost on a stop or a server restart.

The in-process tests run `Worker.serve()` on an event loop of its own in a background
thread; the signal tests run `valqd worker` as a real process."""

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from support import CHILD_ENV, ValqdProcess, as_map, stats, valq, wait_until
from valqd.client import Client
from valqd.worker import STOPPED_REASON, Job, Summary, Worker, describe


class Serving:
    """A Worker serving in a background thread until `stop()`."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.summary: Summary | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.summary = asyncio.run(self.worker.serve())
        except BaseException as exc:  # noqa: BLE001 - reported by stop()
            self.error = exc

    def stop(self, timeout: float = 30.0) -> Summary:
        self.worker.stop()
        return self.join(timeout)

    def join(self, timeout: float = 30.0) -> Summary:
        """Wait until the worker stops by itself (a handler called `worker.stop()`)."""
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the worker did not stop"
        if self.error is not None:
            raise self.error
        assert self.summary is not None
        return self.summary


def url_of(server) -> str:
    return f"valkey://127.0.0.1:{server.port}"


@pytest.fixture
def c(valqd):
    c = valqd.client()
    c.flushall()
    yield c
    c.close()


@pytest.fixture
def producer(valqd, c):
    with Client(url_of(valqd)) as producer:
        yield producer


# -- every message once ---------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_thousand_messages_each_processed_exactly_once(valqd, c, producer, kind):
    total = 1000
    producer.create("q")
    producer.push_many("q", [{"n": n} for n in range(total)])
    seen: list[tuple[int, int]] = []
    lock = threading.Lock()
    in_flight = peak = 0
    worker = Worker(url_of(valqd), concurrency=8)

    def record(job: Job) -> None:
        with lock:
            seen.append((job.id, job.value["n"]))
            if len(seen) == total:
                worker.stop()

    if kind == "sync":
        @worker.handler("q")
        def handle(job: Job) -> None:
            nonlocal in_flight, peak
            with lock:
                in_flight += 1
                peak = max(peak, in_flight)
            time.sleep(0.001)
            with lock:
                in_flight -= 1
            record(job)
    else:
        @worker.handler("q")
        async def handle(job: Job) -> None:
            nonlocal in_flight, peak
            in_flight += 1
            peak = max(peak, in_flight)
            await asyncio.sleep(0.001)
            in_flight -= 1
            record(job)

    summary = Serving(worker).join(timeout=120)
    assert sorted(seen) == [(n + 1, n) for n in range(total)]
    assert summary.done == total and summary.failed == summary.lost == summary.returned == 0
    assert 1 < peak <= 8
    s = stats(c)
    assert (s["acked"], s["delivered"], s["nacked"], s["expired"]) == (total, total, 0, 0)
    assert s["ready"] == s["inflight"] == 0


def test_serves_several_queues_in_the_order_given(valqd, c, producer):
    producer.create("urgent")
    producer.create("bulk")
    producer.push_many("bulk", range(5))
    producer.push_many("urgent", range(5))
    order: list[str] = []
    worker = Worker(url_of(valqd), concurrency=1)

    @worker.handler("urgent", "bulk")
    def handle(job: Job) -> None:
        order.append(job.queue)
        if len(order) == 10:
            worker.stop()

    Serving(worker).join()
    assert order == ["urgent"] * 5 + ["bulk"] * 5


# -- failures -------------------------------------------------------------------------------

@pytest.mark.parametrize("protocol", [2, 3])
def test_a_failing_handler_sends_the_message_to_the_dlq_with_its_reason(
        valqd, c, producer, caplog, protocol):
    producer.create("q", max_attempts=3)
    message_id = producer.push("q", {"order": 42})
    calls: list[int] = []
    worker = Worker(url_of(valqd), concurrency=2, protocol=protocol)

    @worker.handler("q")
    def handle(job: Job) -> None:
        calls.append(job.attempts)
        raise ValueError(f"cannot ship order {job.value['order']}")

    serving = Serving(worker)
    wait_until(lambda: stats(c)["dlq"] == 1, what="the message in the DLQ")
    summary = serving.stop()
    assert calls == [1, 2, 3]
    assert summary.failed == 3 and summary.done == 0
    (dead,) = valq(c, "PEEK", "q", "DLQ")
    dead = as_map(dead)
    assert dead[b"id"] == str(message_id).encode() and dead[b"attempts"] == b"3"
    assert dead[b"last_reason"] == b"ValueError: cannot ship order 42"
    failures = [r.getMessage() for r in caplog.records if "job failed" in r.getMessage()]
    assert failures == [f"job failed: queue 'q' id {message_id} attempt {n}: "
                        f"ValueError: cannot ship order 42" for n in (1, 2, 3)]


def test_the_reason_is_the_exception_type_and_message_trimmed():
    assert describe(KeyError("x")) == b"KeyError: 'x'"
    assert describe(RuntimeError()) == b"RuntimeError"
    long = describe(ValueError("y" * 5000))
    assert len(long) == 1000 and long.endswith(b"...")
    assert describe(ValueError("\udcff")) == b"ValueError: \\udcff"


def test_a_body_that_is_not_json_is_still_delivered_as_bytes(valqd, c, producer):
    producer.create("q", max_attempts=1)
    producer.push("q", b"\xff raw")
    got: list = []
    worker = Worker(url_of(valqd), concurrency=1)

    @worker.handler("q")
    def handle(job: Job) -> None:
        got.append(job.body)
        job.value  # not JSON: ValueError, so a NACK with the reason

    serving = Serving(worker)
    wait_until(lambda: stats(c)["dlq"] == 1, what="the message in the DLQ")
    serving.stop()
    assert got == [b"\xff raw"]
    (dead,) = valq(c, "PEEK", "q", "DLQ")
    assert as_map(dead)[b"last_reason"].startswith(b"UnicodeDecodeError: ")


# -- leases ---------------------------------------------------------------------------------

def test_a_handler_three_times_the_visibility_timeout_is_never_redelivered(valqd, c, producer):
    """Real time (the lease extensions are the worker's own timers): 2 s visibility, a
    6-second handler; another consumer polls meanwhile and gets nothing. (At 1 s, the
    half-timeout margin of an extension was 0.5 s, which a loaded machine can take.)"""
    producer.create("q", visibility=2)
    producer.push("q", "slow")
    calls: list[int] = []
    worker = Worker(url_of(valqd), concurrency=2)

    @worker.handler("q")
    def handle(job: Job) -> None:
        calls.append(job.attempts)
        time.sleep(6)

    serving = Serving(worker)
    wait_until(lambda: stats(c)["inflight"] == 1, what="the delivery")
    stolen = []
    while stats(c)["inflight"] == 1:
        stolen.append(valq(c, "POP", "q"))
        time.sleep(0.05)
    summary = serving.stop()
    assert calls == [1]
    assert set(stolen) == {b""}
    assert summary.done == 1
    s = stats(c)
    assert (s["delivered"], s["expired"], s["acked"]) == (1, 0, 1)


def test_a_lost_lease_drops_the_result(valqd, c, producer, caplog):
    """Someone takes the lease away (a NACK without receipt): the next EXTEND is refused,
    the first run's result is never acked, and the redelivery is."""
    producer.create("q", visibility=1)
    message_id = producer.push("q", "job")
    calls: list[int] = []
    worker = Worker(url_of(valqd), concurrency=2)

    @worker.handler("q")
    def handle(job: Job) -> None:
        calls.append(job.attempts)
        if job.attempts == 1:
            valq(c, "NACK", "q", job.id)
            time.sleep(1.2)

    serving = Serving(worker)
    wait_until(lambda: stats(c)["acked"] == 1 and len(calls) == 2, what="the redelivery")
    time.sleep(1.5)  # the first run ends
    summary = serving.stop()
    assert calls == [1, 2]
    assert (summary.done, summary.lost) == (1, 1)
    assert any(f"lease lost: queue 'q' id {message_id} attempt 1" in r.getMessage()
               for r in caplog.records)


# -- the server restarts --------------------------------------------------------------------

def test_a_server_restart_in_the_middle_of_a_run_loses_nothing(tmp_path):
    """valqd killed (SIGKILL) and started again on the same port with its AOF while the
    worker runs: the worker reconnects, every message ends acked exactly once."""
    server = ValqdProcess(tmp_path / "valqd").start()
    total = 300
    try:
        port = server.port
        server.args += ["--port", str(port)]  # the restart listens where the first did
        with Client(url_of(server)) as producer:
            producer.create("q", visibility=5)
            producer.push_many("q", range(total))
        handled: set[int] = set()
        worker = Worker(url_of(server), concurrency=8)

        @worker.handler("q")
        def handle(job: Job) -> None:
            handled.add(job.value)
            time.sleep(0.005)

        serving = Serving(worker)
        wait_until(lambda: len(handled) >= total // 3, what="a third done")
        server.kill()
        time.sleep(0.5)
        server.start()
        c = server.client()

        def drained() -> bool:
            s = stats(c)
            return len(handled) == total and s["ready"] + s["inflight"] + s["delayed"] == 0

        wait_until(drained, timeout=60, what="every message acked")
        summary = serving.stop()
        assert handled == set(range(total))
        assert summary.done == total  # each acked once: the receipts saw to it
        assert stats(c)["dlq"] == 0
        c.close()
    finally:
        server.kill()


def test_start_waits_for_a_server_that_is_not_up_yet(tmp_path):
    server = ValqdProcess(tmp_path / "valqd").start()
    port = server.port
    server.kill()
    server.args += ["--port", str(port)]
    done = threading.Event()
    worker = Worker(f"valkey://127.0.0.1:{port}", concurrency=1)
    worker.add("q", lambda job: done.set())
    serving = Serving(worker)
    try:
        time.sleep(0.5)
        server.start()
        with Client(url_of(server)) as producer:
            producer.create("q")
            producer.push("q", 1)
        assert done.wait(20)
        assert serving.stop().done == 1
    finally:
        server.kill()


# -- errors ---------------------------------------------------------------------------------

def test_a_queue_that_does_not_exist_stops_the_worker_with_a_clear_error(valqd, c):
    worker = Worker(url_of(valqd))
    worker.add("missing", lambda job: None)
    with pytest.raises(Exception, match="queue 'missing' does not exist: create it first"):
        Serving(worker).join()


def test_refused_credentials_are_an_error_not_a_retry(tmp_path):
    server = ValqdProcess(tmp_path / "valqd", "--requirepass", "secret").start()
    try:
        worker = Worker(f"valkey://:wrong@127.0.0.1:{server.port}")
        worker.add("q", lambda job: None)
        with pytest.raises(Exception, match="refused the credentials"):
            Serving(worker).join()
    finally:
        server.kill()


def test_registration_errors():
    worker = Worker()
    worker.add("q", lambda job: None)
    with pytest.raises(ValueError, match="already has a handler"):
        worker.add("q", lambda job: None)
    with pytest.raises(TypeError):
        worker.handler()
    with pytest.raises(Exception, match="no handlers registered"):
        asyncio.run(Worker().serve())
    with pytest.raises(Exception, match="concurrency must be at least 1"):
        bad = Worker(concurrency=0)
        bad.add("q", lambda job: None)
        asyncio.run(bad.serve())
    with pytest.raises(ValueError, match="must start with one of"):
        bad = Worker("http://127.0.0.1:7400")
        bad.add("q", lambda job: None)
        asyncio.run(bad.serve())


# -- `valqd worker`, a real process ---------------------------------------------------------

TASKS = """
    import time

    from valqd.worker import Worker

    def slow(job):
        time.sleep(job.value)

    both = Worker()

    @both.handler("a", "b")
    def record(job):
        with open("handled.txt", "a") as f:
            f.write(f"{job.queue} {job.id}\\n")
"""


def start_worker(directory, server, *args: str) -> subprocess.Popen:
    (directory / "tasks.py").write_text(textwrap.dedent(TASKS))
    return subprocess.Popen(
        [sys.executable, "-m", "valqd", "worker", *args, "--url", url_of(server)],
        cwd=directory, env=CHILD_ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)


def finish(proc: subprocess.Popen, timeout: float = 20.0) -> tuple[int, str]:
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
        raise AssertionError(f"the worker did not exit:\n{err}") from None
    return proc.returncode, err


@pytest.mark.parametrize("handler_s, grace, finished", [(0.5, 30, True), (60, 0.3, False)],
                         ids=["handlers-finish", "grace-runs-out"])
def test_sigterm_during_work_loses_nothing(tmp_path, valqd, c, producer, handler_s, grace,
                                           finished):
    """Every message ends either acked or visible at once (no lease left behind)."""
    total = 20
    producer.create("q", visibility=60)
    producer.push_many("q", [handler_s] * total)
    proc = start_worker(tmp_path, valqd, "tasks:slow", "--queue", "q", "--concurrency", "4",
                        "--grace", str(grace))
    try:
        wait_until(lambda: stats(c)["inflight"] == 4, what="four handlers running")
        proc.send_signal(signal.SIGTERM)
        code, err = finish(proc)
    finally:
        proc.kill()
    assert code == 0, err
    s = stats(c)
    assert s["inflight"] == 0
    assert s["ready"] + s["acked"] == total
    if finished:
        assert s["acked"] >= 4 and s["nacked"] == 0
        assert f"worker stopped: {s['acked']} done, 0 failed" in err
    else:
        assert s["acked"] == 0 and s["ready"] == total and s["nacked"] == 4
        assert "4 returned to the queue" in err
        reasons = {as_map(m)[b"last_reason"] for m in valq(c, "PEEK", "q", "COUNT", 20)}
        assert reasons == {None, STOPPED_REASON}


def test_a_second_signal_exits_at_once(tmp_path, valqd, c, producer):
    producer.create("q", visibility=60)
    producer.push_many("q", [60] * 2)
    proc = start_worker(tmp_path, valqd, "tasks:slow", "--queue", "q", "--grace", "60")
    try:
        wait_until(lambda: stats(c)["inflight"] == 2, what="two handlers running")
        proc.send_signal(signal.SIGINT)
        time.sleep(0.3)
        started = time.monotonic()
        proc.send_signal(signal.SIGINT)
        code, err = finish(proc, timeout=10)
    finally:
        proc.kill()
    assert code == 1, err
    assert time.monotonic() - started < 5
    assert "exiting at once" in err


def test_a_module_worker_serves_its_queues(tmp_path, valqd, c, producer):
    producer.create("a")
    producer.create("b")
    producer.push("a", 1)
    producer.push("b", 2)
    proc = start_worker(tmp_path, valqd, "tasks:both", "--concurrency", "2")
    handled = tmp_path / "handled.txt"
    try:
        wait_until(lambda: handled.exists() and len(handled.read_text().splitlines()) == 2,
                   what="both handled")
        wait_until(lambda: stats(c, "a")["acked"] + stats(c, "b")["acked"] == 2,
                   what="both acked")
        proc.send_signal(signal.SIGTERM)
        code, err = finish(proc)
    finally:
        proc.kill()
    assert code == 0, err
    assert sorted(handled.read_text().splitlines()) == ["a 1", "b 1"]
    assert "serving 'a', 'b' with concurrency 2" in err


@pytest.mark.parametrize("args, code, message", [
    (["nosuchmodule:f", "--queue", "q"], 2, "cannot import 'nosuchmodule'"),
    (["tasks", "--queue", "q"], 2, "is not MODULE:NAME"),
    (["tasks:nothing", "--queue", "q"], 2, "module 'tasks' has no 'nothing'"),
    (["tasks:time", "--queue", "q"], 2, "neither a handler function nor a Worker"),
    (["tasks:slow"], 2, "is a function: name its queues with --queue"),
    (["tasks:both", "--queue", "c"], 2, "has no handler for 'c'"),
    (["tasks:slow", "--queue", "q", "--concurrency", "0"], 2, "at least 1"),
    (["tasks:slow", "--queue", "q", "--url", "http://x"], 2, "must start with one of"),
    (["tasks:slow", "--queue", "missing"], 1, "queue 'missing' does not exist"),
], ids=["no-module", "no-colon", "no-attribute", "not-callable", "no-queue", "unknown-queue",
        "concurrency", "url", "missing-queue"])
def test_command_line_errors(tmp_path, valqd, c, args, code, message):
    (tmp_path / "tasks.py").write_text(textwrap.dedent(TASKS))
    url = [] if "--url" in args else ["--url", url_of(valqd)]
    result = subprocess.run([sys.executable, "-m", "valqd", "worker", *args, *url],
                            cwd=tmp_path, env=CHILD_ENV, capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == code, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_the_url_comes_from_valqd_url(tmp_path, valqd, c, producer):
    producer.create("q")
    producer.push("q", 0)
    (tmp_path / "tasks.py").write_text(textwrap.dedent(TASKS))
    proc = subprocess.Popen([sys.executable, "-m", "valqd", "worker", "tasks:slow",
                             "--queue", "q"], cwd=tmp_path,
                            env={**CHILD_ENV, "VALQD_URL": url_of(valqd)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: stats(c)["acked"] == 1, what="the message acked")
        proc.send_signal(signal.SIGTERM)
        code, err = finish(proc)
    finally:
        proc.kill()
    assert code == 0, err
    assert f"at {url_of(valqd)}" in err
