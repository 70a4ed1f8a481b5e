"""The synchronous client against the real server: every route, the answers' types, the
errors by status, and the client's own checks of bad input."""

from __future__ import annotations

import http.server
import threading
import time

import pytest

import tollgate
from tollgate import (
    BadRequestError,
    ConflictError,
    Decision,
    ForbiddenError,
    NotFoundError,
    Pause,
    PayloadTooLargeError,
    RateLimited,
    Tollgate,
    TollgateConnectionError,
    TollgateError,
    UnauthorizedError,
    UnavailableError,
    UnprocessableError,
)

from .conftest import UNAVAILABLE, Scripted, Server, free_port

# -- limits -----------------------------------------------------------------------------------


def test_limits_are_declared_read_listed_and_deleted(tg: Tollgate, uid: str) -> None:
    key = f"{uid}-stripe"
    answer = tg.put_limit(key, algorithm="gcra", limit=10, period="1s", burst=5)
    assert answer["key"] == key
    assert (answer["algorithm"], answer["limit"], answer["period"], answer["burst"]) == ("gcra", 10, "1s", 5)
    assert answer["remaining"] == 5

    emails = tg.put_limit(f"{uid}-emails", rate="100/m")
    assert (emails["algorithm"], emails["limit"], emails["period"]) == ("sliding_window", 100, "1m")

    assert tg.get_limit(key)["burst"] == 5
    listed = tg.limits()
    assert {key, f"{uid}-emails"} <= {x["key"] for x in listed}
    assert isinstance(listed.dynamic_total, int)

    tg.delete_limit(f"{uid}-emails")
    with pytest.raises(NotFoundError) as e:
        tg.get_limit(f"{uid}-emails")
    assert (e.value.status, e.value.code, e.value.field) == (404, "unknown_limit", "key")


def test_a_number_for_a_period_is_seconds(tg: Tollgate, uid: str) -> None:
    assert tg.put_limit(f"{uid}-a", limit=3, period=1.5)["period"] == "1s500ms"
    assert tg.put_limit(f"{uid}-db", algorithm="concurrency", limit=2, lease_ttl=30)["lease_ttl"] == "30s"
    # A task's rate limit takes Hatchet's ``duration`` for its period: seconds there too.
    spec = tg.put_task(
        f"{uid}-hatchet",
        rate_limits=[
            {"dynamic_key": "input.user_id", "limit": 10, "duration": 60},
            {"dynamic_key": "input.org_id", "limit": 100, "duration": "HOUR"},
        ],
    )["spec"]
    assert [r["period"] for r in spec["rate_limits"]] == ["60s", "HOUR"]


def test_dynamic_keys_are_listed_with_their_total(tg: Tollgate, uid: str) -> None:
    for i in range(3):
        assert tg.acquire({"key": f"{uid}-user-{i}", "limit": 5, "period": "1h"}).allowed
    everything = tg.limits()
    assert {f"{uid}-user-{i}" for i in range(3)} <= {x["key"] for x in everything}
    assert everything.dynamic_total >= 3
    none = tg.limits(dynamic=0)
    assert all(x["namespace"] == "static" for x in none)
    assert none.dynamic_total >= 3


# -- acquire ----------------------------------------------------------------------------------


def test_acquire_takes_units_and_says_what_is_left(tg: Tollgate, uid: str) -> None:
    key = f"{uid}-api"
    tg.put_limit(key, algorithm="gcra", limit=10, period="1s", burst=5)
    d = tg.acquire(key, units=2)
    assert isinstance(d, Decision)
    assert d.allowed and bool(d) and d.retry_after == 0.0
    assert [(x.key, x.allowed, x.limit, x.remaining) for x in d.decisions] == [(key, True, 5, 3)]


def test_acquire_is_all_or_nothing(tg: Tollgate, uid: str) -> None:
    api, user = f"{uid}-api", f"{uid}-user"
    tg.put_limit(api, limit=10, period="1h")
    assert tg.acquire({"key": user, "limit": 1, "period": "1h"}).allowed
    d = tg.acquire((api, 2), {"key": user, "limit": 1, "period": "1h"})
    assert not d.allowed and not d
    assert d.retry_after > 3000
    assert [x.allowed for x in d.decisions] == [True, False]
    # The denied request took nothing from the key that would have admitted it.
    assert tg.get_limit(api)["remaining"] == 10


