"""``tollgate.dramatiq``: Dramatiq's limiters and barrier on a Tollgate backend, in the
scenarios of Dramatiq's own docs, and the ``RateLimits`` middleware with a real Dramatiq worker
process on a Redis broker the tests start.

Time-dependent checks assert the algorithm's guarantee (docs/design.md §2) on intervals: each
acquire records when it was sent and when it was answered, and the server decided in between.
A check that needs every attempt inside one window makes its exact assertion only when the
recorded intervals show they were; otherwise it asserts the guarantee alone.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("dramatiq")
import dramatiq
import dramatiq.rate_limits as theirs
import redis
from dramatiq import Message
from dramatiq.broker import MessageProxy
from dramatiq.brokers.redis import RedisBroker
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import SkipMessage
from dramatiq.results.backends import RedisBackend

from tollgate import ConflictError, NotFoundError, Tollgate
from tollgate.dramatiq import (
    Barrier,
    BucketRateLimiter,
    ConcurrentRateLimiter,
    InvalidRateLimits,
    RateLimitExceeded,
    RateLimits,
    WindowRateLimiter,
)

from .conftest import TESTS, Redis, Server, free_port
from .test_celery import tightest_span

# -- ConcurrentRateLimiter --------------------------------------------------------------------


def test_a_mutex_is_released_after_each_use(tg: Tollgate, uid: str) -> None:
    mutex = ConcurrentRateLimiter(tg, f"{uid}-mutex", limit=1)
    calls = 0
    for _ in range(8):
        with mutex.acquire(raise_on_failure=False) as acquired:
            if acquired:
                calls += 1
    assert calls == 8


def test_a_mutex_admits_one_holder_at_a_time(tg: Tollgate, uid: str) -> None:
    mutex = ConcurrentRateLimiter(tg, f"{uid}-mutex", limit=1)
    others: list[bool] = []
    with mutex.acquire() as acquired:
        assert acquired is True

        def other() -> None:
            with mutex.acquire(raise_on_failure=False) as got:
                others.append(got)

        threads = [threading.Thread(target=other) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        # The default raises Dramatiq's own exception.
        with pytest.raises(RateLimitExceeded, match="rate limit exceeded for key") as e, mutex.acquire():
            pass
        assert isinstance(e.value, dramatiq.RateLimitExceeded)
    assert others == [False] * 8
    with mutex.acquire(raise_on_failure=False) as acquired:
        assert acquired


def test_a_concurrency_limit_of_four_among_thirty_two(tg: Tollgate, uid: str) -> None:
    limiter = ConcurrentRateLimiter(tg, f"{uid}-four", limit=4)
    lock = threading.Lock()
    tried, got, refused = [0], [0], [0]
    all_tried = threading.Event()

    def work() -> None:
        try:
            with limiter.acquire():
                with lock:
                    tried[0] += 1
                    got[0] += 1
                all_tried.wait(30)  # hold the slot until every thread has tried
        except RateLimitExceeded:
            with lock:
                tried[0] += 1
                refused[0] += 1

    threads = [threading.Thread(target=work) for _ in range(32)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 60
    while tried[0] < 32 and time.monotonic() < deadline:
        time.sleep(0.01)
    all_tried.set()
    for t in threads:
        t.join()
    assert (got[0], refused[0]) == (4, 28)


def test_a_dead_holders_slot_frees_after_its_ttl(tg: Tollgate, uid: str) -> None:
    limiter = ConcurrentRateLimiter(tg, f"{uid}-ttl", limit=1, ttl=2000)
    abandoned = limiter.acquire()
    assert abandoned.__enter__() is True  # a holder that dies without releasing
    with limiter.acquire(raise_on_failure=False) as acquired:
        assert not acquired
    time.sleep(2.1)
    with limiter.acquire(raise_on_failure=False) as acquired:
        assert acquired


# -- WindowRateLimiter ------------------------------------------------------------------------


def test_a_window_admits_limit_in_any_window_from_many_threads(tg: Tollgate, uid: str) -> None:
    # Dramatiq's scenario: limit 2 per 5 s window, eight threads trying eight times each.
    limiter = WindowRateLimiter(tg, f"{uid}-window", limit=2, window=5)
    lock = threading.Lock()
    admitted: list[tuple[float, float]] = []
    spans: list[tuple[float, float]] = []

    def work() -> None:
        for _ in range(8):
            sent = time.monotonic()
            with limiter.acquire(raise_on_failure=False) as acquired:
                answered = time.monotonic()
                with lock:
                    spans.append((sent, answered))
                    if acquired:
                        admitted.append((sent, answered))

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(admitted) >= 1
    if len(admitted) >= 3:
        assert tightest_span(admitted, 3) >= 5.0  # never 3 within any 5 s
    if max(a for _, a in spans) - min(s for s, _ in spans) < 5.0:
        assert len(admitted) == 2  # every attempt fell within one window


def test_a_window_slides(tg: Tollgate, uid: str) -> None:
    limiter = WindowRateLimiter(tg, f"{uid}-slide", limit=2, window=1)
    results = []
    admitted: list[tuple[float, float]] = []
    for _ in range(6):
        sent = time.monotonic()
        with limiter.acquire(raise_on_failure=False) as acquired:
            results.append(acquired)
            if acquired:
                admitted.append((sent, time.monotonic()))
    assert results[:2] == [True, True]  # a fresh window
    if len(admitted) >= 3:
        assert tightest_span(admitted, 3) >= 1.0  # never 3 in any second
    last_answer = admitted[-1][1]
    # Both admissions leave the window one second after they happened; sliding_window
    # admits at most one sub-window (1/60 s) late.
    time.sleep(max(last_answer + 1.0 + 1 / 60 + 0.05 - time.monotonic(), 0))
    with limiter.acquire(raise_on_failure=False) as acquired:
        assert acquired


# -- BucketRateLimiter ------------------------------------------------------------------------


def _in_one_bucket(sent: float, answered: float, bucket: float, margin: float = 0.1) -> int | None:
    """The clock bucket an acquire was decided in, when its whole interval lies in one (with a
    margin for the server's clock, read once at its start and advanced monotonically)."""
    first, last = int((sent - margin) // bucket), int((answered + margin) // bucket)
    return first if first == last else None


def test_buckets_are_aligned_on_the_clock(tg: Tollgate, uid: str) -> None:
    # Dramatiq's scenario: limit 2 per 1 s bucket; eight tries at the start of each of two
    # seconds succeed twice in each.
    limiter = BucketRateLimiter(tg, f"{uid}-bucket", limit=2, bucket=1000)
    per_bucket: dict[int, list[bool]] = {}
    for _ in range(2):
        time.sleep(1 - time.time() % 1 + 0.1)
        for _ in range(8):
            sent = time.time()
            with limiter.acquire(raise_on_failure=False) as acquired:
                which = _in_one_bucket(sent, time.time(), 1.0)
            if which is not None:
                per_bucket.setdefault(which, []).append(acquired)
    for outcomes in per_bucket.values():
        assert sum(outcomes) <= 2
        if len(outcomes) == 8:  # all eight decided inside that second
            assert outcomes[:2] == [True, True]
            assert sum(outcomes) == 2


def test_the_docs_examples_ten_a_second_and_one_a_minute(tg: Tollgate, uid: str) -> None:
    ten = BucketRateLimiter(tg, f"{uid}-ten", limit=10, bucket=1_000)
    per_bucket: dict[int, int] = {}
    for _ in range(30):
        sent = time.time()
        with ten.acquire(raise_on_failure=False) as acquired:
            which = _in_one_bucket(sent, time.time(), 1.0)
        if acquired and which is not None:
            per_bucket[which] = per_bucket.get(which, 0) + 1
    assert per_bucket
    assert max(per_bucket.values()) <= 10

    for attempt in range(5):  # a fresh key each time the pair straddled a minute
        minute = BucketRateLimiter(tg, f"{uid}-minute-{attempt}", limit=1, bucket=60_000)
        sent = time.time()
        with minute.acquire(raise_on_failure=False) as first:
            pass
        with minute.acquire(raise_on_failure=False) as second:
            answered = time.time()
        if _in_one_bucket(sent, answered, 60.0) is not None:
            assert (first, second) == (True, False)
            return
    pytest.fail("five pairs of acquires straddled a minute boundary")


# -- Barrier ----------------------------------------------------------------------------------


def test_the_barrier_docs_example(tg: Tollgate, uid: str) -> None:
    barrier = Barrier(tg, f"{uid}-barrier", ttl=30_000)
    assert barrier.create(parties=3)
    assert not barrier.create(parties=10)  # a live one exists
    assert barrier.wait(block=False) is False
    assert barrier.wait(block=False) is False
    assert barrier.wait(block=False) is True
    assert barrier.wait(block=False) is True  # arrivals after release keep it released


def test_barriers_block_until_every_party_arrives(tg: Tollgate, uid: str) -> None:
    barrier = Barrier(tg, f"{uid}-blocking", ttl=30_000)
    assert barrier.create(parties=2)
    released: list[bool] = []

    def party() -> None:
        released.append(barrier.wait(timeout=10_000))

    first = threading.Thread(target=party)
    first.start()
    deadline = time.monotonic() + 10
    while tg.barrier_status(barrier.key)["arrived"] < 1 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert released == []
    party()
    first.join()
    assert released == [True, True]


def test_barriers_time_out_and_missing_ones_are_errors(tg: Tollgate, uid: str) -> None:
    barrier = Barrier(tg, f"{uid}-alone", ttl=30_000)
    assert barrier.create(parties=2)
    assert barrier.wait(timeout=1000) is False
    # Dramatiq's backends let a wait on a barrier never created pass; Tollgate refuses it.
    with pytest.raises(NotFoundError):
        Barrier(tg, f"{uid}-never").wait(block=False)
    brief = Barrier(tg, f"{uid}-brief", ttl=200)
    assert brief.create(parties=2)
    time.sleep(0.3)
    with pytest.raises(ConflictError):
        brief.wait()
    assert brief.create(parties=2)  # the expired one is gone: a new one is created


def test_the_limiters_take_dramatiqs_signatures() -> None:
    def shape(fn: Any) -> list[tuple[str, Any, Any]]:
        return [(p.name, p.kind, p.default) for p in inspect.signature(fn).parameters.values()]

    # Moving over is an import change: the same parameters, kinds and defaults (ms and s alike).
    for name in ("ConcurrentRateLimiter", "WindowRateLimiter", "BucketRateLimiter", "Barrier"):
        assert shape(getattr(theirs, name).__init__) == shape(globals()[name].__init__), name
    assert shape(theirs.RateLimiter.acquire) == shape(ConcurrentRateLimiter.acquire)
    assert shape(theirs.Barrier.create) == shape(Barrier.create)
    assert shape(theirs.Barrier.wait) == shape(Barrier.wait)
    assert RateLimitExceeded is dramatiq.RateLimitExceeded


def test_the_limiters_check_their_arguments(tg: Tollgate, uid: str, server: Server) -> None:
    class RedisBackendStandIn:
        pass

    with pytest.raises(TypeError, match=r"tollgate\.Tollgate client as its backend"):
        ConcurrentRateLimiter(RedisBackendStandIn(), "k")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="limit must be positive"):
        WindowRateLimiter(tg, "k", limit=0)
    with pytest.raises(ValueError, match="window must be positive"):
        WindowRateLimiter(tg, "k", window=0)
    with pytest.raises(TypeError, match="bucket must be an int"):
        BucketRateLimiter(tg, "k", bucket=0.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="parties must be positive"):
        Barrier(tg, "b").create(0)
    with pytest.raises(ValueError, match="timeout must be a number of milliseconds"):
        Barrier(tg, "b").wait(timeout=-1)
    os.environ["TOLLGATE_SERVER"] = server.url
    try:
        assert ConcurrentRateLimiter(None, f"{uid}-default").backend.url == server.url
    finally:
        del os.environ["TOLLGATE_SERVER"]


# -- the middleware, in process ---------------------------------------------------------------


@pytest.fixture
def stub() -> Iterator[StubBroker]:
    broker = StubBroker()
    broker.emit_after("process_boot")
    # Not dramatiq.get_broker(): without a broker set it would make one for a local RabbitMQ
    # or Redis on its default port, which tests never touch.
    previous = dramatiq.broker.global_broker
    dramatiq.set_broker(broker)
    yield broker
    broker.close()
    dramatiq.broker.global_broker = previous


def _deliver(broker: StubBroker, actor: Any, *args: Any) -> MessageProxy:
    message = actor.message(*args)
    return MessageProxy(message)


def test_a_denied_message_is_enqueued_again_without_a_retry(stub: StubBroker, tg: Tollgate, uid: str) -> None:
    middleware = RateLimits(client=tg)
    stub.add_middleware(middleware)
    tg.put_limit(f"{uid}-hour", limit=1, period="1h")

    @dramatiq.actor(rate_limits=[f"{uid}-hour"], actor_name=f"a{uid}")
    def job(n: int) -> int:
        return n

    first = _deliver(stub, job, 1)
    middleware.before_process_message(stub, first)  # admitted: returns
    second = _deliver(stub, job, 2)
    second.options["retries"] = 3
    with pytest.raises(SkipMessage):
        middleware.before_process_message(stub, second)
    (again,) = [Message.decode(m) for m in stub.queues[f"{job.queue_name}.DQ"].queue]
    assert again.message_id == second.message_id
    assert again.args == (2,)
    assert again.options["retries"] == 3  # not one more
    assert again.options["eta"] - time.time() * 1000 > 3_000_000  # delay = retry_after (≈ 1 h)
    assert second.options["store_results"] is False  # this delivery stores no result


def test_when_tollgate_is_unreachable_closed_delays_and_open_runs(
    stub: StubBroker, uid: str, caplog: pytest.LogCaptureFixture
) -> None:
    down = Tollgate(f"http://127.0.0.1:{free_port()}", timeout=0.2)
    closed, lenient = RateLimits(client=down), RateLimits(client=down, on_error="open")
    stub.add_middleware(closed)

    @dramatiq.actor(rate_limits=["anything"], actor_name=f"b{uid}")
    def job() -> None: ...

    message = _deliver(stub, job)
    with caplog.at_level(logging.WARNING, logger="tollgate.dramatiq"):
        with pytest.raises(SkipMessage):
            closed.before_process_message(stub, message)
        (again,) = [Message.decode(m) for m in stub.queues[f"{job.queue_name}.DQ"].queue]
        assert again.options["tollgate_unreachable"] == 1
        assert 500 <= again.options["eta"] - time.time() * 1000 <= 1500  # the first backoff, 1 s
        lenient.before_process_message(stub, _deliver(stub, job))  # no SkipMessage: it runs
    # Either way it is logged.
    messages = [r.getMessage() for r in caplog.records]
    assert any("Tollgate unreachable" in m and "on_error='closed'" in m for m in messages)
    assert any("Tollgate unreachable" in m and "on_error='open'" in m for m in messages)


def test_errors_that_are_not_about_reaching_tollgate_fail_the_message(
    stub: StubBroker, tg: Tollgate, uid: str
) -> None:
    middleware = RateLimits(client=tg)
    stub.add_middleware(middleware)

    @dramatiq.actor(rate_limits=[f"{uid}-never-declared"], actor_name=f"c{uid}")
    def job() -> None: ...

    message = _deliver(stub, job)
    with pytest.raises(SkipMessage, match="unknown_limit"):
        middleware.before_process_message(stub, message)
    assert message.failed


def test_bad_rate_limits_are_refused_when_the_actor_is_declared(stub: StubBroker, uid: str) -> None:
    stub.add_middleware(RateLimits(client=Tollgate("http://127.0.0.1:9")))
    with pytest.raises(InvalidRateLimits, match="a limit is a key"):

        @dramatiq.actor(rate_limits=[42], actor_name=f"d{uid}")
        def job() -> None: ...

    with pytest.raises(InvalidRateLimits, match="must be a list"):

        @dramatiq.actor(rate_limits="k", actor_name=f"e{uid}")
        def other() -> None: ...


# -- the middleware with a real worker process ------------------------------------------------


class DramatiqWorker:
    def __init__(self, redis_url: str, server: Server, logs: Path) -> None:
        self.prefix = f"d{uuid.uuid4().hex[:8]}"
        self.logs = logs
        self.env = {
            **os.environ,
            "BROKER_URL": f"{redis_url}/3",
            "RESULT_URL": f"{redis_url}/4",
            "RECORD_URL": f"{redis_url}/5",
            "TOLLGATE_SERVER": server.url,
            "KEY_PREFIX": self.prefix,
            "PYTHONPATH": str(TESTS),
        }
        self.broker = RedisBroker(url=self.env["BROKER_URL"])
        # Blocking reads: redis-py 8 cuts a socket read at 5 s by default.
        self.results = RedisBackend(client=redis.Redis.from_url(self.env["RESULT_URL"], socket_timeout=None))
        self.records = redis.Redis.from_url(self.env["RECORD_URL"])
        log = (logs / "dramatiq.log").open("wb")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "dramatiq",
                "dramatiq_app",
                "--processes",
                "1",
                "--threads",
                "2",
                "--queues",
                self.prefix,
            ],
            cwd=TESTS,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    def send(self, actor: str, *args: Any) -> Message[Any]:
        message: Message[Any] = Message(
            queue_name=self.prefix, actor_name=actor, args=args, kwargs={}, options={}
        )
        return self.broker.enqueue(message)

    def result(self, message: Message[Any]) -> Any:
        try:
            return self.results.get_result(message, block=True, timeout=180_000)
        except Exception as exc:
            log = (self.logs / "dramatiq.log").read_text(errors="replace")[-6000:]
            raise AssertionError(f"{exc!r}; worker log:\n{log}") from exc

    def read(self, kind: str) -> list[dict[str, Any]]:
        return [json.loads(x) for x in self.records.lrange(f"{self.prefix}:{kind}", 0, -1)]

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.broker.close()


