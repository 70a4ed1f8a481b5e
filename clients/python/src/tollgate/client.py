"""The synchronous client, :class:`Tollgate`."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from types import TracebackType
from typing import Any, TypeVar

import httpx

from . import _core as core
from ._core import Decision, Entry, Lease, LimitList, Op
from ._errors import RateLimited, TollgateConnectionError, TollgateError, TollgateTimeout

T = TypeVar("T")
log = logging.getLogger("tollgate")


def default_holder() -> str:
    """Who holds a concurrency lease when no holder is named: ``host:pid``."""
    return f"{socket.gethostname()}:{os.getpid()}"


def transport_error(exc: httpx.HTTPError, base: str, op: Op[Any], timeout: float) -> TollgateError:
    """The :class:`TollgateError` for an httpx failure. ``connect_error`` (the request never
    reached the server) is the one the client retries by itself."""
    if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout)):
        return TollgateConnectionError(
            f"cannot connect to the Tollgate server at {base}: {exc or type(exc).__name__}",
            code="connect_error",
            transient=True,
        )
    if isinstance(exc, httpx.TimeoutException):
        return TollgateTimeout(
            f"{op.method} {base}{op.path}: no answer within {timeout:g} s",
            code="timeout",
            transient=True,
        )
    return TollgateConnectionError(
        f"{op.method} {base}{op.path}: {exc or type(exc).__name__}",
        code="transport_error",
        transient=True,
    )


class Tollgate:
    """A Tollgate server, reached over HTTP; thread-safe (one connection pool, shared).

    ``url`` defaults to ``$TOLLGATE_SERVER``, else ``http://127.0.0.1:7070``. ``timeout`` is how
    long a call may take (seconds), on top of any wait it asks the server for; a transient
    error (503 ``store_unavailable``, a connection refused) is retried with backoff within it.
    ``headers`` are sent with every request (for a proxy that wants credentials). ``token``
    (default ``$TOLLGATE_TOKEN``) is sent as ``Authorization: Bearer``, for a server started
    with ``--tokens-file``; it is never shown in ``repr``. An ``https://`` server is verified
    against the system's roots, plus the PEM file ``ca_cert`` (default ``$TOLLGATE_CA_CERT``)
    for a private CA.

    Durations are seconds as floats everywhere (``wait``, ``ttl``, ``retry_after``); period
    fields of definitions take the server's strings (``"1s"``, ``"1h30m"``) or seconds.
    """

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
        #: The headers sent with every request.
        self.headers: dict[str, str] = dict(headers or {})
        self._http = httpx.Client(
            base_url=self.url,
            headers={"user-agent": "tollgate-python", **self.headers, **core.auth_headers(token)},
            verify=core.tls_verify(ca_cert),
            timeout=self.timeout,
        )

    def __repr__(self) -> str:
        return f"Tollgate({self.url!r}, timeout={self.timeout!r})"

    def close(self) -> None:
        """Closes the connection pool."""
        self._http.close()

    def __enter__(self) -> Tollgate:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- transport -------------------------------------------------------------------------

    def _send(self, op: Op[T]) -> T:
        deadline = time.monotonic() + self.timeout
        attempt = 0
        while True:
            left = max(deadline - time.monotonic(), 0.001)
            try:
                response = self._http.request(
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
            time.sleep(pause)
            attempt += 1

    # -- limits ----------------------------------------------------------------------------

    def put_limit(self, key: str, **spec: Any) -> dict[str, Any]:
        """Declares or redefines a limit: ``put_limit("api", algorithm="gcra", limit=10,
        period="1s", burst=5)`` or ``put_limit("emails", rate="100/m")``. The keyword arguments
        are the HTTP body. Answers the limit with its live state."""
        return self._send(core.op_put_limit(key, spec))

    def get_limit(self, key: str) -> dict[str, Any]:
        """A declared limit with its live state (``used``, ``remaining``, ``reset_after_ms``)."""
        return self._send(core.op_get_limit(key))

    def delete_limit(self, key: str) -> None:
        """Deletes a declared limit (``ConflictError`` ``limit_in_use`` while a task names it)."""
        self._send(core.op_delete_limit(key))

    def limits(self, *, dynamic: int | None = None) -> LimitList:
        """Every declared limit, then the dynamic keys with state (the ``dynamic`` busiest
        only, when given); ``.dynamic_total`` counts them all."""
        return self._send(core.op_limits(dynamic))

    # -- acquire ---------------------------------------------------------------------------

    def pause(
        self,
        key: str,
        duration: float | None = None,
        *,
        until: float | None = None,
        dynamic: bool = False,
    ) -> dict[str, Any]:
        """Pauses ``key`` for everyone for ``duration`` seconds (or ``until`` an instant, Unix
        seconds): every acquire and run on it waits until then (an upstream answered 429). A
        dynamic key needs ``dynamic=True``. A pause in force that ends later is kept. Answers
        ``{"key", "namespace", "paused_until_ms"}``."""
        return self._send(core.op_pause(key, duration, until, dynamic))

    def resume(self, key: str, *, dynamic: bool = False) -> bool:
        """Ends ``key``'s pause now (the runs waiting on it are tried at once); whether one was
        in force."""
        return self._send(core.op_resume(key, dynamic))

    def pauses(self) -> list[dict[str, Any]]:
        """Every pause in force: ``{"key", "namespace", "paused_until_ms"}`` each."""
        return self._send(core.op_pauses())

    def feedback(self, key: str, outcome: str) -> dict[str, Any]:
        """Reports what a call to the upstream adaptive limit ``key`` protects met: ``"ok"``
        raises its limit in force by one (up to its ``max``), ``"throttled"`` halves it (down to
        its ``min``); the runs waiting on it are re-planned at once. Answers the limit, with
        ``limit_in_force``. ``UnprocessableError`` ``not_adaptive`` for a limit declared without
        ``adaptive``."""
        return self._send(core.op_feedback(key, outcome))

    def acquire(self, *limits: Entry, units: int | None = None, wait: float = 0.0) -> Decision:
        """Takes units from every limit named, all or nothing.

        Each entry is a declared key (``"stripe-api"``), a ``(key, units)`` pair, or a dict
        shaped like the HTTP entry (``{"key": "user:42", "limit": 10, "period": "1m"}``: a
        dynamic key with its definition). ``units`` applies to a single key given as a string.
        With ``wait`` (seconds), the server holds the call until the request is admitted, at
        most that long; a denial that cannot be admitted within it answers at once. A denial
        is an answer (``Decision.allowed`` false), not an error.
        """
        body = core.entries(limits, units)
        wait = core.seconds(wait, "wait")
        deadline = time.monotonic() + wait
        while True:
            left = max(deadline - time.monotonic(), 0.0)
            decision = self._send(core.op_acquire(body, left))
            if decision.allowed or left <= core.MAX_SERVER_WAIT:
                return decision
            # Longer than the server's cap: sleep here until it could fit, then ask again.
            left = deadline - time.monotonic()
            if decision.retry_after > left:
                return decision
            time.sleep(max(min(decision.retry_after - core.MAX_SERVER_WAIT, left), 0.0))

    def acquire_batch(self, *requests: Sequence[Entry]) -> list[Decision | TollgateError]:
        """Several independent acquires in one call, each all-or-nothing on its own, decided in
        order without waiting. A request that only deciding can refuse (an unknown limit,
        units beyond capacity) answers its :class:`TollgateError` in its place (not raised)."""
        return self._send(core.op_acquire_batch(requests))

    @contextmanager
    def limit(self, *limits: Entry, units: int | None = None, wait: float = 0.0) -> Iterator[Decision]:
        """``with tg.limit("stripe-api", units=1, wait=5.0): ...`` runs the block once the units
        are taken; raises :class:`RateLimited` (with ``retry_after``) if they are not admitted
        within ``wait``. Rate units are used up, not given back, when the block ends."""
        decision = self.acquire(*limits, units=units, wait=wait)
        if not decision.allowed:
            keys = ", ".join(d.key for d in decision.decisions if not d.allowed)
            raise RateLimited(
                f"rate limited on {keys or 'the limits named'}; retry after {decision.retry_after:g} s",
                retry_after=decision.retry_after,
                answer=decision,
            )
        yield decision

    # -- concurrency leases ----------------------------------------------------------------

    def lease(
        self,
        key: str,
        *,
        limit: int | None = None,
        ttl: float | None = None,
        holder: str | None = None,
    ) -> Lease:
        """One slot of a concurrency key: a declared ``concurrency`` limit, or (with ``limit``)
        a dynamic key with that many slots. ``ttl`` (seconds) is how long the lease lives
        without renewal. A full key answers ``Lease.acquired`` false with ``retry_after``."""
        return self._send(core.op_lease(key, limit, ttl, holder))

    def renew_lease(self, lease_id: str, *, ttl: float | None = None) -> dict[str, Any]:
        """Extends a lease (by ``ttl``, default its own); ``ConflictError`` ``lease_expired``
        when it is no longer held."""
        return self._send(core.op_renew_lease(lease_id, ttl))

    def release_lease(self, lease_id: str) -> None:
        """Frees a lease's slot (``NotFoundError`` ``unknown_lease`` when it is not held)."""
        self._send(core.op_release_lease(lease_id))

    @contextmanager
    def concurrency(
        self,
        key: str,
        *,
        holder: str | None = None,
        limit: int | None = None,
        ttl: float | None = None,
        wait: float = 0.0,
    ) -> Iterator[HeldLease]:
        """``with tg.concurrency("db", holder="worker-1", limit=5, ttl=30.0): ...`` holds one
        slot while the block runs: renewed in the background every third of its time to live,
        released when the block ends. Raises :class:`RateLimited` when no slot frees within
        ``wait`` seconds (default: do not wait). If the lease is lost meanwhile (the process
        stalled past its ttl), a warning is logged and ``lease.lost`` is set."""
        wait = core.seconds(wait, "wait")
        deadline = time.monotonic() + wait
        tries = 0
        holder = holder if holder is not None else default_holder()
        while True:
            lease = self.lease(key, limit=limit, ttl=ttl, holder=holder)
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
            # A slot frees when a holder releases (any time) or a lease expires (retry_after).
            time.sleep(min(core.backoff(tries), max(lease.retry_after, 0.001), left))
            tries += 1
        renewer = _Renewer(self, lease, ttl)
        renewer.start()
        try:
            yield renewer.handle
        finally:
            renewer.stop()
            if not renewer.handle.lost:
                try:
                    self.release_lease(str(lease.lease_id))
                except TollgateError as exc:
                    log.warning("tollgate: releasing lease on %r failed: %s", key, exc)

    # -- barriers --------------------------------------------------------------------------

    def create_barrier(self, key: str, *, parties: int, ttl: float) -> dict[str, Any]:
        """Creates barrier ``key`` for ``parties`` arrivals living ``ttl`` seconds, or answers
        the live one of that key: ``{"key", "released", "arrived", "parties", "expires_at_ms"}``."""
        return self._send(core.op_create_barrier(key, parties, ttl))

    def barrier_status(self, key: str) -> dict[str, Any]:
        """Where a barrier stands, without arriving."""
        return self._send(core.op_barrier_status(key))

    def wait_barrier(self, key: str, *, timeout: float | None = None) -> bool:
        """Arrives at barrier ``key`` (one arrival) and waits until every party has: true when
        released, false when ``timeout`` seconds passed first. ``timeout=None`` waits until it
        is released or expires (``ConflictError`` ``barrier_expired``); ``timeout=0`` arrives
        and answers at once. A missing barrier is ``NotFoundError``, never a pass."""
        if timeout is not None:
            timeout = core.seconds(timeout, "timeout")
        start = time.monotonic()
        first = core.MAX_SERVER_WAIT if timeout is None else timeout
        if self._send(core.op_wait_barrier(key, first)):
            return True
        # The server caps a wait at 60 s and each wait is an arrival: watch the status.
        tries = 0
        while True:
            left = None if timeout is None else timeout - (time.monotonic() - start)
            if left is not None and left <= 0:
                return False
            pause = core.backoff(tries + 3)
            time.sleep(pause if left is None else min(pause, left))
            tries += 1
            if self.barrier_status(key)["released"]:
                return True

    def barrier(self, key: str, *, parties: int | None = None, ttl: float | None = None) -> BarrierHandle:
        """A handle on barrier ``key``, created first when ``parties`` and ``ttl`` are given
        (or the live one of that key answered): ``tg.barrier("batch-7", parties=3,
        ttl=60.0).wait(timeout=10.0)``."""
        status = None
        if (parties is None) != (ttl is None):
            raise ValueError("give both parties and ttl to create a barrier, or neither to use one")
        if parties is not None and ttl is not None:
            status = self.create_barrier(key, parties=parties, ttl=ttl)
        return BarrierHandle(self, key, status)

    # -- tasks and runs --------------------------------------------------------------------

    def put_task(self, name: str, **spec: Any) -> dict[str, Any]:
        """Defines or redefines a task; the keyword arguments are the HTTP body
        (``rate_limits``, ``concurrency``, ``on_limit``, ``idempotency``, ``triggers``,
        ``max_attempts``, ``lease_timeout``, ``throttle`` and Inngest's ``rate_limit``:
        ``"10/m"`` or ``{"limit", "period", "burst", "key"}``). Period fields take strings or
        seconds, a rate limit's ``duration`` (Hatchet's name for ``period``) too. Answers
        ``{"name", "spec", "depth"}``."""
        return self._send(core.op_put_task(name, spec))

    def get_task(self, name: str) -> dict[str, Any]:
        """A task's definition and its runs per state."""
        return self._send(core.op_get_task(name))

    def tasks(self) -> list[dict[str, Any]]:
        """Every task, by name."""
        return self._send(core.op_tasks())

    def enqueue(
        self,
        task: str,
        input: Any,
        *,
        additional_metadata: Any = None,
        delay: float | None = None,
        run_at: float | None = None,
        priority: int | None = None,
    ) -> dict[str, Any]:
        """Enqueues a run of ``task``; answers the run as the server does (``id``, ``state``…).
        Input the task's expressions cannot evaluate is refused (:class:`UnprocessableError`
        ``invalid_expression``) and nothing is stored. ``delay`` (seconds, Celery's
        ``countdown``) or ``run_at`` (Unix seconds, Celery's ``eta``): the run is
        ``scheduled`` until then, with its due instant in ``eligible_at_ms``. ``priority`` (1,
        the least urgent, to 4; default: the task's, 2) goes ahead of lower priorities."""
        return self._send(core.op_enqueue(task, input, additional_metadata, delay, run_at, priority))

    def send_event(
        self,
        name: str,
        data: Any,
        *,
        additional_metadata: Any = None,
        delay: float | None = None,
        run_at: float | None = None,
    ) -> list[dict[str, Any]]:
        """Starts one run of every task triggered by event ``name``; answers every one of those
        runs (``id``, ``task``, ``state``), none when no task listens. Each run stands alone: a
        task whose expressions cannot be evaluated for this event gets a run stored as
        ``failed``, listed with its ``error`` (``"invalid_expression: <field>: expression …"``),
        and the other tasks' runs proceed; that is an answer, not a raised error. (A run that
        can never fit its limits is ``failed`` with ``insufficient_capacity: …`` likewise.)
        ``delay`` and ``run_at`` as for :meth:`enqueue`, for every run."""
        return self._send(core.op_send_event(name, data, additional_metadata, delay, run_at))

    def run(self, run_id: str) -> dict[str, Any]:
        """One run: state, attempt, what it waits on and until when, output, error."""
        return self._send(core.op_run(run_id))

    def runs(
        self, *, task: str | None = None, state: str | None = None, limit: int | None = None
    ) -> list[dict[str, Any]]:
        """Runs, newest first, of a task and/or in a state (at most ``limit``, default 100)."""
        return self._send(core.op_runs(task, state, limit))

    def explain(self, run_id: str) -> dict[str, Any]:
        """Why a run waits, key by key: ``{"run", "state", "eligible_at_ms", "ready_ahead",
        "limits": [{"key", "namespace", "algorithm", "limit_in_force", "used", "remaining",
        "waiting", "position", "ahead", "paused_until_ms", "eligible_at_ms"}]}``."""
        return self._send(core.op_explain(run_id))

    def cancel(self, run_id: str) -> dict[str, Any]:
        """Ends a run that has not ended."""
        return self._send(core.op_cancel(run_id))

    # -- worker calls ----------------------------------------------------------------------

    def lease_runs(
        self, worker_id: str, tasks: Sequence[str], *, max: int = 1, wait: float = 0.0
    ) -> list[dict[str, Any]]:
        """A long poll for up to ``max`` runs of ``tasks``: answers as soon as it holds one,
        waits at most ``wait`` seconds (cut to 60) while none is ready."""
        return self._send(core.op_lease_runs(worker_id, tasks, max, core.seconds(wait, "wait")))

    def heartbeat(self, run_id: str, *, attempt: int | None = None) -> dict[str, Any]:
        """Extends a running run's lease by its task's lease timeout."""
        return self._send(core.op_heartbeat(run_id, attempt))

    def complete(
        self,
        run_id: str,
        output: Any = None,
        *,
        attempt: int | None = None,
        feedback: core.FeedbackLike | None = None,
    ) -> dict[str, Any]:
        """Marks a running run ``succeeded`` with ``output``. With ``feedback``
        (``tollgate.Feedback("stripe-api", "ok")`` or ``("stripe-api", "ok")``) an adaptive
        limit is told first, as :meth:`feedback` does; a refused feedback leaves the run as it
        was."""
        return self._send(core.op_complete(run_id, output, attempt, feedback))

    def fail(
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
        """Fails a running run; with ``retry`` it is queued again while attempts remain, after
        its task's ``retry`` backoff, or after ``retry_after`` seconds (an upstream's
        Retry-After) when given: ``scheduled`` meanwhile. With ``pause``
        (``tollgate.Pause("stripe-api", 30)``) that key is first paused for every worker, as
        :meth:`pause` does: one upstream 429 holds everyone back. With ``feedback``
        (``("stripe-api", "throttled")``) an adaptive limit is told first, as :meth:`feedback`
        does, so the retry waits on the lowered limit."""
        return self._send(core.op_fail(run_id, error, retry, attempt, retry_after, pause, feedback))

    def release(self, run_id: str, *, attempt: int | None = None) -> dict[str, Any]:
        """Hands a running run back: queued again, the attempt not counted."""
        return self._send(core.op_release(run_id, attempt))

    # -- operations ------------------------------------------------------------------------

    def healthz(self) -> dict[str, Any]:
        """``{"status": "ok"}`` while the server accepts requests."""
        return self._send(core.op_healthz())

    def metrics(self) -> str:
        """The Prometheus (OpenMetrics) text of ``/metrics``."""
        return self._send(core.op_metrics())


class BarrierHandle:
    """A barrier, by key: :meth:`wait` arrives and waits; :meth:`status` looks."""

    def __init__(self, client: Tollgate, key: str, status: dict[str, Any] | None) -> None:
        self.client = client
        self.key = key
        #: The status the barrier was created (or found) with, if it was.
        self.created: dict[str, Any] | None = status

    def __repr__(self) -> str:
        return f"BarrierHandle({self.key!r})"

    def wait(self, timeout: float | None = None) -> bool:
        """One arrival, then wait: true when every party has arrived, false when ``timeout``
        seconds passed first (``None``: until released or expired)."""
        return self.client.wait_barrier(self.key, timeout=timeout)

    def status(self) -> dict[str, Any]:
        """``{"key", "released", "arrived", "parties", "expires_at_ms"}``."""
        return self.client.barrier_status(self.key)


class HeldLease:
    """A concurrency slot held by :meth:`Tollgate.concurrency`."""

    def __init__(self, lease: Lease) -> None:
        self.key = lease.key
        self.lease_id = str(lease.lease_id)
        self.expires_at = lease.expires_at
        self.limit = lease.limit
        self.remaining = lease.remaining
        #: Set when a renewal found the lease gone: the slot may be someone else's now.
        self.lost = False

    def __repr__(self) -> str:
        return f"HeldLease(key={self.key!r}, lease_id={self.lease_id!r}, lost={self.lost})"


class _Renewer:
    """Renews a lease every third of its time to live until stopped."""

    def __init__(self, client: Tollgate, lease: Lease, ttl: float | None) -> None:
        self.client = client
        self.handle = HeldLease(lease)
        life = ttl if ttl is not None else max((lease.expires_at or 0) - time.time(), 0.03)
        self.every = max(life / 3, 0.01)
        self.ttl = ttl
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"tollgate-lease-{lease.key}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            try:
                answer = self.client.renew_lease(self.handle.lease_id, ttl=self.ttl)
                self.handle.expires_at = answer["expires_at_ms"] / 1000.0
            except TollgateError as exc:
                if exc.transient:
                    log.warning(
                        "tollgate: renewing lease on %r failed (%s); trying again", self.handle.key, exc
                    )
                    continue
                self.handle.lost = True
                log.warning(
                    "tollgate: lease on %r lost (%s): the slot may be held by another now",
                    self.handle.key,
                    exc,
                )
                return
