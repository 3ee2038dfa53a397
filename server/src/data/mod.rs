//! The data plane: what a call goes through.
//!
//! [`listener`] accepts (and [`tls`] terminates TLS on a TLS listener) →
//! [`connection`] reads messages (via `thrift`),
//! routes each call ([`routes`], [`service`]) and writes answers in order →
//! [`dispatch`] queues, balances over workers by credit, enforces deadlines →
//! [`transport`] carries it to a worker (ZeroMQ) and the reply back.
//! [`call`] holds the types that travel between connection and dispatcher.

pub mod call;
pub(crate) mod connection;
pub mod dispatch;
pub mod listener;
pub(crate) mod routes;
pub mod service;
pub mod tls;
pub mod transport;
