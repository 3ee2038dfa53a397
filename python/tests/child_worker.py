"""A worker in a process of its own, for the modes that cannot run in a
test's thread: Twisted's reactor runs once per process, and eventlet's hub
does not let a thread that used it end. The handler's `slow` blocks its
thread (no monkey-patching here): a call that keeps the process busy.

    python child_worker.py ENDPOINT[,ENDPOINT...] MODE

`child_worker:services` is also a target for `thriftworker-py`.
"""

from __future__ import annotations

import sys
import time

from conftest import Echo, Handler
from thriftworker import Refused, Worker


class Busy(Handler):
    def slow(self, message: str, sleep_ms: int) -> str:
        print(f"slow {message} started", flush=True)  # the test waits for this line
        time.sleep(sleep_ms / 1000.0)  # holds the process: nothing else runs meanwhile
        return message


def services() -> dict[str, Echo.Processor]:
    return {"Echo": Echo.Processor(Busy())}


def main() -> int:
    endpoints, mode = sys.argv[1].split(","), sys.argv[2]
    worker = Worker(endpoints, services(), mode=mode, concurrency=2)
    try:
        worker.run()
    except Refused as e:
        print(f"refused: {e}", flush=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
