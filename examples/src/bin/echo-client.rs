//! `echo-client`: calls the example `Echo` and `Calc` services with the Rust
//! `thrift` crate's generated client, over the framed transport.
//!
//! Output contract (the end-to-end tests parse it):
//!
//! - success: the result alone on one line on stdout (strings as-is, numbers
//!   in decimal, `sent` for the one-way `notify`, `ok N` for `repeat`), exit 0;
//! - the declared exception: `EchoError code=<code> message=<message>` on
//!   stdout, exit 0;
//! - a `TApplicationException`: `application error: <kind>: <message>` on
//!   stderr, exit 3;
//! - anything else (connection, transport, protocol, a `repeat` mismatch):
//!   `error: <message>` on stderr, exit 1. Usage errors exit 2.
#![forbid(unsafe_code)]

use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::process::ExitCode;
use std::time::Duration;

use clap::{CommandFactory, Parser, Subcommand, ValueEnum};
use thrift::protocol::{
    TBinaryInputProtocol, TBinaryOutputProtocol, TCompactInputProtocol, TCompactOutputProtocol,
    TFieldIdentifier, TInputProtocol, TListIdentifier, TMapIdentifier, TMessageIdentifier,
    TMultiplexedOutputProtocol, TOutputProtocol, TSetIdentifier, TStructIdentifier,
};
use thrift::transport::{
    TBufferedReadTransport, TBufferedWriteTransport, TFramedReadTransport, TFramedWriteTransport,
    TIoChannel, TReadTransport, TTcpChannel, TWriteTransport,
};
use thriftworker_examples::gen::echo::{
    CalcSyncClient, EchoError, EchoSyncClient, TCalcSyncClient, TEchoSyncClient,
};

/// Calls the example Echo and Calc Thrift services (framed or buffered transport).
///
/// Prints the result alone on stdout and exits 0; the declared exception
/// prints `EchoError code=C message=M` on stdout and exits 0; a
/// TApplicationException prints `application error: KIND: MESSAGE` on stderr
/// and exits 3; any other failure prints `error: MESSAGE` on stderr and exits 1.
#[derive(Debug, Parser)]
#[command(name = "echo-client", version)]
struct Cli {
    /// Server address.
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:9090")]
    addr: String,

    /// Thrift protocol.
    #[arg(long, value_enum, default_value_t = Proto::Binary)]
    protocol: Proto,

    /// Thrift transport: framed (`TFramedTransport`) or buffered (unframed,
    /// `TBufferedTransport`).
    #[arg(long, value_enum, default_value_t = Trans::Framed)]
    transport: Trans,

    /// Binary protocol without the strict version header (non-strict/lax).
    #[arg(long)]
    lax: bool,

    /// Multiplex: send method names as SERVICE:method.
    #[arg(long, value_name = "SERVICE")]
    multiplexed: Option<String>,