@pytest.fixture(scope="module")
def worker(
    redis_server: Redis, server: Server, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[DramatiqWorker]:
    w = DramatiqWorker(redis_server.url, server, tmp_path_factory.mktemp("dramatiq"))
    tg = Tollgate(server.url)
    tg.put_limit(f"{w.prefix}-held", algorithm="fixed_window", limit=1, period="8s")
    tg.put_limit(f"{w.prefix}-shared", limit=100, period="1m")
    # Booted and consuming before the tests time anything.
    assert w.result(w.send("ping")) == "pong"
    yield w
    w.stop()


@pytest.mark.redis
def test_a_worker_runs_a_denied_message_later_with_its_id_and_no_retry(
    worker: DramatiqWorker, server: Server
) -> None:
    tg = Tollgate(server.url)
    held_at = time.monotonic()
    assert tg.acquire(f"{worker.prefix}-held").allowed  # the one unit, for the next eight seconds
    message = worker.send("held", 7)
    # The result is the real one, not the None a skipped delivery would store.
    assert worker.result(message) == 70

    acquires = [a for a in worker.read("acquires") if a["message_id"] == message.message_id]
    if acquires[0]["answered"] - held_at >= 8.0:
        pytest.fail("the worker took over 8 s to take the message: the denial was not exercised")
    assert [a["allowed"] for a in acquires] == [False, True]
    (start,) = [s for s in worker.read("starts") if s["message_id"] == message.message_id]
    assert start["retries"] == 0


@pytest.mark.redis
def test_a_worker_limits_per_user_from_the_arguments(worker: DramatiqWorker) -> None:
    first = worker.send("per_user", "u1", 5)
    second = worker.send("per_user", "u1", 6)
    other = worker.send("per_user", "u2", 7)
    assert [worker.result(m) for m in (first, second, other)] == [5, 6, 7]
    acquires = worker.read("acquires")
    u1 = [
        (a["sent"], a["answered"])
        for a in acquires
        if a["allowed"] and f"{worker.prefix}-user:u1" in a["keys"]
    ]
    assert len(u1) == 2
    # One per 3 s for u1 (sliding window): the two admissions are at least 3 s apart.
    assert tightest_span(u1, 2) >= 3.0
    keys = next(a["keys"] for a in acquires if f"{worker.prefix}-user:u2" in a["keys"])
    assert keys == [f"{worker.prefix}-shared", f"{worker.prefix}-user:u2"]