def test_acquire_waits_on_the_server_until_admitted(tg: Tollgate, uid: str) -> None:
    key = f"{uid}-slow"
    tg.put_limit(key, limit=1, period="2s", algorithm="fixed_window")
    assert tg.acquire(key).allowed
    before = time.monotonic()
    denied = tg.acquire(key)
    assert not denied.allowed
    assert 0 < denied.retry_after <= 2.0
    d = tg.acquire(key, wait=5.0)
    assert d.allowed
    # Never early: the denial was decided after `before`, the window opened retry_after (rounded
    # up to the millisecond) after that, and only then could the waiting call be admitted.
    assert time.monotonic() - before >= denied.retry_after - 0.001


def test_a_wait_too_short_answers_the_denial_at_once(tg: Tollgate, uid: str) -> None:
    key = f"{uid}-hour"
    tg.put_limit(key, limit=1, period="1h")
    assert tg.acquire(key).allowed
    d = tg.acquire(key, wait=2.0)
    assert not d.allowed and d.retry_after > 3000


def test_acquire_batch_answers_errors_in_place(tg: Tollgate, uid: str) -> None:
    key = f"{uid}-emails"
    tg.put_limit(key, limit=3, period="1h")
    results = tg.acquire_batch([key], [(key, 2)], [(key, 1)], [f"{uid}-undeclared"])
    assert isinstance(results[0], Decision) and results[0].allowed
    assert isinstance(results[1], Decision) and results[1].allowed
    assert isinstance(results[2], Decision) and not results[2].allowed
    err = results[3]
    assert isinstance(err, TollgateError)
    assert (err.code, err.field) == ("unknown_limit", "requests[3].limits[0].key")


def test_limit_context_runs_the_block_or_raises_rate_limited(tg: Tollgate, uid: str) -> None:
    key = f"{uid}-ctx"
    tg.put_limit(key, limit=1, period="1h")
    ran = []
    with tg.limit(key, units=1, wait=1.0) as d:
        ran.append(d.allowed)
    assert ran == [True]
    with pytest.raises(RateLimited) as e, tg.limit(key, wait=0.1):
        ran.append(False)
    assert ran == [True]
    assert e.value.retry_after > 3000
    assert isinstance(e.value.answer, Decision)
    assert key in str(e.value)


# -- concurrency leases -----------------------------------------------------------------------


def test_leases_count_slots_and_free_them(tg: Tollgate, uid: str) -> None:
    key = f"{uid}-db"
    first = tg.lease(key, limit=2, ttl=30.0, holder="a")
    second = tg.lease(key, limit=2, ttl=30.0, holder="b")
    third = tg.lease(key, limit=2, ttl=30.0, holder="c")
    assert first.acquired and second.acquired and not third.acquired
    assert third.retry_after > 25 and third.limit == 2 and third.remaining == 0
    assert first.expires_at is not None and first.expires_at > time.time()
    renewed = tg.renew_lease(str(first.lease_id), ttl=60.0)
    assert renewed["lease_id"] == first.lease_id
    tg.release_lease(str(first.lease_id))
    assert tg.lease(key, limit=2, holder="c").acquired
    with pytest.raises(NotFoundError) as e:
        tg.release_lease(str(first.lease_id))
    assert e.value.code == "unknown_lease"


def test_concurrency_context_holds_renews_and_releases(tg: Tollgate, uid: str) -> None:
    key = f"{uid}-pool"
    # The slot outlives its ttl twice over: the background renewal keeps it.
    with tg.concurrency(key, holder="w1", limit=1, ttl=1.0) as held:
        time.sleep(2.5)
        assert not held.lost
        with pytest.raises(RateLimited) as e, tg.concurrency(key, holder="w2", limit=1, ttl=1.0):
            pass
        assert 0 < e.value.retry_after <= 1.0
    # Released on exit: the next holder gets it at once.
    with tg.concurrency(key, limit=1, ttl=1.0) as again:
        assert again.lease_id != held.lease_id


