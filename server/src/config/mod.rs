//! Configuration: a TOML file, overridden by flags and `THRIFTWORKER_*`
//! environment variables for the settings people change per deployment.
//!
//! Everything is validated here, once, with messages that name the offending
//! listener or service and say what to fix; the rest of the server can then
//! trust its config. Read by both planes, so it sits below them: it imports
//! only `thrift` (a listener's protocol setting) and `telemetry` (defaults).
//!
//! - [`cli`]: the command line; [`secret`]: tokens;
//! - [`address`]: listener addresses, parsed once;
//! - [`bounds`]: the range of every setting and the checks.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub mod address;
pub mod bounds;
pub mod cli;
pub mod secret;

pub use address::{Address, Ports};
pub use bounds::*;
pub use cli::{Cli, LogFormat};
pub use secret::Secret;

use crate::thrift::{HeaderError, Protocol, Transport};

/// The whole configuration.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub workers: WorkersConfig,
    #[serde(default)]
    pub services: Vec<ServiceConfig>,
    #[serde(default)]
    pub listeners: Vec<ListenerConfig>,
    #[serde(default)]
    pub admin: AdminConfig,
    #[serde(default)]
    pub metrics: MetricsConfig,
}

/// The Prometheus endpoint and the HTTP health probes. Read-only (counts and
/// service names, no secrets), so it listens on every interface by default:
/// Prometheus and the kubelet must reach it from outside the pod.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    pub enabled: bool,
    pub address: SocketAddr,
    /// Methods per service with their own series; calls to further method
    /// names count under method "other" (bounds memory and cardinality).
    pub method_cap: usize,
}

/// Upper bound of `[metrics].method_cap` (series per service stay bounded,
/// and the dispatcher's method index fits in 16 bits).
pub const MAX_METHOD_CAP: usize = 10_000;

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            enabled: true,
            address: SocketAddr::from(([0, 0, 0, 0], 9900)),
            method_cap: crate::telemetry::stats::DEFAULT_METHOD_CAP,
        }
    }
}

/// The gRPC admin API. It can reconfigure the data plane, so it listens on
/// loopback by default; a bearer token and TLS (optionally with client
/// certificates) protect it when it must be reachable from elsewhere.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    pub enabled: bool,
    pub address: SocketAddr,
    pub token_file: Option<PathBuf>,
    /// Filled from token_file or THRIFTWORKER_ADMIN_TOKEN; never logged.
    #[serde(skip)]
    pub token: Option<Secret>,
    /// A second token that may only read (list, get, stats, events, config
    /// dump, log level); a change with it is PERMISSION_DENIED.
    pub read_only_token_file: Option<PathBuf>,
    /// Filled from read_only_token_file or THRIFTWORKER_ADMIN_READ_ONLY_TOKEN.
    #[serde(skip)]
    pub read_only_token: Option<Secret>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Require client certificates signed by this CA.
    pub tls_client_ca: Option<PathBuf>,
    /// Runtime changes are written here (atomically) and reloaded on start.
    pub state_file: Option<PathBuf>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            enabled: true,
            address: SocketAddr::from(([127, 0, 0, 1], 9901)),
            token_file: None,
            token: None,
            read_only_token_file: None,
            read_only_token: None,
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
            state_file: None,
        }
    }
}

/// What the state file holds: the services and listeners as last changed
/// through the admin API. When it exists it replaces those of the config file.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct RuntimeState {
    pub services: Vec<ServiceConfig>,
    pub listeners: Vec<ListenerConfig>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// Runtime threads; 0 = one per core. Each cross-thread wakeup costs
    /// latency, and the dispatcher is one task, so few threads serve best
    /// on small machines (see docs/benchmarks.md).
    pub threads: usize,
    pub log_format: LogFormat,
    /// Bytes of requests queued or at workers, all services together.
    pub max_buffered_bytes: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            shutdown_timeout: Duration::from_secs(30),
            log_format: LogFormat::Text,
            threads: 1,
            max_buffered_bytes: 128 << 20,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkersConfig {
    /// Empty: one ipc endpoint in a private runtime directory.
    pub endpoints: Vec<String>,
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    pub heartbeat_liveness: u32,
    pub token_file: Option<PathBuf>,
    /// Filled from token_file or THRIFTWORKER_WORKER_TOKEN; never logged.
    #[serde(skip)]
    pub token: Option<Secret>,
    /// Largest ZeroMQ message accepted from a worker-port peer; a larger one
    /// closes that peer's connection before any memory is reserved for it.
    pub max_message_size: usize,
    /// A worker-port connection must finish the ZeroMQ handshake within this.
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// A worker still holding a call this long after the call's deadline is
    /// declared dead (evicted), so its credit is not lost for good.
    #[serde(with = "humantime_serde")]
    pub stuck_timeout: Duration,
}

