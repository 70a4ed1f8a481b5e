"""What a call can fail with.

A denial (``allowed: false``, ``acquired: false``, ``released: false``) is an answer, never an
error: only :class:`RateLimited`, raised by the context managers :meth:`Tollgate.limit` and
:meth:`Tollgate.concurrency`, turns one into an exception.
"""

from __future__ import annotations

from typing import Any


class TollgateError(Exception):
    """An error answer from the server, or a failure to get one.

    ``status`` is the HTTP status (``None`` when no answer came), ``code`` the server's stable
    snake_case code (``"unknown_limit"``, ``"invalid_period"``, …), ``message`` what went wrong
    for people, ``field`` the request field it is about (``"limits[1].units"``) when there is
    one, and ``transient`` whether trying again later may succeed (503 ``store_unavailable``,
    the server unreachable).
    """

    #: The status this class stands for (subclasses set it).
    STATUS: int | None = None

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str = "error",
        field: str | None = None,
        transient: bool = False,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.transient = transient

    def __str__(self) -> str:
        where = f" (field {self.field})" if self.field else ""
        head = f"{self.status} {self.code}" if self.status is not None else self.code
        return f"{head}: {self.message}{where}"

    def __reduce__(self) -> tuple[Any, ...]:
        # Picklable with every attribute (Celery's result backend, multiprocessing).
        return (_rebuild, (type(self), self.message, self.status, self.code, self.field, self.transient))

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(status={self.status!r}, code={self.code!r}, "
            f"message={self.message!r}, field={self.field!r}, transient={self.transient!r})"
        )


def _rebuild(
    cls: type[TollgateError],
    message: str,
    status: int | None,
    code: str,
    field: str | None,
    transient: bool,
) -> TollgateError:
    return cls(message, status=status, code=code, field=field, transient=transient)


class BadRequestError(TollgateError):
    """400: malformed input (``invalid_field``, ``missing_field``, ``unknown_field``,
    ``invalid_period``, ``invalid_rate``, ``invalid_key``, ``invalid_name``,
    ``invalid_expression``, ``invalid_json``)."""

    STATUS = 400


class UnauthorizedError(TollgateError):
    """401: refused by something in front of the server (a proxy asking for credentials)."""

    STATUS = 401


class ForbiddenError(TollgateError):
    """403: refused by something in front of the server."""

    STATUS = 403


class NotFoundError(TollgateError):
    """404: ``unknown_limit``, ``unknown_lease``, ``unknown_barrier``, ``unknown_task``,
    ``unknown_run``, ``not_found``."""

    STATUS = 404


class MethodNotAllowedError(TollgateError):
    """405: the route does not take that method."""

    STATUS = 405


class ConflictError(TollgateError):
    """409: ``lease_expired``, ``barrier_expired``, ``invalid_state``, ``limit_in_use``."""

    STATUS = 409


class PayloadTooLargeError(TollgateError):
    """413: the body is larger than the server's ``--max-body``."""

    STATUS = 413


class UnprocessableError(TollgateError):
    """422: well-formed but impossible: ``wrong_algorithm``, ``insufficient_capacity``,
    ``unknown_limit`` (a task's ``static_key``), ``unknown_task`` (a lease's ``tasks[i]``),
    ``invalid_expression`` (an enqueued run's input its task's CEL cannot evaluate; an event's
    run is stored as ``failed`` with that error instead, see :meth:`Tollgate.send_event`)."""

    STATUS = 422


class InternalServerError(TollgateError):
    """500: a failure inside the server (its log has the details)."""

    STATUS = 500


class UnavailableError(TollgateError):
    """503: ``store_unavailable`` (Redis unreachable), always transient. The client retries it
    with backoff within its timeout before raising it."""

    STATUS = 503


class TollgateConnectionError(TollgateError):
    """No answer: the server could not be reached, the connection broke, or no answer came
    within the timeout. ``status`` is ``None``; ``transient`` is true."""


class TollgateTimeout(TollgateConnectionError):
    """No answer within the call's timeout (plus any wait it asked the server for)."""


_BY_STATUS: dict[int, type[TollgateError]] = {
    cls.STATUS: cls
    for cls in (
        BadRequestError,
        UnauthorizedError,
        ForbiddenError,
        NotFoundError,
        MethodNotAllowedError,
        ConflictError,
        PayloadTooLargeError,
        UnprocessableError,
        InternalServerError,
        UnavailableError,
    )
    if cls.STATUS is not None
}


def error_for_status(
    status: int,
    message: str,
    *,
    code: str,
    field: str | None = None,
    transient: bool = False,
) -> TollgateError:
    """The error class for ``status`` (the base class for a status without one of its own)."""
    cls = _BY_STATUS.get(status, TollgateError)
    # A 503 is transient whatever the body says (docs/http-api.md: it always carries the flag);
    # so are a gateway's 502 and 504.
    transient = transient or status in (502, 503, 504)
    return cls(message, status=status, code=code, field=field, transient=transient)


class RateLimited(Exception):
    """Not admitted: raised by :meth:`Tollgate.limit` (the limits did not allow the units within
    ``wait``) and :meth:`Tollgate.concurrency` (no free slot within ``wait``).

    ``retry_after`` is how long, in seconds, until the request could be admitted (for a
    concurrency key: until the earliest live lease expires); ``answer`` is what the server said
    (a :class:`Decision` or a :class:`Lease`).
    """

    def __init__(self, message: str, retry_after: float = 0.0, answer: Any = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.answer = answer

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (str(self), self.retry_after, self.answer))
