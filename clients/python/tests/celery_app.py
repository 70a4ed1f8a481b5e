"""The Celery app the worker processes of ``test_celery.py`` run (``celery -A celery_app
worker``). Configured from the environment the test gives them:

- ``BROKER_URL``, ``RESULT_URL``, ``RECORD_URL``: Redis databases for the broker, the result
  backend, and what the tasks record (each acquire's interval and each start);
- ``TOLLGATE_SERVER``: the test's server; ``DOWN_URL``: a server started only later;
- ``KEY_PREFIX``: the prefix of the limit keys of this run.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import redis
from celery import Celery, current_task

from tollgate import Decision, Entry, Tollgate, TollgateError
from tollgate.celery import ERRORS_HEADER, rate_limited

app = Celery("tollgate_tests", broker=os.environ["BROKER_URL"], backend=os.environ["RESULT_URL"])
app.conf.update(
    broker_connection_retry_on_startup=True,
    task_default_queue=os.environ["KEY_PREFIX"] + "-queue",
    worker_hijack_root_logger=False,
    result_expires=3600,
)

PREFIX = os.environ["KEY_PREFIX"]
#: The 5/s limit of the twenty-task test.
FIVE_A_SECOND = f"{PREFIX}-five-a-second"
#: A limit the test holds, so that a task is denied once.
HELD = f"{PREFIX}-held"

_records: dict[int, redis.Redis] = {}


def record(kind: str, **fields: Any) -> None:
    """Appends one record to the Redis list ``kind`` (one connection per process)."""
    pid = os.getpid()
    if pid not in _records:
        _records[pid] = redis.Redis.from_url(os.environ["RECORD_URL"])
    _records[pid].rpush(f"{PREFIX}:{kind}", json.dumps({"pid": pid, **fields}))


class Recording(Tollgate):
    """A client that records when each acquire was sent and answered (``time.monotonic``,
    one clock for every process of the machine): the server decided in between."""

    def acquire(self, *limits: Entry, units: int | None = None, wait: float = 0.0) -> Decision:
        task_id = current_task.request.id if current_task else None
        sent = time.monotonic()
        try:
            decision = super().acquire(*limits, units=units, wait=wait)
        except TollgateError as exc:
            record("acquires", task_id=task_id, sent=sent, answered=time.monotonic(), error=exc.code)
            raise
        answered = time.monotonic()
        record("acquires", task_id=task_id, sent=sent, answered=answered, allowed=decision.allowed)
        return decision


tollgate = Recording(os.environ["TOLLGATE_SERVER"], timeout=10.0)
down = Recording(os.environ["DOWN_URL"], timeout=0.3)


def started(**fields: Any) -> None:
    request = current_task.request
    headers = request.headers or {}
    record(
        "starts",
        task_id=request.id,
        retries=request.retries,
        at=time.monotonic(),
        unreachable=headers.get(ERRORS_HEADER, getattr(request, ERRORS_HEADER, None)),
        **fields,
    )


@app.task(bind=True, name="tg.charge", max_retries=0)
@rate_limited(FIVE_A_SECOND, client=tollgate)
def charge(self: Any, n: int) -> int:
    started(n=n)
    return n


@app.task(bind=True, name="tg.held", max_retries=0)
@rate_limited(HELD, client=tollgate)
def held(self: Any, n: int) -> int:
    started(n=n)
    return n * 10


@app.task(bind=True, name="tg.unreachable", max_retries=0)
@rate_limited(f"{PREFIX}-later", client=down)
def unreachable(self: Any, n: int) -> int:
    started(n=n)
    return n + 1
