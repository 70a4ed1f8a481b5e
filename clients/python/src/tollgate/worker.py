"""The worker runtime, :class:`Worker`: leases runs of the tasks it serves, runs their handlers
in N slots (threads), heartbeats while they run, reports the outcome, and shuts down gracefully.

The model is the Rust client's worker (``crates/client/src/worker.rs``):

* one loop long-polls ``POST /v1/workers/lease`` for at most its free slots, so the worker never
  holds more runs than it has slots;
* every leased run gets a thread that runs the handler; a heartbeat thread extends each run's
  lease every third of its lease timeout while the handler runs;
* the handler's return value completes the run; an exception fails it with ``retry`` (it is
  queued again while attempts remain), :class:`NoRetry` fails it for good, and
  :class:`Throttled` (an upstream answered 429) pauses that key for every worker and retries
  the run once the pause ends;
* every call carries the run's ``attempt``: a worker whose lease lapsed gets 409, logs it and
  drops the run instead of touching the attempt another worker now holds;
* on SIGINT or SIGTERM (or :meth:`Worker.stop`) it stops leasing, gives in-flight handlers the
  grace period to finish (still heartbeating), then releases the runs still running (no
  attempt counted) and returns what it did. A second signal ends the grace period at once.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import json
import logging
import os
import signal
import threading
import time
from dataclasses import dataclass, replace
from types import FrameType
from typing import Any, Callable, TypeVar

from . import _core as core
from ._core import WorkerStats
from ._errors import NotFoundError, TollgateError, UnprocessableError
from .client import Tollgate

log = logging.getLogger("tollgate.worker")

#: The default number of runs a worker executes at once.
DEFAULT_SLOTS = 4
#: How long one lease call waits on the server while no run is ready (a long poll).
DEFAULT_POLL_WAIT = 10.0
#: How long in-flight handlers get to finish at shutdown before their runs are released.
DEFAULT_GRACE = 30.0

Handler = Callable[[dict[str, Any]], Any]
H = TypeVar("H", bound=Handler)

_ids = itertools.count(1)


class NoRetry(Exception):
    """Raise from a handler to fail the run for good: no further attempt."""


class Throttled(Exception):
    """Raise from a handler when an upstream refused for a while (HTTP 429 with
    ``Retry-After``): the key ``key`` is paused for every worker and node for ``retry_after``
    seconds (``dynamic=True`` for a dynamic key), and the run is retried after it, while
    attempts remain.

    >>> raise Throttled("stripe-api", 30)  # doctest: +SKIP
    """

    def __init__(
        self, key: str, retry_after: float, *, dynamic: bool = False, message: str | None = None
    ) -> None:
        super().__init__(message or f"{key} is throttled for {retry_after} s")
        self.key = key
        self.retry_after = retry_after
        self.dynamic = dynamic


class WorkerError(Exception):
    """The worker cannot start: no task registered, or the server refused a task (a definition
    it rejects, a task it does not know)."""


@dataclass
class _Registered:
    name: str
    handler: Handler
    definition: dict[str, Any] | None
    lease_timeout: float = 30.0


@dataclass
class _Running:
    run: dict[str, Any]
    every: float
    next_beat: float
    # running → reported | released | lost
    state: str = "running"


class Worker:
    """Serves tasks from a Tollgate server.

    ``Worker(tg, slots=4)``; register handlers with :meth:`task` (a decorator) or
    :meth:`register`, then :meth:`run`. ``poll_wait`` is how long one lease call waits on the
    server, ``grace`` how long in-flight runs get at shutdown, ``worker_id`` the name shown on
    the runs it leases (default ``worker-<pid>-<n>``).
    """

    def __init__(
        self,
        client: Tollgate,
        *,
        slots: int = DEFAULT_SLOTS,
        worker_id: str | None = None,
        poll_wait: float = DEFAULT_POLL_WAIT,
        grace: float = DEFAULT_GRACE,
    ) -> None:
        if not isinstance(client, Tollgate):
            raise TypeError(
                f"Worker needs a tollgate.Tollgate client, not {type(client).__name__} "
                "(the worker runs handlers in threads; AsyncTollgate is for asyncio code)"
            )
        self.client = client
        self.slots = core.check_count(slots, "slots")
        if self.slots > 1000:
            raise ValueError(f"slots must be at most 1000 (the server's lease batch), not {slots}")
        self.worker_id = worker_id or f"worker-{os.getpid()}-{next(_ids)}"
        core.check_name(self.worker_id, "worker_id")
        self.poll_wait = core.seconds(poll_wait, "poll_wait", allow_zero=False)
        self.grace = core.seconds(grace, "grace")
        self._tasks: dict[str, _Registered] = {}
        # Re-entrant: stop() runs in signal handlers, on the thread that may hold it.
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._running: dict[str, _Running] = {}
        self._stats = WorkerStats()
        self._stopping = threading.Event()
        self._grace_over = threading.Event()
        self._done = threading.Event()
        self._wake = threading.Event()
        self._started = False
        #: Set once the tasks are defined (or found) on the server and leasing begins.
        self.ready = threading.Event()

    def __repr__(self) -> str:
        return f"Worker({self.worker_id!r}, slots={self.slots}, tasks={sorted(self._tasks)})"

    # -- registration ----------------------------------------------------------------------

    def task(self, name: str, **definition: Any) -> Callable[[H], H]:
        """``@worker.task("sync-user")`` serves task ``sync-user`` with the function below. With
        keyword arguments (the task body of :meth:`Tollgate.put_task`), the worker defines the
        task when it starts; without, the task must already be defined on the server."""

        def decorate(handler: H) -> H:
            self.register(name, handler, **definition)
            return handler

        return decorate

    def register(self, name: str, handler: Handler, **definition: Any) -> None:
        """Serves ``name`` with ``handler(run)``; see :meth:`task`. A second registration of the
        same name replaces the first."""
        core.check_name(name, "task name")
        if not callable(handler):
            raise TypeError(f"the handler of task {name!r} must be callable, not {type(handler).__name__}")
        if self._started:
            raise RuntimeError("register tasks before Worker.run()")
        self._tasks[name] = _Registered(name, handler, dict(definition) if definition else None)

    # -- running ---------------------------------------------------------------------------

    def stop(self) -> None:
        """Asks a running worker to stop (what SIGINT and SIGTERM do); thread-safe. A second
        call ends the grace period at once."""
        if self._stopping.is_set():
            self._grace_over.set()
        self._stopping.set()
        self._wake.set()
        with self._changed:
            self._changed.notify_all()

    def run(self, *, install_signal_handlers: bool = True) -> WorkerStats:
        """Defines the tasks that carry a definition, checks the others exist, then leases and
        runs them until :meth:`stop` (or SIGINT/SIGTERM, when called from the main thread with
        ``install_signal_handlers``). Answers what it did once every run it held is finished
        or handed back.

        Raises :class:`WorkerError` when no task is registered or the server refuses one.
        """
        if not self._tasks:
            raise WorkerError("the worker has no tasks: register at least one with @worker.task(name)")
        if self._started:
            raise RuntimeError("a Worker runs once; make a new one")
        self._started = True
        previous: dict[int, Any] = {}
        if install_signal_handlers and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                previous[sig] = signal.signal(sig, self._on_signal)
        beats = threading.Thread(target=self._heartbeats, name=f"{self.worker_id}-heartbeats", daemon=True)
        try:
            if not self._register_all():
                return self._stats
            beats.start()
            self.ready.set()
            log.info("worker %s started: %d slots, tasks %s", self.worker_id, self.slots, sorted(self._tasks))
            self._lease_loop()
            self._shutdown()
            return self._stats
        finally:
            self._done.set()
            self._wake.set()
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        log.info("worker %s: signal %d, shutting down", self.worker_id, signum)
        self.stop()

    def _count(self, **deltas: int) -> None:
        with self._lock:
            self._stats = replace(self._stats, **{k: getattr(self._stats, k) + v for k, v in deltas.items()})

    def _register_all(self) -> bool:
        """Defines or looks up every task; false when stopped first."""
        for reg in self._tasks.values():
            tries = 0
            while True:
                if self._stopping.is_set():
                    return False
                try:
                    if reg.definition is not None:
                        answer = self.client.put_task(reg.name, **reg.definition)
                    else:
                        answer = self.client.get_task(reg.name)
                    reg.lease_timeout = core.parse_period(str(answer["spec"]["lease_timeout"]))
                    break
                except NotFoundError as exc:
                    raise WorkerError(
                        f"task {reg.name!r} is not defined on the server: define it with "
                        f"Tollgate.put_task({reg.name!r}, ...) or give its definition to "
                        f"@worker.task({reg.name!r}, ...)"
                    ) from exc
                except TollgateError as exc:
                    if not exc.transient:
                        raise WorkerError(f"the server refused task {reg.name!r}: {exc}") from exc
                    pause = _backoff(tries)
                    log.warning(
                        "worker %s: defining task %r failed (%s); trying again in %.1f s",
                        self.worker_id,
                        reg.name,
                        exc,
                        pause,
                    )
                    self._stopping.wait(pause)
                    tries += 1
        return True

    def _free(self) -> int:
        return self.slots - len(self._running)

    def _lease_loop(self) -> None:
        names = sorted(self._tasks)
        tries = 0
        while not self._stopping.is_set():
            with self._changed:
                while self._free() <= 0 and not self._stopping.is_set():
                    self._changed.wait()
                free = self._free()
            if self._stopping.is_set():
                break
            outcome = self._poll(names, free)
            if outcome is None:  # stopped while the poll was waiting on the server
                break
            if isinstance(outcome, BaseException):
                exc = outcome
                if not isinstance(exc, TollgateError):
                    raise exc
                if isinstance(exc, UnprocessableError) and exc.code == "unknown_task":
                    log.warning(
                        "worker %s: the server does not know the tasks (%s); defining them again",
                        self.worker_id,
                        exc,
                    )
                    try:
                        if self._register_all():
                            continue
                    except WorkerError as again:
                        log.error("worker %s: %s", self.worker_id, again)
                pause = _backoff(tries)
                tries += 1
                log.warning(
                    "worker %s: leasing failed (%s); trying again in %.1f s", self.worker_id, exc, pause
                )
                self._stopping.wait(pause)
                continue
            tries = 0
            for run in outcome:
                self._take(run)

    def _poll(self, names: list[str], free: int) -> list[dict[str, Any]] | BaseException | None:
        """One long poll, in a thread of its own so that :meth:`stop` need not wait for it:
        the runs, the error, or ``None`` when the worker stopped first. Runs a poll abandoned
        that way brings back later are handed back by its thread."""
        box: list[list[dict[str, Any]] | BaseException] = []

        def poll() -> None:
            try:
                result: list[dict[str, Any]] | BaseException = self.client.lease_runs(
                    self.worker_id, names, max=free, wait=self.poll_wait
                )
            except BaseException as exc:
                result = exc
            with self._changed:
                abandoned = self._stopping.is_set() and not box
                if not abandoned:
                    box.append(result)
                self._changed.notify_all()
            if abandoned and isinstance(result, list):
                for run in result:
                    self._take(run)

        threading.Thread(target=poll, name=f"{self.worker_id}-lease", daemon=True).start()
        with self._changed:
            while not box and not self._stopping.is_set():
                self._changed.wait()
            if box:
                return box[0]
            # Stopping: mark the poll abandoned (its thread hands back what it brings).
            return None

    def _take(self, run: dict[str, Any]) -> None:
        self._count(leased=1)
        if self._stopping.is_set() or run.get("task") not in self._tasks:
            # Leased as shutdown began (or a task this worker does not serve): hand it back.
            self._hand_back(run)
            return
        self._start(run)

    def _hand_back(self, run: dict[str, Any]) -> None:
        if _report(lambda: self.client.release(run["id"], attempt=run["attempt"]), 5.0):
            self._count(released=1)
        else:
            self._count(lost=1)

    def _start(self, run: dict[str, Any]) -> None:
        reg = self._tasks[run["task"]]
        # The run keeps the lease timeout it was enqueued with: what its lease says wins.
        granted = run.get("lease_expires_at_ms", 0) / 1000.0 - time.time()
        timeout = min(reg.lease_timeout, granted) if granted > 0.03 else reg.lease_timeout
        every = max(timeout / 3, 0.01)
        with self._changed:
            self._running[run["id"]] = _Running(run, every, time.monotonic() + every)
        self._wake.set()
        threading.Thread(
            target=self._execute, args=(reg, run), name=f"{self.worker_id}-run-{run['id']}", daemon=True
        ).start()

    def _execute(self, reg: _Registered, run: dict[str, Any]) -> None:
        run_id, attempt = run["id"], run["attempt"]
        retry = True
        error: str | None = None
        output: Any = None
        pause: core.Pause | None = None
        retry_after: float | None = None
        try:
            result = reg.handler(run)
            if inspect.isawaitable(result):
                result = asyncio.run(_awaited(result))
            output = result
            try:
                json.dumps(output)
            except (TypeError, ValueError) as exc:
                error, retry = f"the handler's return value is not JSON: {exc}", False
        except NoRetry as exc:
            error, retry = str(exc) or "NoRetry", False
        except Throttled as exc:
            error = f"Throttled: {exc}"
            pause = core.Pause(exc.key, exc.retry_after, dynamic=exc.dynamic)
            retry_after = exc.retry_after
        except BaseException as exc:
            error = f"{type(exc).__name__}: {exc}"
        with self._changed:
            entry = self._running.get(run_id)
            state = entry.state if entry else "gone"
            if entry is not None and entry.state == "running":
                entry.state = "reporting"
        if state != "running":
            log.warning(
                "worker %s: run %s (attempt %d) ended after it was %s; its outcome is dropped",
                self.worker_id,
                run_id,
                attempt,
                state,
            )
            self._finish(run_id)
            return
        deadline = max(reg.lease_timeout, 30.0)
        if error is None:
            ok = _report(lambda: self.client.complete(run_id, output, attempt=attempt), deadline)
            self._count(**({"succeeded": 1} if ok else {"lost": 1}))
        else:
            log.info(
                "worker %s: run %s (attempt %d) failed%s: %s",
                self.worker_id,
                run_id,
                attempt,
                "" if retry else " for good",
                error,
            )
            ok = _report(
                lambda: self.client.fail(
                    run_id, str(error), retry=retry, attempt=attempt, retry_after=retry_after, pause=pause
                ),
                deadline,
            )
            self._count(**({"failed": 1} if ok else {"lost": 1}))
        self._finish(run_id)

    def _finish(self, run_id: str) -> None:
        with self._changed:
            self._running.pop(run_id, None)
            self._changed.notify_all()

    def _heartbeats(self) -> None:
        while not self._done.is_set():
            now = time.monotonic()
            with self._lock:
                due = [e for e in self._running.values() if e.state == "running" and e.next_beat <= now]
            for entry in due:
                entry.next_beat = time.monotonic() + entry.every
                run_id, attempt = entry.run["id"], entry.run["attempt"]
                try:
                    self.client.heartbeat(run_id, attempt=attempt)
                except TollgateError as exc:
                    if exc.transient:
                        log.warning(
                            "worker %s: heartbeat of run %s failed (%s); trying again at the next one",
                            self.worker_id,
                            run_id,
                            exc,
                        )
                        continue
                    with self._lock:
                        lost = entry.state == "running"
                        if lost:
                            entry.state = "lost"
                    if lost:
                        self._count(lost=1)
                        log.warning(
                            "worker %s: lease of run %s (attempt %d) lost (%s): expired, cancelled or "
                            "taken by another attempt; the handler's outcome will be dropped",
                            self.worker_id,
                            run_id,
                            attempt,
                            exc,
                        )
            with self._lock:
                pending = [e.next_beat for e in self._running.values() if e.state == "running"]
            pause = (min(pending) - time.monotonic()) if pending else 1.0
            self._wake.wait(max(min(pause, 1.0), 0.0))
            self._wake.clear()

    def _shutdown(self) -> None:
        with self._lock:
            left = sum(1 for e in self._running.values() if e.state == "running")
        log.info("worker %s shutting down: %d in flight, %.1f s grace", self.worker_id, left, self.grace)
        deadline = time.monotonic() + self.grace
        with self._changed:
            while self._running and not self._grace_over.is_set():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._changed.wait(min(remaining, 0.1))
            to_release = [e for e in self._running.values() if e.state == "running"]
            for entry in to_release:
                entry.state = "released"
        for entry in to_release:
            run = entry.run
            log.info("worker %s: grace period over; releasing run %s", self.worker_id, run["id"])
            self._hand_back(run)
        # Handlers that finished in time may still be reporting their outcome (bounded by the
        # report's own deadline): let them, so that what run() answers is what happened.
        with self._changed:
            while any(e.state == "reporting" for e in self._running.values()):
                self._changed.wait(0.1)
        log.info("worker %s stopped: %s", self.worker_id, self._stats)


async def _awaited(awaitable: Any) -> Any:
    return await awaitable


def _backoff(tries: int) -> float:
    """100 ms, doubling, at most 5 s."""
    return min(0.1 * 2.0**tries, 5.0)


def _report(call: Callable[[], Any], within: float) -> bool:
    """Calls ``call`` until it succeeds, fails for good, or ``within`` seconds pass."""
    deadline = time.monotonic() + within
    tries = 0
    while True:
        try:
            call()
            return True
        except TollgateError as exc:
            if exc.transient and time.monotonic() < deadline:
                pause = _backoff(tries)
                tries += 1
                log.warning("tollgate worker: reporting failed (%s); trying again in %.1f s", exc, pause)
                time.sleep(pause)
                continue
            log.warning("tollgate worker: the outcome was not recorded (%s); dropping the run", exc)
            return False
