//! The command line: nouns (`services`, `listeners`, `workers`, ...) then
//! verbs, global connection flags that may come anywhere, and the parsers of
//! durations and `METHOD=DURATION` pairs.

use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgGroup, Args, Parser, Subcommand, ValueEnum};
use clap_complete::Shell;

/// The admin address used when neither --addr nor THRIFTCTL_ADDR is given.
pub const DEFAULT_ADDR: &str = "127.0.0.1:9901";

/// Controls a running thriftworker through its admin API (gRPC).
///
/// Connection flags (--addr, --token-file, --tls-*, --output) may be given
/// anywhere on the line and each has an environment variable. The admin
/// token itself can be passed in THRIFTCTL_TOKEN (never printed); it is sent
/// as "authorization: Bearer <token>" on every call.
#[derive(Debug, Parser)]
#[command(
    name = "thriftctl",
    version,
    propagate_version = true,
    subcommand_required = true,
    arg_required_else_help = true,
    after_help = "\
Examples:
  thriftctl services list
  thriftctl --addr 10.0.0.5:9901 --token-file /etc/thriftworker/admin.token listeners list
  thriftctl stats --watch
  THRIFTCTL_OUTPUT=json thriftctl workers list --service Echo

Exit status: 0 on success, 1 when the call fails (or health is not SERVING), 2 for usage errors."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,

    /// Deadline of each admin call, e.g. "10s" or "500ms". Give it before
    /// the command: after one, --timeout is that command's own flag.
    #[arg(
        long = "timeout",
        env = "THRIFTCTL_TIMEOUT",
        value_name = "DURATION",
        default_value = "10s",
        value_parser = parse_positive_duration
    )]
    pub request_timeout: Duration,

    #[command(subcommand)]
    pub command: Command,
}

/// Flags about how to reach and talk to the admin API.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Global options")]
pub struct GlobalArgs {
    /// Admin API address: http://HOST:PORT, https://HOST:PORT or HOST:PORT
    /// (http, or https when a --tls-* flag is given) [default: http://127.0.0.1:9901]
    #[arg(long, global = true, env = "THRIFTCTL_ADDR", value_name = "ADDR")]
    pub addr: Option<String>,

    /// File holding the admin token (surrounding whitespace is ignored).
    /// Takes precedence over THRIFTCTL_TOKEN.
    #[arg(long, global = true, env = "THRIFTCTL_TOKEN_FILE", value_name = "PATH")]
    pub token_file: Option<PathBuf>,

    /// PEM file of the CA that signed the server's certificate (enables TLS).
    #[arg(long, global = true, env = "THRIFTCTL_TLS_CA", value_name = "PATH")]
    pub tls_ca: Option<PathBuf>,

    /// PEM client certificate, for servers that require one (with --tls-key).
    #[arg(long, global = true, env = "THRIFTCTL_TLS_CERT", value_name = "PATH")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert.
    #[arg(long, global = true, env = "THRIFTCTL_TLS_KEY", value_name = "PATH")]
    pub tls_key: Option<PathBuf>,

    /// Name to verify the server's certificate against [default: the host of --addr].
    #[arg(long, global = true, env = "THRIFTCTL_TLS_DOMAIN", value_name = "NAME")]
    pub tls_domain: Option<String>,

    /// Output format: aligned tables for people, JSON for scripts.
    #[arg(
        short = 'o',
        long,
        global = true,
        env = "THRIFTCTL_OUTPUT",
        value_enum,
        default_value_t = Output::Table
    )]
    pub output: Output,

    /// Tables without their header line (for scripts that cut columns).
    #[arg(long, global = true)]
    pub no_headers: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
    /// The JSON document as YAML.
    Yaml,
    /// Tables with more columns (every setting).
    Wide,
}

/// `--watch` for the list verbs.
#[derive(Debug, Clone, Args)]
pub struct WatchArgs {
    /// Print the list again every --interval (Ctrl-C to stop); on a
    /// terminal the screen is redrawn, otherwise each list follows the last.
    #[arg(long)]
    pub watch: bool,

