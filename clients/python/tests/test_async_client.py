"""The asyncio client: the same methods, awaited, against the real server."""

from __future__ import annotations

import asyncio
import inspect
import time

import pytest

from tollgate import (
    AsyncTollgate,
    BadRequestError,
    ConflictError,
    Decision,
    Feedback,
    NotFoundError,
    Pause,
    RateLimited,
    Tollgate,
    TollgateConnectionError,
    TollgateError,
)

from .conftest import UNAVAILABLE, Scripted, Server, free_port


def test_the_async_client_has_the_sync_clients_methods() -> None:
    public = {n for n in dir(Tollgate) if not n.startswith("_")} - {"close"}
    missing = {n for n in public if not hasattr(AsyncTollgate, n)}
    assert missing == set()
    for name in public:
        if callable(getattr(Tollgate, name)) and name not in ("limit", "concurrency"):
            assert inspect.iscoroutinefunction(getattr(AsyncTollgate, name)), name


def test_limits_and_acquire(server: Server, uid: str) -> None:
    async def main() -> None:
        async with AsyncTollgate(server.url) as tg:
            key = f"{uid}-api"
            assert (await tg.put_limit(key, algorithm="gcra", limit=10, period="1s", burst=5))["burst"] == 5
            assert (await tg.get_limit(key))["key"] == key
            assert key in {x["key"] for x in await tg.limits()}
            d = await tg.acquire(key, units=2)
            assert isinstance(d, Decision)
            assert d.allowed
            assert d.decisions[0].remaining == 3
            both = await tg.acquire((key, 3), {"key": f"{uid}-user", "limit": 1, "period": "1h"})
            assert both.allowed
            denied = await tg.acquire(key)
            assert not denied.allowed
            assert 0 < denied.retry_after <= 0.1
            waited = await tg.acquire(key, wait=5.0)
            assert waited.allowed
            results = await tg.acquire_batch([key], [f"{uid}-none"])
            assert isinstance(results[1], TollgateError)
            async with tg.limit(key, wait=5.0) as got:
                assert got.allowed
            await tg.put_limit(f"{uid}-hour", limit=1, period="1h")
            await tg.acquire(f"{uid}-hour")
            with pytest.raises(RateLimited) as e:
                async with tg.limit(f"{uid}-hour"):
                    pass
            assert e.value.retry_after > 3000
            await tg.delete_limit(f"{uid}-hour")
            with pytest.raises(NotFoundError):
                await tg.get_limit(f"{uid}-hour")
            with pytest.raises(BadRequestError) as bad:
                await tg.put_limit(f"{uid}-x", rate="ten a second")
            assert (bad.value.code, bad.value.field) == ("invalid_rate", "rate")

    asyncio.run(main())


def test_pauses(server: Server, uid: str) -> None:
    async def main() -> None:
        async with AsyncTollgate(server.url) as tg:
            key = f"{uid}-api"
            await tg.put_limit(key, limit=10, period="1s")
            paused = await tg.pause(key, 30)
            assert paused["paused_until_ms"] > time.time() * 1000 + 29_000
            assert not (await tg.acquire(key)).allowed
            assert [p["key"] for p in await tg.pauses()] == [key]
            assert await tg.resume(key) is True
            assert (await tg.acquire(key)).allowed
            task = f"{uid}-call"
            await tg.put_task(task, rate_limits=[{"static_key": key}])
            run = (await tg.enqueue(task, {}))["id"]
            assert [r["id"] for r in await tg.lease_runs("w", [task], max=1, wait=1.0)] == [run]
            await tg.fail(run, "429", retry=True, pause=Pause(key, 30))
            assert [p["key"] for p in await tg.pauses()] == [key]
            why = await tg.explain(run)
            assert why["limits"][0]["key"] == key

    asyncio.run(main())


def test_feedback(server: Server, uid: str) -> None:
    async def main() -> None:
        async with AsyncTollgate(server.url) as tg:
            key = f"{uid}-api"
            put = await tg.put_limit(key, algorithm="gcra", period="1s", adaptive={"min": 2, "max": 50})
            assert put["limit_in_force"] == 50
            assert (await tg.feedback(key, "throttled"))["limit_in_force"] == 25
            assert (await tg.feedback(key, "ok"))["limit_in_force"] == 26
            task = f"{uid}-call"
            await tg.put_task(task, rate_limits=[{"static_key": key}])
            run = (await tg.enqueue(task, {}))["id"]
            assert [r["id"] for r in await tg.lease_runs("w", [task], max=1, wait=1.0)] == [run]
            await tg.fail(run, "429", retry=True, feedback=Feedback(key, "throttled"))
            assert (await tg.get_limit(key))["limit_in_force"] == 13
            assert [r["id"] for r in await tg.lease_runs("w", [task], max=1, wait=1.0)] == [run]
            await tg.complete(run, feedback=(key, "ok"))
            assert (await tg.get_limit(key))["limit_in_force"] == 14

    asyncio.run(main())