def test_concurrency_context_waits_for_a_slot(tg: Tollgate, uid: str) -> None:
    key = f"{uid}-pool"
    holder = tg.lease(key, limit=1, ttl=0.4)
    assert holder.acquired
    with tg.concurrency(key, limit=1, ttl=5.0, wait=5.0) as held:
        assert held.lease_id != holder.lease_id
        # The first holder never released: the slot came free when its lease expired.
        with pytest.raises(ConflictError) as e:
            tg.renew_lease(str(holder.lease_id))
        assert e.value.code == "lease_expired"


def test_a_declared_concurrency_limit_is_leased_by_key(tg: Tollgate, uid: str) -> None:
    key = f"{uid}-declared"
    tg.put_limit(key, algorithm="concurrency", limit=1, lease_ttl="30s")
    with tg.concurrency(key):
        assert not tg.lease(key).acquired
    with pytest.raises(UnprocessableError) as e:
        tg.acquire(key)
    assert e.value.code == "wrong_algorithm"


# -- barriers ---------------------------------------------------------------------------------


def test_a_barrier_releases_every_party_together(tg: Tollgate, uid: str) -> None:
    key = f"{uid}-batch"
    b = tg.barrier(key, parties=3, ttl=60.0)
    assert b.created is not None and b.created["parties"] == 3 and b.created["arrived"] == 0
    results: list[bool] = []

    def party() -> None:
        results.append(tg.barrier(key).wait(timeout=10.0))

    threads = [threading.Thread(target=party) for _ in range(2)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 10
    while tg.barrier_status(key)["arrived"] < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert results == []  # two of three arrived: nobody is released yet
    assert b.wait(timeout=10.0)
    for t in threads:
        t.join()
    assert results == [True, True]
    assert b.status()["released"]


def test_a_barrier_wait_times_out_and_a_missing_one_is_an_error(tg: Tollgate, uid: str) -> None:
    key = f"{uid}-alone"
    tg.create_barrier(key, parties=2, ttl=60.0)
    assert tg.wait_barrier(key, timeout=0.2) is False
    with pytest.raises(NotFoundError) as e:
        tg.wait_barrier(f"{uid}-never-created", timeout=0.1)
    assert e.value.code == "unknown_barrier"
    with pytest.raises(ValueError, match="both parties and ttl"):
        tg.barrier(key, parties=2)


def test_an_expired_barrier_is_an_error_not_a_pass(tg: Tollgate, uid: str) -> None:
    key = f"{uid}-brief"
    tg.create_barrier(key, parties=2, ttl=0.2)
    time.sleep(0.3)
    with pytest.raises(ConflictError) as e:
        tg.wait_barrier(key)
    assert e.value.code == "barrier_expired"


# -- tasks, runs, events, worker calls --------------------------------------------------------


def test_tasks_runs_and_events(tg: Tollgate, uid: str) -> None:
    limit, task, event = f"{uid}-limit", f"{uid}-sync", f"{uid}/updated"
    tg.put_limit(limit, rate="100/s")
    answer = tg.put_task(
        task,
        rate_limits=[
            {"static_key": limit, "units": 1},
            {"dynamic_key": "input.user_id", "limit": 10, "period": 60},
        ],
        concurrency=[{"key": "input.user_id", "limit": 2}],
        triggers=[event],
        max_attempts=2,
        lease_timeout=5,
    )
    assert answer["name"] == task
    assert answer["spec"]["lease_timeout"] == "5s"
    assert answer["spec"]["rate_limits"][1]["period"] == "60s"
    assert tg.get_task(task)["spec"]["max_attempts"] == 2
    assert task in {t["name"] for t in tg.tasks()}

    # Celery's rate_limit, global: a throttle, as a rate string or Inngest's object (period in
    # seconds), shown back as the server keeps it.
    celery = tg.put_task(f"{uid}-celery", throttle="10/m")
    assert celery["spec"]["throttle"] == "10/m"
    inngest = tg.put_task(f"{uid}-inngest", throttle={"limit": 10, "period": 3600, "key": "input.user_id"})
    assert inngest["spec"]["throttle"] == {"limit": 10, "period": "3600s", "key": "input.user_id"}
    first = tg.enqueue(f"{uid}-inngest", {"user_id": "u1"})
    second = tg.enqueue(f"{uid}-inngest", {"user_id": "u1"})
    leased = tg.lease_runs("w", [f"{uid}-inngest"], max=10)
    assert [r["id"] for r in leased] == [first["id"]]
    assert tg.run(second["id"])["state"] == "waiting"
    # Celery's countdown / eta: scheduled until due.
    later = tg.enqueue(f"{uid}-celery", {}, delay=30)
    assert later["state"] == "scheduled"
    assert later["eligible_at_ms"] - later["created_at_ms"] in (30_000, 30_001)  # ms rounding
    at = tg.enqueue(f"{uid}-celery", {}, run_at=later["eligible_at_ms"] / 1000)
    assert (at["state"], at["eligible_at_ms"]) == ("scheduled", later["eligible_at_ms"])
    with pytest.raises(ValueError, match="not both"):
        tg.enqueue(f"{uid}-celery", {}, delay=1, run_at=1)
    # A retry after an upstream's Retry-After: scheduled until then.
    tg.put_task(f"{uid}-retrying", max_attempts=3, retry={"backoff": "1h"})
    first_try = tg.enqueue(f"{uid}-retrying", {})
    assert [r["id"] for r in tg.lease_runs("w", [f"{uid}-retrying"], max=1)] == [first_try["id"]]
    retried = tg.fail(first_try["id"], "429", retry=True, retry_after=2)
    assert retried["state"] == "scheduled"
    assert retried["eligible_at_ms"] - retried["updated_at_ms"] in (2_000, 2_001)
    with pytest.raises(ValueError, match="retry=True"):
        tg.fail(first_try["id"], "x", retry_after=1)
    # Inngest's rateLimit: over it, a run is skipped at enqueue.
    tg.put_task(f"{uid}-skipping", rate_limit={"limit": 1, "period": 3600})
    assert tg.enqueue(f"{uid}-skipping", {})["state"] == "queued"
    assert tg.enqueue(f"{uid}-skipping", {})["state"] == "skipped"

    run = tg.enqueue(task, {"user_id": "u1"}, additional_metadata={"tier": "pro"})
    assert (run["task"], run["state"], run["attempt"]) == (task, "queued", 0)
    assert run["additional_metadata"] == {"tier": "pro"}
    started = tg.send_event(event, {"user_id": "u2"})
    assert [(r["task"], r["state"]) for r in started] == [(task, "queued")]
    assert tg.send_event(f"{uid}/nobody-listens", {}) == []

    assert tg.run(run["id"])["input"] == {"user_id": "u1"}
    listed = tg.runs(task=task)
    assert {r["id"] for r in listed} == {run["id"], started[0]["id"]}
    assert tg.runs(task=task, state="succeeded") == []
    assert len(tg.runs(task=task, limit=1)) == 1


def test_an_event_a_task_cannot_evaluate_fails_that_run_and_the_others_proceed(
    tg: Tollgate, uid: str
) -> None:
    event = f"{uid}/company.updated"
    plain, limited = f"{uid}-a-plain", f"{uid}-b-limited"
    tg.put_task(plain, triggers=[event])
    tg.put_task(
        limited,
        triggers=[event],
        rate_limits=[{"dynamic_key": "event.data.company_id", "limit": 1, "period": "4h"}],
    )
    # Not an error: the answer lists every run, the one that could not be rendered as failed.
    runs = {r["task"]: r for r in tg.send_event(event, {"name": "no id"})}
    assert set(runs) == {plain, limited}
    assert runs[plain]["state"] == "queued" and "error" not in runs[plain]
    assert runs[limited]["state"] == "failed"
    assert runs[limited]["error"].startswith(
        'invalid_expression: rate_limits[0].dynamic_key: expression "event.data.company_id"'
    )
    stored = tg.run(runs[limited]["id"])
    assert (stored["state"], stored["error"]) == ("failed", runs[limited]["error"])
    assert tg.run(runs[plain]["id"])["state"] == "queued"
    # A direct enqueue with input the task's CEL cannot evaluate is still refused, nothing kept.
    other = f"{uid}-c-input"
    tg.put_task(other, rate_limits=[{"dynamic_key": "input.company_id", "limit": 1, "period": "4h"}])
    with pytest.raises(UnprocessableError) as e:
        tg.enqueue(other, {"name": "no id"})
    assert e.value.code == "invalid_expression"
    assert tg.runs(task=other) == []


def test_worker_calls(tg: Tollgate, uid: str) -> None:
    task = f"{uid}-work"
    tg.put_task(task, max_attempts=3)
    ids = [tg.enqueue(task, {"n": i})["id"] for i in range(4)]
    leased = tg.lease_runs("w1", [task], max=4, wait=1.0)
    assert sorted(r["id"] for r in leased) == sorted(ids)
    by_id = {r["id"]: r for r in leased}
    assert all(r["attempt"] == 1 for r in leased)

    a, b, c, d = ids
    assert tg.heartbeat(a, attempt=1)["state"] == "running"
    done = tg.complete(a, {"ok": True}, attempt=1)
    assert (done["state"], done["output"]) == ("succeeded", {"ok": True})
    again = tg.fail(b, "upstream 502", retry=True, attempt=1)
    assert (again["state"], again["error"]) == ("queued", "upstream 502")
    failed = tg.fail(c, "bad input", attempt=by_id[c]["attempt"])
    assert failed["state"] == "failed"
    released = tg.release(d, attempt=1)
    assert (released["state"], released["attempt"]) == ("queued", 0)
    # A call for an attempt that is over is refused, naming the field.
    with pytest.raises(ConflictError) as e:
        tg.complete(a, None, attempt=1)
    assert e.value.code == "invalid_state"
    cancelled = tg.cancel(d)
    assert cancelled["state"] == "cancelled"
    with pytest.raises(NotFoundError) as e2:
        tg.run("no-such-run")
    assert e2.value.code == "unknown_run"


def test_a_paused_key_holds_acquires_and_runs_back_until_resumed(tg: Tollgate, uid: str) -> None:
    key, task = f"{uid}-api", f"{uid}-call"
    tg.put_limit(key, algorithm="gcra", limit=100, period="1s", burst=100)
    tg.put_task(task, rate_limits=[{"static_key": key}])
    before = time.time()
    paused = tg.pause(key, 60)
    assert (paused["key"], paused["namespace"]) == (key, "static")
    assert before + 59 < paused["paused_until_ms"] / 1000 <= time.time() + 60.001
    denied = tg.acquire(key)
    assert not denied.allowed
    assert 59 < denied.retry_after <= 60
    assert tg.get_limit(key)["paused_until_ms"] == paused["paused_until_ms"]
    assert {"key": key, "namespace": "static", "paused_until_ms": paused["paused_until_ms"]} in tg.pauses()
    run = tg.enqueue(task, {})["id"]
    assert tg.lease_runs("w1", [task], max=1, wait=0) == []
    waiting = tg.run(run)
    assert (waiting["state"], waiting["waiting_on"]) == ("waiting", key)
    assert waiting["eligible_at_ms"] == paused["paused_until_ms"]
    assert tg.resume(key) is True
    assert tg.resume(key) is False
    assert [r["id"] for r in tg.lease_runs("w1", [task], max=1, wait=1.0)] == [run]
    # A worker told 429 pauses the key for everyone as it fails the run.
    failed = tg.fail(run, "429", retry=True, attempt=1, pause=Pause(key, 30))
    assert failed["state"] == "queued"
    until = next(p for p in tg.pauses() if p["key"] == key)["paused_until_ms"]
    assert time.time() + 29 < until / 1000 <= time.time() + 30.001
    assert tg.lease_runs("w1", [task], max=1, wait=0) == []
    assert tg.run(run)["eligible_at_ms"] == until
    # An urgent run goes ahead of the one already waiting.
    urgent = tg.enqueue(task, {}, priority=4)
    assert urgent["priority"] == 4
    assert tg.lease_runs("w1", [task], max=1, wait=0) == []
    assert tg.explain(urgent["id"])["limits"][0]["position"] == 0
    assert tg.explain(run)["limits"][0]["position"] == 1
    with pytest.raises(ValueError, match="priority"):
        tg.enqueue(task, {}, priority=5)
    tg.cancel(urgent["id"])
    # Why it waits, key by key.
    why = tg.explain(run)
    assert (why["state"], why["limits"][0]["key"], why["limits"][0]["paused_until_ms"]) == (
        "waiting",
        key,
        until,
    )
    assert why["limits"][0]["position"] == 0
    # A dynamic key, until an instant.
    dynamic = tg.pause(f"{uid}-user", until=time.time() + 5, dynamic=True)
    assert dynamic["namespace"] == "dynamic"
    assert tg.resume(f"{uid}-user", dynamic=True) is True
    # Bad pauses: refused before sending, or by the server with the field named.
    with pytest.raises(ValueError, match="exactly one"):
        tg.pause(key)
    with pytest.raises(ValueError, match="exactly one"):
        tg.pause(key, 1, until=time.time())
    with pytest.raises(ValueError, match="more than zero"):
        tg.pause(key, 0)
    with pytest.raises(TypeError):
        tg.fail(run, "x", pause="api")  # type: ignore[arg-type]
    with pytest.raises(NotFoundError) as e:
        tg.pause(f"{uid}-undeclared", 1)
    assert (e.value.code, e.value.field) == ("unknown_limit", "key")


def test_feedback_adapts_a_limit_between_its_bounds(tg: Tollgate, uid: str) -> None:
    key, task = f"{uid}-api", f"{uid}-call"
    put = tg.put_limit(key, algorithm="fixed_window", period="1h", adaptive={"min": 1, "max": 4})
    assert (put["limit_in_force"], put["adaptive"]) == (4, {"min": 1, "max": 4})
    assert tg.feedback(key, "throttled")["limit_in_force"] == 2
    assert tg.feedback(key, "throttled")["limit_in_force"] == 1
    assert tg.feedback(key, "throttled")["limit_in_force"] == 1  # never below min
    assert tg.get_limit(key)["limit"] == 1
    assert next(lim for lim in tg.limits() if lim["key"] == key)["limit_in_force"] == 1
    # One run fits; a worker's `ok` with its outcome lets the next one go at once.
    tg.put_task(task, rate_limits=[{"static_key": key}])
    first, second = tg.enqueue(task, {})["id"], tg.enqueue(task, {})["id"]
    assert [r["id"] for r in tg.lease_runs("w1", [task], max=2, wait=0)] == [first]
    assert tg.run(second)["state"] == "waiting"
    done = tg.complete(first, {"sent": True}, attempt=1, feedback=tollgate.Feedback(key, "ok"))
    assert done["state"] == "succeeded"
    assert tg.get_limit(key)["limit_in_force"] == 2
    assert tg.run(second)["state"] == "queued"
    assert [r["id"] for r in tg.lease_runs("w1", [task], max=1, wait=0)] == [second]
    # A worker told 429 halves it as it fails the run; a (key, outcome) pair does as well.
    failed = tg.fail(second, "429", retry=True, attempt=1, feedback=(key, "throttled"))
    assert failed["state"] == "queued"
    assert tg.get_limit(key)["limit_in_force"] == 1
    # The same definition again keeps what was learnt.
    again = tg.put_limit(key, algorithm="fixed_window", period="1h", adaptive={"min": 1, "max": 4})
    assert again["limit_in_force"] == 1
    # Refused: a limit that does not adapt, a key nobody declared, an outcome there is not.
    plain = f"{uid}-plain"
    tg.put_limit(plain, rate="10/s")
    assert tg.get_limit(plain)["limit_in_force"] is None
    with pytest.raises(UnprocessableError) as e:
        tg.feedback(plain, "ok")
    assert (e.value.code, e.value.field) == ("not_adaptive", "key")
    with pytest.raises(NotFoundError) as nf:
        tg.feedback(f"{uid}-undeclared", "ok")
    assert (nf.value.code, nf.value.field) == ("unknown_limit", "key")
    with pytest.raises(ValueError, match="ok"):
        tg.feedback(key, "slow")
    with pytest.raises(ValueError, match="ok"):
        tg.complete(first, feedback=(key, "maybe"))
    with pytest.raises(TypeError):
        tg.fail(second, "x", feedback="api")  # type: ignore[arg-type]
    with pytest.raises(BadRequestError) as bad:
        tg.put_limit(f"{uid}-bad", algorithm="gcra", period="1s", adaptive={"min": 5, "max": 2})
    assert (bad.value.code, bad.value.field) == ("invalid_field", "adaptive.min")


# -- errors -----------------------------------------------------------------------------------


def test_server_errors_have_a_class_per_status(tg: Tollgate, uid: str) -> None:
    with pytest.raises(BadRequestError) as bad:
        tg.put_limit(f"{uid}-x", limit=10, period="10 apples")
    assert (bad.value.status, bad.value.code, bad.value.field) == (400, "invalid_period", "period")
    assert "10 apples" in bad.value.message and "invalid_period" in str(bad.value)

    with pytest.raises(BadRequestError) as unknown:
        tg.put_limit(f"{uid}-x", rate="1/s", colour="red")
    assert (unknown.value.code, unknown.value.field) == ("unknown_field", "colour")

    tg.put_limit(f"{uid}-small", limit=2, period="1s")
    with pytest.raises(UnprocessableError) as capacity:
        tg.acquire(f"{uid}-small", units=3)
    assert (capacity.value.status, capacity.value.code, capacity.value.field) == (
        422,
        "insufficient_capacity",
        "limits[0].units",
    )

    tg.put_task(f"{uid}-t", rate_limits=[{"static_key": f"{uid}-small"}])
    with pytest.raises(ConflictError) as in_use:
        tg.delete_limit(f"{uid}-small")
    assert (in_use.value.status, in_use.value.code) == (409, "limit_in_use")

    with pytest.raises(PayloadTooLargeError) as large:
        tg.enqueue(f"{uid}-t", {"blob": "x" * (1 << 20)})
    assert (large.value.status, large.value.code) == (413, "payload_too_large")

    with pytest.raises(NotFoundError):
        tg.enqueue(f"{uid}-undefined", {})
    for err in (bad.value, capacity.value, in_use.value, large.value):
        assert isinstance(err, TollgateError) and not err.transient


def test_bad_input_is_refused_before_sending(tg: Tollgate, uid: str) -> None:
    with pytest.raises(ValueError, match="at least one limit"):
        tg.acquire()
    with pytest.raises(TypeError, match="units must be an int"):
        tg.acquire("k", units=True)
    with pytest.raises(ValueError, match="at least 1"):
        tg.acquire("k", units=0)
    with pytest.raises(ValueError, match="applies to one key"):
        tg.acquire("a", "b", units=2)
    with pytest.raises(TypeError, match="an entry is a key"):
        tg.acquire(42)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="needs a 'key'"):
        tg.acquire({"limit": 3, "period": "1s"})
    with pytest.raises(ValueError, match=r"\(key, units\)"):
        tg.acquire(("a", 1, 2))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="wait must be zero or more seconds"):
        tg.acquire("a", wait=-1)
    with pytest.raises(ValueError, match="must not be empty"):
        tg.get_limit("")
    with pytest.raises(ValueError, match="state must be one of"):
        tg.runs(state="done")
    with pytest.raises(ValueError, match="ttl must be more than zero"):
        tg.lease("k", ttl=0)
    with pytest.raises(ValueError, match="period must be more than zero"):
        tg.put_limit("k", limit=1, period=0)
    with pytest.raises(ValueError, match="invalid Tollgate server URL"):
        Tollgate("127.0.0.1:7070")
    with pytest.raises(ValueError, match="no query"):
        Tollgate("http://h/?q=1")
    with pytest.raises(ValueError, match="timeout must be a positive"):
        Tollgate("http://h", timeout=0)