    /// How often --watch refreshes.
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = parse_millis)]
    pub interval: u64,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Thrift services the data plane routes calls to.
    #[command(subcommand, after_help = "Example:\n  thriftctl services list")]
    Services(ServicesCmd),

    /// TCP listeners: add, remove, pause, resume.
    #[command(subcommand, after_help = "Example:\n  thriftctl listeners list")]
    Listeners(ListenersCmd),

    /// Workers connected over ZeroMQ.
    #[command(subcommand, after_help = "Example:\n  thriftctl workers list")]
    Workers(WorkersCmd),

    /// Counters per service, method and listener; --watch refreshes like top.
    #[command(after_help = "\
Examples:
  thriftctl stats
  thriftctl stats --service Echo --listener echo
  thriftctl stats --watch --interval 2s
  thriftctl -o json stats --watch      # one JSON object per line
  thriftctl -o json stats | jq '.methods[] | {service, method, errors, p99: .total.p99_ms}'

CALLS counts two-way and oneway calls. ERRORS counts calls that ended in a
failure: timeout, overloaded, no worker, worker died, application exception,
empty reply, bad reply or shutdown (a declared exception is an answer, and an
abandoned call was given up by its client: neither is an error).
ERR% is errors per finished call. CALLS/S and ERR% cover the last interval
with --watch, the whole uptime otherwise (the header says which); the other
columns are totals since start or current values. P50/P99: latency of
two-way calls in the data plane since start ('-' before the first one).
CLOSED-BAD: connections closed for a bad frame, a frame too large or a
protocol error.")]
    Stats(StatsArgs),

    /// The effective configuration (TOML, loadable as a config file; with
    /// -o json, JSON), what changed at run time, and whether tokens are set.
    #[command(
        subcommand,
        after_help = "Examples:\n  thriftctl config dump > effective.toml\n  thriftctl -o json config dump | jq .runtime_changes"
    )]
    Config(ConfigCmd),

    /// What just happened: workers, listeners, services, drain, log level
    /// (the last 1,000 events); --watch then follows new ones.
    #[command(
        after_help = "Examples:\n  thriftctl events\n  thriftctl events --watch\n  thriftctl -o json events --watch   # one JSON object per line"
    )]
    Events(EventsArgs),

    /// Shows the data plane's log filter, or replaces it at run time (not
    /// persisted: a restart uses --log again).
    #[command(
        name = "log-level",
        after_help = "Examples:\n  thriftctl log-level\n  thriftctl log-level 'info,thriftworker::data=debug'\n  thriftctl log-level info"
    )]
    LogLevel(LogLevelArgs),

    /// Drains and stops thriftworker (like SIGTERM): stops accepting, lets
    /// calls in flight finish, then exits.
    #[command(after_help = "Examples:\n  thriftctl drain\n  thriftctl drain --timeout 1m")]
    Drain(DrainArgs),

    /// Health (grpc.health.v1) of thriftworker or of one service: prints
    /// SERVING or NOT_SERVING; exit status 0 only when SERVING.
    #[command(after_help = "\
Examples:
  thriftctl health
  thriftctl health --service Echo    # SERVING while Echo has a live worker")]
    Health(HealthArgs),

    /// Prints a shell completion script.
    #[command(after_help = "\
Examples:
  thriftctl completions bash > /etc/bash_completion.d/thriftctl
  thriftctl completions zsh > \"${fpath[1]}/_thriftctl\"
  thriftctl completions fish > ~/.config/fish/completions/thriftctl.fish")]
    Completions(CompletionsArgs),
}

// -- services -----------------------------------------------------------------

#[derive(Debug, Subcommand)]
pub enum ServicesCmd {
    /// Lists services with their workers, credit, queue and settings.
    #[command(
        after_help = "Examples:\n  thriftctl services list\n  thriftctl services list -o json"
    )]
    List {
        #[command(flatten)]
        watch: WatchArgs,
    },

    /// Shows one service.
    #[command(after_help = "Example:\n  thriftctl services get Echo")]
    Get {
        /// Service name.
        name: String,
    },

    /// Registers a new service (workers may then announce it).
    #[command(after_help = "\
Examples:
  thriftctl services register Echo
  thriftctl services register Echo --timeout 5s --method-timeout slow=30s --max-queue 256
  thriftctl services register Mux --no-strip-prefix")]
    Register(ServiceArgs),

    /// Changes the settings of a service; settings not given keep their value.
    #[command(after_help = "\
