"""HTTPS against a real server started with ``--tls-cert``/``--tls-key`` (a certificate from a
private CA that ``trustme`` makes): the clients verify it with ``ca_cert`` (or
``$TOLLGATE_CA_CERT``) and refuse it without."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from tollgate import Tollgate, TollgateConnectionError
from tollgate.aio import AsyncTollgate

from .conftest import Server


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    folder = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    issued = ca.issue_cert("127.0.0.1", "localhost")
    ca_path, cert, key = folder / "ca.pem", folder / "cert.pem", folder / "key.pem"
    ca.cert_pem.write_to_path(str(ca_path))
    issued.cert_chain_pems[0].write_to_path(str(cert))
    for extra in issued.cert_chain_pems[1:]:
        extra.write_to_path(str(cert), append=True)
    issued.private_key_pem.write_to_path(str(key))
    return ca_path, cert, key


@pytest.fixture(scope="module")
def https(tollgate_bin: Path, pki: tuple[Path, Path, Path]) -> Iterator[Server]:
    _, cert, key = pki
    s = Server(tollgate_bin, "--tls-cert", str(cert), "--tls-key", str(key))
    yield s
    s.stop()


def test_the_server_speaks_https(https: Server) -> None:
    assert https.url.startswith("https://127.0.0.1:")


def test_a_client_trusting_the_ca_is_served_and_one_not_is_refused(
    https: Server, pki: tuple[Path, Path, Path], monkeypatch: pytest.MonkeyPatch, uid: str
) -> None:
    monkeypatch.delenv("TOLLGATE_CA_CERT", raising=False)
    ca, _, _ = pki
    with Tollgate(https.url, ca_cert=str(ca), timeout=5.0) as tg:
        tg.put_limit(f"{uid}-api", rate="5/s")
        assert tg.acquire(f"{uid}-api").allowed
    with Tollgate(https.url.replace("127.0.0.1", "localhost"), ca_cert=ca, timeout=5.0) as tg:
        assert tg.get_limit(f"{uid}-api")["key"] == f"{uid}-api"
    with Tollgate(https.url, timeout=2.0) as tg, pytest.raises(TollgateConnectionError):
        tg.limits()


def test_the_ca_comes_from_the_environment_too(
    https: Server, pki: tuple[Path, Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    ca, _, _ = pki
    monkeypatch.setenv("TOLLGATE_CA_CERT", str(ca))
    with Tollgate(https.url, timeout=5.0) as tg:
        assert isinstance(tg.limits(), list)

    async def main() -> None:
        async with AsyncTollgate(https.url, timeout=5.0) as atg:
            assert isinstance(await atg.limits(), list)

    asyncio.run(main())


def test_a_ca_file_that_cannot_be_read_is_refused_up_front(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="invalid ca_cert"):
        Tollgate("https://127.0.0.1:1", ca_cert=str(tmp_path / "missing.pem"))
    junk = tmp_path / "junk.pem"
    junk.write_text("junk")
    with pytest.raises(ValueError, match="invalid ca_cert"):
        Tollgate("https://127.0.0.1:1", ca_cert=junk)