def test_the_url_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch, server: Server) -> None:
    monkeypatch.setenv("TOLLGATE_SERVER", server.url)
    assert Tollgate().healthz() == {"status": "ok"}
    monkeypatch.delenv("TOLLGATE_SERVER")
    assert Tollgate().url == "http://127.0.0.1:7070"
    monkeypatch.setenv("TOLLGATE_SERVER", "nonsense")
    with pytest.raises(ValueError, match=r"from \$TOLLGATE_SERVER"):
        Tollgate()


def test_keys_are_one_path_segment(tg: Tollgate, uid: str) -> None:
    key = f"{uid}/a b?c%d"
    assert tg.put_limit(key, rate="5/s")["key"] == key
    assert tg.get_limit(key)["key"] == key


def test_metrics_and_health(tg: Tollgate) -> None:
    assert tg.healthz() == {"status": "ok"}
    assert "tollgate_decisions_total" in tg.metrics()


# -- transient errors, with a stand-in server -------------------------------------------------


def test_a_transient_503_is_retried_within_the_timeout(scripted: tuple[str, type[Scripted]]) -> None:
    url, handler = scripted
    handler.answers = [(503, UNAVAILABLE), (503, UNAVAILABLE), (200, b'{"status": "ok"}')]
    assert Tollgate(url, timeout=5.0).healthz() == {"status": "ok"}
    assert handler.seen == ["GET /healthz"] * 3


