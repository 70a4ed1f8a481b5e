"""A worker process for the graceful-shutdown test: serves TASK with a handler that first touches
`started-<n>` beside FLAG, then, for input {"quick": true}, returns once the file FLAG exists,
and otherwise blocks for two minutes; prints its stats as JSON on its last line when a signal
stops it."""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from tollgate import Tollgate, Worker


def main() -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    task, grace, flag = sys.argv[1], float(sys.argv[2]), Path(sys.argv[3])
    worker = Worker(Tollgate(), slots=3, grace=grace, poll_wait=5.0)

    @worker.task(task)
    def handle(run: dict[str, Any]) -> Any:
        # Tells the test this run reached a handler (leased is not enough: runs leased but not
        # yet started are handed back at shutdown, not finished).
        (flag.parent / f"started-{run['input']['n']}").touch()
        if run["input"].get("quick"):
            while not flag.exists():
                time.sleep(0.02)
            return {"done": run["input"]["n"]}
        time.sleep(120)
        return None

    print("ready", flush=True)
    stats = worker.run()
    print(json.dumps(dataclasses.asdict(stats)), flush=True)


if __name__ == "__main__":
    main()
