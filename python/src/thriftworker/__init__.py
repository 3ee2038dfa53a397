"""thriftworker: serve Python Thrift handlers as workers of the thriftworker
data plane (docs/python-worker.md).

    from thriftworker import Worker
    Worker("ipc:///run/thriftworker/workers.sock", {"Echo": Echo.Processor(Handler())}).run()
"""

from .context import CallContext, current_call
from .worker import MODES, Refused, Worker

__all__ = ["MODES", "CallContext", "Refused", "Worker", "current_call"]
__version__ = "0.1.0"
