//! Wiring, in the linkerd2-proxy style: `build` binds every socket and
//! returns the bound addresses (so tests and supervisors read real ports
//! instead of guessing), `spawn` starts the tasks, and the returned `Running`
//! drains: stop accepting, let calls in flight finish up to
//! `shutdown_timeout`, answer whatever is left, tell workers to leave.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::config::{AdminConfig, Config};
use crate::control::admin::{self, AdminContext, AdminError};
use crate::control::{Control, ControlError};
use crate::data::dispatch::{self, Command, Dispatcher};
use crate::data::listener::ListenerHandle;
use crate::data::service::ServiceInfo;
use crate::data::transport::{self, TransportError, ZmqTransport};
use crate::lifecycle::Lifecycle;
use crate::telemetry::http::{self as metrics, MetricsError};
use crate::telemetry::log_filter::LogFilter;
use crate::telemetry::Stats;

/// Why the data plane could not start.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("{0}")]
    Listener(ControlError),
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error(transparent)]
    Admin(#[from] AdminError),
    #[error(transparent)]
    Metrics(#[from] MetricsError),
}

/// Every socket bound, nothing running yet.
pub struct Built {
    config: Config,
    control: Arc<Control>,
    transport: ZmqTransport,
    services: Vec<Arc<ServiceInfo>>,
    stats: Arc<Stats>,
    lifecycle: Arc<Lifecycle>,
    dispatch_tx: mpsc::Sender<Command>,
    dispatch_rx: mpsc::Receiver<Command>,
    /// Served from the admin thread's runtime: bound as std sockets.
    admin: Option<std::net::TcpListener>,
    metrics: Option<std::net::TcpListener>,
    listeners: Vec<ListenerHandle>,
    /// The log filter, if the binary made it reloadable.
    log_filter: Option<Arc<LogFilter>>,
}

impl Built {
    /// Lets the admin API read and replace the log filter at run time.
    pub fn with_log_filter(mut self, filter: LogFilter) -> Built {
        self.log_filter = Some(Arc::new(filter));
        self
    }
}

/// The addresses actually bound.
#[derive(Debug, Clone, Serialize)]
pub struct BoundAddresses {
    pub pid: u32,
    pub listeners: BTreeMap<String, SocketAddr>,
    pub worker_endpoints: Vec<String>,
    pub admin: Option<SocketAddr>,
    /// Prometheus `/metrics` and the `/healthz`, `/readyz` probes.
    pub metrics: Option<SocketAddr>,
}

/// Binds the worker endpoints, the admin API and every listener.
pub async fn build(mut config: Config) -> Result<Built, BuildError> {
    if config.workers.endpoints.is_empty() {
        config.workers.endpoints = vec![transport::default_endpoint()];
    }
    let stats = Arc::new(Stats::new(config.metrics.method_cap));
    // The dispatcher beats once per heartbeat interval; a few missed beats
    // (and never less than 5 s) mean it is stuck.
    stats
        .core
        .set_stall_after(config.workers.heartbeat_interval * 3 + Duration::from_secs(5));
    let lifecycle = Lifecycle::new(stats.clone());
    let transport = ZmqTransport::bind(&config.workers).await?;
    let admin = match config.admin.enabled {
        true => Some(admin::bind(&config.admin)?),
        false => None,
    };
    let metrics = match config.metrics.enabled {
        true => Some(metrics::bind(config.metrics.address)?),
        false => None,
    };
    // Deep enough that connections rarely wait on the dispatcher, bounded so
    // a stalled dispatcher pushes back on clients instead of eating memory.
    let (dispatch_tx, dispatch_rx) = mpsc::channel(8192);
    let control = Arc::new(Control::new(
        dispatch_tx.clone(),
        stats.clone(),
        lifecycle.clone(),
        config.admin.state_file.clone(),
        config.workers.max_message_size,
    ));
    let services = control.init_services(&config.services).await;
    let mut listeners = Vec::new();
    for l in &config.listeners {
        listeners.push(
            control
                .bind_listener(l.clone())
                .await
                .map_err(BuildError::Listener)?,
        );
    }
    Ok(Built {
        config,
        control,
        transport,
        services,
        stats,
        lifecycle,
        dispatch_tx,
        dispatch_rx,
        admin,
        metrics,
        listeners,
        log_filter: None,
    })
}

impl Built {
    pub fn addresses(&self) -> BoundAddresses {
        BoundAddresses {
            pid: std::process::id(),
            listeners: self
                .listeners
                .iter()
                .map(|h| (h.name.clone(), h.local_addr))
                .collect(),
            worker_endpoints: self.transport.endpoints.clone(),
            admin: self.admin.as_ref().and_then(|a| a.local_addr().ok()),
            metrics: self.metrics.as_ref().and_then(|m| m.local_addr().ok()),
        }
    }

    /// Starts the dispatcher and every acceptor on the current runtime, and
    /// the control plane (admin API, metrics and probes) on a thread of its
    /// own, like linkerd2-proxy's admin runtime: the data plane may run on
    /// one saturated thread, and the kubelet's probes, Prometheus and
    /// `thriftctl` must still be answered then.
    pub async fn spawn(self) -> Running {
        for e in &self.transport.endpoints {
            tracing::info!(endpoint = %e, "waiting for workers");
        }
        let lifecycle = self.lifecycle;
        let (workers_changed_tx, workers_changed) = watch::channel(0u64);
        let dispatcher = Dispatcher::new(
            dispatch::Settings::from_config(&self.config),
            self.services,
            self.transport,
            self.dispatch_rx,
            self.stats.clone(),
            workers_changed_tx,
        );
        let dispatcher = {
            let lifecycle = lifecycle.clone();
            tokio::spawn(async move {
                lifecycle
                    .run_until_done("dispatcher", dispatcher.run())
                    .await
            })
        };
        self.control.start_pending().await;
        let stop = lifecycle.control_plane_stop().clone();
        let admin = self.admin.map(|listener| {
            let addr = listener.local_addr().ok();
            tracing::info!(
                addr = addr.map(tracing::field::display),
                token = self.config.admin.token.is_some(),
                tls = self.config.admin.tls_cert.is_some(),
                "admin API listening",
            );
            let ctx = AdminContext {
                control: self.control.clone(),
                stats: self.stats.clone(),
                lifecycle: lifecycle.clone(),
                workers_changed,
                log_filter: self.log_filter.clone(),
                config: Arc::new(self.config.clone()),
            };
            let config: AdminConfig = self.config.admin.clone();
            let (stop, lifecycle) = (stop.clone(), lifecycle.clone());
            async move {
                let serve = async {
                    if let Err(e) = admin::serve(listener, config, ctx, stop.clone()).await {
                        tracing::error!(error = %e, "admin API stopped");
                    }
                };
                lifecycle.run("admin API", &stop, serve).await
            }
        });
        let metrics = self.metrics.map(|listener| {
            let addr = listener.local_addr().ok();
            tracing::info!(
                addr = addr.map(tracing::field::display),
                "metrics and probes listening (/metrics, /healthz, /readyz)",
            );
            let serve = metrics::serve(listener, self.stats.clone(), stop.clone());
            let (stop, lifecycle) = (stop.clone(), lifecycle.clone());
            async move { lifecycle.run("metrics server", &stop, serve).await }
        });
        let control_plane = match spawn_control_plane(admin, metrics) {
            Ok(done) => Some(done),
            Err(e) => {
                lifecycle.fail("admin thread", &format!("cannot start it: {e}"));
                None
            }
        };
        Running {
            control: self.control,
            dispatch: self.dispatch_tx,
            dispatcher,
            stats: self.stats,
            lifecycle,
            control_plane,
            shutdown_timeout: self.config.server.shutdown_timeout,
        }
    }
}

/// Runs the admin API and the metrics server on a thread with a
/// single-threaded runtime of its own; the receiver completes when both have
/// stopped.
fn spawn_control_plane(
    admin: Option<impl std::future::Future<Output = ()> + Send + 'static>,
    metrics: Option<impl std::future::Future<Output = ()> + Send + 'static>,
) -> std::io::Result<oneshot::Receiver<()>> {
    let (done_tx, done_rx) = oneshot::channel();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("thriftworker-admin".into())
        .spawn(move || {
            runtime.block_on(async move {
                let admin = async move {
                    if let Some(a) = admin {
                        a.await
                    }
                };
                let metrics = async move {
                    if let Some(m) = metrics {
                        m.await
                    }
                };
                tokio::join!(admin, metrics);
            });
            let _ = done_tx.send(());
        })?;
    Ok(done_rx)
}

/// How long a failed process lets connections write what they have.
const FAILED_DRAIN: Duration = Duration::from_secs(1);

/// A running data plane.
pub struct Running {
    control: Arc<Control>,
    dispatch: mpsc::Sender<Command>,
    dispatcher: JoinHandle<()>,
    stats: Arc<Stats>,
    lifecycle: Arc<Lifecycle>,
    /// Completes when the admin/metrics thread has stopped.
    control_plane: Option<oneshot::Receiver<()>>,
    shutdown_timeout: Duration,
}

impl Running {
    pub fn control(&self) -> &Arc<Control> {
        &self.control
    }

    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }

    pub fn lifecycle(&self) -> &Arc<Lifecycle> {
        &self.lifecycle
    }

    /// Completes if the data plane can no longer serve (a core task died:
    /// the dispatcher, an acceptor, the worker transport, the admin API or
    /// the metrics server); the process should then exit non-zero so its
    /// supervisor restarts it (`shutdown` drains briefly in that case).
    pub async fn failed(&self) {
        self.lifecycle.failed().cancelled().await
    }

    /// Completes when a drain was asked for (the Drain RPC).
    pub async fn shutdown_requested(&self) {
        self.lifecycle.drain_requested().await
    }

    /// Graceful shutdown: stop accepting on every listener, let connections
    /// finish the calls they have read (up to `shutdown_timeout`), answer the
    /// rest with an exception, tell workers to leave.
    pub async fn shutdown(self) {
        let mut timeout = self.lifecycle.drain_timeout(self.shutdown_timeout);
        if self.lifecycle.has_failed() {
            // A core task is dead: calls pending now may never be answered,
            // so waiting the full drain only keeps a broken process around.
            timeout = timeout.min(FAILED_DRAIN);
        }
        tracing::info!(
            ?timeout,
            "draining: no new connections; finishing calls in flight"
        );
        self.stats.events.record(
            crate::telemetry::events::EventKind::DrainStarted,
            "",
            format!("draining for at most {timeout:?}: no new connections; calls in flight finish"),
            None,
        );
        // /readyz turns 503 with it, so load balancers stop sending.
        self.lifecycle.start_drain();
        if tokio::time::timeout(timeout, self.control.wait_connections())
            .await
            .is_err()
        {
            tracing::warn!("shutdown timeout reached with calls still in flight");
        }
        let (done_tx, done_rx) = oneshot::channel();
        if self.dispatch.send(Command::Shutdown(done_tx)).await.is_ok() {
            let _ = done_rx.await;
        }
        // Connections now hold their answers (exceptions for what was left):
        // give them a moment to write them out, then close what remains.
        let flush = if self.lifecycle.has_failed() {
            FAILED_DRAIN
        } else {
            Duration::from_secs(5)
        };
        if tokio::time::timeout(flush, self.control.wait_connections())
            .await
            .is_err()
        {
            self.control.abort_connections().await;
        }
        let _ = self.dispatcher.await;
        self.lifecycle.stop_control_plane();
        if let Some(done) = self.control_plane {
            let _ = tokio::time::timeout(Duration::from_secs(5), done).await;
        }
        tracing::info!("stopped");
    }
}
