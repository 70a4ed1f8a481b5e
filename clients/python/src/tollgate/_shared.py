"""What the Celery and Dramatiq integrations share: a default client per process, and the
resolution of a limit named by a key, a (key, units) pair, a dict, or a callable of the task's
arguments."""

from __future__ import annotations

import inspect
import os
import threading
from collections.abc import Mapping
from typing import Any, Callable, Union

from . import _core as core
from .client import Tollgate

_lock = threading.Lock()
_client: Tollgate | None = None
_pid: int | None = None

#: The fields of an inline (dynamic) definition in an acquire entry.
DEFINITION_FIELDS = frozenset(
    {"algorithm", "rate", "limit", "period", "burst", "precision", "align", "capacity", "refill"}
)
#: The first delay when Tollgate cannot be reached and the integration fails closed (seconds);
#: it doubles with each failure of the same message, up to :data:`MAX_ERROR_DELAY`.
ERROR_DELAY = 1.0
MAX_ERROR_DELAY = 60.0


def default_client() -> Tollgate:
    """``Tollgate()`` (so ``$TOLLGATE_SERVER``), one per process: a forked worker child (Celery's
    prefork pool, Dramatiq's processes) makes its own instead of sharing the parent's sockets."""
    global _client, _pid
    with _lock:
        if _client is None or _pid != os.getpid():
            _client = Tollgate()
            _pid = os.getpid()
        return _client


def check_on_error(on_error: str | None) -> str:
    value = "closed" if on_error is None else on_error
    if value not in ("closed", "open"):
        raise ValueError(f"on_error must be 'closed' or 'open', not {on_error!r}")
    return value


def error_delay(failures: int) -> float:
    """The delay before a message is tried again after its ``failures``-th failure to reach
    Tollgate: 1 s, 2 s, 4 s, … at most 60 s."""
    return min(ERROR_DELAY * 2.0 ** max(failures - 1, 0), MAX_ERROR_DELAY)


LimitSpec = Union[str, tuple[str, int], Mapping[str, Any], Callable[..., Any]]


def check_spec(spec: Any, where: str) -> None:
    """Checks a limit named statically (callables are checked when called)."""
    if callable(spec):
        return
    core.entries([_as_entry(spec, where)], None)


def _as_entry(value: Any, where: str) -> core.Entry:
    if isinstance(value, list) and len(value) == 2:  # a pair that went through JSON
        value = (value[0], value[1])
    if isinstance(value, (str, tuple, Mapping)):
        return value
    raise TypeError(
        f"{where}: a limit is a key (str), a (key, units) pair, a dict shaped like an acquire "
        f"entry, or a callable of the task's arguments returning one of those; not "
        f"{type(value).__name__} {value!r}"
    )


def resolve(spec: Any, args: tuple[Any, ...], kwargs: Mapping[str, Any], where: str) -> core.Entry:
    """The acquire entry a spec names for one call."""
    if callable(spec):
        value = spec(*args, **kwargs)
        return _as_entry(value, f"{where} (returned by {getattr(spec, '__name__', spec)!r})")
    return _as_entry(spec, where)


def signature(fn: Callable[..., Any], *, drop_first: bool = False) -> inspect.Signature | None:
    """The signature a task's arguments are bound to (without ``self`` for a bound task)."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return None
    if drop_first:
        sig = sig.replace(parameters=list(sig.parameters.values())[1:])
    return sig


def by_name(
    sig: inspect.Signature | None, args: tuple[Any, ...], kwargs: Mapping[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """A call's arguments as a key function is given them: every argument by its parameter's
    name (defaults filled in), so ``lambda user_id, **kw: ...`` works however the task was
    called. A task with ``*args`` (or arguments that do not fit) passes them as they came."""
    if sig is None or any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in sig.parameters.values()):
        return args, dict(kwargs)
    try:
        bound = sig.bind(*args, **kwargs)
    except TypeError:
        return args, dict(kwargs)
    bound.apply_defaults()
    named: dict[str, Any] = {}
    for name, value in bound.arguments.items():
        if sig.parameters[name].kind is inspect.Parameter.VAR_KEYWORD:
            named.update(value)
        else:
            named[name] = value
    return (), named
