"""The benchmark's Echo service in Python: `echo(message) -> message`, the
handler every Python target of bench/run serves.

    thriftworker-py --endpoint E echo_app:apache      # through the data plane
    python3 servers.py tthreaded|thriftpy2             # Python's own servers
"""

from __future__ import annotations

import os
import sys
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(REPO, "tests", "e2e", "gen"))
IDL = os.path.join(REPO, "examples", "idl", "echo.thrift")


class Handler:
    def echo(self, message: Any) -> Any:
        return message

    def whoami(self) -> str:
        return f"py:{os.getpid()}"


def apache() -> dict[str, Any]:
    from echo import Echo

    return {"Echo": Echo.Processor(Handler())}


def thriftpy2() -> dict[str, Any]:
    import thriftpy2 as tp2
    from thriftpy2.thrift import TProcessor

    module = tp2.load(IDL, module_name="echo_thrift")
    return {"Echo": TProcessor(module.Echo, Handler())}
