"""The Python Thrift servers users run instead of thriftworker, serving
echo_app's handler on the framed transport, binary protocol:

    python3 servers.py tthreaded    # Apache thrift-py TThreadedServer (C codec)
    python3 servers.py thriftpy2    # thriftpy2's threaded server (cython codec)

Prints `listening HOST:PORT` once it accepts connections (bench/run reads it).
"""

from __future__ import annotations

import socket
import sys

import echo_app


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port: int = s.getsockname()[1]
    s.close()
    return port


def tthreaded(port: int) -> None:
    from echo import Echo
    from thrift.protocol import TBinaryProtocol
    from thrift.server import TServer
    from thrift.transport import TSocket, TTransport

    server = TServer.TThreadedServer(
        Echo.Processor(echo_app.Handler()),
        TSocket.TServerSocket(host="127.0.0.1", port=port),
        TTransport.TFramedTransportFactory(),
        TBinaryProtocol.TBinaryProtocolAcceleratedFactory(),
        daemon=True,
    )
    server.serverTransport.listen()  # listen before saying so
    print(f"listening 127.0.0.1:{port}", flush=True)
    server.serverTransport.listen = lambda: None
    server.serve()


def thriftpy2(port: int) -> None:
    import thriftpy2 as tp2
    from thriftpy2.protocol import TCyBinaryProtocolFactory
    from thriftpy2.rpc import make_server
    from thriftpy2.transport import TCyFramedTransportFactory

    module = tp2.load(echo_app.IDL, module_name="echo_thrift")
    server = make_server(
        module.Echo,
        echo_app.Handler(),
        host="127.0.0.1",
        port=port,
        proto_factory=TCyBinaryProtocolFactory(),
        trans_factory=TCyFramedTransportFactory(),
    )
    server.trans.listen()
    print(f"listening 127.0.0.1:{port}", flush=True)
    server.trans.listen = lambda: None
    server.serve()


if __name__ == "__main__":
    kind = sys.argv[1] if len(sys.argv) > 1 else "tthreaded"
    {"tthreaded": tthreaded, "thriftpy2": thriftpy2}[kind](free_port())