/// Room for a REQUEST's or REPLY's own frames around the Thrift message.
pub const WORKER_MESSAGE_OVERHEAD: usize = 64 << 10;

impl Default for WorkersConfig {
    fn default() -> Self {
        WorkersConfig {
            endpoints: Vec::new(),
            heartbeat_interval: Duration::from_secs(1),
            heartbeat_liveness: 3,
            token_file: None,
            token: None,
            max_message_size: DEFAULT_MAX_FRAME_SIZE + WORKER_MESSAGE_OVERHEAD,
            handshake_timeout: Duration::from_secs(10),
            stuck_timeout: Duration::from_secs(60),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    pub name: String,
    /// Deadline of each call, from when its frame was read.
    #[serde(with = "humantime_serde", default = "default_timeout")]
    pub timeout: Duration,
    #[serde(default)]
    pub method_timeouts: HashMap<String, HumanDuration>,
    /// Longest a call may wait for a worker with free credit.
    #[serde(with = "humantime_serde", default = "default_queue_timeout")]
    pub queue_timeout: Duration,
    /// Calls waiting for a worker; beyond this they are answered "overloaded".
    #[serde(default = "default_max_queue")]
    pub max_queue: usize,
    /// Bytes of requests queued or at a worker for this service; a call
    /// that would exceed it is answered "overloaded".
    #[serde(default = "default_service_buffered_bytes")]
    pub max_buffered_bytes: usize,
    /// Strip `Service:` from multiplexed names before the worker sees them.
    #[serde(default = "yes")]
    pub strip_service_prefix: bool,
}

/// A duration in a map value (humantime string).
#[derive(Debug, Clone, Copy, Deserialize, Serialize)]
pub struct HumanDuration(#[serde(with = "humantime_serde")] pub Duration);

/// Which protocols a listener accepts (its `protocol` setting).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ProtocolSetting {
    /// Detect per connection from the first byte (binary strict, lax or compact).
    #[default]
    Auto,
    /// Binary only (strict or lax).
    Binary,
    Compact,
}

impl ProtocolSetting {
    /// Whether a listener with this setting accepts `p`.
    pub fn check(self, p: Protocol) -> Result<(), HeaderError> {
        match (self, p) {
            (ProtocolSetting::Binary, Protocol::Compact) => Err(HeaderError::NotAllowed("compact")),
            (ProtocolSetting::Compact, Protocol::BinaryStrict | Protocol::BinaryLax) => {
                Err(HeaderError::NotAllowed("binary"))
            }
            _ => Ok(()),
        }
    }
}

/// How a listener delimits messages (its `transport` setting).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum TransportSetting {
    /// Detect per connection from the first bytes: framed, unframed
    /// (binary strict or compact) or header.
    #[default]
    Auto,
    /// `TFramedTransport` only.
    Framed,
    /// `TBufferedTransport` only (binary strict, lax or compact).
    Unframed,
    /// `THeaderTransport` only.
    Header,
}

impl TransportSetting {
    /// What the connection's decoder takes (`None`: detect).
    pub fn fixed(self) -> Option<Transport> {
        match self {
            TransportSetting::Auto => None,
            TransportSetting::Framed => Some(Transport::Framed),
            TransportSetting::Unframed => Some(Transport::Unframed),
            TransportSetting::Header => Some(Transport::Header),
        }
    }