Examples:
  thriftctl services update Echo --timeout 10s
  thriftctl services update Echo --method-timeout slow=1m --queue-timeout 500ms")]
    Update(ServiceArgs),

    /// Stops routing new calls to a service; calls in flight finish.
    /// Refused while a listener still serves it.
    #[command(after_help = "Example:\n  thriftctl services unregister Echo")]
    Unregister {
        /// Service name.
        name: String,
    },
}

#[derive(Debug, Clone, Args)]
pub struct ServiceArgs {
    /// Service name, as in "Service:method" and in workers' READY.
    pub name: String,

    #[command(flatten)]
    pub settings: ServiceSettingsArgs,
}

#[derive(Debug, Clone, Default, Args)]
pub struct ServiceSettingsArgs {
    /// Deadline of each call [server default: 30s].
    #[arg(long, value_name = "DURATION", value_parser = parse_millis)]
    pub timeout: Option<u64>,

    /// Deadline of one method, replacing --timeout; repeatable.
    #[arg(
        long = "method-timeout",
        value_name = "METHOD=DURATION",
        value_parser = parse_method_timeout
    )]
    pub method_timeouts: Vec<(String, u64)>,

    /// Drop the per-method deadlines (update; with --method-timeout, those
    /// replace them instead).
    #[arg(long)]
    pub clear_method_timeouts: bool,

    /// Longest a call may wait for a free worker before it is answered
    /// "overloaded" [server default: 1s].
    #[arg(long, value_name = "DURATION", value_parser = parse_millis)]
    pub queue_timeout: Option<u64>,

    /// Calls that may wait for a worker; beyond, calls are answered
    /// "overloaded" at once [server default: 1024].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_queue: Option<u64>,

    /// Keep "Service:" in multiplexed call names (for workers that run a
    /// multiplexed processor).
    #[arg(long, conflicts_with = "strip_prefix")]
    pub no_strip_prefix: bool,

    /// Remove "Service:" from multiplexed call names (the default).
    #[arg(long)]
    pub strip_prefix: bool,
}

// -- listeners ----------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ListenerState {
    Accepting,
    Paused,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum WorkerState {
    Ready,
    Leaving,
}

#[derive(Debug, Subcommand)]
pub enum ListenersCmd {
    /// Lists listeners, their bound address and connections.
    #[command(
        after_help = "Examples:\n  thriftctl listeners list\n  thriftctl listeners list -o json"
    )]
    List {
        /// Only listeners in this state.
        #[arg(long, value_enum)]
        state: Option<ListenerState>,

        #[command(flatten)]
        watch: WatchArgs,
    },

    /// One listener, all its settings (NOT_FOUND if there is none).
    #[command(after_help = "Example:\n  thriftctl listeners get echo")]
    Get {
        /// Listener name.
        name: String,
    },

    /// Binds a new listener at once; a failed add changes nothing.
    #[command(after_help = "\
Examples:
  thriftctl listeners add echo2 --address 127.0.0.1:9092 --service Echo
  thriftctl listeners add mux --address 0.0.0.0:9100-9199 --service Echo --service Calc --default-service Echo
  thriftctl listeners add canary --address 127.0.0.1:0 --service Echo --paused")]
    Add(ListenerAddArgs),

    /// Stops accepting, drains the listener's connections, removes it.
    #[command(
        after_help = "Examples:\n  thriftctl listeners remove echo2\n  thriftctl listeners remove echo2 --drain-timeout 5s"
    )]
    Remove {
        /// Listener name.
        name: String,

        /// How long its connections may take to finish their calls [server default: 30s].
        #[arg(long, value_name = "DURATION", value_parser = parse_millis)]
        drain_timeout: Option<u64>,
    },

    /// Stops accepting new connections; existing ones keep being served.
    /// New clients wait in the kernel backlog until resume.
    #[command(
        after_help = "Examples:\n  thriftctl listeners pause echo\n  thriftctl listeners pause --all"
    )]
    Pause(ListenerTarget),

    /// Pauses and drains: stops accepting, and every connection finishes
    /// the calls it has read, then closes (idle ones at once). The listener
    /// stays defined: resume brings it back.
    #[command(
        after_help = "Examples:\n  thriftctl listeners drain echo\n  thriftctl listeners drain --all\n  thriftctl listeners resume echo"
    )]
    Drain(ListenerTarget),

    /// Starts accepting again.
    #[command(
        after_help = "Examples:\n  thriftctl listeners resume echo\n  thriftctl listeners resume --all"
    )]
    Resume(ListenerTarget),
}

