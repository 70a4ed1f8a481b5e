"""Tollgate for Python: a client (sync and asyncio) for the Tollgate rate-limiting server, a
worker runtime for its task-run queue, and global limits for Celery (``tollgate.celery``) and
Dramatiq (``tollgate.dramatiq``).

>>> from tollgate import Tollgate
>>> tg = Tollgate()                      # $TOLLGATE_SERVER, else http://127.0.0.1:7070
>>> tg.put_limit("stripe-api", algorithm="gcra", limit=10, period="1s", burst=5)  # doctest: +SKIP
"""

from __future__ import annotations

from ._core import Decision, Entry, Feedback, KeyDecision, Lease, LimitList, Pause, WorkerStats
from ._errors import (
    BadRequestError,
    ConflictError,
    ForbiddenError,
    InternalServerError,
    MethodNotAllowedError,
    NotFoundError,
    PayloadTooLargeError,
    RateLimited,
    TollgateConnectionError,
    TollgateError,
    TollgateTimeout,
    UnauthorizedError,
    UnavailableError,
    UnprocessableError,
)
from .aio import AsyncBarrierHandle, AsyncTollgate
from .client import BarrierHandle, HeldLease, Tollgate
from .worker import NoRetry, Throttled, Worker, WorkerError

__version__ = "0.2.0"

__all__ = [
    "AsyncBarrierHandle",
    "AsyncTollgate",
    "BadRequestError",
    "BarrierHandle",
    "ConflictError",
    "Decision",
    "Entry",
    "Feedback",
    "ForbiddenError",
    "HeldLease",
    "InternalServerError",
    "KeyDecision",
    "Lease",
    "LimitList",
    "MethodNotAllowedError",
    "NoRetry",
    "NotFoundError",
    "Pause",
    "PayloadTooLargeError",
    "RateLimited",
    "Throttled",
    "Tollgate",
    "TollgateConnectionError",
    "TollgateError",
    "TollgateTimeout",
    "UnauthorizedError",
    "UnavailableError",
    "UnprocessableError",
    "Worker",
    "WorkerError",
    "WorkerStats",
]