    pub fn label(self) -> &'static str {
        self.fixed().map_or("auto", Transport::label)
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    pub name: String,
    /// `host:port`, `host:0`, or `host:start-end`.
    pub address: Address,
    pub services: Vec<String>,
    /// On a multi-service listener, where names without `Service:` go.
    #[serde(default)]
    pub default_service: Option<String>,
    #[serde(default)]
    pub protocol: ProtocolSetting,
    #[serde(default)]
    pub transport: TransportSetting,
    #[serde(default = "default_max_frame_size")]
    pub max_frame_size: usize,
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    #[serde(with = "humantime_serde", default = "default_idle_timeout")]
    pub idle_timeout: Duration,
    /// A client that takes longer than this to accept the bytes of an
    /// answer (it does not read) is disconnected.
    #[serde(with = "humantime_serde", default = "default_write_timeout")]
    pub write_timeout: Duration,
    /// Two-way calls in flight per connection; at the bound reading pauses.
    #[serde(default = "default_max_pipeline")]
    pub max_pipeline: usize,
    #[serde(default = "default_backlog")]
    pub backlog: u32,
    /// Start with the acceptor paused.
    #[serde(default)]
    pub paused: bool,
    /// TLS: the listener's certificate chain (PEM); with `tls_key`, the
    /// listener speaks only TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
    /// Client certificates must chain to this CA (mTLS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_client_ca: Option<PathBuf>,
}

fn default_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_queue_timeout() -> Duration {
    Duration::from_secs(1)
}
fn default_max_queue() -> usize {
    1024
}
fn yes() -> bool {
    true
}
/// Thrift's own default in every language.
pub const DEFAULT_MAX_FRAME_SIZE: usize = 16_384_000;
fn default_max_frame_size() -> usize {
    DEFAULT_MAX_FRAME_SIZE
}
pub fn default_max_connections() -> usize {
    10_000
}
pub fn default_idle_timeout() -> Duration {
    Duration::from_secs(300)
}
pub fn default_write_timeout() -> Duration {
    Duration::from_secs(30)
}
pub fn default_max_pipeline() -> usize {
    64
}
fn default_service_buffered_bytes() -> usize {
    64 << 20
}
pub fn default_backlog() -> u32 {
    1024
}

/// A config that cannot be used, with what to fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("cannot read worker token file {path}: {source}")]
    Token {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config: {0}")]
    Invalid(String),
}

impl Config {
    /// Reads the file named on the command line and applies the overrides.
    pub fn load(cli: &Cli) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(&cli.config).map_err(|source| ConfigError::Read {
            path: cli.config.clone(),
            source,
        })?;
        let mut config = Config::parse(&text).map_err(|e| match e {
            ConfigError::Invalid(message) => ConfigError::Parse {
                path: cli.config.clone(),
                message,
            },
            other => other,
        })?;
        if !cli.worker_endpoints.is_empty() {
            config.workers.endpoints = cli.worker_endpoints.clone();
        }
        if let Some(t) = cli.shutdown_timeout {
            config.server.shutdown_timeout = t;
        }
        if let Some(t) = cli.threads {
            config.server.threads = t;
        }
        if let Some(f) = cli.log_format {
            config.server.log_format = f;
        }
        if let Some(p) = &cli.worker_token_file {
            config.workers.token_file = Some(p.clone());
        }
        config.workers.token = Secret::load(
            config.workers.token_file.as_deref(),
            "THRIFTWORKER_WORKER_TOKEN",
            "worker",
        )?;
        config.apply_admin_overrides(cli)?;
        config.validate()?;
        Ok(config)
    }

