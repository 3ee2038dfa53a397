//! `tserver-baseline`: the Apache `thrift` crate's own threaded server
//! (`thrift::server::TServer`) serving the example `Echo` service with the
//! same handler as `echo-worker`, framed transport. This is what a Rust
//! Thrift service looks like without thriftworker.
//!
//! ```text
//! tserver-baseline --addr 127.0.0.1:0 --threads 64
//! listening 127.0.0.1:40123
//! ```
//!
//! `TServer` (thrift 0.17) runs one connection per pool thread: at most
//! `--threads` connections are served at once, later ones wait for a thread.
//!
//! Frame writes: the crate's `TFramedWriteTransport` writes each reply with
//! two `write`s (the 4-byte length, then the body) on a socket without
//! `TCP_NODELAY`, which TServer gives no way to set. Nagle's algorithm then
//! holds the body until the client ACKs the length, and the client's delayed
//! ACK makes that ~40 ms per call. By default this server therefore uses
//! [`OneWriteFramedTransport`], which sends length and body with one write,
//! as the C++ and Java framed transports do; `--framed-writes split` uses the
//! crate's transport unchanged.
#![forbid(unsafe_code)]

use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use clap::{Parser, ValueEnum};
use thrift::protocol::{
    TBinaryInputProtocolFactory, TBinaryOutputProtocolFactory, TCompactInputProtocolFactory,
    TCompactOutputProtocolFactory, TInputProtocolFactory, TOutputProtocolFactory,
};
use thrift::server::TServer;
use thrift::transport::{
    TFramedReadTransportFactory, TFramedWriteTransportFactory, TWriteTransport,
    TWriteTransportFactory,
};
use thriftworker_examples::gen::echo::EchoSyncProcessor;
use thriftworker_examples::EchoHandler;

/// The thrift crate's TServer serving the example Echo service (framed).
///
/// Prints `listening HOST:PORT` as its first stdout line once it accepts
/// connections.
#[derive(Debug, Parser)]
#[command(name = "tserver-baseline", version)]
struct Cli {
    /// Address to listen on (port 0: a free port, chosen before TServer binds it).
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:0")]
    addr: String,

    /// Thrift protocol.
    #[arg(long, value_enum, default_value_t = ProtocolArg::Binary)]
    protocol: ProtocolArg,

    /// Processor threads: one per connection served at once.
    #[arg(long, value_name = "N", default_value_t = 64,
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    threads: u32,