#[derive(Debug, Clone, Args)]
#[command(group(ArgGroup::new("target").required(true).args(["name", "all"])))]
pub struct ListenerTarget {
    /// Listener name.
    pub name: Option<String>,

    /// Every listener.
    #[arg(long)]
    pub all: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TransportArg {
    Auto,
    Framed,
    Unframed,
    Header,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProtocolArg {
    Auto,
    Binary,
    Compact,
}

#[derive(Debug, Clone, Args)]
pub struct ListenerAddArgs {
    /// Listener name (unique).
    pub name: String,

    /// HOST:PORT, HOST:0 (any free port) or HOST:START-END (a port from the range).
    #[arg(long, value_name = "HOST:PORT|HOST:START-END")]
    pub address: String,

    /// Service served here; repeat for a multiplexed listener.
    #[arg(long = "service", value_name = "SERVICE", required = true)]
    pub services: Vec<String>,

    /// On a multi-service listener, where names without "Service:" go.
    #[arg(long, value_name = "SERVICE")]
    pub default_service: Option<String>,

    /// Accepted Thrift protocols.
    #[arg(long, value_enum, default_value_t = ProtocolArg::Auto)]
    pub protocol: ProtocolArg,

    /// How messages are delimited: detected per connection (auto), framed,
    /// unframed (TBufferedTransport) or header (THeaderTransport).
    #[arg(long, value_enum, default_value_t = TransportArg::Auto)]
    pub transport: TransportArg,

    /// TLS on this listener: its certificate chain (PEM, a path the data
    /// plane reads); with --listener-key the listener speaks only TLS.
    #[arg(long, value_name = "PEM", requires = "listener_key")]
    pub listener_cert: Option<std::path::PathBuf>,

    /// TLS on this listener: the private key (PEM) of --listener-cert.
    #[arg(long, value_name = "PEM", requires = "listener_cert")]
    pub listener_key: Option<std::path::PathBuf>,

    /// TLS on this listener: clients must present a certificate chaining to
    /// this CA (mTLS).
    #[arg(long, value_name = "PEM", requires = "listener_cert")]
    pub listener_client_ca: Option<std::path::PathBuf>,

    /// Largest frame accepted, in bytes [server default: 16384000].
    #[arg(long, value_name = "BYTES", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_frame_size: Option<u64>,

    /// Concurrent connections [server default: 10000].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_connections: Option<u64>,

    /// Close connections idle this long [server default: 5m].
    #[arg(long, value_name = "DURATION", value_parser = parse_millis)]
    pub idle_timeout: Option<u64>,

    /// Two-way calls pending per connection [server default: 64].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_pipeline: Option<u64>,

    /// Start paused (resume with "thriftctl listeners resume NAME").
    #[arg(long)]
    pub paused: bool,
}

// -- workers ------------------------------------------------------------------

#[derive(Debug, Subcommand)]
pub enum WorkersCmd {
    /// Lists connected workers: services, credit, calls in flight, last heartbeat.
    #[command(
        after_help = "Examples:\n  thriftctl workers list\n  thriftctl workers list --service Echo"
    )]
    List {
        /// Only workers serving this service (NOT_FOUND if there is none).
        #[arg(long, value_name = "SERVICE")]
        service: Option<String>,

        /// Only workers in this state.
        #[arg(long, value_enum)]
        state: Option<WorkerState>,

        #[command(flatten)]
        watch: WatchArgs,
    },

    /// One worker (NOT_FOUND if there is none).
    #[command(after_help = "Example:\n  thriftctl workers get w3")]
    Get {
        /// Worker id, as in "thriftctl workers list".
        id: String,
    },

    /// Cordons a worker: no new calls; its calls in flight finish, then it
    /// is told to leave (a worker that reconnects registers anew).
    #[command(after_help = "Example:\n  thriftctl workers drain w3")]
    Drain {
        /// Worker id, as in "thriftctl workers list".
        id: String,
    },

    /// Answers the worker's calls in flight ("worker died") and tells it to leave.
    #[command(after_help = "Example:\n  thriftctl workers evict 3")]
    Evict {
        /// Worker id, as in "thriftctl workers list".
        id: String,
    },
}

