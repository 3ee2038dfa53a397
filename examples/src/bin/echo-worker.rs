//! `echo-worker`: serves the example `Echo` and `Calc` services as a
//! thriftworker worker, with the `thriftworker-worker` library.
//!
//! ```text
//! echo-worker --endpoint ipc:///tmp/thriftworker-example/workers.sock --concurrency 4
//! ```
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, ValueEnum};
use thriftworker_examples::gen::echo::{CalcSyncProcessor, EchoSyncProcessor};
use thriftworker_examples::{CalcHandler, EchoHandler};
use thriftworker_worker::{shutdown_signal, Worker};

/// Environment variable holding the worker token itself (never logged).
const TOKEN_ENV: &str = "THRIFTWORKER_WORKER_TOKEN";

/// Serves the example Echo and Calc Thrift services as a thriftworker worker.
///
/// The shared worker token, if the data plane requires one, is read from
/// --token-file or else from the THRIFTWORKER_WORKER_TOKEN environment
/// variable. Logs go to stderr; RUST_LOG filters them (default:
/// "info,zeromq=error").
/// SIGTERM or Ctrl-C stops gracefully: calls in flight are finished first.
#[derive(Debug, Parser)]
#[command(name = "echo-worker", version)]
struct Cli {
    /// Data plane worker endpoints to attach to (ipc:///path or
    /// tcp://host:port); repeat or comma-separate. A host name stands for
    /// every address it resolves to (e.g. a Kubernetes headless Service):
    /// the worker attaches to each and shares its credit between them.
    #[arg(
        long,
        env = "THRIFTWORKER_ENDPOINT",
        value_name = "URI",
        value_delimiter = ',',
        required = true
    )]
    endpoint: Vec<String>,

    /// How often host names in --endpoint are resolved again, e.g. "5s"
    /// (also whenever a connection is lost); at least 100ms.
    #[arg(
        long,
        env = "THRIFTWORKER_RESOLVE_INTERVAL",
        value_name = "DURATION",
        value_parser = humantime::parse_duration,
        default_value = "5s"
    )]
    resolve_interval: Duration,

    /// A hosts(5) file read before DNS at every resolution (names it lists
    /// resolve to its addresses): for tests and setups without DNS.
    #[arg(long, env = "THRIFTWORKER_HOSTS_FILE", value_name = "PATH")]
    hosts_file: Option<PathBuf>,

    /// Calls run at once (processor threads, and the credit announced to the data plane).
    #[arg(
        long,
        env = "THRIFTWORKER_CONCURRENCY",
        value_name = "N",
        default_value_t = 4
    )]
    concurrency: usize,

    /// Calls held ready beyond --concurrency (credit = concurrency + prefetch,
    /// at most 65536): a thread that finishes a call finds the next one waiting.
    #[arg(
        long,
        env = "THRIFTWORKER_PREFETCH",
        value_name = "N",
        default_value_t = thriftworker_worker::DEFAULT_PREFETCH
    )]
    prefetch: usize,

    /// Run calls on the I/O task instead of the thread pool (lowest latency;
    /// only for handlers that never block: `slow` then stalls heartbeats).
    #[arg(long, env = "THRIFTWORKER_INLINE")]
    inline: bool,

    /// Services to serve, comma-separated.
    #[arg(
        long,
        env = "THRIFTWORKER_SERVICES",
        value_name = "LIST",
        value_enum,
        value_delimiter = ',',
        ignore_case = true,
        default_value = "Echo,Calc"
    )]
    services: Vec<Service>,

    /// File holding the shared worker token (surrounding whitespace is
    /// ignored). Takes precedence over THRIFTWORKER_WORKER_TOKEN.
    #[arg(long, env = "THRIFTWORKER_WORKER_TOKEN_FILE", value_name = "PATH")]
    token_file: Option<PathBuf>,

    /// Heartbeat interval when idle, e.g. "1s" or "500ms" (the data plane's
    /// interval takes precedence once connected) [default: 1s].
    #[arg(
        long,
        env = "THRIFTWORKER_HEARTBEAT_INTERVAL",
        value_name = "DURATION",
        value_parser = humantime::parse_duration
    )]
    heartbeat_interval: Option<Duration>,

    /// Log format on stderr.
    #[arg(
        long,
        env = "THRIFTWORKER_LOG_FORMAT",
        value_enum,
        default_value_t = LogFormat::Text
    )]
    log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Service {
    #[value(name = "Echo")]
    Echo,
    #[value(name = "Calc")]
    Calc,
}

