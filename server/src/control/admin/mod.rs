//! The admin gRPC API (`thriftworker.admin.v1`): a thin translation of
//! [`crate::control`] plus stats, served with `grpc.health.v1` and server
//! reflection on one port, apart from the proxy path.
//!
//! The rooms: this file binds, serves and guards it (token, TLS, health);
//! [`service`] implements the RPCs; [`convert`] maps messages to and from
//! the control API's and registry's types.
//!
//! It can reconfigure the data plane, so: loopback by default, an optional
//! bearer token checked on every Admin call (health stays open for probes),
//! optional TLS with optional client-certificate verification. Tokens are
//! never logged.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use thriftworker_proto::admin::v1 as pb;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Status};

use crate::config::AdminConfig;
use crate::control::Control;
use crate::lifecycle::Lifecycle;
use crate::telemetry::log_filter::LogFilter;
use crate::telemetry::Stats;

mod cert;
pub mod convert;
mod service;

use service::AdminService;

/// Why the admin API could not start.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("admin API: cannot bind {addr}: {source} (choose another [admin].address or --admin-addr, or 'off')")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("admin API TLS: cannot read {path}: {source}")]
    TlsFile {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("admin API: {0}")]
    Serve(String),
}

/// Binds the admin port as a std socket: it is served from the admin
/// thread's runtime (`app::spawn`), which converts it.
pub fn bind(config: &AdminConfig) -> Result<std::net::TcpListener, AdminError> {
    let err = |source| AdminError::Bind {
        addr: config.address,
        source,
    };
    let l = std::net::TcpListener::bind(config.address).map_err(err)?;
    l.set_nonblocking(true).map_err(err)?;
    Ok(l)
}

/// Everything the admin service needs from the running data plane.
#[derive(Clone)]
pub struct AdminContext {
    pub control: Arc<Control>,
    pub stats: Arc<Stats>,
    /// The Drain RPC asks it for a drain; health reads whether it drains.
    pub lifecycle: Arc<Lifecycle>,
    pub workers_changed: watch::Receiver<u64>,
    /// `None`: the process cannot change its log filter (tests).
    pub log_filter: Option<Arc<LogFilter>>,
    /// The configuration the process started with (defaults filled in).
    pub config: Arc<crate::config::Config>,
}

/// Serves the admin API on `listener` until `stop` is cancelled.
pub async fn serve(
    listener: std::net::TcpListener,
    config: AdminConfig,
    ctx: AdminContext,
    stop: CancellationToken,
) -> Result<(), AdminError> {
    let addr = listener.local_addr().ok();
    let listener = TcpListener::from_std(listener).map_err(|source| AdminError::Bind {
        addr: addr.unwrap_or(config.address),
        source,
    })?;
    let (health, health_service) = tonic_health::server::health_reporter();
    tokio::spawn(report_health(health, ctx.clone()));
    // Reflection in both versions: v1, and v1alpha for older grpcurl and
    // tooling that only speak it.
    let reflection_builder = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(thriftworker_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection = reflection_builder()
        .build_v1()
        .map_err(|e| AdminError::Serve(e.to_string()))?;
    let reflection_v1alpha = reflection_builder()
        .build_v1alpha()
        .map_err(|e| AdminError::Serve(e.to_string()))?;
    let token = config.token.clone().map(|t| t.0);
    let read_only = config.read_only_token.clone().map(|t| t.0);
    let admin = pb::admin_server::AdminServer::with_interceptor(
        AdminService { ctx },
        move |mut req: Request<()>| {
            check_token(token.as_deref(), read_only.as_deref(), &mut req)?;
            Ok(req)
        },
    );
    let mut builder = tonic::transport::Server::builder();
    if let (Some(cert), Some(key)) = (&config.tls_cert, &config.tls_key) {
        let read = |p: &std::path::PathBuf| {
            std::fs::read(p).map_err(|source| AdminError::TlsFile {
                path: p.clone(),
                source,
            })
        };
        let mut tls = tonic::transport::ServerTlsConfig::new().identity(
            tonic::transport::Identity::from_pem(read(cert)?, read(key)?),
        );
        if let Some(ca) = &config.tls_client_ca {
            tls = tls.client_ca_root(tonic::transport::Certificate::from_pem(read(ca)?));
        }
        builder = builder
            .tls_config(tls)
            .map_err(|e| AdminError::Serve(format!("TLS: {e}")))?;
    }
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    builder
        .add_service(health_service)
        .add_service(reflection)
        .add_service(reflection_v1alpha)
        .add_service(admin)
        .serve_with_incoming_shutdown(incoming, stop.cancelled_owned())
        .await
        .map_err(|e| AdminError::Serve(e.to_string()))
}

/// Marks a call made with the read-only token (a request extension the
/// changing RPCs check, see `service::AdminService::require_write`).
#[derive(Debug, Clone, Copy)]
pub struct ReadOnly;

fn check_token(
    expected: Option<&[u8]>,
    read_only: Option<&[u8]>,
    req: &mut Request<()>,
) -> Result<(), Status> {
    let Some(expected) = expected else {
        return Ok(());
    };
    let given = req
        .metadata()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::as_bytes);
    let same = |e: &[u8]| {
        given.is_some_and(|g| {
            g.len() == e.len() && g.iter().zip(e).fold(0u8, |a, (x, y)| a | (x ^ y)) == 0
        })
    };
    if same(expected) {
        return Ok(());
    }
    if read_only.is_some_and(same) {
        req.extensions_mut().insert(ReadOnly);
        return Ok(());
    }
    tracing::warn!(
        peer = req.remote_addr().map(tracing::field::display),
        token_present = given.is_some(),
        "admin call rejected: missing or invalid bearer token"
    );
    Err(Status::unauthenticated(
        "missing or invalid bearer token: pass the admin token (thriftctl --token-file or THRIFTCTL_TOKEN)",
    ))
}

/// Keeps grpc.health.v1 current: "" is SERVING until drain (or a core task
/// fails or stalls); each service is SERVING while it has at least one live
/// worker and "" is.
async fn report_health(reporter: tonic_health::server::HealthReporter, mut ctx: AdminContext) {
    use tonic_health::ServingStatus::{NotServing, Serving};
    let mut known: HashMap<String, bool> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        // A process whose core failed or stalled serves nothing, like one
        // that drains (the 1 s tick notices it).
        let draining = ctx.lifecycle.draining().is_cancelled() || ctx.stats.not_live().is_some();
        reporter
            .set_service_status("", if draining { NotServing } else { Serving })
            .await;
        let services = ctx.control.services().await;
        let mut seen = HashMap::new();
        for s in &services {
            let serving = !draining && s.info.stats.live_workers.get() > 0;
            if known.get(&s.config.name) != Some(&serving) {
                reporter
                    .set_service_status(&s.config.name, if serving { Serving } else { NotServing })
                    .await;
            }
            seen.insert(s.config.name.clone(), serving);
        }
        for gone in known.keys().filter(|k| !seen.contains_key(*k)) {
            reporter.set_service_status(gone, NotServing).await;
        }
        known = seen;
        tokio::select! {
            r = ctx.workers_changed.changed() => if r.is_err() { return },
            _ = tick.tick() => {}
            _ = ctx.lifecycle.draining().cancelled(), if !draining => {}
        }
    }
}
