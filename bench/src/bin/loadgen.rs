//! `loadgen`: a framed Thrift load generator for `Echo.echo`.
//!
//! ```text
//! loadgen --addr 127.0.0.1:9090 --connections 64 --depth 1 --duration 10s --warmup 2s
//! ```
//!
//! Each connection keeps `--depth` calls in flight (pipelined), checks every
//! reply (frame, REPLY, name, in-order seqid, result == payload) and records
//! each call's latency. Prints one JSON line on stdout; exits 1 on any
//! invalid reply or connection error.
#![forbid(unsafe_code)]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use bytes::{Buf, BytesMut};
use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use thriftworker_bench::{
    check_echo_reply, complete_frame, next_seqid, CallTemplate, Protocol, MAX_FRAME_SIZE,
    SEQID_BASE,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Framed Thrift load generator: Echo.echo calls over N connections with D
/// calls in flight on each; every reply is checked.
///
/// Prints one JSON line on stdout: calls_per_sec, latency percentiles in
/// microseconds over the measured period (after the warm-up), invalid and
/// errors. Exits 1 if any reply was invalid or any connection failed.
#[derive(Debug, Parser)]
#[command(name = "loadgen", version)]
struct Cli {
    /// Server address, HOST:PORT.
    #[arg(long, value_name = "HOST:PORT")]
    addr: String,

    /// Connections opened.
    #[arg(long, value_name = "N", default_value_t = 64,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    connections: u32,

    /// Calls in flight per connection (pipelined; replies come in order).
    #[arg(long, value_name = "D", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=65_536))]
    depth: u32,

    /// Measured period, after the warm-up.
    #[arg(long, value_name = "DURATION", default_value = "10s",
          value_parser = humantime::parse_duration)]
    duration: Duration,

    /// Warm-up: calls made but not measured.
    #[arg(long, value_name = "DURATION", default_value = "2s",
          value_parser = humantime::parse_duration)]
    warmup: Duration,

    /// Thrift protocol of the calls.
    #[arg(long, value_enum, default_value_t = ProtocolArg::Binary)]
    protocol: ProtocolArg,

    /// Size of the echoed string, in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = 100,
          value_parser = clap::value_parser!(u32).range(0..=(16 << 20)))]
    payload: u32,

    /// Method called.
    #[arg(long, value_enum, default_value_t = Method::Echo)]
    method: Method,

    /// Tokio worker threads of the generator (1: a single-threaded runtime).
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=1024))]
    threads: u32,

    /// Longest wait for a connection or for the next reply: past it the
    /// connection counts as an error.
    #[arg(long, value_name = "DURATION", default_value = "10s",
          value_parser = humantime::parse_duration)]
    timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ProtocolArg {
    Binary,
    Compact,
}