impl Service {
    fn name(self) -> &'static str {
        match self {
            Service::Echo => "Echo",
            Service::Calc => "Calc",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

// The processors run on the worker library's own thread pool; the runtime
// only moves messages, and one thread does that with the fewest wakeups
// (measured: ~110 vs ~150 µs per sequential call, docs/benchmarks.md).
#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_tracing(cli.log_format)?;

    let token = read_token(cli.token_file.as_deref())?;
    let mut services: Vec<Service> = Vec::new();
    for service in &cli.services {
        if !services.contains(service) {
            services.push(*service);
        }
    }
    if services.is_empty() {
        bail!("--services is empty: name at least one of Echo, Calc");
    }

    let mut builder = Worker::builder(cli.endpoint[0].clone())
        .resolve_interval(cli.resolve_interval)
        .concurrency(cli.concurrency)
        .prefetch(cli.prefetch)
        .inline(cli.inline);
    for endpoint in &cli.endpoint[1..] {
        builder = builder.add_endpoint(endpoint.clone());
    }
    if let Some(path) = &cli.hosts_file {
        builder = builder.hosts_file(path.clone());
    }
    if let Some(token) = &token {
        builder = builder.token(token.clone());
    }
    if let Some(interval) = cli.heartbeat_interval {
        builder = builder.heartbeat_interval(interval);
    }
    for service in &services {
        builder = match service {
            Service::Echo => {
                builder.service("Echo", EchoSyncProcessor::new(EchoHandler::default()))
            }
            Service::Calc => builder.service("Calc", CalcSyncProcessor::new(CalcHandler)),
        };
    }
    let worker = builder.build().context("invalid worker configuration")?;

    let names: Vec<&str> = services.iter().map(|s| s.name()).collect();
    tracing::info!(
        endpoint = %cli.endpoint.join(","),
        concurrency = cli.concurrency,
        services = %names.join(","),
        token = if token.is_some() { "set" } else { "none" },
        pid = std::process::id(),
        "echo-worker starting"
    );
    worker.run(shutdown_signal()).await?;
    tracing::info!("echo-worker stopped");
    Ok(())
}

fn init_tracing(format: LogFormat) -> anyhow::Result<()> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(f) if !f.trim().is_empty() => tracing_subscriber::EnvFilter::try_new(&f)
            .with_context(|| format!("invalid RUST_LOG filter '{f}'"))?,
        _ => tracing_subscriber::EnvFilter::new("info,zeromq=error"),
    };
    // Colour only on a terminal, and never with NO_COLOR set.
    use std::io::IsTerminal;
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal() && !no_color)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    Ok(())
}

/// The worker token: from `--token-file` if given, else from
/// `THRIFTWORKER_WORKER_TOKEN`, else none. Never logged.
fn read_token(file: Option<&std::path::Path>) -> anyhow::Result<Option<Vec<u8>>> {
    let token = if let Some(path) = file {
        let raw = std::fs::read(path)
            .with_context(|| format!("cannot read worker token file {}", path.display()))?;
        Some(raw.trim_ascii().to_vec())
    } else {
        match std::env::var_os(TOKEN_ENV) {
            Some(value) => {
                let value = value
                    .into_string()
                    .map_err(|_| anyhow::anyhow!("{TOKEN_ENV} is not valid UTF-8"))?;
                Some(value.trim().as_bytes().to_vec())
            }
            None => None,
        }
    };
    if token.as_ref().is_some_and(|t| t.is_empty()) {
        bail!("the worker token is empty: put a non-empty token in the token file or {TOKEN_ENV} (or unset it)");
    }
    Ok(token)
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
        let cli =
            Cli::try_parse_from(["echo-worker", "--endpoint", "tcp://127.0.0.1:5555"]).unwrap();
        assert_eq!(cli.concurrency, 4);
        assert_eq!(cli.prefetch, 256);
        assert_eq!(cli.services, vec![Service::Echo, Service::Calc]);
        assert_eq!(cli.log_format, LogFormat::Text);
        assert!(cli.heartbeat_interval.is_none());
        assert_eq!(cli.endpoint, vec!["tcp://127.0.0.1:5555".to_string()]);
        assert_eq!(cli.resolve_interval, Duration::from_secs(5));
        assert!(
            Cli::try_parse_from(["echo-worker"]).is_err(),
            "--endpoint is required"
        );
    }

    #[test]
    fn cli_takes_several_endpoints() {
        let cli = Cli::try_parse_from([
            "echo-worker",
            "--endpoint",
            "tcp://a:1,tcp://b:2",
            "--endpoint",
            "ipc:///c",
            "--resolve-interval",
            "250ms",
            "--hosts-file",
            "/tmp/hosts",
        ])
        .unwrap();
        assert_eq!(cli.endpoint, vec!["tcp://a:1", "tcp://b:2", "ipc:///c"]);
        assert_eq!(cli.resolve_interval, Duration::from_millis(250));
        assert_eq!(cli.hosts_file, Some(PathBuf::from("/tmp/hosts")));
    }

    #[test]
    fn cli_parses_lists_and_durations() {
        let cli = Cli::try_parse_from([
            "echo-worker",
            "--endpoint",
            "ipc:///tmp/x/workers.sock",
            "--services",
            "calc",
            "--heartbeat-interval",
            "250ms",
            "--log-format",
            "json",
        ])
        .unwrap();
        assert_eq!(cli.services, vec![Service::Calc]);
        assert_eq!(cli.heartbeat_interval, Some(Duration::from_millis(250)));
        assert_eq!(cli.log_format, LogFormat::Json);
        assert!(
            Cli::try_parse_from(["echo-worker", "--endpoint", "x", "--services", "Nope"]).is_err()
        );
    }

    #[test]
    fn token_file_is_trimmed() {
        let dir = std::env::temp_dir().join(format!("echo-worker-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("token");
        std::fs::write(&path, "s3cret\n").unwrap();
        assert_eq!(read_token(Some(&path)).unwrap(), Some(b"s3cret".to_vec()));
        std::fs::write(&path, " \n").unwrap();
        assert!(read_token(Some(&path)).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