    /// Connect, send and receive timeout ("0s": none).
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = humantime::parse_duration)]
    timeout: Duration,

    #[command(subcommand)]
    call: Call,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Trans {
    Framed,
    Buffered,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Proto {
    Binary,
    Compact,
}

#[derive(Debug, Subcommand)]
enum Call {
    /// Echo.echo: prints MSG as returned by the server.
    Echo {
        #[arg(value_name = "MSG", allow_hyphen_values = true)]
        message: String,
    },
    /// Echo.notify (one-way): prints `sent` once the call is written.
    Notify {
        #[arg(value_name = "MSG", allow_hyphen_values = true)]
        message: String,
    },
    /// Echo.notified: how many notify calls the serving worker has received.
    Notified,
    /// Echo.fail: the server throws EchoError{MSG, CODE}.
    #[command(allow_negative_numbers = true)]
    Fail {
        #[arg(value_name = "MSG", allow_hyphen_values = true)]
        message: String,
        #[arg(value_name = "CODE")]
        code: i32,
    },
    /// Echo.slow: the server sleeps MS milliseconds, then returns MSG.
    #[command(allow_negative_numbers = true)]
    Slow {
        #[arg(value_name = "MSG", allow_hyphen_values = true)]
        message: String,
        #[arg(value_name = "MS")]
        ms: i32,
    },
    /// Echo.whoami: which worker process served the call.
    Whoami,
    /// Calc.add: prints A + B (usually with --multiplexed Calc).
    #[command(allow_negative_numbers = true)]
    Add {
        #[arg(value_name = "A")]
        a: i32,
        #[arg(value_name = "B")]
        b: i32,
    },
    /// N Echo.echo calls on one connection, each reply checked; prints `ok N`.
    Repeat {
        #[arg(value_name = "N")]
        n: u64,
        #[arg(value_name = "MSG", allow_hyphen_values = true)]
        message: String,
    },
}

/// Why a call did not produce a result line.
#[derive(Debug)]
enum Failure {
    Thrift(thrift::Error),
    Other(String),
}

impl From<thrift::Error> for Failure {
    fn from(e: thrift::Error) -> Self {
        Failure::Thrift(e)
    }
}

type InProto = Box<dyn TInputProtocol>;
type OutProto = Box<dyn TOutputProtocol>;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.lax && cli.protocol != Proto::Binary {
        Cli::command()
            .error(
                clap::error::ErrorKind::ArgumentConflict,
                "--lax applies to the binary protocol only",
            )
            .exit();
    }
    match run(&cli) {
        Ok(line) => {
            print_stdout(&line);
            ExitCode::SUCCESS
        }
        Err(Failure::Thrift(thrift::Error::User(e))) => match e.downcast::<EchoError>() {
            Ok(e) => {
                print_stdout(&format!(
                    "EchoError code={} message={}",
                    e.code.unwrap_or_default(),
                    e.message.unwrap_or_default()
                ));
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: unexpected user exception: {e:?}");
                ExitCode::from(1)
            }
        },
        Err(Failure::Thrift(thrift::Error::Application(e))) => {
            eprintln!("application error: {:?}: {}", e.kind, e.message);
            ExitCode::from(3)
        }
        Err(Failure::Thrift(thrift::Error::Transport(e))) => {
            eprintln!("error: transport error ({:?}): {}", e.kind, e.message);
            ExitCode::from(1)
        }
        Err(Failure::Thrift(thrift::Error::Protocol(e))) => {
            eprintln!("error: protocol error ({:?}): {}", e.kind, e.message);
            ExitCode::from(1)
        }
        Err(Failure::Other(message)) => {
            eprintln!("error: {message}");
            ExitCode::from(1)
        }
    }
}