impl ProtocolArg {
    fn protocol(self) -> Protocol {
        match self {
            ProtocolArg::Binary => Protocol::Binary,
            ProtocolArg::Compact => Protocol::Compact,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Method {
    Echo,
}

impl Method {
    fn name(self) -> &'static [u8] {
        match self {
            Method::Echo => b"echo",
        }
    }
}

/// What each connection task needs; shared.
struct Plan {
    protocol: Protocol,
    method: &'static [u8],
    depth: usize,
    payload_len: usize,
    timeout: Duration,
    /// Replies received in [measure_from, measure_until) are measured.
    measure_from: Instant,
    measure_until: Instant,
}

/// One connection's outcome.
struct Outcome {
    histogram: Histogram<u64>,
    calls: u64,
    invalid: u64,
    error: Option<String>,
}

fn new_histogram() -> Histogram<u64> {
    // 1 µs to 1 hour, 3 significant digits.
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

/// The string connection `index` echoes: `c<index>:` then letters, `len` bytes.
fn payload_for(index: usize, len: usize) -> Vec<u8> {
    let mut p = format!("c{index}:").into_bytes();
    p.extend((0..len).map(|i| b'a' + (i % 26) as u8));
    p.truncate(len);
    p
}

enum Stop {
    Invalid(String),
    Error(String),
}

async fn run_connection(index: usize, mut stream: TcpStream, plan: Arc<Plan>) -> Outcome {
    let mut out = Outcome {
        histogram: new_histogram(),
        calls: 0,
        invalid: 0,
        error: None,
    };
    match drive(index, &mut stream, &plan, &mut out).await {
        Ok(()) => {}
        Err(Stop::Invalid(e)) => {
            out.invalid += 1;
            out.error = Some(format!("connection {index}: invalid reply: {e}"));
        }
        Err(Stop::Error(e)) => out.error = Some(format!("connection {index}: {e}")),
    }
    out
}

async fn drive(
    index: usize,
    stream: &mut TcpStream,
    plan: &Plan,
    out: &mut Outcome,
) -> Result<(), Stop> {
    let payload = payload_for(index, plan.payload_len);
    let mut template = CallTemplate::new(plan.protocol, plan.method, &payload);
    let call_len = template.bytes().len();
    let mut wbuf: Vec<u8> = Vec::with_capacity(call_len * plan.depth);
    let mut rbuf = BytesMut::with_capacity((call_len * plan.depth).max(64 * 1024));
    // Send times of the calls in flight, oldest first.
    let mut in_flight: VecDeque<Instant> = VecDeque::with_capacity(plan.depth);
    let mut next_send = SEQID_BASE;
    let mut expect = SEQID_BASE;
    let mut sending = true;

    for _ in 0..plan.depth {
        template.append(next_send, &mut wbuf);
        next_send = next_seqid(next_send);
    }
    let t = Instant::now();
    in_flight.extend(std::iter::repeat_n(t, plan.depth));
    write(stream, &wbuf, plan.timeout).await?;
    wbuf.clear();

    while !in_flight.is_empty() {
        if rbuf.capacity() - rbuf.len() < 16 * 1024 {
            rbuf.reserve(64 * 1024);
        }
        let n = match tokio::time::timeout(plan.timeout, stream.read_buf(&mut rbuf)).await {
            Err(_) => {
                return Err(Stop::Error(format!(
                    "no reply within {:?} ({} calls in flight)",
                    plan.timeout,
                    in_flight.len()
                )))
            }
            Ok(Err(e)) => return Err(Stop::Error(format!("read: {e}"))),
            Ok(Ok(n)) => n,
        };
        if n == 0 {
            return Err(Stop::Error(format!(
                "closed by the server with {} calls in flight",
                in_flight.len()
            )));
        }
        let now = Instant::now();
        if sending && now >= plan.measure_until {
            sending = false;
        }
        let measured = now >= plan.measure_from && now < plan.measure_until;
        let mut pos = 0;
        let mut new_calls = 0;
        loop {
            let len = match complete_frame(&rbuf[pos..], MAX_FRAME_SIZE) {
                Ok(Some(len)) => len,
                Ok(None) => break,
                Err(e) => return Err(Stop::Invalid(e.to_string())),
            };
            let msg = &rbuf[pos + 4..pos + 4 + len];
            let Some(sent) = in_flight.pop_front() else {
                return Err(Stop::Invalid("a reply to no call in flight".into()));
            };
            check_echo_reply(msg, plan.protocol, plan.method, expect, &payload)
                .map_err(|e| Stop::Invalid(e.to_string()))?;
            expect = next_seqid(expect);
            if measured {
                let us = now.saturating_duration_since(sent).as_micros() as u64;
                out.histogram.saturating_record(us.max(1));
                out.calls += 1;
            }
            if sending {
                template.append(next_send, &mut wbuf);
                next_send = next_seqid(next_send);
                new_calls += 1;
            }
            pos += 4 + len;
        }
        rbuf.advance(pos);
        if new_calls > 0 {
            let t = Instant::now();
            in_flight.extend(std::iter::repeat_n(t, new_calls));
            write(stream, &wbuf, plan.timeout).await?;
            wbuf.clear();
        }
    }
    Ok(())
}

async fn write(stream: &mut TcpStream, bytes: &[u8], timeout: Duration) -> Result<(), Stop> {
    match tokio::time::timeout(timeout, stream.write_all(bytes)).await {
        Err(_) => Err(Stop::Error(format!("write blocked for {timeout:?}"))),
        Ok(Err(e)) => Err(Stop::Error(format!("write: {e}"))),
        Ok(Ok(())) => Ok(()),
    }
}

async fn resolve(addr: &str) -> anyhow::Result<SocketAddr> {
    tokio::net::lookup_host(addr)
        .await
        .with_context(|| format!("cannot resolve {addr}"))?
        .next()
        .ok_or_else(|| anyhow!("{addr} resolves to no address"))
}

async fn connect(addr: SocketAddr, timeout: Duration) -> anyhow::Result<TcpStream> {
    let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| anyhow!("connect to {addr}: no answer within {timeout:?}"))?
        .with_context(|| format!("connect to {addr}"))?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// The run's summary, printed as JSON.
struct Report {
    calls: u64,
    seconds: f64,
    histogram: Histogram<u64>,
    invalid: u64,
    errors: u64,
}

impl Report {
    fn json(&self, cli: &Cli) -> serde_json::Value {
        let h = &self.histogram;
        let pct = |q: f64| {
            if h.is_empty() {
                0
            } else {
                h.value_at_quantile(q)
            }
        };
        serde_json::json!({
            "calls_per_sec": (self.calls as f64 / self.seconds * 10.0).round() / 10.0,
            "calls": self.calls,
            "p50_us": pct(0.50),
            "p90_us": pct(0.90),
            "p99_us": pct(0.99),
            "p999_us": pct(0.999),
            "max_us": h.max(),
            "mean_us": (h.mean() * 10.0).round() / 10.0,
            "invalid": self.invalid,
            "errors": self.errors,
            "connections": cli.connections,
            "depth": cli.depth,
            "payload": cli.payload,
            "protocol": cli.protocol.protocol().name(),
            "duration_s": self.seconds,
        })
    }
}

async fn run(cli: &Cli) -> anyhow::Result<Report> {
    let addr = resolve(&cli.addr).await?;
    let mut streams = Vec::with_capacity(cli.connections as usize);
    for _ in 0..cli.connections {
        streams.push(connect(addr, cli.timeout).await?);
    }
    let start = Instant::now();
    let plan = Arc::new(Plan {
        protocol: cli.protocol.protocol(),
        method: cli.method.name(),
        depth: cli.depth as usize,
        payload_len: cli.payload as usize,
        timeout: cli.timeout,
        measure_from: start + cli.warmup,
        measure_until: start + cli.warmup + cli.duration,
    });
    let tasks: Vec<_> = streams
        .into_iter()
        .enumerate()
        .map(|(i, s)| tokio::spawn(run_connection(i, s, Arc::clone(&plan))))
        .collect();
    let mut report = Report {
        calls: 0,
        seconds: cli.duration.as_secs_f64(),
        histogram: new_histogram(),
        invalid: 0,
        errors: 0,
    };
    let mut shown = 0;
    for task in tasks {
        let outcome = task.await.context("connection task failed")?;
        report.calls += outcome.calls;
        report.invalid += outcome.invalid;
        report
            .histogram
            .add(&outcome.histogram)
            .context("merging histograms")?;
        if let Some(e) = outcome.error {
            if outcome.invalid == 0 {
                report.errors += 1;
            }
            if shown < 10 {
                eprintln!("loadgen: {e}");
                shown += 1;
            }
        }
    }
    Ok(report)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.duration.is_zero() {
        eprintln!("loadgen: --duration must be positive");
        return ExitCode::from(2);
    }
    let runtime = if cli.threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(cli.threads as usize)
            .enable_all()
            .build()
    };
    let runtime = match runtime {
        Ok(r) => r,
        Err(e) => {
            eprintln!("loadgen: cannot start the tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(&cli)) {
        Ok(report) => {
            println!("{}", report.json(&cli));
            if report.invalid > 0 || report.errors > 0 {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            eprintln!("loadgen: {e:#}");
            println!(
                "{}",
                serde_json::json!({"calls_per_sec": 0.0, "invalid": 0, "errors": 1,
                                   "error": format!("{e:#}")})
            );
            ExitCode::FAILURE
        }
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
        let cli = Cli::try_parse_from(["loadgen", "--addr", "127.0.0.1:1"]).unwrap();
        assert_eq!(
            (cli.connections, cli.depth, cli.payload, cli.threads),
            (64, 1, 100, 1)
        );
        assert_eq!(cli.duration, Duration::from_secs(10));
        assert_eq!(cli.warmup, Duration::from_secs(2));
        assert_eq!(cli.protocol, ProtocolArg::Binary);
        assert_eq!(cli.method, Method::Echo);
        assert!(Cli::try_parse_from(["loadgen", "--addr", "x", "--depth", "0"]).is_err());
        assert!(Cli::try_parse_from(["loadgen", "--addr", "x", "--protocol", "json"]).is_err());
    }

    #[test]
    fn payloads_have_the_size_asked_and_differ_per_connection() {
        assert_eq!(payload_for(3, 100).len(), 100);
        assert_eq!(payload_for(3, 0), b"");
        assert_eq!(payload_for(12, 2), b"c1");
        assert_ne!(payload_for(1, 100), payload_for(2, 100));
        assert!(std::str::from_utf8(&payload_for(7, 1000)).is_ok());
    }

    /// A whole run against an in-process echo server, and against one that
    /// answers with a wrong seqid.
    #[test]
    fn runs_against_a_tiny_server_and_detects_a_bad_one() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            for corrupt in [false, true] {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                let addr = listener.local_addr().unwrap();
                tokio::spawn(tiny_server(listener, corrupt));
                let cli = Cli::try_parse_from([
                    "loadgen",
                    "--addr",
                    &addr.to_string(),
                    "--connections",
                    "3",
                    "--depth",
                    "4",
                    "--duration",
                    "200ms",
                    "--warmup",
                    "50ms",
                    "--protocol",
                    if corrupt { "binary" } else { "compact" },
                ])
                .unwrap();
                let report = run(&cli).await.unwrap();
                if corrupt {
                    assert_eq!(report.invalid, 3);
                    assert_eq!(report.errors, 0);
                } else {
                    assert_eq!((report.invalid, report.errors), (0, 0));
                    assert!(report.calls > 0);
                    assert_eq!(report.histogram.len(), report.calls);
                }
            }
        });
    }

    async fn tiny_server(listener: tokio::net::TcpListener, corrupt: bool) {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let mut buf = BytesMut::new();
                let mut out = Vec::new();
                loop {
                    if s.read_buf(&mut buf).await.unwrap_or(0) == 0 {
                        return;
                    }
                    while let Ok(Some(len)) = complete_frame(&buf, MAX_FRAME_SIZE) {
                        let msg = &buf[4..4 + len];
                        let h = thriftworker_bench::parse_header(msg).unwrap();
                        let arg = thriftworker_bench::echo_arg(msg, &h).unwrap();
                        let seqid = if corrupt { h.seqid + 1 } else { h.seqid };
                        thriftworker_bench::write_echo_reply(
                            &mut out, h.protocol, h.name, seqid, arg,
                        );
                        buf.advance(4 + len);
                    }
                    if s.write_all(&out).await.is_err() {
                        return;
                    }
                    out.clear();
                }
            });
        }
    }
}
