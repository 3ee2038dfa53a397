//! Shared helpers: start a data plane, a fake worker, a raw client.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use thriftworker::app::{self, Running};
use thriftworker::config::Config;
use thriftworker::thrift::{self, MessageType, Protocol};
use thriftworker_wire::{ServerMsg, WorkerMsg};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use zeromq::{DealerSocket, Socket, SocketRecv, SocketSend, ZmqMessage};

pub struct DataPlane {
    pub running: Running,
    pub addr: SocketAddr,
    pub endpoint: String,
}

/// Starts a data plane with one service "Echo" and one listener "echo" on
/// port 0; `extra` is appended to the [[services]] table, `workers` to [workers].
pub async fn start(service_extra: &str, workers_extra: &str, listener_extra: &str) -> DataPlane {
    let text = format!(
        "[server]\nshutdown_timeout = \"1s\"\n[admin]\naddress = \"127.0.0.1:0\"\n[metrics]\naddress = \"127.0.0.1:0\"\n[workers]\nendpoints = [\"tcp://127.0.0.1:0\"]\n{workers_extra}\n\
         [[services]]\nname = \"Echo\"\n{service_extra}\n\
         [[listeners]]\nname = \"echo\"\naddress = \"127.0.0.1:0\"\nservices = [\"Echo\"]\n{listener_extra}\n"
    );
    let config = Config::parse(&text).expect("test config");
    let built = app::build(config).await.expect("build");
    let addrs = built.addresses();
    let running = built.spawn().await;
    DataPlane {
        running,
        addr: addrs.listeners["echo"],
        endpoint: addrs.worker_endpoints[0].clone(),
    }
}

/// Waits until `cond` holds, failing the test after 10 s.
pub async fn wait_for<F: Fn() -> bool>(what: &str, cond: F) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

pub async fn within<T>(what: &str, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), f)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

/// A raw ZeroMQ DEALER speaking the worker protocol by hand.
pub struct FakeWorker {
    pub socket: DealerSocket,
}

impl FakeWorker {
    pub async fn connect(endpoint: &str) -> FakeWorker {
        let mut socket = DealerSocket::new();
        socket.connect(endpoint).await.expect("connect");
        FakeWorker { socket }
    }

    pub async fn send(&mut self, msg: WorkerMsg) {
        self.socket
            .send(ZmqMessage::try_from(msg.encode()).unwrap())
            .await
            .expect("send");
    }

    pub async fn recv(&mut self) -> ServerMsg {
        let m = within("worker recv", self.socket.recv())
            .await
            .expect("recv");
        ServerMsg::decode(m.into_vecdeque()).expect("decode")
    }

    /// Receives the next message that is not a heartbeat.
    pub async fn recv_non_heartbeat(&mut self) -> ServerMsg {
        loop {
            match self.recv().await {
                ServerMsg::Heartbeat => continue,
                m => return m,
            }
        }
    }

    pub async fn ready(&mut self, credit: u32, token: &[u8]) -> ServerMsg {
        self.send(WorkerMsg::Ready {
            version: 1,
            credit,
            token: Bytes::copy_from_slice(token),
            services: vec![Bytes::from_static(b"Echo")],
        })
        .await;
        self.recv_non_heartbeat().await
    }
}

/// A framed Thrift CALL `name` with `seqid` and an empty args struct.
pub fn call_frame(name: &str, seqid: i32) -> Vec<u8> {
    let mut m = BytesMut::new();
    thrift::write_header(
        &mut m,
        Protocol::BinaryStrict,
        name.as_bytes(),
        MessageType::Call,
        seqid,
    );
    m.put_u8(0); // STOP: empty args struct
    let mut f = (m.len() as u32).to_be_bytes().to_vec();
    f.extend_from_slice(&m);
    f
}

pub async fn client(addr: SocketAddr) -> TcpStream {
    TcpStream::connect(addr).await.expect("connect to listener")
}

pub async fn send_call(c: &mut TcpStream, name: &str, seqid: i32) {
    c.write_all(&call_frame(name, seqid)).await.expect("write");
}

/// Reads one framed reply and returns (header, message bytes).
pub async fn read_reply(c: &mut TcpStream) -> (thrift::Header, Vec<u8>) {
    let mut len = [0u8; 4];
    within("reply length", c.read_exact(&mut len))
        .await
        .expect("read len");
    let mut buf = vec![0u8; u32::from_be_bytes(len) as usize];
    within("reply body", c.read_exact(&mut buf))
        .await
        .expect("read body");
    let h = thrift::parse(&buf, thrift::detect(&buf).unwrap()).expect("reply header");
    (h, buf)
}

/// The header of a REPLY answering `request` (its protocol, name and seqid);
/// the caller appends the result struct.
pub fn reply_header_for(request: &[u8]) -> BytesMut {
    let h = thrift::parse(request, thrift::detect(request).unwrap()).unwrap();
    let mut m = BytesMut::new();
    thrift::write_header(
        &mut m,
        h.protocol,
        h.name(request),
        MessageType::Reply,
        h.seqid,
    );
    m
}

/// A REPLY message answering `request` (name and seqid copied from it).
pub fn reply_for(request: &[u8]) -> Bytes {
    let mut m = reply_header_for(request);
    m.put_u8(0);
    m.freeze()
}

pub fn text_of(buf: &[u8]) -> String {
    String::from_utf8_lossy(buf).into_owned()
}