    /// How a reply frame is written: `one` write (length and body together),
    /// or `split` (the thrift crate's TFramedWriteTransport: two writes, which
    /// costs a Nagle/delayed-ACK stall of ~40 ms per reply).
    #[arg(long, value_enum, default_value_t = FramedWrites::One)]
    framed_writes: FramedWrites,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ProtocolArg {
    Binary,
    Compact,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum FramedWrites {
    One,
    Split,
}

/// A framed write transport that sends each frame (length and body) with a
/// single `write_all` on `flush`.
struct OneWriteFramedTransport<C: Write> {
    /// The frame being built: 4 bytes for its length, then the body.
    buf: Vec<u8>,
    channel: C,
}

impl<C: Write> OneWriteFramedTransport<C> {
    fn new(channel: C) -> Self {
        let mut buf = Vec::with_capacity(4096);
        buf.extend_from_slice(&[0; 4]);
        OneWriteFramedTransport { buf, channel }
    }
}

impl<C: Write> Write for OneWriteFramedTransport<C> {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(b);
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let len = self.buf.len() - 4;
        if len == 0 {
            return Ok(());
        }
        let len = i32::try_from(len).map_err(std::io::Error::other)?;
        self.buf[..4].copy_from_slice(&len.to_be_bytes());
        let result = self.channel.write_all(&self.buf);
        self.buf.truncate(4);
        result?;
        self.channel.flush()
    }
}

/// Creates [`OneWriteFramedTransport`]s for TServer.
#[derive(Debug, Default)]
struct OneWriteFramedTransportFactory;

impl TWriteTransportFactory for OneWriteFramedTransportFactory {
    fn create(&self, channel: Box<dyn Write + Send>) -> Box<dyn TWriteTransport + Send> {
        Box::new(OneWriteFramedTransport::new(channel))
    }
}

/// The address to give `TServer::listen`: `addr`, with port 0 replaced by a
/// free port (bound, then released: TServer in thrift 0.17 only takes an
/// address, not a listener).
fn pick_address(addr: &str) -> anyhow::Result<SocketAddr> {
    let addr = addr
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve {addr}"))?
        .next()
        .ok_or_else(|| anyhow!("{addr} resolves to no address"))?;
    if addr.port() != 0 {
        return Ok(addr);
    }
    let probe = TcpListener::bind(addr).with_context(|| format!("cannot bind {addr}"))?;
    Ok(probe.local_addr()?)
}

fn serve<IPF, WTF, OPF>(
    addr: SocketAddr,
    ipf: IPF,
    wtf: WTF,
    opf: OPF,
    threads: usize,
) -> thrift::Result<()>
where
    IPF: TInputProtocolFactory + 'static,
    WTF: TWriteTransportFactory + 'static,
    OPF: TOutputProtocolFactory + 'static,
{
    let processor = EchoSyncProcessor::new(EchoHandler::default());
    let mut server = TServer::new(
        TFramedReadTransportFactory::new(),
        ipf,
        wtf,
        opf,
        processor,
        threads,
    );
    server.listen(addr)
}

fn serve_with<IPF, OPF>(
    addr: SocketAddr,
    ipf: IPF,
    opf: OPF,
    threads: usize,
    writes: FramedWrites,
) -> thrift::Result<()>
where
    IPF: TInputProtocolFactory + 'static,
    OPF: TOutputProtocolFactory + 'static,
{
    match writes {
        FramedWrites::One => serve(addr, ipf, OneWriteFramedTransportFactory, opf, threads),
        FramedWrites::Split => serve(addr, ipf, TFramedWriteTransportFactory::new(), opf, threads),
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let addr = pick_address(&cli.addr)?;
    let threads = cli.threads as usize;
    let (protocol, writes) = (cli.protocol, cli.framed_writes);
    let server =
        thread::Builder::new()
            .name("tserver-listen".into())
            .spawn(move || match protocol {
                ProtocolArg::Binary => serve_with(
                    addr,
                    TBinaryInputProtocolFactory::new(),
                    TBinaryOutputProtocolFactory::new(),
                    threads,
                    writes,
                ),
                ProtocolArg::Compact => serve_with(
                    addr,
                    TCompactInputProtocolFactory::new(),
                    TCompactOutputProtocolFactory::new(),
                    threads,
                    writes,
                ),
            })?;

    // TServer::listen blocks: announce the address once a connection succeeds.
    // (The probe connection takes a pool thread until it is closed, at once.)
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if server.is_finished() {
            let result = server.join().map_err(|_| anyhow!("TServer panicked"))?;
            bail!("TServer stopped before serving on {addr}: {result:?}");
        }
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            break;
        }
        if Instant::now() > deadline {
            bail!("TServer does not accept connections on {addr}");
        }
        thread::sleep(Duration::from_millis(10));
    }
    let mut stdout = std::io::stdout();
    writeln!(stdout, "listening {addr}")?;
    stdout.flush()?;

    match server.join() {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(anyhow!("TServer failed: {e}")),
        Err(_) => Err(anyhow!("TServer panicked")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_debug_assert() {
        Cli::command().debug_assert();
    }

    #[test]
    fn cli_defaults() {
        let cli = Cli::try_parse_from(["tserver-baseline"]).unwrap();
        assert_eq!(cli.threads, 64);
        assert_eq!(cli.protocol, ProtocolArg::Binary);
        assert_eq!(cli.addr, "127.0.0.1:0");
        assert_eq!(cli.framed_writes, FramedWrites::One);
    }

    #[test]
    fn one_write_per_frame() {
        struct Recorder(Vec<Vec<u8>>);
        impl Write for Recorder {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.push(b.to_vec());
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let mut t = OneWriteFramedTransport::new(Recorder(Vec::new()));
        t.flush().unwrap();
        t.write_all(b"ab").unwrap();
        t.write_all(b"cde").unwrap();
        t.flush().unwrap();
        t.write_all(b"f").unwrap();
        t.flush().unwrap();
        assert_eq!(
            t.channel.0,
            vec![b"\0\0\0\x05abcde".to_vec(), b"\0\0\0\x01f".to_vec()]
        );
    }

    #[test]
    fn port_zero_is_replaced() {
        let a = pick_address("127.0.0.1:0").unwrap();
        assert_ne!(a.port(), 0);
        assert_eq!(
            pick_address("127.0.0.1:4567").unwrap().port(),
            4567,
            "an explicit port is kept"
        );
    }
}