    /// Admin flags, the admin token, TLS consistency, and the state file
    /// (whose services and listeners replace the config file's).
    fn apply_admin_overrides(&mut self, cli: &Cli) -> Result<(), ConfigError> {
        match cli.metrics_addr.as_deref() {
            None => {}
            Some("off") => self.metrics.enabled = false,
            Some(a) => {
                self.metrics.address = a.parse().map_err(|_| {
                    ConfigError::Invalid(format!(
                        "--metrics-addr '{a}' must be host:port (or 'off')"
                    ))
                })?
            }
        }
        let admin = &mut self.admin;
        match cli.admin_addr.as_deref() {
            None => {}
            Some("off") => admin.enabled = false,
            Some(a) => {
                admin.address = a.parse().map_err(|_| {
                    ConfigError::Invalid(format!("--admin-addr '{a}' must be host:port (or 'off')"))
                })?
            }
        }
        if let Some(p) = &cli.admin_token_file {
            admin.token_file = Some(p.clone());
        }
        if let Some(p) = &cli.state_file {
            admin.state_file = Some(p.clone());
        }
        admin.token = Secret::load(
            admin.token_file.as_deref(),
            "THRIFTWORKER_ADMIN_TOKEN",
            "admin",
        )?;
        admin.read_only_token = Secret::load(
            admin.read_only_token_file.as_deref(),
            "THRIFTWORKER_ADMIN_READ_ONLY_TOKEN",
            "admin read-only",
        )?;
        if admin.read_only_token.is_some() && admin.token.is_none() {
            return Err(ConfigError::Invalid(
                "[admin] a read-only token needs the admin token too (token_file or THRIFTWORKER_ADMIN_TOKEN): without it every caller may change everything".into(),
            ));
        }
        if admin.read_only_token.is_some() && admin.read_only_token == admin.token {
            return Err(ConfigError::Invalid(
                "[admin] the read-only token must differ from the admin token".into(),
            ));
        }
        check_tls_files(
            "[admin]",
            &admin.tls_cert,
            &admin.tls_key,
            &admin.tls_client_ca,
        )
        .map_err(ConfigError::Invalid)?;
        if let Some(path) = admin.state_file.clone() {
            if path.exists() {
                let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
                    path: path.clone(),
                    source,
                })?;
                let state: RuntimeState =
                    serde_json::from_str(&text).map_err(|e| ConfigError::Parse {
                        path: path.clone(),
                        message: format!("{e} (fix or delete the state file)"),
                    })?;
                self.services = state.services;
                self.listeners = state.listeners;
            }
        }
        Ok(())
    }

    /// Parses and validates TOML text (no overrides, no files read).
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let config: Config =
            toml::from_str(text).map_err(|e| ConfigError::Invalid(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        self.validate_settings().map_err(ConfigError::Invalid)?;
        let bad = |m: String| Err(ConfigError::Invalid(m));
        let mut services = HashSet::new();
        for s in &self.services {
            s.validate().map_err(ConfigError::Invalid)?;
            if !services.insert(s.name.as_str()) {
                return bad(format!("service '{}' is defined twice", s.name));
            }
        }
        let mut listeners = HashSet::new();
        for l in &self.listeners {
            if !listeners.insert(l.name.as_str()) {
                return bad(format!("listener '{}' is defined twice", l.name));
            }
            l.validate(|s| services.contains(s))
                .map_err(ConfigError::Invalid)?;
            self.check_frame_fits(l).map_err(ConfigError::Invalid)?;
        }
        Ok(())
    }
}

