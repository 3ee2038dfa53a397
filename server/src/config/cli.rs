//! The command line of the `thriftworker` binary (every flag also reads a
//! `THRIFTWORKER_*` environment variable).

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use serde::Deserialize;

/// Command line of the `thriftworker` binary.
#[derive(Debug, Parser)]
#[command(
    name = "thriftworker",
    version,
    about = "Thrift data plane: accepts framed Thrift connections and dispatches calls over ZeroMQ to worker processes",
    after_help = "Example:\n  thriftworker --config examples/echo.toml\n\nSee docs/ for the config reference and the worker protocol."
)]
pub struct Cli {
    /// TOML config file (listeners, services, worker endpoints).
    #[arg(long, short = 'c', env = "THRIFTWORKER_CONFIG")]
    pub config: PathBuf,

    /// ZeroMQ endpoint(s) workers connect to (ipc:///path or tcp://127.0.0.1:PORT);
    /// replaces [workers].endpoints. Repeat or comma-separate.
    #[arg(
        long = "worker-endpoint",
        env = "THRIFTWORKER_WORKER_ENDPOINTS",
        value_delimiter = ','
    )]
    pub worker_endpoints: Vec<String>,

    /// File holding the shared worker token (replaces [workers].token_file).
    /// The token itself may instead be given in THRIFTWORKER_WORKER_TOKEN.
    #[arg(long, env = "THRIFTWORKER_WORKER_TOKEN_FILE")]
    pub worker_token_file: Option<PathBuf>,

    /// How long SIGTERM waits for calls in flight before answering them itself.
    #[arg(long, env = "THRIFTWORKER_SHUTDOWN_TIMEOUT", value_parser = humantime::parse_duration)]
    pub shutdown_timeout: Option<Duration>,

    /// Runtime threads (0 = one per core); replaces [server].threads.
    #[arg(long, env = "THRIFTWORKER_THREADS")]
    pub threads: Option<usize>,

    /// Log format: text or json.
    #[arg(long, env = "THRIFTWORKER_LOG_FORMAT")]
    pub log_format: Option<LogFormat>,

    /// Log filter (tracing EnvFilter syntax), e.g. "info" or "thriftworker=debug".
    #[arg(long, env = "THRIFTWORKER_LOG", default_value = "info,zeromq=error")]
    pub log: String,

    /// Admin API (gRPC) address; replaces [admin].address. "off" disables it.
    #[arg(long, env = "THRIFTWORKER_ADMIN_ADDR")]
    pub admin_addr: Option<String>,

    /// File holding the admin API bearer token (replaces [admin].token_file).
    /// The token itself may instead be given in THRIFTWORKER_ADMIN_TOKEN.
    #[arg(long, env = "THRIFTWORKER_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,

    /// Prometheus metrics and health probes (HTTP: /metrics, /healthz,
    /// /readyz); replaces [metrics].address. "off" disables it.
    #[arg(long, env = "THRIFTWORKER_METRICS_ADDR")]
    pub metrics_addr: Option<String>,

    /// Persist runtime changes here and reload them on start (replaces [admin].state_file).
    #[arg(long, env = "THRIFTWORKER_STATE_FILE")]
    pub state_file: Option<PathBuf>,

    /// After every socket is bound, write their addresses to this file as JSON
    /// (for tests and supervisors that start it on port 0).
    #[arg(long, env = "THRIFTWORKER_READY_FILE")]
    pub ready_file: Option<PathBuf>,
}

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize, clap::ValueEnum, Default,
)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_debug_assert() {
        Cli::command().debug_assert();
    }
}
