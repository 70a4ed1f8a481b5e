"""What the sync and asyncio clients share: argument checks, request bodies, answer types and
the reading of answers. No IO here: each call is an :class:`Op` that a client sends with its own
transport (``httpx.Client`` or ``httpx.AsyncClient``).
"""

from __future__ import annotations

import json
import math
import os
import re
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Callable, Generic, TypeVar, Union
from urllib.parse import quote, urlsplit

from ._errors import TollgateError, error_for_status

T = TypeVar("T")

#: Where ``tollgate serve`` listens by default.
DEFAULT_URL = "http://127.0.0.1:7070"
#: The environment variable that names the server (as for the ``tollgate`` command line).
URL_ENV = "TOLLGATE_SERVER"
#: How long a call may take by default, on top of any wait it asks the server for.
DEFAULT_TIMEOUT = 30.0
#: The server cuts every wait (acquire ``wait_ms``, barrier ``timeout_ms``, lease ``wait_ms``)
#: to this many seconds; longer waits are made of several calls.
MAX_SERVER_WAIT = 60.0

JSON = Any
Body = dict[str, Any]

#: An acquire entry as the methods take it: a declared key, a ``(key, units)`` pair, or a dict
#: shaped like the HTTP entry (``{"key": "user:42", "limit": 10, "period": "1m"}``).
Entry = Union[str, tuple[str, int], Mapping[str, Any]]

# Fields that hold a period: a number there is seconds and is sent as whole milliseconds.
_PERIOD_FIELDS = ("period", "lease_ttl", "lease_timeout")
# A task's rate limit entry also takes Hatchet's name for its period, ``duration``.
_RATE_LIMIT_PERIOD_FIELDS = (*_PERIOD_FIELDS, "duration")


def base_url(url: str | None) -> str:
    """The server's base URL, checked: ``url``, else ``$TOLLGATE_SERVER``, else the default."""
    given = url if url is not None else (os.environ.get(URL_ENV) or DEFAULT_URL)
    if not isinstance(given, str):
        raise TypeError(f"the Tollgate server URL must be a str, not {type(given).__name__}")
    source = "" if url is not None else f" (from ${URL_ENV})" if os.environ.get(URL_ENV) else ""
    parts = urlsplit(given)
    problem = None
    if parts.scheme not in ("http", "https"):
        problem = "it must start with http:// or https://"
    elif not parts.hostname:
        problem = "it has no host"
    elif parts.query or parts.fragment:
        problem = "a base URL takes no query or fragment"
    if problem:
        raise ValueError(f"invalid Tollgate server URL {given!r}{source}: {problem}")
    return given.rstrip("/")


TOKEN_ENV = "TOLLGATE_TOKEN"


def auth_headers(token: str | None) -> dict[str, str]:
    """``Authorization: Bearer`` for ``token``, else ``$TOLLGATE_TOKEN``; none without either."""
    given = token if token is not None else os.environ.get(TOKEN_ENV)
    if given is None or given == "":
        return {}
    if not isinstance(given, str):
        raise TypeError(f"token must be a str, not {type(given).__name__}")
    secret = given.strip()
    if not secret or any(ord(c) < 0x21 or ord(c) > 0x7E for c in secret):
        source = "token" if token is not None else f"${TOKEN_ENV}"
        raise ValueError(f"invalid {source}: it must be visible ASCII without spaces")
    return {"authorization": f"Bearer {secret}"}


CA_ENV = "TOLLGATE_CA_CERT"


def tls_verify(ca_cert: str | os.PathLike[str] | None) -> ssl.SSLContext | bool:
    """What httpx verifies an ``https://`` server with: the system's roots, plus the CA file
    ``ca_cert`` (else ``$TOLLGATE_CA_CERT``) when given (a private CA)."""
    given = ca_cert if ca_cert is not None else os.environ.get(CA_ENV) or None
    if given is None:
        return True
    source = "ca_cert" if ca_cert is not None else f"${CA_ENV}"
    try:
        context = ssl.create_default_context()
        context.load_verify_locations(cafile=os.fspath(given))
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"invalid {source} {os.fspath(given)!r}: {exc}") from exc
    return context