// -- stats, drain, health, completions ---------------------------------------

#[derive(Debug, Clone, Args)]
pub struct StatsArgs {
    /// Only this service (repeatable) [default: all].
    #[arg(long = "service", value_name = "SERVICE")]
    pub services: Vec<String>,

    /// Only this listener (repeatable) [default: all].
    #[arg(long = "listener", value_name = "LISTENER")]
    pub listeners: Vec<String>,

    /// Refresh until Ctrl-C: in place like top on a terminal, else one
    /// screen after another (with -o json: one object per line).
    #[arg(long, short = 'w')]
    pub watch: bool,

    /// Refresh interval of --watch, also the window of CALLS/S and ERR%.
    #[arg(
        long,
        value_name = "DURATION",
        default_value = "1s",
        value_parser = parse_millis,
        requires = "watch"
    )]
    pub interval: u64,
}

#[derive(Debug, Clone, Subcommand)]
pub enum ConfigCmd {
    /// Prints the effective configuration. Secrets are never printed: only
    /// whether a token is set.
    Dump,
}

#[derive(Debug, Clone, Args)]
pub struct EventsArgs {
    /// After the kept events, print each new one as it happens (Ctrl-C to stop).
    #[arg(long)]
    pub watch: bool,
}

#[derive(Debug, Clone, Args)]
pub struct LogLevelArgs {
    /// The new filter (tracing EnvFilter syntax, as thriftworker --log);
    /// without it, the filter in force is shown.
    #[arg(value_name = "FILTER")]
    pub filter: Option<String>,
}

#[derive(Debug, Clone, Args)]
pub struct DrainArgs {
    /// How long calls in flight may take [default: the server's shutdown_timeout].
    #[arg(long, value_name = "DURATION", value_parser = parse_millis)]
    pub timeout: Option<u64>,
}

#[derive(Debug, Clone, Args)]
pub struct HealthArgs {
    /// A Thrift service (SERVING while it has a live worker) [default: the whole process].
    #[arg(long, value_name = "SERVICE", default_value = "")]
    pub service: String,
}

#[derive(Debug, Clone, Args)]
pub struct CompletionsArgs {
    /// Shell to write the script for.
    #[arg(value_enum)]
    pub shell: Shell,
}

// -- value parsers --------------------------------------------------------------

/// A humantime duration ("250ms", "5s", "1m 30s"), which must be positive.
pub fn parse_positive_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s.trim())
        .map_err(|e| format!("'{s}' is not a duration like 500ms, 5s or 1m ({e})"))?;
    if d.is_zero() {
        return Err(format!("'{s}' must be positive"));
    }
    Ok(d)
}

/// A positive duration in whole milliseconds, as the admin API carries it
/// (0 would mean "default" there, so it cannot be asked for).
pub fn parse_millis(s: &str) -> Result<u64, String> {
    let d = parse_positive_duration(s)?;
    let ms = d.as_millis();
    if ms == 0 {
        return Err(format!("'{s}' is shorter than the API's resolution of 1ms"));
    }
    u64::try_from(ms).map_err(|_| format!("'{s}' is too long"))
}

