"""The asyncio client, :class:`AsyncTollgate`: the same methods as :class:`tollgate.Tollgate`,
awaited; ``limit`` and ``concurrency`` are ``async with`` context managers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from types import TracebackType
from typing import Any, TypeVar

import httpx

from . import _core as core
from ._core import Decision, Entry, Lease, LimitList, Op
from ._errors import RateLimited, TollgateError
from .client import HeldLease, default_holder, transport_error

T = TypeVar("T")
log = logging.getLogger("tollgate")


class AsyncTollgate:
    """A Tollgate server, reached over HTTP from asyncio code. See :class:`tollgate.Tollgate`:
    the same constructor, methods, errors and retries, each method a coroutine."""

    def __init__(
        self,
        url: str | None = None,
        *,
        timeout: float = core.DEFAULT_TIMEOUT,
        headers: Mapping[str, str] | None = None,
        token: str | None = None,
        ca_cert: str | os.PathLike[str] | None = None,
    ) -> None:
        self.url = core.base_url(url)
        self.timeout = core.check_timeout(timeout)
        self.headers: dict[str, str] = dict(headers or {})
        self._http = httpx.AsyncClient(
            base_url=self.url,
            headers={"user-agent": "tollgate-python", **self.headers, **core.auth_headers(token)},
            verify=core.tls_verify(ca_cert),
            timeout=self.timeout,
        )

    def __repr__(self) -> str:
        return f"AsyncTollgate({self.url!r}, timeout={self.timeout!r})"

    async def aclose(self) -> None:
        """Closes the connection pool."""
        await self._http.aclose()

    async def __aenter__(self) -> AsyncTollgate:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def _send(self, op: Op[T]) -> T:
        deadline = time.monotonic() + self.timeout
        attempt = 0
        while True:
            left = max(deadline - time.monotonic(), 0.001)
            try:
                response = await self._http.request(
                    op.method,
                    op.path,
                    json=op.body,
                    params=op.params,
                    timeout=left + op.wait,
                )
                return core.read_answer(response.status_code, response.content, op)
            except httpx.HTTPError as exc:
                err = transport_error(exc, self.url, op, left + op.wait)
            except TollgateError as exc:
                err = exc
            pause = core.backoff(attempt)
            if not core.retryable(err) or time.monotonic() + pause >= deadline:
                raise err
            log.debug("tollgate: %s %s failed (%s); trying again in %.2f s", op.method, op.path, err, pause)
            await asyncio.sleep(pause)
            attempt += 1

    # -- limits ----------------------------------------------------------------------------

    async def put_limit(self, key: str, **spec: Any) -> dict[str, Any]:
        """See :meth:`tollgate.Tollgate.put_limit`."""
        return await self._send(core.op_put_limit(key, spec))

    async def get_limit(self, key: str) -> dict[str, Any]:
        """See :meth:`tollgate.Tollgate.get_limit`."""
        return await self._send(core.op_get_limit(key))

    async def delete_limit(self, key: str) -> None:
        """See :meth:`tollgate.Tollgate.delete_limit`."""
        await self._send(core.op_delete_limit(key))

    async def limits(self, *, dynamic: int | None = None) -> LimitList:
        """See :meth:`tollgate.Tollgate.limits`."""
        return await self._send(core.op_limits(dynamic))

    # -- acquire ---------------------------------------------------------------------------

    async def pause(
        self,
        key: str,
        duration: float | None = None,
        *,
        until: float | None = None,
        dynamic: bool = False,
    ) -> dict[str, Any]:
        """See :meth:`tollgate.Tollgate.pause`."""
        return await self._send(core.op_pause(key, duration, until, dynamic))

    async def resume(self, key: str, *, dynamic: bool = False) -> bool:
        """See :meth:`tollgate.Tollgate.resume`."""
        return await self._send(core.op_resume(key, dynamic))

    async def pauses(self) -> list[dict[str, Any]]:
        """See :meth:`tollgate.Tollgate.pauses`."""
        return await self._send(core.op_pauses())

    async def feedback(self, key: str, outcome: str) -> dict[str, Any]:
        """See :meth:`tollgate.Tollgate.feedback`."""
        return await self._send(core.op_feedback(key, outcome))

    async def acquire(self, *limits: Entry, units: int | None = None, wait: float = 0.0) -> Decision:
        """See :meth:`tollgate.Tollgate.acquire`."""
        body = core.entries(limits, units)
        wait = core.seconds(wait, "wait")
        deadline = time.monotonic() + wait
        while True:
            left = max(deadline - time.monotonic(), 0.0)
            decision = await self._send(core.op_acquire(body, left))
            if decision.allowed or left <= core.MAX_SERVER_WAIT:
                return decision
            left = deadline - time.monotonic()
            if decision.retry_after > left:
                return decision
            await asyncio.sleep(max(min(decision.retry_after - core.MAX_SERVER_WAIT, left), 0.0))

    async def acquire_batch(self, *requests: Sequence[Entry]) -> list[Decision | TollgateError]:
        """See :meth:`tollgate.Tollgate.acquire_batch`."""
        return await self._send(core.op_acquire_batch(requests))

    @asynccontextmanager
    async def limit(
        self, *limits: Entry, units: int | None = None, wait: float = 0.0
    ) -> AsyncIterator[Decision]:
        """``async with tg.limit("stripe-api", wait=5.0): ...``; see :meth:`tollgate.Tollgate.limit`."""
        decision = await self.acquire(*limits, units=units, wait=wait)
        if not decision.allowed:
            keys = ", ".join(d.key for d in decision.decisions if not d.allowed)
            raise RateLimited(
                f"rate limited on {keys or 'the limits named'}; retry after {decision.retry_after:g} s",
                retry_after=decision.retry_after,
                answer=decision,
            )
        yield decision

    # -- concurrency leases ----------------------------------------------------------------

    async def lease(
        self,
        key: str,
        *,
        limit: int | None = None,
        ttl: float | None = None,
        holder: str | None = None,
    ) -> Lease:
        """See :meth:`tollgate.Tollgate.lease`."""
        return await self._send(core.op_lease(key, limit, ttl, holder))

    async def renew_lease(self, lease_id: str, *, ttl: float | None = None) -> dict[str, Any]:
        """See :meth:`tollgate.Tollgate.renew_lease`."""
        return await self._send(core.op_renew_lease(lease_id, ttl))

    async def release_lease(self, lease_id: str) -> None:
        """See :meth:`tollgate.Tollgate.release_lease`."""
        await self._send(core.op_release_lease(lease_id))

    @asynccontextmanager
    async def concurrency(
        self,
        key: str,
        *,
        holder: str | None = None,
        limit: int | None = None,
        ttl: float | None = None,
        wait: float = 0.0,
    ) -> AsyncIterator[HeldLease]:
        """``async with tg.concurrency("db", limit=5): ...``; see
        :meth:`tollgate.Tollgate.concurrency`."""
        wait = core.seconds(wait, "wait")
        deadline = time.monotonic() + wait
        tries = 0
        holder = holder if holder is not None else default_holder()
        while True:
            lease = await self.lease(key, limit=limit, ttl=ttl, holder=holder)
            if lease.acquired:
                break
            left = deadline - time.monotonic()
            if left <= 0:
                raise RateLimited(
                    f"no free slot on concurrency key {key!r} ({lease.limit} in use); "
                    f"the earliest lease expires in {lease.retry_after:g} s",
                    retry_after=lease.retry_after,
                    answer=lease,
                )
            await asyncio.sleep(min(core.backoff(tries), max(lease.retry_after, 0.001), left))
            tries += 1
        held = HeldLease(lease)
        life = ttl if ttl is not None else max((lease.expires_at or 0) - time.time(), 0.03)
        renewing = asyncio.ensure_future(self._renew(held, max(life / 3, 0.01), ttl))
        try:
            yield held
        finally:
            renewing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewing
            if not held.lost:
                try:
                    await self.release_lease(held.lease_id)
                except TollgateError as exc:
                    log.warning("tollgate: releasing lease on %r failed: %s", key, exc)

    async def _renew(self, held: HeldLease, every: float, ttl: float | None) -> None:
        while True:
            await asyncio.sleep(every)
            try:
                answer = await self.renew_lease(held.lease_id, ttl=ttl)
                held.expires_at = answer["expires_at_ms"] / 1000.0
            except TollgateError as exc:
                if exc.transient:
                    log.warning("tollgate: renewing lease on %r failed (%s); trying again", held.key, exc)
                    continue
                held.lost = True
                log.warning(
                    "tollgate: lease on %r lost (%s): the slot may be held by another now", held.key, exc
                )
                return

    # -- barriers --------------------------------------------------------------------------

    async def create_barrier(self, key: str, *, parties: int, ttl: float) -> dict[str, Any]:
        """See :meth:`tollgate.Tollgate.create_barrier`."""
        return await self._send(core.op_create_barrier(key, parties, ttl))

    async def barrier_status(self, key: str) -> dict[str, Any]:
        """See :meth:`tollgate.Tollgate.barrier_status`."""
        return await self._send(core.op_barrier_status(key))

    async def wait_barrier(self, key: str, *, timeout: float | None = None) -> bool:
        """See :meth:`tollgate.Tollgate.wait_barrier`."""
        if timeout is not None:
            timeout = core.seconds(timeout, "timeout")
        start = time.monotonic()
        first = core.MAX_SERVER_WAIT if timeout is None else timeout
        if await self._send(core.op_wait_barrier(key, first)):
            return True
        tries = 0
        while True:
            left = None if timeout is None else timeout - (time.monotonic() - start)
            if left is not None and left <= 0:
                return False
            pause = core.backoff(tries + 3)
            await asyncio.sleep(pause if left is None else min(pause, left))
            tries += 1
            if (await self.barrier_status(key))["released"]:
                return True

    async def barrier(
        self, key: str, *, parties: int | None = None, ttl: float | None = None
    ) -> AsyncBarrierHandle:
        """See :meth:`tollgate.Tollgate.barrier`: ``await (await tg.barrier("b", parties=3,
        ttl=60.0)).wait(timeout=10.0)``."""
        status = None
        if (parties is None) != (ttl is None):
            raise ValueError("give both parties and ttl to create a barrier, or neither to use one")
        if parties is not None and ttl is not None:
            status = await self.create_barrier(key, parties=parties, ttl=ttl)
        return AsyncBarrierHandle(self, key, status)

    # -- tasks and runs --------------------------------------------------------------------

    async def put_task(self, name: str, **spec: Any) -> dict[str, Any]:
        """See :meth:`tollgate.Tollgate.put_task`."""
        return await self._send(core.op_put_task(name, spec))

    async def get_task(self, name: str) -> dict[str, Any]:
        """See :meth:`tollgate.Tollgate.get_task`."""
        return await self._send(core.op_get_task(name))

    async def tasks(self) -> list[dict[str, Any]]:
        """See :meth:`tollgate.Tollgate.tasks`."""
        return await self._send(core.op_tasks())

    async def enqueue(
        self,
        task: str,
        input: Any,
        *,
        additional_metadata: Any = None,
        delay: float | None = None,
        run_at: float | None = None,
        priority: int | None = None,
    ) -> dict[str, Any]:
        """See :meth:`tollgate.Tollgate.enqueue`."""
        return await self._send(core.op_enqueue(task, input, additional_metadata, delay, run_at, priority))

    async def send_event(
        self,
        name: str,
        data: Any,
        *,
        additional_metadata: Any = None,
        delay: float | None = None,
        run_at: float | None = None,
    ) -> list[dict[str, Any]]:
        """See :meth:`tollgate.Tollgate.send_event`."""
        return await self._send(core.op_send_event(name, data, additional_metadata, delay, run_at))

    async def run(self, run_id: str) -> dict[str, Any]:
        """See :meth:`tollgate.Tollgate.run`."""
        return await self._send(core.op_run(run_id))

    async def runs(
        self, *, task: str | None = None, state: str | None = None, limit: int | None = None
    ) -> list[dict[str, Any]]:
        """See :meth:`tollgate.Tollgate.runs`."""
        return await self._send(core.op_runs(task, state, limit))

    async def explain(self, run_id: str) -> dict[str, Any]:
        """See :meth:`tollgate.Tollgate.explain`."""
        return await self._send(core.op_explain(run_id))

    async def cancel(self, run_id: str) -> dict[str, Any]:
        """See :meth:`tollgate.Tollgate.cancel`."""
        return await self._send(core.op_cancel(run_id))

    async def lease_runs(
        self, worker_id: str, tasks: Sequence[str], *, max: int = 1, wait: float = 0.0
    ) -> list[dict[str, Any]]:
        """See :meth:`tollgate.Tollgate.lease_runs`."""
        return await self._send(core.op_lease_runs(worker_id, tasks, max, core.seconds(wait, "wait")))

    async def heartbeat(self, run_id: str, *, attempt: int | None = None) -> dict[str, Any]:
        """See :meth:`tollgate.Tollgate.heartbeat`."""
        return await self._send(core.op_heartbeat(run_id, attempt))

    async def complete(
        self,
        run_id: str,
        output: Any = None,
        *,
        attempt: int | None = None,
        feedback: core.FeedbackLike | None = None,
    ) -> dict[str, Any]:
        """See :meth:`tollgate.Tollgate.complete`."""
        return await self._send(core.op_complete(run_id, output, attempt, feedback))

    async def fail(
        self,
        run_id: str,
        error: str,
        *,
        retry: bool = False,
        attempt: int | None = None,
        retry_after: float | None = None,
        pause: core.Pause | None = None,
        feedback: core.FeedbackLike | None = None,
    ) -> dict[str, Any]:
        """See :meth:`tollgate.Tollgate.fail`."""
        return await self._send(core.op_fail(run_id, error, retry, attempt, retry_after, pause, feedback))

    async def release(self, run_id: str, *, attempt: int | None = None) -> dict[str, Any]:
        """See :meth:`tollgate.Tollgate.release`."""
        return await self._send(core.op_release(run_id, attempt))

    async def healthz(self) -> dict[str, Any]:
        """See :meth:`tollgate.Tollgate.healthz`."""
        return await self._send(core.op_healthz())

    async def metrics(self) -> str:
        """See :meth:`tollgate.Tollgate.metrics`."""
        return await self._send(core.op_metrics())


class AsyncBarrierHandle:
    """A barrier, by key, for asyncio code; see :class:`tollgate.BarrierHandle`."""

    def __init__(self, client: AsyncTollgate, key: str, status: dict[str, Any] | None) -> None:
        self.client = client
        self.key = key
        self.created: dict[str, Any] | None = status

    def __repr__(self) -> str:
        return f"AsyncBarrierHandle({self.key!r})"

    async def wait(self, timeout: float | None = None) -> bool:
        """One arrival, then wait; see :meth:`tollgate.BarrierHandle.wait`."""
        return await self.client.wait_barrier(self.key, timeout=timeout)

    async def status(self) -> dict[str, Any]:
        """Where the barrier stands."""
        return await self.client.barrier_status(self.key)
