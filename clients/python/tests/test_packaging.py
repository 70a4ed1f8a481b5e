"""The installed distribution: what issue 12 asks of the package itself. Python 3.9 or later,
``httpx`` its one runtime dependency, ``celery`` and ``dramatiq`` as extras, ``py.typed`` shipped,
and the core importable without either integration's framework."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
from pathlib import Path

import tollgate


def test_the_distribution_declares_python_3_9_httpx_and_the_extras() -> None:
    meta = importlib.metadata.metadata("tollgate")
    assert meta["Requires-Python"] == ">=3.9"
    assert meta["Version"] == tollgate.__version__
    requires = importlib.metadata.requires("tollgate") or []
    runtime = [r for r in requires if "extra ==" not in r]
    assert [r.split("<")[0].split(">")[0].strip() for r in runtime] == ["httpx"]
    extras = set(meta.get_all("Provides-Extra") or [])
    assert {"celery", "dramatiq"} <= extras
    by_extra = {r.split("extra ==")[1].strip(" '\""): r.split(";")[0] for r in requires if "extra ==" in r}
    assert by_extra["celery"].startswith("celery")
    assert by_extra["dramatiq"].startswith("dramatiq")


def test_the_package_is_typed() -> None:
    assert (Path(tollgate.__file__).parent / "py.typed").is_file()


def test_the_client_and_worker_import_without_celery_or_dramatiq() -> None:
    # A fresh interpreter where importing celery or dramatiq fails: the core must not need them.
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('celery', 'dramatiq'):\n"
        "            raise ImportError('blocked: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "from tollgate import Tollgate, AsyncTollgate, RateLimited, Worker\n"
        "assert not any(m.split('.')[0] in ('celery', 'dramatiq') for m in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
