"""``tollgate.celery.rate_limited`` with real Celery workers: two worker processes (prefork, two
children each) on a Redis broker the tests start, against the real Tollgate server.

What "never more than 5 starts in any second" means here: the limit is ``rate="5/s"``, a
``sliding_window`` of 5 per 1 s, whose guarantee (docs/design.md §2) is *never more than
``limit`` units admitted in any interval of length ``period``*. Each task records, on the
machine-wide monotonic clock, when its acquire was sent and when it was answered; the server's
decision lies in between. So for any six admissions, the latest answer minus the earliest
sending must be at least one second — the exact guarantee, checked without any slack and
without assuming how fast the machine is.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import random
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("celery")
import redis
from celery import Celery
from celery.result import AsyncResult

from tollgate import NotFoundError, RateLimited, Tollgate, _shared
from tollgate.celery import rate_limited

from .conftest import TESTS, Redis, Server, free_port

pytestmark = pytest.mark.redis


class Workers:
    def __init__(self, prefix: str, redis_url: str, server: Server, down_port: int, logs: Path) -> None:
        self.prefix = prefix
        self.env = {
            **os.environ,
            "BROKER_URL": f"{redis_url}/0",
            "RESULT_URL": f"{redis_url}/1",
            "RECORD_URL": f"{redis_url}/2",
            "TOLLGATE_SERVER": server.url,
            "DOWN_URL": f"http://127.0.0.1:{down_port}",
            "KEY_PREFIX": prefix,
            "PYTHONPATH": str(TESTS),
        }
        self.down_port = down_port
        self.records = redis.Redis.from_url(f"{redis_url}/2")
        self.logs = logs
        self.processes: list[subprocess.Popen[bytes]] = []
        # The test's own view of the app: same broker, backend and queue.
        self.app = Celery("tollgate_tests", broker=self.env["BROKER_URL"], backend=self.env["RESULT_URL"])
        self.app.conf.task_default_queue = f"{prefix}-queue"

    def start(self, count: int) -> None:
        for i in range(count):
            log = (self.logs / f"celery-worker-{i}.log").open("wb")
            self.processes.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "celery",
                        "-A",
                        "celery_app",
                        "worker",
                        "--pool=prefork",
                        "--concurrency=2",
                        f"--hostname=w{i}-{self.prefix}@%h",
                        "--without-gossip",
                        "--without-mingle",
                        "--without-heartbeat",
                        "--loglevel=INFO",
                    ],
                    cwd=TESTS,
                    env=self.env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
        deadline = time.monotonic() + 120
        while True:
            replies = self.app.control.ping(timeout=1.0)
            names = {name for reply in replies for name in reply if self.prefix in name}
            if len(names) >= count:
                return
            dead = [p for p in self.processes if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                raise AssertionError(f"the Celery workers did not start; logs: {self.log_text()}")

    def log_text(self) -> str:
        return "\n".join(p.read_text(errors="replace")[-4000:] for p in sorted(self.logs.glob("*.log")))

    def send(self, task: str, *args: Any) -> AsyncResult:
        return self.app.send_task(task, args=args)

    def read(self, kind: str) -> list[dict[str, Any]]:
        return [json.loads(x) for x in self.records.lrange(f"{self.prefix}:{kind}", 0, -1)]

    def stop(self) -> None:
        for p in self.processes:
            p.terminate()
        for p in self.processes:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


@pytest.fixture(scope="module")
def workers(
    redis_server: Redis, server: Server, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Workers]:
    w = Workers(
        f"c{uuid.uuid4().hex[:8]}", redis_server.url, server, free_port(), tmp_path_factory.mktemp("celery")
    )
    tg = Tollgate(server.url)
    tg.put_limit(f"{w.prefix}-five-a-second", rate="5/s")
    tg.put_limit(f"{w.prefix}-held", algorithm="fixed_window", limit=1, period="8s")
    w.start(2)
    yield w
    w.stop()


def tightest_span(windows: list[tuple[float, float]], n: int) -> float:
    """The least time that ``n`` of the admissions can span: each admission happened at some
    instant between its ``(sent, answered)``, so ``n`` of them span at most
    ``max(answered) - min(sent)``; this is the smallest such bound over every set of ``n``
    (for the admission with the earliest sending in the set, the other ``n - 1`` with the
    earliest answers among those sent no earlier)."""
    ordered = sorted(windows)
    best = float("inf")
    for i, (sent, answered) in enumerate(ordered):
        others = sorted(a for _, a in ordered[i + 1 :])
        if len(others) < n - 1:
            break
        best = min(best, max(answered, others[n - 2]) - sent)
    return best


def results(workers: Workers, sent: list[AsyncResult], within: float = 180.0) -> list[Any]:
    try:
        return [r.get(timeout=within) for r in sent]
    except Exception as exc:
        raise AssertionError(f"{exc!r}; worker logs:\n{workers.log_text()}") from exc


def test_two_workers_never_start_more_than_five_in_any_second(workers: Workers) -> None:
    sent = [workers.send("tg.charge", n) for n in range(20)]
    assert results(workers, sent) == list(range(20))

    ids = {r.id for r in sent}
    starts = [s for s in workers.read("starts") if s["task_id"] in ids]
    # Each task ran exactly once, under the id it was sent with, with no retry counted.
    assert sorted(s["n"] for s in starts) == list(range(20))
    assert {s["task_id"] for s in starts} == ids
    assert all(s["retries"] == 0 for s in starts)
    assert {r.state for r in sent} == {"SUCCESS"}
    assert len({s["pid"] for s in starts}) >= 2  # more than one worker process took part

    acquires = [a for a in workers.read("acquires") if a["task_id"] in ids]
    admitted = [a for a in acquires if a.get("allowed")]
    denied = [a for a in acquires if a.get("allowed") is False]
    assert sorted(a["task_id"] for a in admitted) == sorted(ids)  # one admission per task
    assert not [a for a in acquires if "error" in a]

    # The sliding window's guarantee: any six admissions span at least one second.
    windows = sorted((a["sent"], a["answered"]) for a in admitted)
    assert tightest_span(windows, 6) >= 1.0, "more than 5 admissions in one second"
    print(f"\n20 tasks, {len(denied)} denials sent again, over {windows[-1][1] - windows[0][0]:.2f} s")


def test_a_denied_task_is_sent_again_with_its_id_and_no_retry_counted(
    workers: Workers, server: Server
) -> None:
    tg = Tollgate(server.url)
    key = f"{workers.prefix}-held"
    held_at = time.monotonic()
    assert tg.acquire(key).allowed  # the limit's one unit, for the next eight seconds
    sent = workers.send("tg.held", 7)
    assert results(workers, [sent]) == [70]

    acquires = [a for a in workers.read("acquires") if a["task_id"] == sent.id]
    if acquires[0]["answered"] - held_at >= 8.0:
        pytest.fail("the worker took over 8 s to take the task: the denial was not exercised")
    assert [a["allowed"] for a in acquires] == [False, True]
    (start,) = [s for s in workers.read("starts") if s["task_id"] == sent.id]
    # max_retries is 0: a counted retry would have failed the task instead.
    assert start["retries"] == 0
    assert AsyncResult(sent.id, app=workers.app).state == "SUCCESS"
    # It ran once the held window was over, not before.
    assert start["at"] >= acquires[1]["sent"]


def test_unreachable_tollgate_fails_closed_then_runs_once_it_is_back(
    workers: Workers, tollgate_bin: Path
) -> None:
    sent = workers.send("tg.unreachable", 1)
    deadline = time.monotonic() + 60
    while len([a for a in workers.read("acquires") if a["task_id"] == sent.id]) < 2:
        assert time.monotonic() < deadline, workers.log_text()
        time.sleep(0.1)
    assert not [s for s in workers.read("starts") if s["task_id"] == sent.id]  # not run while down
    later = Server(tollgate_bin, listen=f"127.0.0.1:{workers.down_port}")
    try:
        Tollgate(later.url).put_limit(f"{workers.prefix}-later", rate="100/s")
        assert results(workers, [sent]) == [2]
    finally:
        later.stop()
    attempts = [a for a in workers.read("acquires") if a["task_id"] == sent.id]
    assert [a.get("error") for a in attempts[:2]] == ["connect_error", "connect_error"]
    assert attempts[-1]["allowed"] is True
    (start,) = [s for s in workers.read("starts") if s["task_id"] == sent.id]
    assert start["retries"] == 0
    assert start["unreachable"] >= 2  # the backoff counted each failure to reach Tollgate


# -- in-process (eager) -----------------------------------------------------------------------


@pytest.fixture
def app() -> Celery:
    return Celery("eager")


def test_several_decorators_make_one_atomic_acquire(app: Celery, tg: Tollgate, uid: str) -> None:
    tg.put_limit(f"{uid}-api", limit=10, period="1h")
    calls: list[Any] = []

    class Counting(Tollgate):
        def acquire(self, *limits: Any, **kw: Any) -> Any:
            calls.append(limits)
            return super().acquire(*limits, **kw)

    client = Counting(tg.url)

    @app.task(bind=True)
    @rate_limited(f"{uid}-api", client=client)
    @rate_limited(lambda user_id, **kw: f"{uid}-user:{user_id}", 2, limit=2, period="1h")
    def charge(self: Any, user_id: str, amount: int) -> int:
        return amount

    assert charge.apply(args=("u1",), kwargs={"amount": 5}).get() == 5
    assert calls[-1] == (
        {"key": f"{uid}-api", "units": 1},
        {"key": f"{uid}-user:u1", "units": 2, "limit": 2, "period": "1h"},
    )
    # u1's per-user limit is spent: the whole request is denied, and the shared limit keeps
    # the unit this denied call would have taken.
    with pytest.raises(RateLimited) as e:
        charge.apply(args=("u1",), kwargs={"amount": 5}).get()
    assert e.value.retry_after > 3000
    assert tg.get_limit(f"{uid}-api")["remaining"] == 9
    assert charge.apply(args=("u2", 1)).get() == 1
    assert len(calls) == 3


def test_unreachable_tollgate_open_runs_closed_refuses(
    app: Celery, uid: str, caplog: pytest.LogCaptureFixture
) -> None:
    down = Tollgate(f"http://127.0.0.1:{free_port()}", timeout=0.2)

    @app.task(bind=True)
    @rate_limited("anything", client=down, on_error="open")
    def lenient(self: Any) -> str:
        return "ran"

    @app.task(bind=True)
    @rate_limited("anything", client=down)
    def strict(self: Any) -> str:
        return "ran"

    with caplog.at_level(logging.WARNING, logger="tollgate.celery"):
        assert lenient.apply().get() == "ran"
        # Called outside a worker there is no message to send again: closed raises.
        with pytest.raises(RateLimited, match="Tollgate unreachable"):
            strict.apply().get()
    messages = [r.getMessage() for r in caplog.records]
    assert any("on_error='open'" in m for m in messages)
    assert any("on_error='closed'" in m for m in messages)


def test_errors_that_are_not_about_reaching_tollgate_fail_the_task(
    app: Celery, tg: Tollgate, uid: str
) -> None:
    @app.task(bind=True)
    @rate_limited(f"{uid}-never-declared", client=tg, on_error="open")
    def undeclared(self: Any) -> str:
        return "ran"

    with pytest.raises(NotFoundError) as e:
        undeclared.apply().get()
    assert e.value.code == "unknown_limit"

    @app.task(bind=True)
    @rate_limited(lambda n: n, client=tg)
    def bad_key(self: Any, n: int) -> int:
        return n

    with pytest.raises(TypeError, match="must return a non-empty str, not int 3"):
        bad_key.apply(args=(3,)).get()


def test_the_decorator_refuses_misuse(app: Celery, tg: Tollgate) -> None:
    with pytest.raises(TypeError, match=r"below @app\.task"):

        @rate_limited("k")
        @app.task
        def above() -> None: ...

    with pytest.raises(TypeError, match="unexpected keyword argument"):
        rate_limited("k", limt=5)
    with pytest.raises(ValueError, match="on_error must be 'closed' or 'open'"):
        rate_limited("k", on_error="sometimes")
    with pytest.raises(ValueError, match="at least 1"):
        rate_limited("k", 0)
    with pytest.raises(TypeError, match=r"tollgate\.Tollgate"):
        rate_limited("k", client="http://x")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="disagree on on_error"):

        @rate_limited("a", on_error="open")
        @rate_limited("b", on_error="closed")
        def both() -> None: ...


def test_the_default_client_is_one_per_process(monkeypatch: pytest.MonkeyPatch, server: Server) -> None:
    monkeypatch.setenv("TOLLGATE_SERVER", server.url)
    monkeypatch.setattr(_shared, "_client", None)
    first = _shared.default_client()
    assert first is _shared.default_client()
    assert first.url == server.url
    monkeypatch.setattr(_shared, "_pid", -1)  # as in a forked child
    assert _shared.default_client() is not first


def test_the_window_check_finds_the_tightest_six() -> None:
    # Against brute force over every set of six, on admissions of uneven latency.
    rng = random.Random(7)
    for _ in range(50):
        windows = []
        for _ in range(12):
            sent = rng.uniform(0, 4)
            windows.append((sent, sent + rng.uniform(0, 0.3)))
        brute = min(
            max(a for _, a in six) - min(s for s, _ in six) for six in itertools.combinations(windows, 6)
        )
        assert tightest_span(windows, 6) == pytest.approx(brute)
    # Five a second, evenly spaced: the tightest six span one second and a bit.
    even = [(0.2 * i, 0.2 * i + 0.01) for i in range(20)]
    assert tightest_span(even, 6) == pytest.approx(1.01)