fn print_stdout(line: &str) {
    let mut out = io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Makes the call and returns the line to print on success.
fn run(cli: &Cli) -> Result<String, Failure> {
    let (i, o) = connect(cli)?;
    let line = match &cli.call {
        Call::Add { a, b } => CalcSyncClient::new(i, o).add(*a, *b)?.to_string(),
        call => {
            let mut client = EchoSyncClient::new(i, o);
            match call {
                Call::Echo { message } => client.echo(message.clone())?,
                Call::Notify { message } => {
                    client.notify(message.clone())?;
                    "sent".to_owned()
                }
                Call::Notified => client.notified()?.to_string(),
                Call::Fail { message, code } => client.fail(message.clone(), *code)?,
                Call::Slow { message, ms } => client.slow(message.clone(), *ms)?,
                Call::Whoami => client.whoami()?,
                Call::Repeat { n, message } => {
                    for k in 1..=*n {
                        let reply = client.echo(message.clone())?;
                        if reply != *message {
                            return Err(Failure::Other(format!(
                                "repeat: reply {k} of {n} was {reply:?}, expected {message:?}"
                            )));
                        }
                    }
                    format!("ok {n}")
                }
                Call::Add { .. } => unreachable!("handled above"),
            }
        }
    };
    Ok(line)
}

/// Opens the connection and the transport and protocols the command line asks for.
fn connect(cli: &Cli) -> Result<(InProto, OutProto), Failure> {
    let timeout = (!cli.timeout.is_zero()).then_some(cli.timeout);
    let stream = tcp_connect(&cli.addr, timeout)
        .map_err(|e| Failure::Other(format!("cannot connect to {}: {e}", cli.addr)))?;
    let _ = stream.set_nodelay(true);
    stream
        .set_read_timeout(timeout)
        .and_then(|()| stream.set_write_timeout(timeout))
        .map_err(|e| Failure::Other(format!("cannot set socket timeouts: {e}")))?;

    let (read_half, write_half) = TTcpChannel::with_stream(stream).split()?;
    let timed = Timed {
        inner: read_half,
        timeout,
    };
    let (read, write): (
        Box<dyn TReadTransport + Send>,
        Box<dyn TWriteTransport + Send>,
    ) = match cli.transport {
        Trans::Framed => (
            Box::new(TFramedReadTransport::new(timed)),
            Box::new(TFramedWriteTransport::new(write_half)),
        ),
        Trans::Buffered => (
            Box::new(TBufferedReadTransport::new(timed)),
            Box::new(TBufferedWriteTransport::new(write_half)),
        ),
    };
    let (i, o): (InProto, OutProto) = match cli.protocol {
        Proto::Binary => (
            Box::new(TBinaryInputProtocol::new(read, !cli.lax)),
            Box::new(TBinaryOutputProtocol::new(write, !cli.lax)),
        ),
        Proto::Compact => (
            Box::new(TCompactInputProtocol::new(read)),
            Box::new(TCompactOutputProtocol::new(write)),
        ),
    };
    Ok(match &cli.multiplexed {
        Some(service) => (
            Box::new(StripServicePrefix {
                inner: i,
                prefix: format!("{service}:"),
            }),
            Box::new(TMultiplexedOutputProtocol::new(service, o)),
        ),
        None => (i, o),
    })
}

/// Connects to the first address `addr` resolves to that accepts.
fn tcp_connect(addr: &str, timeout: Option<Duration>) -> io::Result<TcpStream> {
    let mut last = None;
    for sa in addr.to_socket_addrs()? {
        let attempt = match timeout {
            Some(t) => TcpStream::connect_timeout(&sa, t),
            None => TcpStream::connect(sa),
        };
        match attempt {
            Ok(s) => return Ok(s),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no address resolved")))
}

/// Reports a read timeout as such (a socket read timeout surfaces as
/// `WouldBlock` on Unix, which would print as "Resource temporarily unavailable").
struct Timed<R> {
    inner: R,
    timeout: Option<Duration>,
}

impl<R: Read> Read for Timed<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner
            .read(buf)
            .map_err(|e| match (e.kind(), self.timeout) {
                (io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut, Some(t)) => io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no reply within {}", humantime::format_duration(t)),
                ),
                _ => e,
            })
    }
}

/// With `--multiplexed S`, a reply the server did not rewrite keeps the
/// name `S:method` (Apache Thrift's own multiplexed processors answer errors
/// that way, and so does the data plane for an unknown service). The
/// generated client checks the reply's name before it looks at the message
/// type, so it would report `WrongMethodName` instead of the server's
/// `TApplicationException`; this strips exactly the `S:` the client added.
struct StripServicePrefix {
    inner: InProto,
    prefix: String,
}

