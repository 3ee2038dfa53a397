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
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::connection::ConnectionContext;
use crate::dispatch::{service_infos, Command, Dispatcher, ServiceInfo};
use crate::listener::{self, Listener, ListenerError, ListenerHandle};
use crate::stats::Stats;
use crate::transport::{self, Transport, TransportError};

/// Why the data plane could not start.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Listener(#[from] ListenerError),
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error("listener '{0}': {1}")]
    Io(String, std::io::Error),
}

/// Every socket bound, nothing running yet.
pub struct Built {
    config: Config,
    listeners: Vec<Listener>,
    transport: Transport,
    services: Vec<Arc<ServiceInfo>>,
    stats: Arc<Stats>,
    dispatch_tx: mpsc::Sender<Command>,
    dispatch_rx: mpsc::Receiver<Command>,
}

/// The addresses actually bound.
#[derive(Debug, Clone, Serialize)]
pub struct BoundAddresses {
    pub pid: u32,
    pub listeners: BTreeMap<String, SocketAddr>,
    pub worker_endpoints: Vec<String>,
}

/// Binds the worker endpoints and every listener.
pub async fn build(mut config: Config) -> Result<Built, BuildError> {
    if config.workers.endpoints.is_empty() {
        config.workers.endpoints = vec![transport::default_endpoint()];
    }
    let stats = Arc::new(Stats::new(
        config.listeners.iter().map(|l| l.name.as_str()),
        config.services.iter().map(|s| s.name.as_str()),
    ));
    let services = service_infos(&config, &stats);
    let transport = Transport::bind(&config.workers.endpoints).await?;
    // Deep enough that connections rarely wait on the dispatcher, bounded so
    // a stalled dispatcher pushes back on clients instead of eating memory.
    let (dispatch_tx, dispatch_rx) = mpsc::channel(8192);
    let mut listeners = Vec::with_capacity(config.listeners.len());
    for l in &config.listeners {
        let socket = listener::bind(l)?;
        let index = |name: &str| {
            config
                .services
                .iter()
                .position(|s| s.name == name)
                .expect("validated")
        };
        let ctx = ConnectionContext {
            listener: l.name.clone(),
            services: l
                .services
                .iter()
                .map(|s| (index(s), services[index(s)].clone()))
                .collect(),
            default_service: l.default_service.as_deref().map(index),
            protocol: l.protocol,
            max_frame_size: l.max_frame_size,
            max_pipeline: l.max_pipeline,
            idle_timeout: l.idle_timeout,
            dispatch: dispatch_tx.clone(),
            stats: stats.listeners[&l.name].clone(),
        };
        listeners
            .push(Listener::new(socket, ctx, l).map_err(|e| BuildError::Io(l.name.clone(), e))?);
    }
    Ok(Built {
        config,
        listeners,
        transport,
        services,
        stats,
        dispatch_tx,
        dispatch_rx,
    })
}

impl Built {
    pub fn addresses(&self) -> BoundAddresses {
        BoundAddresses {
            pid: std::process::id(),
            listeners: self
                .listeners
                .iter()
                .map(|l| {
                    let h = l.handle();
                    (h.name, h.local_addr)
                })
                .collect(),
            worker_endpoints: self.transport.endpoints.clone(),
        }
    }

    /// Starts the dispatcher and every acceptor on the current runtime.
    pub fn spawn(self) -> Running {
        let drain = CancellationToken::new();
        let tracker = TaskTracker::new();
        let handles: Vec<ListenerHandle> = self.listeners.iter().map(Listener::handle).collect();
        for h in &handles {
            tracing::info!(listener = %h.name, addr = %h.local_addr, paused = h.is_paused(), "listening");
        }
        for e in &self.transport.endpoints {
            tracing::info!(endpoint = %e, "waiting for workers");
        }
        let failed = CancellationToken::new();
        let dispatcher = Dispatcher::new(
            &self.config,
            self.services,
            self.transport,
            self.dispatch_rx,
            self.stats.clone(),
            failed.clone(),
        );
        let dispatcher = tokio::spawn(dispatcher.run());
        for l in self.listeners {
            tracker.spawn(l.run(drain.clone(), tracker.clone()));
        }
        Running {
            drain,
            tracker,
            dispatch: self.dispatch_tx,
            dispatcher,
            listeners: handles,
            stats: self.stats,
            failed,
            shutdown_timeout: self.config.server.shutdown_timeout,
        }
    }
}

/// A running data plane.
pub struct Running {
    drain: CancellationToken,
    tracker: TaskTracker,
    dispatch: mpsc::Sender<Command>,
    dispatcher: JoinHandle<()>,
    listeners: Vec<ListenerHandle>,
    stats: Arc<Stats>,
    failed: CancellationToken,
    shutdown_timeout: Duration,
}

impl Running {
    pub fn listeners(&self) -> &[ListenerHandle] {
        &self.listeners
    }

    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }

    /// Completes if the data plane can no longer serve (the worker transport
    /// failed); the process should then drain and exit non-zero so its
    /// supervisor restarts it.
    pub async fn failed(&self) {
        self.failed.cancelled().await
    }

    /// Graceful shutdown: stop accepting on every listener, let connections
    /// finish the calls they have read (up to `shutdown_timeout`), answer the
    /// rest with an exception, tell workers to leave.
    pub async fn shutdown(self) {
        tracing::info!(timeout = ?self.shutdown_timeout, "draining: no new connections; finishing calls in flight");
        self.drain.cancel();
        self.tracker.close();
        if tokio::time::timeout(self.shutdown_timeout, self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("shutdown_timeout reached with calls still in flight");
        }
        let (done_tx, done_rx) = oneshot::channel();
        if self.dispatch.send(Command::Shutdown(done_tx)).await.is_ok() {
            let _ = done_rx.await;
        }
        // Connections now hold their answers (exceptions for what was left):
        // give them a moment to write them out.
        let _ = tokio::time::timeout(Duration::from_secs(5), self.tracker.wait()).await;
        let _ = self.dispatcher.await;
        tracing::info!("stopped");
    }
}