def test_a_503_that_lasts_is_raised_once_the_timeout_is_spent(scripted: tuple[str, type[Scripted]]) -> None:
    url, handler = scripted
    handler.answers = [(503, UNAVAILABLE)] * 100
    start = time.monotonic()
    with pytest.raises(UnavailableError) as e:
        Tollgate(url, timeout=0.5).get_limit("k")
    assert time.monotonic() - start < 5
    assert (e.value.status, e.value.code, e.value.transient) == (503, "store_unavailable", True)
    assert len(handler.seen) >= 2


def test_a_proxy_refusal_is_typed_by_status(scripted: tuple[str, type[Scripted]]) -> None:
    url, handler = scripted
    handler.answers = [(401, b"<html>login</html>"), (403, b"no"), (502, b"bad gateway")]
    client = Tollgate(url, headers={"authorization": "Bearer t"})
    with pytest.raises(UnauthorizedError) as e401:
        client.healthz()
    assert (e401.value.status, e401.value.code) == (401, "http_401")
    assert "login" in e401.value.message
    with pytest.raises(ForbiddenError):
        client.healthz()
    with pytest.raises(TollgateError) as e502:
        client.healthz()
    assert e502.value.status == 502 and e502.value.transient


def test_an_unreachable_server_is_a_connection_error() -> None:
    port = free_port()
    with pytest.raises(TollgateConnectionError) as e:
        Tollgate(f"http://127.0.0.1:{port}", timeout=0.3).healthz()
    assert e.value.transient and e.value.status is None and e.value.code == "connect_error"
    assert f"127.0.0.1:{port}" in str(e.value)


def test_a_refused_connection_is_retried_until_the_server_is_up() -> None:
    port = free_port()
    handler: type[Scripted] = type(
        "Handler", (Scripted,), {"answers": [(200, b'{"status": "ok"}')], "seen": []}
    )
    started: list[http.server.ThreadingHTTPServer] = []

    def start_later() -> None:
        time.sleep(0.3)
        httpd = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
        started.append(httpd)
        httpd.serve_forever()

    threading.Thread(target=start_later, daemon=True).start()
    try:
        # The request never reached a server, so it is safe to send again: the call succeeds
        # once the server is up, within its timeout.
        assert Tollgate(f"http://127.0.0.1:{port}", timeout=20.0).healthz() == {"status": "ok"}
        assert handler.seen == ["GET /healthz"]
    finally:
        for httpd in started:
            httpd.shutdown()


def test_everything_is_exported() -> None:
    for name in tollgate.__all__:
        assert hasattr(tollgate, name), name
