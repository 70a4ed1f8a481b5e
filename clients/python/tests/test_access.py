"""Tokens against a real server started with ``--tokens-file``: the client sends ``token`` (or
``$TOLLGATE_TOKEN``) as ``Authorization: Bearer``, and the server's 401 and 403 surface as
:class:`tollgate.UnauthorizedError` and :class:`tollgate.ForbiddenError`."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tollgate import ForbiddenError, Tollgate, UnauthorizedError
from tollgate.aio import AsyncTollgate

from .conftest import Server

WORKER = "py-worker-secret"
ADMIN = "py-admin-secret"


def _table(name: str, role: str, secret: str) -> str:
    digest = hashlib.sha256(secret.encode()).hexdigest()
    return f'[[token]]\nname = "{name}"\nrole = "{role}"\nsha256 = "{digest}"\n\n'


@pytest.fixture(scope="module")
def secured(tollgate_bin: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tokens = tmp_path_factory.mktemp("access") / "tokens.toml"
    tokens.write_text(_table("ci", "worker", WORKER) + _table("ops", "admin", ADMIN))
    s = Server(tollgate_bin, "--tokens-file", str(tokens))
    yield s
    s.stop()


def test_without_a_token_calls_are_refused_as_unauthorized(
    secured: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TOLLGATE_TOKEN", raising=False)
    with Tollgate(secured.url) as tg:
        with pytest.raises(UnauthorizedError) as refused:
            tg.limits()
        assert refused.value.code == "unauthorized"
        assert refused.value.status == 401
        assert tg.healthz()["status"] == "ok", "/healthz needs no token"
    with Tollgate(secured.url, token="guess") as tg, pytest.raises(UnauthorizedError):
        tg.limits()


def test_a_token_is_sent_and_its_role_decides(secured: Server, uid: str) -> None:
    with Tollgate(secured.url, token=ADMIN) as admin:
        admin.put_limit(f"{uid}-api", limit=5, period="1m")
    with Tollgate(secured.url, token=WORKER) as worker:
        assert worker.acquire(f"{uid}-api").allowed
        assert WORKER not in repr(worker)
        with pytest.raises(ForbiddenError) as refused:
            worker.put_limit(f"{uid}-other", limit=1, period="1s")
        assert refused.value.code == "forbidden"
        assert "needs the admin role" in str(refused.value)
        assert '"ci"' in str(refused.value)


def test_the_token_comes_from_the_environment_when_not_given(
    secured: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TOLLGATE_TOKEN", WORKER)
    with Tollgate(secured.url) as tg:
        assert isinstance(tg.limits(), list)
    # An explicit token wins over the environment.
    with Tollgate(secured.url, token="guess") as tg, pytest.raises(UnauthorizedError):
        tg.limits()


def test_a_token_that_cannot_be_sent_is_refused_up_front() -> None:
    with pytest.raises(ValueError, match="visible ASCII"):
        Tollgate("http://127.0.0.1:1", token="two words")
    with pytest.raises(TypeError):
        Tollgate("http://127.0.0.1:1", token=b"bytes")  # type: ignore[arg-type]


def test_the_async_client_sends_the_token_too(secured: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TOLLGATE_TOKEN", raising=False)

    async def main() -> None:
        async with AsyncTollgate(secured.url, token=WORKER) as tg:
            assert isinstance(await tg.limits(), list)
        async with AsyncTollgate(secured.url) as tg:
            with pytest.raises(UnauthorizedError):
                await tg.limits()

    asyncio.run(main())