impl TInputProtocol for StripServicePrefix {
    fn read_message_begin(&mut self) -> thrift::Result<TMessageIdentifier> {
        let mut ident = self.inner.read_message_begin()?;
        if let Some(name) = ident.name.strip_prefix(&self.prefix) {
            ident.name = name.to_owned();
        }
        Ok(ident)
    }
    fn read_message_end(&mut self) -> thrift::Result<()> {
        self.inner.read_message_end()
    }
    fn read_struct_begin(&mut self) -> thrift::Result<Option<TStructIdentifier>> {
        self.inner.read_struct_begin()
    }
    fn read_struct_end(&mut self) -> thrift::Result<()> {
        self.inner.read_struct_end()
    }
    fn read_field_begin(&mut self) -> thrift::Result<TFieldIdentifier> {
        self.inner.read_field_begin()
    }
    fn read_field_end(&mut self) -> thrift::Result<()> {
        self.inner.read_field_end()
    }
    fn read_bool(&mut self) -> thrift::Result<bool> {
        self.inner.read_bool()
    }
    fn read_bytes(&mut self) -> thrift::Result<Vec<u8>> {
        self.inner.read_bytes()
    }
    fn read_i8(&mut self) -> thrift::Result<i8> {
        self.inner.read_i8()
    }
    fn read_i16(&mut self) -> thrift::Result<i16> {
        self.inner.read_i16()
    }
    fn read_i32(&mut self) -> thrift::Result<i32> {
        self.inner.read_i32()
    }
    fn read_i64(&mut self) -> thrift::Result<i64> {
        self.inner.read_i64()
    }
    fn read_double(&mut self) -> thrift::Result<f64> {
        self.inner.read_double()
    }
    fn read_string(&mut self) -> thrift::Result<String> {
        self.inner.read_string()
    }
    fn read_list_begin(&mut self) -> thrift::Result<TListIdentifier> {
        self.inner.read_list_begin()
    }
    fn read_list_end(&mut self) -> thrift::Result<()> {
        self.inner.read_list_end()
    }
    fn read_set_begin(&mut self) -> thrift::Result<TSetIdentifier> {
        self.inner.read_set_begin()
    }
    fn read_set_end(&mut self) -> thrift::Result<()> {
        self.inner.read_set_end()
    }
    fn read_map_begin(&mut self) -> thrift::Result<TMapIdentifier> {
        self.inner.read_map_begin()
    }
    fn read_map_end(&mut self) -> thrift::Result<()> {
        self.inner.read_map_end()
    }
    fn read_byte(&mut self) -> thrift::Result<u8> {
        self.inner.read_byte()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_debug_assert() {
        Cli::command().debug_assert();
    }

    #[test]
    fn cli_parses_calls() {
        let cli = Cli::try_parse_from(["echo-client", "echo", "hello"]).unwrap();
        assert_eq!(cli.addr, "127.0.0.1:9090");
        assert_eq!(cli.protocol, Proto::Binary);
        assert!(!cli.lax && cli.multiplexed.is_none());
        assert!(matches!(cli.call, Call::Echo { ref message } if message == "hello"));

        let cli = Cli::try_parse_from([
            "echo-client",
            "--addr",
            "127.0.0.1:9091",
            "--multiplexed",
            "Calc",
            "add",
            "-5",
            "3",
        ])
        .unwrap();
        assert_eq!(cli.multiplexed.as_deref(), Some("Calc"));
        assert!(matches!(cli.call, Call::Add { a: -5, b: 3 }));

        let cli = Cli::try_parse_from(["echo-client", "fail", "-boom-", "-1"]).unwrap();
        assert!(matches!(cli.call, Call::Fail { ref message, code: -1 } if message == "-boom-"));

        let cli = Cli::try_parse_from(["echo-client", "--protocol", "compact", "repeat", "3", "x"])
            .unwrap();
        assert_eq!(cli.protocol, Proto::Compact);
        assert!(matches!(cli.call, Call::Repeat { n: 3, .. }));
    }

    #[test]
    fn strips_only_the_multiplexed_service_prefix() {
        use thrift::protocol::TMessageType;
        let mut buf = Vec::new();
        {
            let mut o = TBinaryOutputProtocol::new(&mut buf, true);
            for name in ["Calc:add", "add", "Other:add"] {
                o.write_message_begin(&TMessageIdentifier::new(name, TMessageType::Exception, 1))
                    .unwrap();
                o.write_message_end().unwrap();
            }
        }
        let mut i = StripServicePrefix {
            inner: Box::new(TBinaryInputProtocol::new(io::Cursor::new(buf), true)),
            prefix: "Calc:".into(),
        };
        let names: Vec<String> = (0..3)
            .map(|_| i.read_message_begin().unwrap().name)
            .collect();
        assert_eq!(names, ["add", "add", "Other:add"]);
    }

    #[test]
    fn connection_refused_is_an_error() {
        // Bind then drop to get a port nobody listens on.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let cli = Cli::try_parse_from([
            "echo-client",
            "--addr",
            &format!("127.0.0.1:{port}"),
            "whoami",
        ])
        .unwrap();
        assert!(matches!(run(&cli), Err(Failure::Other(_))));
    }
}
