//! `echo-baseline`: the minimal one-hop framed Thrift echo server, the upper
//! bound the data plane is compared with. It answers `echo(message)` itself,
//! with no dispatch, no worker and no generated code: read the frames in a
//! buffer, parse the header and the one argument, write the REPLYs of
//! everything read with one `write_all`.
//!
//! ```text
//! echo-baseline --addr 127.0.0.1:0
//! listening 127.0.0.1:40123
//! ```
#![forbid(unsafe_code)]

use std::io::Write;

use anyhow::Context;
use bytes::{Buf, BytesMut};
use clap::Parser;
use thriftworker_bench::{
    complete_frame, echo_arg, parse_header, write_app_exception, write_echo_reply, CALL,
    MAX_FRAME_SIZE, ONEWAY, UNKNOWN_METHOD,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Minimal one-hop framed Thrift server answering Echo.echo(message) with
/// message, in the call's protocol (binary strict, binary lax or compact).
/// Other methods are answered with an UNKNOWN_METHOD TApplicationException.
///
/// Prints `listening HOST:PORT` as its first stdout line once bound.
#[derive(Debug, Parser)]
#[command(name = "echo-baseline", version)]
struct Cli {
    /// Address to listen on (port 0: any free port).
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:0")]
    addr: String,

    /// Tokio worker threads [default: one per CPU, like thriftworker].
    #[arg(long, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=1024))]
    threads: Option<u32>,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = cli.threads {
        builder.worker_threads(n as usize);
    }
    let runtime = builder
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    runtime.block_on(async {
        let listener = TcpListener::bind(&cli.addr)
            .await
            .with_context(|| format!("cannot listen on {}", cli.addr))?;
        let mut stdout = std::io::stdout();
        writeln!(stdout, "listening {}", listener.local_addr()?)?;
        stdout.flush()?;
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    tokio::spawn(serve(stream));
                }
                Err(e) => {
                    eprintln!("echo-baseline: accept: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
    })
}

/// Serves one connection until EOF or an error (which closes it).
async fn serve(mut stream: TcpStream) {
    if let Err(e) = serve_inner(&mut stream).await {
        eprintln!("echo-baseline: closing a connection: {e}");
    }
}

async fn serve_inner(stream: &mut TcpStream) -> anyhow::Result<()> {
    stream.set_nodelay(true)?;
    let mut rbuf = BytesMut::with_capacity(64 * 1024);
    let mut wbuf: Vec<u8> = Vec::with_capacity(64 * 1024);
    loop {
        if rbuf.capacity() - rbuf.len() < 16 * 1024 {
            rbuf.reserve(64 * 1024);
        }
        if stream.read_buf(&mut rbuf).await? == 0 {
            return Ok(());
        }
        let mut pos = 0;
        while let Some(len) = complete_frame(&rbuf[pos..], MAX_FRAME_SIZE)? {
            let msg = &rbuf[pos + 4..pos + 4 + len];
            answer(msg, &mut wbuf)?;
            pos += 4 + len;
        }
        rbuf.advance(pos);
        if !wbuf.is_empty() {
            stream.write_all(&wbuf).await?;
            wbuf.clear();
        }
    }
}

/// Appends the answer to one message (none for a oneway call).
fn answer(msg: &[u8], out: &mut Vec<u8>) -> anyhow::Result<()> {
    let h = parse_header(msg)?;
    match h.message_type {
        CALL if h.name == b"echo" => {
            let arg = echo_arg(msg, &h)?;
            write_echo_reply(out, h.protocol, h.name, h.seqid, arg);
        }
        CALL => write_app_exception(
            out,
            h.protocol,
            h.name,
            h.seqid,
            UNKNOWN_METHOD,
            "echo-baseline serves only echo",
        ),
        ONEWAY => {}
        t => anyhow::bail!("message type {t} is not a call"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;
    use thriftworker_bench::{check_echo_reply, CallTemplate, Protocol, SEQID_BASE};

    #[test]
    fn cli_debug_assert() {
        Cli::command().debug_assert();
    }

    #[test]
    fn answers_echo_in_the_call_protocol() {
        for protocol in [Protocol::Binary, Protocol::Compact] {
            let mut t = CallTemplate::new(protocol, b"echo", b"abc");
            let mut call = Vec::new();
            t.append(SEQID_BASE + 3, &mut call);
            let mut out = Vec::new();
            answer(&call[4..], &mut out).unwrap();
            check_echo_reply(&out[4..], protocol, b"echo", SEQID_BASE + 3, b"abc").unwrap();
        }
    }

    #[test]
    fn other_methods_get_an_exception() {
        let mut t = CallTemplate::new(Protocol::Binary, b"whoami", b"");
        let mut call = Vec::new();
        t.append(SEQID_BASE, &mut call);
        let mut out = Vec::new();
        answer(&call[4..], &mut out).unwrap();
        let h = parse_header(&out[4..]).unwrap();
        assert_eq!(h.message_type, thriftworker_bench::EXCEPTION);
        assert_eq!(h.name, b"whoami");
    }
}
