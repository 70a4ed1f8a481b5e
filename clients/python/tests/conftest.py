"""Fixtures: the real ``tollgate`` binary on a free port, and a ``redis-server`` of the tests'
own for the Celery and Dramatiq brokers.

The binary is ``$TOLLGATE_BIN``, else ``$CARGO_TARGET_DIR/debug/tollgate``, else the
workspace's ``target/debug/tollgate``, built with ``cargo build`` when missing. Redis is
``$REDIS_URL`` (never one on port 6379), else a ``redis-server`` from ``PATH`` on a free port,
without persistence, stopped afterwards. Without either, tests that need Redis are skipped
loudly, except under ``CI=true``, where they fail.
"""

from __future__ import annotations

import http.server
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlsplit

import pytest

from tollgate import Tollgate

REPO = Path(__file__).resolve().parents[3]
TESTS = Path(__file__).resolve().parent


def in_ci() -> bool:
    return os.environ.get("CI") == "true"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _binary() -> Path:
    given = os.environ.get("TOLLGATE_BIN")
    if given:
        path = Path(given)
        if not path.is_file():
            raise RuntimeError(f"TOLLGATE_BIN={given} is not a file")
        return path
    target = Path(os.environ.get("CARGO_TARGET_DIR") or REPO / "target")
    path = target / "debug" / "tollgate"
    if not path.is_file():
        cargo = shutil.which("cargo")
        if cargo is None:
            raise RuntimeError(f"no tollgate binary at {path} and no cargo to build it")
        subprocess.run([cargo, "build", "-p", "tollgate-server", "--bin", "tollgate"], cwd=REPO, check=True)
    return path


class Server:
    """``tollgate serve --memory`` on a free loopback port, read from its first line."""

    def __init__(self, binary: Path, *extra: str, listen: str = "127.0.0.1:0") -> None:
        fd, self.log_path = tempfile.mkstemp(prefix="tollgate-serve-", suffix=".log")
        with os.fdopen(fd, "w") as log:
            self.process = subprocess.Popen(
                [str(binary), "serve", "--memory", "--listen", listen, *extra],
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
            )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line.startswith("listening on "):
            self.process.kill()
            raise RuntimeError(
                f"tollgate serve did not start: {line!r}; log: {Path(self.log_path).read_text()}"
            )
        self.url = line.split("listening on ", 1)[1].strip()
        # Keep reading stdout so the server never blocks on a full pipe.
        threading.Thread(target=self.process.stdout.read, daemon=True).start()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        Path(self.log_path).unlink(missing_ok=True)


@pytest.fixture(scope="session")
def tollgate_bin() -> Path:
    return _binary()


@pytest.fixture(scope="session")
def server(tollgate_bin: Path) -> Iterator[Server]:
    """One server for the session: tests name their own keys (see ``uid``)."""
    s = Server(tollgate_bin)
    yield s
    s.stop()


@pytest.fixture
def tg(server: Server) -> Iterator[Tollgate]:
    client = Tollgate(server.url, timeout=10.0)
    yield client
    client.close()


@pytest.fixture
def uid() -> str:
    """A prefix that keeps this test's keys and task names apart from the others'."""
    return uuid.uuid4().hex[:10]


# -- a stand-in server, for answers the real one does not give on demand ---------------------


class Scripted(http.server.BaseHTTPRequestHandler):
    """A stand-in server answering what a test scripts: ``(status, body)`` in turn."""

    answers: ClassVar[list[tuple[int, bytes]]] = []
    seen: ClassVar[list[str]] = []

    def _answer(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        self.rfile.read(length)
        type(self).seen.append(f"{self.command} {self.path}")
        status, body = type(self).answers.pop(0) if type(self).answers else (500, b"{}")
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_DELETE = _answer

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def scripted() -> Iterator[tuple[str, type[Scripted]]]:
    handler: type[Scripted] = type("Handler", (Scripted,), {"answers": [], "seen": []})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", handler
    httpd.shutdown()


UNAVAILABLE = json.dumps(
    {"error": {"code": "store_unavailable", "message": "redis is down", "transient": True}}
).encode()


# -- Redis ------------------------------------------------------------------------------------


class Redis:
    def __init__(self, url: str, process: subprocess.Popen[bytes] | None, workdir: str | None) -> None:
        self.url = url
        self.process = process
        self.workdir = workdir

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        if self.workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)


def _unavailable(why: str) -> None:
    message = f"no Redis available ({why}); install redis-server or set REDIS_URL"
    if in_ci():
        pytest.fail(f"{message} (CI=true: a missing Redis fails the test)", pytrace=False)
    print(f"\nSKIPPED: {message}", file=sys.stderr)
    pytest.skip(message)


def _ping(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@pytest.fixture(scope="session")
def redis_server() -> Iterator[Redis]:
    url = os.environ.get("REDIS_URL")
    if url:
        parts = urlsplit(url)
        if (parts.port or 6379) == 6379:
            print(
                f"\nREDIS_URL {url} is on port 6379, which tests never use; starting a redis-server",
                file=sys.stderr,
            )
        else:
            yield Redis(url.rstrip("/"), None, None)
            return
    binary = shutil.which("redis-server")
    if binary is None:
        _unavailable("no redis-server on PATH")
    assert binary is not None
    port = free_port()
    workdir = tempfile.mkdtemp(prefix="tollgate-py-redis-")
    process = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            workdir,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while not _ping(port):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            shutil.rmtree(workdir, ignore_errors=True)
            _unavailable(f"redis-server did not start on port {port}")
        time.sleep(0.05)
    r = Redis(f"redis://127.0.0.1:{port}", process, workdir)
    yield r
    r.stop()