def test_concurrency_is_held_renewed_and_released(server: Server, uid: str) -> None:
    async def main() -> None:
        async with AsyncTollgate(server.url) as tg:
            key = f"{uid}-db"
            async with tg.concurrency(key, holder="a", limit=1, ttl=1.0) as held:
                await asyncio.sleep(2.5)  # past its ttl twice over: renewed meanwhile
                assert not held.lost
                with pytest.raises(RateLimited):
                    async with tg.concurrency(key, limit=1, ttl=1.0):
                        pass
            lease = await tg.lease(key, limit=1, ttl=1.0)
            assert lease.acquired
            renewed = await tg.renew_lease(str(lease.lease_id))
            assert renewed["lease_id"] == lease.lease_id
            await tg.release_lease(str(lease.lease_id))
            with pytest.raises(NotFoundError):
                await tg.release_lease(str(lease.lease_id))

    asyncio.run(main())


def test_barriers(server: Server, uid: str) -> None:
    async def main() -> None:
        async with AsyncTollgate(server.url) as tg:
            key = f"{uid}-b"
            b = await tg.barrier(key, parties=3, ttl=60.0)
            assert b.created is not None
            assert b.created["parties"] == 3
            waits = [asyncio.ensure_future((await tg.barrier(key)).wait(timeout=10.0)) for _ in range(2)]
            await asyncio.sleep(0.1)
            assert not any(w.done() for w in waits)
            assert await b.wait(timeout=10.0)
            assert await asyncio.gather(*waits) == [True, True]
            assert (await b.status())["released"]
            await tg.create_barrier(f"{uid}-two", parties=2, ttl=60.0)
            assert await tg.wait_barrier(f"{uid}-two", timeout=0.2) is False
            with pytest.raises(NotFoundError):
                await tg.wait_barrier(f"{uid}-missing", timeout=0)

    asyncio.run(main())


def test_tasks_runs_and_worker_calls(server: Server, uid: str) -> None:
    async def main() -> None:
        async with AsyncTollgate(server.url) as tg:
            task = f"{uid}-t"
            assert (await tg.put_task(task, triggers=[f"{uid}/e"], lease_timeout="10s"))["name"] == task
            assert (await tg.get_task(task))["spec"]["triggers"] == [f"{uid}/e"]
            assert task in {t["name"] for t in await tg.tasks()}
            run = await tg.enqueue(task, {"a": 1})
            assert run["state"] == "queued"
            assert [r["task"] for r in await tg.send_event(f"{uid}/e", {"a": 2})] == [task]
            leased = await tg.lease_runs("w", [task], max=2, wait=1.0)
            assert len(leased) == 2
            first, second = leased
            assert (await tg.heartbeat(first["id"], attempt=1))["state"] == "running"
            assert (await tg.complete(first["id"], {"done": 1}, attempt=1))["output"] == {"done": 1}
            assert (await tg.release(second["id"], attempt=1))["state"] == "queued"
            again = await tg.lease_runs("w", [task], max=1)
            assert (await tg.fail(again[0]["id"], "no", attempt=again[0]["attempt"]))["state"] == "failed"
            with pytest.raises(ConflictError):
                await tg.cancel(first["id"])
            assert (await tg.run(run["id"]))["id"] == run["id"]
            assert len(await tg.runs(task=task)) == 2
            assert (await tg.healthz())["status"] == "ok"
            assert "tollgate_run_transitions_total" in await tg.metrics()

    asyncio.run(main())


def test_an_unreachable_server(uid: str) -> None:
    async def main() -> None:
        async with AsyncTollgate(f"http://127.0.0.1:{free_port()}", timeout=0.3) as tg:
            start = time.monotonic()
            with pytest.raises(TollgateConnectionError) as e:
                await tg.acquire("k")
            assert time.monotonic() - start < 10
            assert e.value.transient

    asyncio.run(main())


def test_the_url_from_the_environment_and_a_transient_503_retried(
    monkeypatch: pytest.MonkeyPatch, scripted: tuple[str, type[Scripted]]
) -> None:
    url, handler = scripted
    handler.answers = [(503, UNAVAILABLE), (503, UNAVAILABLE), (200, b'{"status": "ok"}')]

    async def main() -> None:
        monkeypatch.delenv("TOLLGATE_SERVER", raising=False)
        async with AsyncTollgate() as default:
            assert (default.url, default.timeout) == ("http://127.0.0.1:7070", 30.0)
        monkeypatch.setenv("TOLLGATE_SERVER", url)
        async with AsyncTollgate(timeout=5.0) as tg:
            assert tg.url == url
            assert await tg.healthz() == {"status": "ok"}
        assert handler.seen == ["GET /healthz"] * 3

    asyncio.run(main())
