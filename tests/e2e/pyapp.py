"""The example services (examples/idl/echo.thrift) for the `thriftworker`
Python package's e2e tests, as targets of `thriftworker-py`:

    thriftworker-py --endpoint E pyapp:apache      # Apache-generated processors
    thriftworker-py --endpoint E pyapp:thriftpy2   # thriftpy2 processors
    thriftworker-py --mode asyncio --endpoint E pyapp:apache_async   # coroutine handlers
    thriftworker-py --mode twisted --endpoint E pyapp:apache_twisted # `thrift --gen py:twisted`

Same handler semantics as pyworker.py's, plus `fail(code=0)` raising an
exception the IDL does not declare.
"""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "gen"))
sys.path.insert(0, os.path.join(HERE, "..", "..", "examples", "python"))

from echo_app import EchoHandler  # noqa: E402 - the example app's handler, tested here too

from thriftworker import current_call  # noqa: E402


def show_headers() -> None:
    """With the call header `x-echo-headers` (as the Rust echo-worker does):
    every header of the call back as a reply header `echo-KEY`."""
    call = current_call()
    if call is not None and call.header(b"x-echo-headers") is not None:
        for key, value in call.headers:
            call.set_reply_header(b"echo-" + key, value)


class Handler(EchoHandler):
    """The example's Echo handler (examples/python/echo_app.py), plus an
    undeclared failure, a pid the tests can tell apart, and Calc."""

    def fail(self, message: str, code: int) -> str:
        if code == 0:
            raise RuntimeError(f"undeclared: {message}")
        return super().fail(message, code)

    def whoami(self) -> str:
        return f"pkg:{os.getpid()}"

    def echo(self, message: str) -> str:
        show_headers()
        return message

    def add(self, a: int, b: int) -> int:
        return a + b


class AsyncHandler(Handler):
    """The same semantics with coroutine methods (for --mode asyncio)."""

    async def echo(self, message: str) -> str:  # type: ignore[override]
        await asyncio.sleep(0)
        show_headers()
        return message

    async def notify(self, message: str) -> None:  # type: ignore[override]
        await asyncio.sleep(0)
        with self._lock:
            self._notified += 1

    async def fail(self, message: str, code: int) -> str:  # type: ignore[override]
        await asyncio.sleep(0)
        return Handler.fail(self, message, code)

    async def slow(self, message: str, sleep_ms: int) -> str:  # type: ignore[override]
        await asyncio.sleep(max(sleep_ms, 0) / 1000.0)
        return message


def apache(handler_cls: type[Handler] = Handler) -> dict[str, Any]:
    from echo import Calc, Echo
    from echo.ttypes import EchoError

    handler = handler_cls(EchoError)
    return {"Echo": Echo.Processor(handler), "Calc": Calc.Processor(handler)}


def thriftpy2(handler_cls: type[Handler] = Handler) -> dict[str, Any]:
    import thriftpy2 as tp2
    from thriftpy2.thrift import TProcessor

    idl = os.path.join(HERE, "..", "..", "examples", "idl", "echo.thrift")
    module = tp2.load(idl, module_name="echo_thrift")
    handler = handler_cls(module.EchoError)
    return {"Echo": TProcessor(module.Echo, handler), "Calc": TProcessor(module.Calc, handler)}


def apache_async() -> dict[str, Any]:
    return apache(AsyncHandler)


def thriftpy2_async() -> dict[str, Any]:
    return thriftpy2(AsyncHandler)


class TwistedHandler(Handler):
    """The same semantics returning Deferreds (for --mode twisted): `slow`
    waits on the reactor's clock instead of blocking it."""

    def echo(self, message: str) -> Any:
        from twisted.internet import defer

        return defer.succeed(message)

    def slow(self, message: str, sleep_ms: int) -> Any:
        from twisted.internet import reactor, task

        return task.deferLater(reactor, max(sleep_ms, 0) / 1000.0, lambda: message)


def apache_twisted() -> dict[str, Any]:
    """Processors generated with `thrift --gen py:twisted` (gen/echo_twisted)."""
    from echo_twisted import Calc, Echo
    from echo_twisted.ttypes import EchoError
    from zope.interface import implementer

    handler_cls = implementer(Echo.Iface, Calc.Iface)(type("Handler", (TwistedHandler,), {}))
    handler = handler_cls(EchoError)
    return {"Echo": Echo.Processor(handler), "Calc": Calc.Processor(handler)}


def thriftpy2_twisted() -> dict[str, Any]:
    """thriftpy2 processors whose handler methods return Deferreds."""
    return thriftpy2(TwistedHandler)