def check_timeout(timeout: float) -> float:
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"timeout must be a number of seconds, not {type(timeout).__name__}")
    if not math.isfinite(timeout) or timeout <= 0:
        raise ValueError(f"timeout must be a positive number of seconds, not {timeout!r}")
    return float(timeout)


def seconds(value: Any, name: str, *, allow_zero: bool = True) -> float:
    """A duration given in seconds, checked."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds, not {type(value).__name__}")
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        want = "zero or more" if allow_zero else "more than zero"
        raise ValueError(f"{name} must be {want} seconds, not {value!r}")
    return float(value)


def millis(secs: float) -> int:
    """Seconds as whole milliseconds, rounded up (a wait or time to live is never short)."""
    return math.ceil(round(secs * 1000, 6))


def period(value: Any, name: str) -> Any:
    """A period field: strings go as they are; a number is seconds, sent as whole seconds
    (``"5s"``) or milliseconds (``"1500ms"``), rounded up."""
    if isinstance(value, str) or value is None:
        return value
    ms = millis(seconds(value, name, allow_zero=False))
    return f"{ms // 1000}s" if ms % 1000 == 0 else f"{ms}ms"


def with_periods(body: Mapping[str, Any], where: str, fields: Sequence[str] = _PERIOD_FIELDS) -> Body:
    out = dict(body)
    for name in fields:
        if name in out:
            out[name] = period(out[name], f"{where}{name}")
    return out


def check_name(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str, not {type(value).__name__}")
    if not value:
        raise ValueError(f"{what} must not be empty")
    return value


def check_units(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be an int, not {type(value).__name__} {value!r}")
    if value < 1:
        raise ValueError(f"{what} must be at least 1, not {value}")
    return value


def entries(given: Sequence[Entry], units: int | None) -> list[Body]:
    """Acquire entries in their HTTP form."""
    if not given:
        raise ValueError("name at least one limit: a key, a (key, units) pair or an entry dict")
    if units is not None and (len(given) != 1 or not isinstance(given[0], str)):
        raise ValueError(
            "units= applies to one key given as a string; for several limits give "
            "(key, units) pairs or entry dicts"
        )
    out: list[Body] = []
    for i, entry in enumerate(given):
        where = f"limits[{i}]"
        if isinstance(entry, str):
            body: Body = {"key": check_name(entry, f"{where} key")}
            if units is not None:
                body["units"] = check_units(units, "units")
        elif isinstance(entry, tuple):
            if len(entry) != 2:
                raise ValueError(f"{where}: a tuple entry is (key, units), not {entry!r}")
            key, n = entry
            body = {"key": check_name(key, f"{where} key"), "units": check_units(n, f"{where} units")}
        elif isinstance(entry, Mapping):
            if "key" not in entry:
                raise ValueError(f"{where}: an entry dict needs a 'key', got {dict(entry)!r}")
            body = with_periods(entry, f"{where}.")
            check_name(body["key"], f"{where} key")
            if "units" in body:
                check_units(body["units"], f"{where} units")
        else:
            raise TypeError(
                f"{where}: an entry is a key (str), a (key, units) tuple or a dict, "
                f"not {type(entry).__name__} {entry!r}"
            )
        out.append(body)
    return out


def path(*segments: str) -> str:
    """Each segment percent-encoded as one path segment (a key ``a/b`` stays one segment)."""
    return "/" + "/".join(quote(s, safe="") for s in segments)


# ---------------------------------------------------------------------------------------------
# Answers


def _ms(value: Any) -> float:
    return float(value) / 1000.0 if value is not None else 0.0


@dataclass(frozen=True)
class KeyDecision:
    """One entry's part of a :class:`Decision`: whether this key would admit it, its capacity
    (``limit``), what is left, and the times in seconds."""

    key: str
    allowed: bool
    limit: int
    remaining: int
    retry_after: float
    reset_after: float

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> KeyDecision:
        return cls(
            key=d["key"],
            allowed=d["allowed"],
            limit=d["limit"],
            remaining=d["remaining"],
            retry_after=_ms(d.get("retry_after_ms")),
            reset_after=_ms(d.get("reset_after_ms")),
        )


@dataclass(frozen=True)
class Decision:
    """The answer to an acquire: ``allowed`` (every entry admitted and consumed, or none),
    ``retry_after`` (seconds until the whole request could be admitted; 0 when allowed) and one
    :class:`KeyDecision` per entry, in order. True in a boolean context when allowed."""

    allowed: bool
    retry_after: float
    decisions: list[KeyDecision]

    def __bool__(self) -> bool:
        return self.allowed

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Decision:
        return cls(
            allowed=d["allowed"],
            retry_after=_ms(d.get("retry_after_ms")),
            decisions=[KeyDecision.from_json(x) for x in d.get("decisions", [])],
        )


@dataclass(frozen=True)
class Lease:
    """The answer to a concurrency lease request: ``acquired``, and when granted its
    ``lease_id`` and ``expires_at`` (Unix time, seconds); when not, ``retry_after`` (seconds until
    the earliest live lease expires). ``limit`` and ``remaining`` count the key's slots."""

    acquired: bool
    limit: int
    remaining: int
    lease_id: str | None = None
    expires_at: float | None = None
    retry_after: float = 0.0
    key: str = ""

    def __bool__(self) -> bool:
        return self.acquired

    @classmethod
    def from_json(cls, d: Mapping[str, Any], key: str) -> Lease:
        expires = d.get("expires_at_ms")
        return cls(
            acquired=d["acquired"],
            limit=d["limit"],
            remaining=d["remaining"],
            lease_id=d.get("lease_id"),
            expires_at=expires / 1000.0 if expires is not None else None,
            retry_after=_ms(d.get("retry_after_ms")),
            key=key,
        )


