"""Dramatiq's rate limiters and barrier with a Tollgate server as the backend, and a middleware
for global limits per actor.

The limiters take Dramatiq's signatures and keep its semantics (units as Dramatiq documents
them: ``window`` in seconds, ``bucket`` and ``ttl`` in milliseconds); a
:class:`tollgate.Tollgate` client takes the place of the Redis or Memcached backend, so moving
over is an import change::

    from tollgate import Tollgate
    from tollgate.dramatiq import ConcurrentRateLimiter

    backend = Tollgate()
    DISTRIBUTED_MUTEX = ConcurrentRateLimiter(backend, "distributed-mutex", limit=1)

    @dramatiq.actor
    def one_at_a_time():
        with DISTRIBUTED_MUTEX.acquire():    # dramatiq.RateLimitExceeded when held elsewhere
            ...

How each maps onto the HTTP API:

* :class:`ConcurrentRateLimiter` takes a concurrency lease on a dynamic key with ``limit``
  slots (``POST /v1/leases``) living ``ttl`` ms, released when the block ends
  (``DELETE /v1/leases/{id}``);
* :class:`WindowRateLimiter` acquires one unit of a ``sliding_window`` dynamic key: never more
  than ``limit`` in any ``window`` seconds;
* :class:`BucketRateLimiter` acquires one unit of a ``fixed_window`` dynamic key aligned on the
  clock: at most ``limit`` per ``bucket`` ms, buckets starting at multiples of ``bucket`` since
  the epoch, as Dramatiq's;
* :class:`Barrier` is a Tollgate barrier (``POST /v1/barriers/{key}``, ``…/wait``). Unlike
  Dramatiq's backends, waiting on a barrier that was never created (or has expired) raises
  :class:`tollgate.NotFoundError` (or :class:`tollgate.ConflictError`) instead of passing.

:class:`RateLimits` is a middleware that gives actors a ``rate_limits`` option; a message whose
limits deny it is enqueued again with ``delay = retry_after`` without consuming a retry.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, NoReturn

from dramatiq.errors import RateLimitExceeded
from dramatiq.middleware import Middleware, MiddlewareError, SkipMessage

from . import _core as core
from . import _shared
from ._errors import ConflictError, NotFoundError, TollgateError
from .client import Tollgate, default_holder

__all__ = [
    "Barrier",
    "BucketRateLimiter",
    "ConcurrentRateLimiter",
    "InvalidRateLimits",
    "RateLimitExceeded",
    "RateLimiter",
    "RateLimits",
    "WindowRateLimiter",
]

log = logging.getLogger("tollgate.dramatiq")

#: Dramatiq brokers refuse delays of 7 days or more.
MAX_DELAY_MS = 7 * 86_400_000 - 1
#: The message option that counts a message's failures to reach Tollgate (for the backoff).
ERRORS_OPTION = "tollgate_unreachable"


def _backend(backend: Any, what: str) -> Tollgate:
    if backend is None:
        return _shared.default_client()
    if isinstance(backend, Tollgate):
        return backend
    raise TypeError(
        f"{what} takes a tollgate.Tollgate client as its backend (or None for Tollgate()), "
        f"not {type(backend).__name__}"
    )


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__} {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be positive, not {value}")
    return value


class RateLimiter:
    """What the limiters share: ``acquire(raise_on_failure=True)``, a context manager that
    yields whether a slot was acquired, raises :class:`dramatiq.RateLimitExceeded` when it was
    not (unless ``raise_on_failure`` is false), and releases the slot when the block ends.
    A limiter may be shared by threads: each ``acquire`` holds its own slot."""

    def __init__(self, backend: Tollgate | None, key: str) -> None:
        self.backend = _backend(backend, type(self).__name__)
        self.key = core.check_name(key, "key")

    def _take(self) -> str | None:
        """A token for a slot taken now, or ``None`` when denied."""
        raise NotImplementedError

    def _give_back(self, token: str) -> None:
        """Gives a slot back (rate limiters keep what was used)."""

    @contextmanager
    def acquire(self, *, raise_on_failure: bool = True) -> Iterator[bool]:
        token = self._take()
        if token is None and raise_on_failure:
            raise RateLimitExceeded(f"rate limit exceeded for key {self.key!r}")  # type: ignore[no-untyped-call]
        try:
            yield token is not None
        finally:
            if token is not None:
                self._give_back(token)

    def _acquire_one(self, entry: dict[str, Any]) -> str | None:
        return "used" if self.backend.acquire(entry).allowed else None


class ConcurrentRateLimiter(RateLimiter):
    """At most ``limit`` holders at once across every process (``limit=1``: a distributed
    mutex). ``ttl`` (milliseconds) is how long a slot may be held: a holder that dies frees its
    slot after it."""

    def __init__(self, backend: Tollgate | None, key: str, *, limit: int = 1, ttl: int = 900000) -> None:
        super().__init__(backend, key)
        self.limit = _positive_int(limit, "limit")
        self.ttl = _positive_int(ttl, "ttl")

    def _take(self) -> str | None:
        lease = self.backend.lease(self.key, limit=self.limit, ttl=self.ttl / 1000, holder=default_holder())
        return lease.lease_id if lease.acquired else None

    def _give_back(self, token: str) -> None:
        try:
            self.backend.release_lease(token)
        except NotFoundError:
            log.warning("the lease on %r had already expired (ttl %d ms) when released", self.key, self.ttl)
        except TollgateError as exc:
            if not exc.transient:
                raise
            # Not raised over what the block did: the slot frees when its ttl passes.
            log.warning(
                "releasing the lease on %r failed (%s); it frees after its ttl (%d ms)",
                self.key,
                exc,
                self.ttl,
            )


class WindowRateLimiter(RateLimiter):
    """At most ``limit`` operations in any sliding window of ``window`` seconds."""

    def __init__(self, backend: Tollgate | None, key: str, *, limit: int = 1, window: int = 1) -> None:
        super().__init__(backend, key)
        self.limit = _positive_int(limit, "limit")
        self.window = _positive_int(window, "window")
        self.window_millis = self.window * 1000

    def _take(self) -> str | None:
        return self._acquire_one(
            {"key": self.key, "algorithm": "sliding_window", "limit": self.limit, "period": f"{self.window}s"}
        )


class BucketRateLimiter(RateLimiter):
    """At most ``limit`` operations per bucket of ``bucket`` milliseconds, buckets aligned on
    the clock (multiples of ``bucket`` since the epoch). As with any fixed window, up to
    twice ``limit`` can pass across a bucket boundary."""

    def __init__(self, backend: Tollgate | None, key: str, *, limit: int = 1, bucket: int = 1000) -> None:
        super().__init__(backend, key)
        self.limit = _positive_int(limit, "limit")
        self.bucket = _positive_int(bucket, "bucket")

    def _take(self) -> str | None:
        return self._acquire_one(
            {
                "key": self.key,
                "algorithm": "fixed_window",
                "limit": self.limit,
                "period": f"{self.bucket}ms",
                "align": "clock",
            }
        )


class Barrier:
    """A distributed barrier: :meth:`create` it for N parties, then each party :meth:`wait`\\ s.
    ``ttl`` (milliseconds) is how long the barrier lives."""

    def __init__(self, backend: Tollgate | None, key: str, *, ttl: int = 900000) -> None:
        self.backend = _backend(backend, "Barrier")
        self.key = core.check_name(key, "key")
        self.ttl = _positive_int(ttl, "ttl")

    def create(self, parties: int) -> bool:
        """Creates the barrier for ``parties``; false when a live one of this key exists.
        (Two processes that create the same barrier within one round trip may both be told
        true; they share the one barrier either way.)"""
        parties = _positive_int(parties, "parties")
        try:
            self.backend.barrier_status(self.key)
            return False
        except NotFoundError:
            pass
        except ConflictError as exc:
            if exc.code != "barrier_expired":
                raise
        status = self.backend.create_barrier(self.key, parties=parties, ttl=self.ttl / 1000)
        return bool(status["arrived"] == 0 and status["parties"] == parties)

    def wait(self, *, block: bool = True, timeout: int | None = None) -> bool:
        """Arrives at the barrier; true once every party has. With ``block`` (default), waits
        up to ``timeout`` milliseconds (``None``: until released, or an error once the barrier
        expires); without, answers at once."""
        if timeout is not None and (
            isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout < 0
        ):
            raise ValueError(f"timeout must be a number of milliseconds >= 0 or None, not {timeout!r}")
        if not block:
            return self.backend.wait_barrier(self.key, timeout=0)
        return self.backend.wait_barrier(self.key, timeout=None if timeout is None else timeout / 1000)


class InvalidRateLimits(MiddlewareError, TypeError):
    """An actor's ``rate_limits`` option is not a list of limits: raised when the actor is
    declared (Dramatiq lets only a MiddlewareError through a middleware's hook)."""


class RateLimits(Middleware):
    """Global limits per actor: ``@dramatiq.actor(rate_limits=[...])``.

    Each element is a declared key, a ``(key, units)`` pair, a dict shaped like an acquire
    entry (``{"key": "user:42", "limit": 10, "period": "1m"}``), or a callable of the message's
    arguments that returns one of those. Before the actor runs, every limit is acquired in one
    atomic request. When denied, the message is enqueued again (same message id) with
    ``delay = retry_after`` and this delivery is skipped: no retry is consumed, the worker
    thread is free at once, and the ``Results`` middleware stores nothing for it.

    When Tollgate cannot be reached the message fails closed by default (enqueued again after
    1 s, doubling per failure of the same message up to 60 s); ``on_error="open"`` runs it
    without its limits. Either way it is logged. A non-transient error (an undeclared limit, a
    bad key) fails the message (it goes to the dead-letter queue with that error).
    """

    def __init__(self, *, client: Tollgate | None = None, on_error: str = "closed") -> None:
        if client is not None and not isinstance(client, Tollgate):
            raise TypeError(f"client must be a tollgate.Tollgate, not {type(client).__name__}")
        self.client = client
        self.on_error = _shared.check_on_error(on_error)

    @property
    def actor_options(self) -> set[str]:
        return {"rate_limits"}

    def before_declare_actor(self, broker: Any, actor: Any) -> None:
        limits = actor.options.get("rate_limits")
        if limits is not None:
            try:
                _check_limits(limits, f"actor {actor.actor_name!r} rate_limits")
            except (TypeError, ValueError) as exc:
                raise InvalidRateLimits(str(exc)) from exc

    def before_process_message(self, broker: Any, message: Any) -> None:
        actor = broker.get_actor(message.actor_name)
        limits = message.options.get("rate_limits", actor.options.get("rate_limits"))
        if not limits:
            return
        where = f"actor {message.actor_name!r} rate_limits"
        try:
            args, kwargs = _shared.by_name(_shared.signature(actor.fn), tuple(message.args), message.kwargs)
            entries = [_shared.resolve(spec, args, kwargs, f"{where}[{i}]") for i, spec in enumerate(limits)]
            tg = self.client if self.client is not None else _shared.default_client()
            decision = tg.acquire(*entries)
        except TollgateError as exc:
            if exc.transient:
                self._unreachable(broker, message, exc)
                return
            self._fail(message, exc)
        except (TypeError, ValueError) as exc:
            self._fail(message, exc)
        if decision.allowed:
            return
        denied = ", ".join(d.key for d in decision.decisions if not d.allowed)
        delay = min(max(math.ceil(decision.retry_after * 1000), 1), MAX_DELAY_MS)
        log.info(
            "message %s (%s): rate limited on %s; enqueued again in %d ms",
            message.message_id,
            message.actor_name,
            denied,
            delay,
        )
        self._again(broker, message, delay, 0)

    def _unreachable(self, broker: Any, message: Any, exc: TollgateError) -> None:
        if self.on_error == "open":
            log.warning(
                "message %s (%s): Tollgate unreachable (%s); running it without its limits (on_error='open')",
                message.message_id,
                message.actor_name,
                exc,
            )
            return
        failures = int(message.options.get(ERRORS_OPTION, 0) or 0) + 1
        delay = math.ceil(_shared.error_delay(failures) * 1000)
        log.warning(
            "message %s (%s): Tollgate unreachable (%s); enqueued again in %d ms (on_error='closed')",
            message.message_id,
            message.actor_name,
            exc,
            delay,
        )
        self._again(broker, message, delay, failures)

    def _fail(self, message: Any, exc: Exception) -> NoReturn:
        log.error(
            "message %s (%s): its rate_limits cannot be acquired: %s",
            message.message_id,
            message.actor_name,
            exc,
        )
        message.fail()
        raise SkipMessage(f"its rate_limits cannot be acquired: {exc}") from exc

    @staticmethod
    def _again(broker: Any, message: Any, delay: int, failures: int) -> NoReturn:
        broker.enqueue(message.copy(options={ERRORS_OPTION: failures}), delay=delay)
        # This delivery ends here; the copy (same message id) is the one that runs, so no
        # result is stored for this one.
        message.options["store_results"] = False
        raise SkipMessage("rate limited: enqueued again")


def _check_limits(limits: Any, where: str) -> None:
    if isinstance(limits, (str, bytes)) or not isinstance(limits, Sequence):
        raise TypeError(f"{where} must be a list of limits, not {type(limits).__name__} {limits!r}")
    for i, spec in enumerate(limits):
        _shared.check_spec(spec, f"{where}[{i}]")