impl Config {
    /// The process-wide settings: [server], [workers], [metrics].
    fn validate_settings(&self) -> Result<(), String> {
        let (server, workers) = (&self.server, &self.workers);
        check_duration(
            "[server].shutdown_timeout",
            server.shutdown_timeout,
            Duration::ZERO,
            MAX_SHUTDOWN_TIMEOUT,
        )?;
        check_count("[server].threads", server.threads, 0, MAX_THREADS)?;
        check_count(
            "[server].max_buffered_bytes",
            server.max_buffered_bytes,
            MIN_BUFFERED_BYTES,
            MAX_BUFFERED_BYTES,
        )?;
        check_duration(
            "[workers].heartbeat_interval",
            workers.heartbeat_interval,
            MIN_HEARTBEAT,
            MAX_HEARTBEAT,
        )?;
        check_count(
            "[workers].heartbeat_liveness",
            workers.heartbeat_liveness as usize,
            1,
            MAX_LIVENESS,
        )?;
        check_count(
            "[workers].max_message_size",
            workers.max_message_size,
            MIN_WORKER_MESSAGE,
            MAX_WORKER_MESSAGE,
        )?;
        check_duration(
            "[workers].handshake_timeout",
            workers.handshake_timeout,
            MIN_TIMEOUT,
            MAX_HANDSHAKE_TIMEOUT,
        )?;
        check_duration(
            "[workers].stuck_timeout",
            workers.stuck_timeout,
            MIN_TIMEOUT,
            MAX_STUCK_TIMEOUT,
        )?;
        check_count(
            "[workers].endpoints",
            workers.endpoints.len(),
            0,
            MAX_ENDPOINTS,
        )?;
        for e in &workers.endpoints {
            if !(e.starts_with("ipc://") || e.starts_with("tcp://")) || e.len() > MAX_ADDRESS_LEN {
                return Err(format!(
                    "[workers].endpoints: {} must start with ipc:// or tcp:// (at most {MAX_ADDRESS_LEN} bytes)",
                    shown(e)
                ));
            }
        }
        if self.metrics.method_cap > MAX_METHOD_CAP {
            return Err(format!(
                "[metrics].method_cap {} is too large: at most {MAX_METHOD_CAP} methods per service get their own series",
                self.metrics.method_cap
            ));
        }
        check_count("[[services]]", self.services.len(), 0, MAX_SERVICES)?;
        check_count("[[listeners]]", self.listeners.len(), 0, MAX_LISTENERS)?;
        Ok(())
    }

    /// A listener's calls must fit in a worker message.
    pub fn check_frame_fits(&self, l: &ListenerConfig) -> Result<(), String> {
        frame_fits(l, self.workers.max_message_size)
    }
}

/// A listener's largest call (and so the largest reply it accepts) must fit
/// in a worker message with room for the protocol's own frames.
pub fn frame_fits(l: &ListenerConfig, max_message_size: usize) -> Result<(), String> {
    if l.max_frame_size + WORKER_MESSAGE_OVERHEAD > max_message_size {
        return Err(format!(
            "listener '{}': max_frame_size {} does not fit in [workers].max_message_size {} (which needs {} bytes more than the frame): raise max_message_size or lower max_frame_size",
            l.name, l.max_frame_size, max_message_size, WORKER_MESSAGE_OVERHEAD
        ));
    }
    Ok(())
}

impl ServiceConfig {
    /// A service with every setting at its default.
    pub fn new(name: String) -> ServiceConfig {
        ServiceConfig {
            name,
            timeout: default_timeout(),
            method_timeouts: HashMap::new(),
            queue_timeout: default_queue_timeout(),
            max_queue: default_max_queue(),
            max_buffered_bytes: default_service_buffered_bytes(),
            strip_service_prefix: true,
        }
    }

    /// Checks one service's settings; the error says what to fix.
    pub fn validate(&self) -> Result<(), String> {
        check_name("service name", &self.name)?;
        let at = |field: &str| format!("service '{}': {field}", self.name);
        check_duration(&at("timeout"), self.timeout, MIN_TIMEOUT, MAX_CALL_TIMEOUT)?;
        if self.method_timeouts.len() > MAX_METHOD_CAP {
            return Err(format!(
                "{} has {} entries; at most {MAX_METHOD_CAP}",
                at("method_timeouts"),
                self.method_timeouts.len()
            ));
        }
        for (m, d) in &self.method_timeouts {
            check_name(&at("method_timeouts key"), m)?;
            check_duration(
                &at(&format!("method_timeouts.{m}")),
                d.0,
                MIN_TIMEOUT,
                MAX_CALL_TIMEOUT,
            )?;
        }
        check_duration(
            &at("queue_timeout"),
            self.queue_timeout,
            MIN_TIMEOUT,
            MAX_CALL_TIMEOUT,
        )?;
        check_count(&at("max_queue"), self.max_queue, 0, MAX_QUEUE)?;
        check_count(
            &at("max_buffered_bytes"),
            self.max_buffered_bytes,
            MIN_BUFFERED_BYTES,
            MAX_BUFFERED_BYTES,
        )?;
        Ok(())
    }
}