class LimitList(list):  # type: ignore[type-arg]
    """``GET /v1/limits``: the limits (dicts as the server answers them), plus
    ``dynamic_total``, the number of dynamic keys with state (including those left out)."""

    dynamic_total: int = 0


@dataclass(frozen=True)
class WorkerStats:
    """What a :class:`Worker` did, answered by :meth:`Worker.run`."""

    leased: int = 0
    succeeded: int = 0
    failed: int = 0
    released: int = 0
    lost: int = 0


# ---------------------------------------------------------------------------------------------
# Operations


@dataclass
class Op(Generic[T]):
    """One request and how to read its answer. ``wait`` is how long the server may hold the
    request on purpose (added to the timeout)."""

    method: str
    path: str
    parse: Callable[[Any], T]
    body: Body | None = None
    params: dict[str, Any] | None = None
    wait: float = 0.0
    #: ``"json"`` (the answer is JSON), ``"none"`` (``204``: no body) or ``"text"``.
    reads: str = "json"


def as_dict(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise TollgateError(
            f"expected a JSON object from the server, got {type(value).__name__}",
            code="unexpected_response",
        )
    return value


def as_list(key: str) -> Callable[[Any], list[dict[str, Any]]]:
    def read(value: Any) -> list[dict[str, Any]]:
        items = as_dict(value).get(key)
        if not isinstance(items, list):
            raise TollgateError(
                f"expected a list under {key!r} in the server's answer",
                code="unexpected_response",
            )
        return items

    return read


def nothing(_: Any) -> None:
    return None


def snippet(data: bytes) -> str:
    if not data:
        return "an empty body"
    text = data[:200].decode("utf-8", "replace")
    text = "".join(" " if ord(c) < 32 else c for c in text)
    return repr(text) + ("…" if len(data) > 200 else "")


def read_answer(status: int, data: bytes, op: Op[T]) -> T:
    """The parsed answer of a success, or the :class:`TollgateError` of anything else."""
    if 200 <= status < 300:
        if op.reads == "none":
            return op.parse(None)
        if op.reads == "text":
            return op.parse(data.decode("utf-8", "replace"))
        try:
            value = json.loads(data)
        except ValueError:
            raise TollgateError(
                f"{op.method} {op.path}: the server's answer (HTTP {status}) is not JSON: {snippet(data)}",
                status=status,
                code="unexpected_response",
            ) from None
        return op.parse(value)
    raise error_from(status, data, f"{op.method} {op.path}")


def error_from(status: int, data: bytes, what: str) -> TollgateError:
    try:
        envelope = json.loads(data)
        err = envelope["error"]
        return error_for_status(
            status,
            str(err["message"]),
            code=str(err["code"]),
            field=err.get("field"),
            transient=bool(err.get("transient", False)),
        )
    except (ValueError, KeyError, TypeError):
        return error_for_status(
            status,
            f"{what}: HTTP {status} without a Tollgate error body (a proxy in between?): {snippet(data)}",
            code=f"http_{status}",
        )


def retryable(err: TollgateError) -> bool:
    """What the client retries by itself within its timeout: a transient server error (503),
    and a connection that could not be made (the request never reached the server)."""
    if err.status == 503 and err.transient:
        return True
    return err.code == "connect_error"


def backoff(attempt: int) -> float:
    """50 ms, doubling, at most 1 s."""
    return min(0.05 * 2.0**attempt, 1.0)


# ---------------------------------------------------------------------------------------------
# The operations of every route, shared by both clients.


def op_put_limit(key: str, spec: Mapping[str, Any]) -> Op[dict[str, Any]]:
    check_name(key, "key")
    return Op("PUT", path("v1", "limits", key), as_dict, body=with_periods(spec, ""))


def op_get_limit(key: str) -> Op[dict[str, Any]]:
    check_name(key, "key")
    return Op("GET", path("v1", "limits", key), as_dict)


def op_delete_limit(key: str) -> Op[None]:
    check_name(key, "key")
    return Op("DELETE", path("v1", "limits", key), nothing, reads="none")


def op_limits(dynamic: int | None) -> Op[LimitList]:
    params = None
    if dynamic is not None:
        params = {"dynamic": check_count(dynamic, "dynamic", minimum=0)}

    def read(value: Any) -> LimitList:
        answer = as_dict(value)
        out = LimitList(as_list("limits")(answer))
        out.dynamic_total = int(answer.get("dynamic_total", 0))
        return out

    return Op("GET", path("v1", "limits"), read, params=params)


def pause_fields(body: Body, duration: float | None, until: float | None, name: str = "") -> Body:
    """``duration`` (seconds from now) or ``until`` (Unix seconds) as a pause's ``for_ms`` or
    ``until_ms``, rounded up; exactly one of the two."""
    if (duration is None) == (until is None):
        raise ValueError(f"{name}give a duration (seconds from now) or until (an instant), exactly one")
    if duration is not None:
        body["for_ms"] = millis(seconds(duration, f"{name}duration", allow_zero=False))
    if until is not None:
        body["until_ms"] = millis(seconds(until, f"{name}until"))
    return body


@dataclass(frozen=True)
class Pause:
    """A key to pause for everyone, as a worker's :meth:`~tollgate.Tollgate.fail` reports an
    upstream's 429: for ``duration`` seconds from now or ``until`` an instant (Unix seconds), a
    dynamic key with ``dynamic=True``."""

    key: str
    duration: float | None = None
    until: float | None = None
    dynamic: bool = False

    def body(self) -> Body:
        check_name(self.key, "pause key")
        body: Body = {"key": self.key}
        pause_fields(body, self.duration, self.until, "pause: ")
        if self.dynamic:
            body["dynamic"] = True
        return body


def op_pause(key: str, duration: float | None, until: float | None, dynamic: bool) -> Op[dict[str, Any]]:
    check_name(key, "key")
    body = pause_fields({}, duration, until)
    if dynamic:
        body["dynamic"] = True
    return Op("POST", path("v1", "limits", key, "pause"), as_dict, body=body)


def op_resume(key: str, dynamic: bool) -> Op[bool]:
    check_name(key, "key")
    params = {"dynamic": "true"} if dynamic else None
    return Op(
        "DELETE",
        path("v1", "limits", key, "pause"),
        lambda v: bool(as_dict(v).get("was_paused")),
        params=params,
    )


def op_pauses() -> Op[list[dict[str, Any]]]:
    return Op("GET", path("v1", "pauses"), as_list("pauses"))


OUTCOMES = ("ok", "throttled")


def check_outcome(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str, not {type(value).__name__}")
    if value not in OUTCOMES:
        raise ValueError(f'{what} must be "ok" or "throttled", not {value!r}')
    return value


@dataclass(frozen=True)
class Feedback:
    """What a call to the upstream an adaptive limit protects met, as a worker's
    :meth:`~tollgate.Tollgate.complete` or :meth:`~tollgate.Tollgate.fail` reports it:
    ``Feedback("stripe-api", "throttled")``. ``"ok"`` raises the limit in force by one (up to its
    ``max``), ``"throttled"`` halves it (down to its ``min``)."""

    key: str
    outcome: str

    def body(self) -> Body:
        check_name(self.key, "feedback key")
        return {"key": self.key, "outcome": check_outcome(self.outcome, "feedback outcome")}


FeedbackLike = Union[Feedback, tuple[str, str]]


def feedback_body(given: Any) -> Body:
    """A worker call's ``feedback``: a :class:`Feedback` or a ``(key, outcome)`` pair."""
    if isinstance(given, Feedback):
        return given.body()
    if isinstance(given, tuple) and len(given) == 2:
        return Feedback(given[0], given[1]).body()
    raise TypeError(
        f"feedback must be a tollgate.Feedback or a (key, outcome) pair, not {type(given).__name__}"
    )


def op_feedback(key: str, outcome: str) -> Op[dict[str, Any]]:
    check_name(key, "key")
    body: Body = {"outcome": check_outcome(outcome, "outcome")}
    return Op("POST", path("v1", "limits", key, "feedback"), as_dict, body=body)


def check_count(value: Any, name: str, *, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, not {value}")
    return value


def op_acquire(body_entries: list[Body], wait: float) -> Op[Decision]:
    body: Body = {"limits": body_entries}
    if wait > 0:
        body["wait_ms"] = millis(min(wait, MAX_SERVER_WAIT))
    return Op(
        "POST",
        path("v1", "acquire"),
        lambda v: Decision.from_json(as_dict(v)),
        body=body,
        wait=min(wait, MAX_SERVER_WAIT),
    )


def op_acquire_batch(requests: Sequence[Sequence[Entry]]) -> Op[list[Decision | TollgateError]]:
    if isinstance(requests, (str, bytes)) or not isinstance(requests, Sequence):
        raise TypeError("acquire_batch takes a list of requests, each a list of entries")
    body = {"requests": [{"limits": entries(list(r), None)} for r in requests]}

    def read(value: Any) -> list[Decision | TollgateError]:
        out: list[Decision | TollgateError] = []
        for result in as_list("results")(value):
            if "error" in result:
                err = result["error"]
                out.append(
                    TollgateError(
                        str(err.get("message", "")),
                        code=str(err.get("code", "error")),
                        field=err.get("field"),
                        transient=bool(err.get("transient", False)),
                    )
                )
            else:
                out.append(Decision.from_json(result))
        return out

    return Op("POST", path("v1", "acquire", "batch"), read, body=body)


def op_lease(key: str, limit: int | None, ttl: float | None, holder: str | None) -> Op[Lease]:
    check_name(key, "key")
    body: Body = {"key": key}
    if limit is not None:
        body["limit"] = check_count(limit, "limit")
    if ttl is not None:
        body["ttl_ms"] = millis(seconds(ttl, "ttl", allow_zero=False))
    if holder is not None:
        if not isinstance(holder, str):
            raise TypeError(f"holder must be a str, not {type(holder).__name__}")
        body["holder"] = holder
    return Op("POST", path("v1", "leases"), lambda v: Lease.from_json(as_dict(v), key), body=body)


def op_renew_lease(lease_id: str, ttl: float | None) -> Op[dict[str, Any]]:
    check_name(lease_id, "lease_id")
    body: Body = {}
    if ttl is not None:
        body["ttl_ms"] = millis(seconds(ttl, "ttl", allow_zero=False))
    return Op("POST", path("v1", "leases", lease_id, "renew"), as_dict, body=body)


def op_release_lease(lease_id: str) -> Op[None]:
    check_name(lease_id, "lease_id")
    return Op("DELETE", path("v1", "leases", lease_id), nothing, reads="none")


def op_create_barrier(key: str, parties: int, ttl: float) -> Op[dict[str, Any]]:
    check_name(key, "key")
    body = {
        "parties": check_count(parties, "parties"),
        "ttl_ms": millis(seconds(ttl, "ttl", allow_zero=False)),
    }
    return Op("POST", path("v1", "barriers", key), as_dict, body=body)


def op_barrier_status(key: str) -> Op[dict[str, Any]]:
    check_name(key, "key")
    return Op("GET", path("v1", "barriers", key), as_dict)


def op_wait_barrier(key: str, timeout: float) -> Op[bool]:
    check_name(key, "key")
    wait = min(timeout, MAX_SERVER_WAIT)
    return Op(
        "POST",
        path("v1", "barriers", key, "wait"),
        lambda v: bool(as_dict(v)["released"]),
        body={"timeout_ms": millis(wait)},
        wait=wait,
    )


def op_put_task(name: str, spec: Mapping[str, Any]) -> Op[dict[str, Any]]:
    check_name(name, "task name")
    body = with_periods(spec, "")
    for list_name in ("rate_limits",):
        items = body.get(list_name)
        if isinstance(items, list):
            body[list_name] = [
                with_periods(x, f"{list_name}[{i}].", _RATE_LIMIT_PERIOD_FIELDS)
                if isinstance(x, Mapping)
                else x
                for i, x in enumerate(items)
            ]
    idem = body.get("idempotency")
    if isinstance(idem, Mapping):
        body["idempotency"] = with_periods(idem, "idempotency.")
    for field in ("throttle", "rate_limit"):
        rate = body.get(field)
        if isinstance(rate, Mapping):
            body[field] = with_periods(rate, f"{field}.")
    return Op("PUT", path("v1", "tasks", name), as_dict, body=body)


def op_get_task(name: str) -> Op[dict[str, Any]]:
    check_name(name, "task name")
    return Op("GET", path("v1", "tasks", name), as_dict)


def op_tasks() -> Op[list[dict[str, Any]]]:
    return Op("GET", path("v1", "tasks"), as_list("tasks"))


def start_fields(body: Body, delay: float | None, run_at: float | None) -> Body:
    """``delay`` (seconds from now) or ``run_at`` (Unix seconds) as the body's ``delay_ms`` or
    ``run_at_ms``, rounded up so that a run never starts early; both at once is refused."""
    if delay is not None and run_at is not None:
        raise ValueError("give delay (seconds from now) or run_at (an instant), not both")
    if delay is not None:
        body["delay_ms"] = millis(seconds(delay, "delay"))
    if run_at is not None:
        body["run_at_ms"] = millis(seconds(run_at, "run_at"))
    return body


def op_enqueue(
    task: str,
    input: JSON,
    additional_metadata: JSON,
    delay: float | None = None,
    run_at: float | None = None,
    priority: int | None = None,
) -> Op[dict[str, Any]]:
    check_name(task, "task name")
    body: Body = {"input": input}
    if additional_metadata is not None:
        body["additional_metadata"] = additional_metadata
    start_fields(body, delay, run_at)
    if priority is not None:
        if isinstance(priority, bool) or not isinstance(priority, int):
            raise TypeError(f"priority must be an int, not {type(priority).__name__}")
        if not 1 <= priority <= 4:
            raise ValueError(f"priority must be 1 (least urgent) to 4, not {priority}")
        body["priority"] = priority
    return Op("POST", path("v1", "tasks", task, "runs"), as_dict, body=body)


def op_send_event(
    name: str,
    data: JSON,
    additional_metadata: JSON,
    delay: float | None = None,
    run_at: float | None = None,
) -> Op[list[dict[str, Any]]]:
    check_name(name, "event name")
    body: Body = {"name": name, "data": data}
    if additional_metadata is not None:
        body["additional_metadata"] = additional_metadata
    start_fields(body, delay, run_at)
    return Op("POST", path("v1", "events"), as_list("runs"), body=body)


def op_run(run_id: str) -> Op[dict[str, Any]]:
    check_name(run_id, "run id")
    return Op("GET", path("v1", "runs", run_id), as_dict)


_STATES = ("queued", "waiting", "running", "succeeded", "failed", "skipped", "cancelled")


def op_runs(task: str | None, state: str | None, limit: int | None) -> Op[list[dict[str, Any]]]:
    params: dict[str, Any] = {}
    if task is not None:
        params["task"] = check_name(task, "task")
    if state is not None:
        if state not in _STATES:
            raise ValueError(f"state must be one of {', '.join(_STATES)}; not {state!r}")
        params["state"] = state
    if limit is not None:
        params["limit"] = check_count(limit, "limit")
    return Op("GET", path("v1", "runs"), as_list("runs"), params=params or None)


def _attempt_body(attempt: int | None) -> Body:
    if attempt is None:
        return {}
    return {"attempt": check_count(attempt, "attempt", minimum=0)}


def op_explain(run_id: str) -> Op[dict[str, Any]]:
    check_name(run_id, "run id")
    return Op("GET", path("v1", "runs", run_id, "explain"), as_dict)


def op_run_call(run_id: str, call: str, body: Body) -> Op[dict[str, Any]]:
    check_name(run_id, "run id")
    return Op("POST", path("v1", "runs", run_id, call), as_dict, body=body)


def op_heartbeat(run_id: str, attempt: int | None) -> Op[dict[str, Any]]:
    return op_run_call(run_id, "heartbeat", _attempt_body(attempt))


def op_complete(
    run_id: str, output: JSON, attempt: int | None, feedback: FeedbackLike | None = None
) -> Op[dict[str, Any]]:
    body = _attempt_body(attempt)
    if output is not None:
        body["output"] = output
    if feedback is not None:
        body["feedback"] = feedback_body(feedback)
    return op_run_call(run_id, "complete", body)


def op_fail(
    run_id: str,
    error: str,
    retry: bool,
    attempt: int | None,
    retry_after: float | None = None,
    pause: Pause | None = None,
    feedback: FeedbackLike | None = None,
) -> Op[dict[str, Any]]:
    if not isinstance(error, str):
        raise TypeError(f"error must be a str, not {type(error).__name__}")
    body = _attempt_body(attempt)
    body["error"] = error
    body["retry"] = bool(retry)
    if retry_after is not None:
        if not retry:
            raise ValueError("retry_after applies to a retry: give retry=True with it")
        body["retry_after_ms"] = millis(seconds(retry_after, "retry_after"))
    if pause is not None:
        if not isinstance(pause, Pause):
            raise TypeError(f"pause must be a tollgate.Pause, not {type(pause).__name__}")
        body["pause"] = pause.body()
    if feedback is not None:
        body["feedback"] = feedback_body(feedback)
    return op_run_call(run_id, "fail", body)


def op_release(run_id: str, attempt: int | None) -> Op[dict[str, Any]]:
    return op_run_call(run_id, "release", _attempt_body(attempt))


def op_cancel(run_id: str) -> Op[dict[str, Any]]:
    return op_run_call(run_id, "cancel", {})


def op_lease_runs(worker_id: str, tasks: Sequence[str], max: int, wait: float) -> Op[list[dict[str, Any]]]:
    check_name(worker_id, "worker_id")
    if isinstance(tasks, str) or not isinstance(tasks, Sequence) or not tasks:
        raise TypeError("tasks must be a non-empty list of task names")
    body: Body = {
        "worker_id": worker_id,
        "tasks": [check_name(t, "task name") for t in tasks],
        "max": check_count(max, "max"),
    }
    wait = min(wait, MAX_SERVER_WAIT)
    if wait > 0:
        body["wait_ms"] = millis(wait)
    return Op("POST", path("v1", "workers", "lease"), as_list("runs"), body=body, wait=wait)


def op_healthz() -> Op[dict[str, Any]]:
    return Op("GET", "/healthz", as_dict)


def op_metrics() -> Op[str]:
    return Op("GET", "/metrics", str, reads="text")


# ---------------------------------------------------------------------------------------------
# Periods in answers (a task's lease_timeout), for the worker's heartbeats.

_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
    "d": 86400.0,
    "w": 604800.0,
}
_NAMES = {
    "SECOND": 1.0,
    "MINUTE": 60.0,
    "HOUR": 3600.0,
    "DAY": 86400.0,
    "WEEK": 604800.0,
    "MONTH": 30 * 86400.0,
    "YEAR": 365 * 86400.0,
}
_PART = re.compile(r"(\d+)(ns|us|ms|s|m|h|d|w)")


def parse_period(text: str) -> float:
    """A period string (``"30s"``, ``"1h30m"``, ``"500ms"``, ``"MINUTE"``) in seconds."""
    t = text.strip()
    named = _NAMES.get(t.upper())
    if named is not None:
        return named
    pos, total = 0, 0.0
    while pos < len(t):
        m = _PART.match(t, pos)
        if not m:
            raise ValueError(f"not a period: {text!r} (expected e.g. '30s', '1h30m', '500ms')")
        total += int(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if pos == 0:
        raise ValueError(f"not a period: {text!r}")
    return total
