"""Global limits for Celery tasks: ``@rate_limited``.

Celery's own ``rate_limit`` is per worker (ten workers at ``10/m`` run 100 a minute). With
``@rate_limited`` every worker asks one Tollgate server, so the limit is global and exact::

    from tollgate.celery import rate_limited

    @app.task(bind=True)
    @rate_limited("stripe-api")                                      # a declared limit
    @rate_limited(lambda user_id, **kw: f"user:{user_id}", limit=5, period="1m")  # per call
    def charge(self, user_id, amount): ...

Before the body runs, the task acquires every limit named by its decorators in one atomic
request (all or nothing). When denied, the message is sent again with the same task id,
``countdown = retry_after`` and the same ``retries`` count, and this execution ends with
``celery.exceptions.Ignore``: the worker process is free at once (the countdown is held by the
consumer, not a pool process), no retry is counted against ``max_retries``, and the result
backend records nothing for the denied execution (the task id's result is the one that runs).

When Tollgate cannot be reached, the task fails closed by default: it is sent again after a
backoff (1 s, doubling with each failure of the same message, at most 60 s) as if denied;
``on_error="open"`` runs it without its limits instead. Either way it is logged. An error that
is not about reaching Tollgate (an undeclared limit, a bad key) is raised in the task.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Callable, NoReturn, TypeVar

from celery import Task, current_task
from celery.exceptions import Ignore

from . import _core as core
from . import _shared
from ._errors import RateLimited, TollgateError
from .client import Tollgate

log = logging.getLogger("tollgate.celery")

F = TypeVar("F", bound=Callable[..., Any])

#: The message header that counts a message's failures to reach Tollgate (for the backoff).
ERRORS_HEADER = "tollgate_unreachable"

_SPECS = "__tollgate_limits__"
_WRAPPED = "__tollgate_wrapped__"
_OPTIONS = "__tollgate_options__"


@dataclass(frozen=True)
class _Limit:
    key: str | Callable[..., Any]
    units: int | Callable[..., Any]
    definition: Mapping[str, Any]

    def entry(self, args: tuple[Any, ...], kwargs: Mapping[str, Any], task: str) -> dict[str, Any]:
        key = self.key(*args, **kwargs) if callable(self.key) else self.key
        if not isinstance(key, str) or not key:
            raise TypeError(
                f"the key function of @rate_limited on task {task!r} must return a non-empty str, "
                f"not {type(key).__name__} {key!r}"
            )
        units = self.units(*args, **kwargs) if callable(self.units) else self.units
        core.check_units(units, f"units of @rate_limited({key!r}) on task {task!r}")
        return {"key": key, "units": units, **self.definition}


def rate_limited(
    key: str | Callable[..., str],
    units: int | Callable[..., int] = 1,
    *,
    client: Tollgate | None = None,
    on_error: str | None = None,
    **definition: Any,
) -> Callable[[F], F]:
    """Makes a Celery task acquire ``units`` of limit ``key`` before its body runs.

    ``key`` is a declared limit's key, or a function of the task's arguments (without
    ``self``; given by name, defaults filled in) that returns one. With definition keyword
    arguments (``limit``, ``period``, ``rate``, ``algorithm``, ``burst``, ``precision``,
    ``align``, ``capacity``, ``refill``) the key is a dynamic key carrying its definition, as
    in ``/v1/acquire``. ``units`` may also be
    a function of the arguments. Several decorators on one task combine into one atomic
    acquire. ``client`` defaults to ``Tollgate()`` (``$TOLLGATE_SERVER``), ``on_error`` to
    ``"closed"``. Put the decorators below ``@app.task(...)``.
    """
    if not (isinstance(key, str) and key) and not callable(key):
        raise TypeError(
            f"@rate_limited takes a key (a non-empty str) or a function returning one, not {key!r}"
        )
    if not callable(units):
        core.check_units(units, "units")
    unknown = sorted(set(definition) - _shared.DEFINITION_FIELDS)
    if unknown:
        raise TypeError(
            f"@rate_limited got unexpected keyword argument(s) {', '.join(unknown)}; a definition "
            f"takes {', '.join(sorted(_shared.DEFINITION_FIELDS))}"
        )
    if client is not None and not isinstance(client, Tollgate):
        raise TypeError(f"client must be a tollgate.Tollgate, not {type(client).__name__}")
    _shared.check_on_error(on_error)
    limit = _Limit(key, units, core.with_periods(definition, ""))

    def decorate(fn: F) -> F:
        if isinstance(fn, Task):
            raise TypeError("@rate_limited wraps the task's function: put it below @app.task(...), not above")
        if not callable(fn):
            raise TypeError(f"@rate_limited decorates a function, not {type(fn).__name__}")
        specs: list[_Limit] = [limit]
        options: dict[str, Any] = {"client": client, "on_error": on_error}
        original: Callable[..., Any] = fn
        inner = getattr(fn, _WRAPPED, None)
        if inner is not None:
            # Another @rate_limited below: one wrapper, one atomic acquire for all of them.
            specs += getattr(fn, _SPECS)
            below = getattr(fn, _OPTIONS)
            for name in ("client", "on_error"):
                if options[name] is None:
                    options[name] = below[name]
                elif (
                    below[name] is not None
                    and below[name] is not options[name]
                    and below[name] != options[name]
                ):
                    raise ValueError(
                        f"the @rate_limited decorators of {fn.__name__} disagree on {name}: "
                        f"give it on one of them"
                    )
            original = inner
        wrapper = _wrap(original, specs, options["client"], _shared.check_on_error(options["on_error"]))
        setattr(wrapper, _SPECS, specs)
        setattr(wrapper, _WRAPPED, original)
        setattr(wrapper, _OPTIONS, options)
        return wrapper  # type: ignore[return-value]

    return decorate


def _wrap(
    fn: Callable[..., Any], specs: list[_Limit], client: Tollgate | None, on_error: str
) -> Callable[..., Any]:
    bound_sig = _shared.signature(fn, drop_first=True)
    plain_sig = _shared.signature(fn)

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if args and isinstance(args[0], Task):  # bind=True: self first
            task: Any = args[0]
            named = _shared.by_name(bound_sig, args[1:], kwargs)
        else:
            task = current_task
            named = _shared.by_name(plain_sig, args, kwargs)
            if task is None:
                raise RuntimeError(
                    f"{fn.__name__} is rate limited by Tollgate but is not running as a Celery task"
                )
        name = getattr(task, "name", fn.__name__)
        entries = [s.entry(*named, name) for s in specs]
        tg = client if client is not None else _shared.default_client()
        request = task.request
        try:
            decision = tg.acquire(*entries)
        except TollgateError as exc:
            if not exc.transient:
                raise
            if on_error == "open":
                log.warning(
                    "task %s[%s]: Tollgate unreachable (%s); running it without its limits (on_error='open')",
                    name,
                    request.id,
                    exc,
                )
                return fn(*args, **kwargs)
            failures = _failures(request) + 1
            delay = _shared.error_delay(failures)
            log.warning(
                "task %s[%s]: Tollgate unreachable (%s); sending it again in %.1f s (on_error='closed')",
                name,
                request.id,
                exc,
                delay,
            )
            _send_again(task, delay, failures, f"Tollgate unreachable: {exc}")
        if decision.allowed:
            return fn(*args, **kwargs)
        denied = ", ".join(d.key for d in decision.decisions if not d.allowed)
        log.info(
            "task %s[%s]: rate limited on %s; sending it again in %.3f s",
            name,
            request.id,
            denied,
            decision.retry_after,
        )
        _send_again(task, decision.retry_after, 0, f"rate limited on {denied}", decision)

    return wrapper


def _failures(request: Any) -> int:
    headers = getattr(request, "headers", None) or {}
    value = headers.get(ERRORS_HEADER, getattr(request, ERRORS_HEADER, 0))
    try:
        return max(int(value or 0), 0)
    except (TypeError, ValueError):
        return 0


def _send_again(task: Any, countdown: float, failures: int, why: str, answer: Any = None) -> NoReturn:
    """Sends the running task's message again (same id, args, retries count) after
    ``countdown`` seconds, and ends this execution without a state update."""
    request = task.request
    if request.called_directly or request.is_eager:
        # Not in a worker: there is no message to send again.
        raise RateLimited(
            f"task {task.name}: {why}; retry after {countdown:g} s (called outside a worker, "
            "so it cannot be sent again)",
            retry_after=countdown,
            answer=answer,
        )
    headers = dict(getattr(request, "headers", None) or {})
    headers[ERRORS_HEADER] = failures
    signature = task.signature_from_request(
        request, countdown=countdown, retries=request.retries, headers=headers
    )
    signature.apply_async()
    raise Ignore()