/// `METHOD=DURATION`, e.g. `slow=30s`.
pub fn parse_method_timeout(s: &str) -> Result<(String, u64), String> {
    let (method, duration) = s
        .split_once('=')
        .ok_or_else(|| format!("'{s}' is not METHOD=DURATION (e.g. slow=30s)"))?;
    let method = method.trim();
    if method.is_empty() {
        return Err(format!("'{s}': the method name is empty"));
    }
    Ok((method.to_string(), parse_millis(duration)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_debug_assert() {
        Cli::command().debug_assert()
    }

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("thriftctl").chain(args.iter().copied()))
    }

    #[test]
    fn durations() {
        assert_eq!(parse_millis("5s"), Ok(5000));
        assert_eq!(parse_millis("250ms"), Ok(250));
        assert_eq!(parse_millis("1m 30s"), Ok(90_000));
        assert!(parse_millis("0s").unwrap_err().contains("positive"));
        assert!(parse_millis("500us").unwrap_err().contains("1ms"));
        assert!(parse_millis("5").is_err());
        assert!(parse_millis("soon").unwrap_err().contains("not a duration"));
        assert_eq!(parse_positive_duration("10s"), Ok(Duration::from_secs(10)));
    }

    #[test]
    fn method_timeouts() {
        assert_eq!(
            parse_method_timeout("slow=30s"),
            Ok(("slow".into(), 30_000))
        );
        assert_eq!(
            parse_method_timeout("Echo:slow=1m"),
            Ok(("Echo:slow".into(), 60_000))
        );
        assert!(parse_method_timeout("slow").is_err());
        assert!(parse_method_timeout("=5s").is_err());
        assert!(parse_method_timeout("slow=").is_err());
    }

    #[test]
    fn register_flags() {
        let cli = parse(&[
            "services",
            "register",
            "Echo",
            "--timeout",
            "5s",
            "--method-timeout",
            "slow=30s",
            "--method-timeout",
            "fast=100ms",
            "--queue-timeout",
            "1s",
            "--max-queue",
            "7",
            "--no-strip-prefix",
        ])
        .unwrap();
        let Command::Services(ServicesCmd::Register(args)) = cli.command else {
            panic!("wrong command")
        };
        assert_eq!(args.name, "Echo");
        assert_eq!(args.settings.timeout, Some(5000));
        assert_eq!(
            args.settings.method_timeouts,
            vec![("slow".into(), 30_000), ("fast".into(), 100)]
        );
        assert_eq!(args.settings.queue_timeout, Some(1000));
        assert_eq!(args.settings.max_queue, Some(7));
        assert!(args.settings.no_strip_prefix);
        // The request timeout is the top-level --timeout, untouched here.
        assert_eq!(cli.request_timeout, Duration::from_secs(10));
    }

    #[test]
    fn global_flags_anywhere() {
        let cli = parse(&[
            "--timeout",
            "3s",
            "listeners",
            "list",
            "-o",
            "json",
            "--addr",
            "10.0.0.1:9901",
        ])
        .unwrap();
        assert_eq!(cli.request_timeout, Duration::from_secs(3));
        assert_eq!(cli.global.output, Output::Json);
        assert_eq!(cli.global.addr.as_deref(), Some("10.0.0.1:9901"));
    }

    #[test]
    fn usage_errors() {
        use clap::error::ErrorKind;
        // pause needs a name or --all, not both.
        assert_eq!(
            parse(&["listeners", "pause"]).unwrap_err().kind(),
            ErrorKind::MissingRequiredArgument
        );
        assert_eq!(
            parse(&["listeners", "pause", "echo", "--all"])
                .unwrap_err()
                .kind(),
            ErrorKind::ArgumentConflict
        );
        assert!(parse(&["listeners", "pause", "--all"]).is_ok());
        // add needs --address and --service.
        assert!(parse(&["listeners", "add", "x", "--address", "127.0.0.1:0"]).is_err());
        assert!(parse(&["listeners", "add", "x", "--service", "Echo"]).is_err());
        assert!(parse(&["services", "register", "E", "--max-queue", "0"]).is_err());
        assert!(parse(&["services", "register", "E", "--timeout", "0s"]).is_err());
        assert!(parse(&[
            "services",
            "update",
            "E",
            "--strip-prefix",
            "--no-strip-prefix"
        ])
        .is_err());
        // --interval only with --watch.
        assert!(parse(&["stats", "--interval", "2s"]).is_err());
        assert!(parse(&["stats", "--watch", "--interval", "2s"]).is_ok());
        assert!(parse(&["completions", "tcsh"]).is_err());
    }

    #[test]
    fn listener_add_flags() {
        let cli = parse(&[
            "listeners",
            "add",
            "mux",
            "--address",
            "127.0.0.1:9100-9199",
            "--service",
            "Echo",
            "--service",
            "Calc",
            "--default-service",
            "Echo",
            "--protocol",
            "compact",
            "--idle-timeout",
            "5m",
            "--max-pipeline",
            "8",
            "--paused",
        ])
        .unwrap();
        let Command::Listeners(ListenersCmd::Add(a)) = cli.command else {
            panic!("wrong command")
        };
        assert_eq!(a.services, vec!["Echo", "Calc"]);
        assert_eq!(a.protocol, ProtocolArg::Compact);
        assert_eq!(a.idle_timeout, Some(300_000));
        assert_eq!(a.max_pipeline, Some(8));
        assert!(a.paused);
    }
}
