"""The Dramatiq app the worker process of ``test_dramatiq.py`` runs (``dramatiq dramatiq_app``).
Configured from the environment: ``BROKER_URL``, ``RESULT_URL``, ``RECORD_URL`` (Redis
databases), ``TOLLGATE_SERVER`` and ``KEY_PREFIX``."""

from __future__ import annotations

import json
import os
import time
from typing import Any

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import CurrentMessage
from dramatiq.results import Results
from dramatiq.results.backends import RedisBackend

from tollgate import Decision, Entry, Tollgate
from tollgate.dramatiq import RateLimits

PREFIX = os.environ["KEY_PREFIX"]
HELD = f"{PREFIX}-held"

_records: dict[int, redis.Redis] = {}


def record(kind: str, **fields: Any) -> None:
    pid = os.getpid()
    if pid not in _records:
        _records[pid] = redis.Redis.from_url(os.environ["RECORD_URL"])
    _records[pid].rpush(f"{PREFIX}:{kind}", json.dumps({"pid": pid, **fields}))


class Recording(Tollgate):
    """Records when each acquire was sent and answered (``time.monotonic``)."""

    def acquire(self, *limits: Entry, units: int | None = None, wait: float = 0.0) -> Decision:
        message = CurrentMessage.get_current_message()
        sent = time.monotonic()
        decision = super().acquire(*limits, units=units, wait=wait)
        record(
            "acquires",
            message_id=message.message_id if message else None,
            sent=sent,
            answered=time.monotonic(),
            allowed=decision.allowed,
            keys=[d.key for d in decision.decisions],
        )
        return decision


broker = RedisBroker(url=os.environ["BROKER_URL"])
broker.add_middleware(Results(backend=RedisBackend(url=os.environ["RESULT_URL"])))
broker.add_middleware(CurrentMessage())
broker.add_middleware(RateLimits(client=Recording(os.environ["TOLLGATE_SERVER"], timeout=10.0)))
dramatiq.set_broker(broker)


def started(**fields: Any) -> None:
    message = CurrentMessage.get_current_message()
    assert message is not None
    record(
        "starts",
        message_id=message.message_id,
        retries=message.options.get("retries", 0),
        at=time.monotonic(),
        **fields,
    )


@dramatiq.actor(queue_name=PREFIX, store_results=True, max_retries=0)
def ping() -> str:
    return "pong"


@dramatiq.actor(queue_name=PREFIX, store_results=True, max_retries=0, rate_limits=[HELD])
def held(n: int) -> int:
    started(n=n)
    return n * 10


@dramatiq.actor(
    queue_name=PREFIX,
    store_results=True,
    max_retries=0,
    rate_limits=[
        (f"{PREFIX}-shared", 1),
        lambda user_id, **kw: {"key": f"{PREFIX}-user:{user_id}", "limit": 1, "period": "3s"},
    ],
)
def per_user(user_id: str, amount: int) -> int:
    started(user_id=user_id, amount=amount)
    return amount