/// The TLS files of the admin API or a listener (`what` names it): cert
/// and key together, a client CA only with them.
fn check_tls_files(
    what: &str,
    cert: &Option<PathBuf>,
    key: &Option<PathBuf>,
    client_ca: &Option<PathBuf>,
) -> Result<(), String> {
    if cert.is_some() != key.is_some() {
        return Err(format!("{what} tls_cert and tls_key must be set together"));
    }
    if client_ca.is_some() && cert.is_none() {
        return Err(format!("{what} tls_client_ca needs tls_cert and tls_key"));
    }
    Ok(())
}

impl ListenerConfig {
    /// Checks one listener's settings against the services that exist.
    pub fn validate(&self, service_exists: impl Fn(&str) -> bool) -> Result<(), String> {
        check_name("listener name", &self.name)?;
        let at = |field: &str| format!("listener '{}': {field}", self.name);
        if self.services.is_empty() {
            return Err(format!(
                "listener '{}' serves no service: set services = [\"Name\"]",
                self.name
            ));
        }
        check_count(&at("services"), self.services.len(), 1, MAX_SERVICES)?;
        for s in self.services.iter().chain(self.default_service.iter()) {
            check_name(&at("service name"), s)?;
            if !service_exists(s) {
                return Err(format!(
                    "listener '{}' names service '{s}', which is not registered",
                    self.name
                ));
            }
        }
        if let Some(d) = &self.default_service {
            if !self.services.contains(d) {
                return Err(format!(
                    "listener '{}': default_service '{d}' must be one of its services",
                    self.name
                ));
            }
        }
        check_tls_files(
            &format!("listener '{}':", self.name),
            &self.tls_cert,
            &self.tls_key,
            &self.tls_client_ca,
        )?;
        check_count(
            &at("max_frame_size"),
            self.max_frame_size,
            MIN_FRAME_SIZE,
            MAX_FRAME_SIZE,
        )?;
        check_count(
            &at("max_connections"),
            self.max_connections,
            1,
            MAX_CONNECTIONS,
        )?;
        check_count(&at("max_pipeline"), self.max_pipeline, 1, MAX_PIPELINE)?;
        check_count(&at("backlog"), self.backlog as usize, 1, MAX_BACKLOG)?;
        check_duration(
            &at("idle_timeout"),
            self.idle_timeout,
            MIN_TIMEOUT,
            MAX_IDLE_TIMEOUT,
        )?;
        check_duration(
            &at("write_timeout"),
            self.write_timeout,
            MIN_TIMEOUT,
            MAX_IDLE_TIMEOUT,
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_config_parses() {
        let c = Config::parse(include_str!("../../../examples/echo.toml")).unwrap();
        assert_eq!(c.listeners.len(), 2);
        assert_eq!(
            c.services[0].method_timeouts["slow"].0,
            Duration::from_secs(30)
        );
        assert_eq!(c.listeners[0].max_frame_size, DEFAULT_MAX_FRAME_SIZE);
        assert_eq!(c.listeners[0].backlog, 1024);
    }

    #[test]
    fn errors_name_what_to_fix() {
        let cases = [
            ("[[listeners]]\nname='a'\naddress='127.0.0.1:0'\nservices=['X']", "names service 'X'"),
            ("[[services]]\nname='A'\n[[services]]\nname='A'", "defined twice"),
            ("[[services]]\nname='A'\n[[listeners]]\nname='a'\naddress='nope'\nservices=['A']", "address 'nope' must be host:port"),
            ("[[services]]\nname='A'\n[[listeners]]\nname='a'\naddress='127.0.0.1:9-3'\nservices=['A']", "address '127.0.0.1:9-3': port range"),
            ("[workers]\nendpoints=['http://x']", "ipc:// or tcp://"),
            ("[server]\nbogus=1", "unknown field"),
            ("[metrics]\nmethod_cap=10001", "method_cap 10001 is too large"),
        ];
        for (text, want) in cases {
            let e = Config::parse(text).unwrap_err().to_string();
            assert!(e.contains(want), "{text}: {e}");
        }
    }
}
