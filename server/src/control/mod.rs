//! The in-process control API: register, update and unregister services; add,
//! remove, pause and resume listeners; list and evict workers; persist.
//!
//! The admin gRPC service is a thin translation of this. Every change is
//! checked completely before anything is touched, so a failed change changes
//! nothing; a successful one takes effect at once (a listener added paused
//! never accepts before it is resumed) and is written to the state file.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::{mpsc, oneshot, Mutex};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{self, shown, ListenerConfig, RuntimeState, ServiceConfig};
use crate::data::connection::ConnectionContext;
use crate::data::dispatch::{Command, WorkerView};
use crate::data::listener::{self, Listener, ListenerHandle};
use crate::data::routes::Routes;
use crate::data::service::ServiceInfo;
use crate::data::tls::{ListenerTls, TlsFiles};
use crate::lifecycle::Lifecycle;
use crate::telemetry::Stats;

pub mod admin;

/// Why a change was refused; each maps to one gRPC status code.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    Unavailable(String),
}

/// A service as listed.
#[derive(Debug, Clone)]
pub struct ServiceView {
    pub config: ServiceConfig,
    pub info: Arc<ServiceInfo>,
}

/// A listener as listed.
#[derive(Debug, Clone)]
pub struct ListenerView {
    pub config: ListenerConfig,
    pub handle: ListenerHandle,
    pub active: u64,
}

struct ServiceEntry {
    config: ServiceConfig,
    info: Arc<ServiceInfo>,
}

struct ListenerEntry {
    config: ListenerConfig,
    handle: ListenerHandle,
    routes: Arc<ArcSwap<Routes>>,
    /// Stops this listener's acceptor and drains its connections.
    stop: CancellationToken,
    /// Closes its connections at once (drain timed out).
    abort: CancellationToken,
    tracker: TaskTracker,
    /// Bound but not yet started (during `app::build`).
    pending: Option<Listener>,
}

struct State {
    services: BTreeMap<String, ServiceEntry>,
    next_index: usize,
    listeners: BTreeMap<String, ListenerEntry>,
}

pub struct Control {
    state: Mutex<State>,
    dispatch: mpsc::Sender<Command>,
    stats: Arc<Stats>,
    /// Acceptors are core tasks: one that dies fails the process. Every
    /// listener's stop token is a child of its `draining` token.
    lifecycle: Arc<Lifecycle>,
    state_file: Option<PathBuf>,
    /// `[workers].max_message_size`: every listener's frames must fit in it.
    max_message_size: usize,
    /// The data plane's runtime. The admin API calls in from its own thread
    /// and runtime; listeners added then must still be registered with, and
    /// run on, the data plane's.
    runtime: tokio::runtime::Handle,
}

impl Control {
    pub fn new(
        dispatch: mpsc::Sender<Command>,
        stats: Arc<Stats>,
        lifecycle: Arc<Lifecycle>,
        state_file: Option<PathBuf>,
        max_message_size: usize,
    ) -> Control {
        Control {
            runtime: tokio::runtime::Handle::current(),
            state: Mutex::new(State {
                services: BTreeMap::new(),
                next_index: 0,
                listeners: BTreeMap::new(),
            }),
            dispatch,
            stats,
            lifecycle,
            state_file,
            max_message_size,
        }
    }

    /// Registers the services of the config at start-up (no dispatcher yet:
    /// it is built from the returned list).
    pub async fn init_services(&self, services: &[ServiceConfig]) -> Vec<Arc<ServiceInfo>> {
        let mut st = self.state.lock().await;
        let mut infos = Vec::new();
        for s in services {
            let info = ServiceInfo::new(st.next_index, s, &self.stats);
            st.next_index += 1;
            st.services.insert(
                s.name.clone(),
                ServiceEntry {
                    config: s.clone(),
                    info: info.clone(),
                },
            );
            infos.push(info);
        }
        infos
    }

    async fn send(&self, cmd: Command) -> Result<(), ControlError> {
        self.dispatch
            .send(cmd)
            .await
            .map_err(|_| ControlError::Unavailable("the data plane is shutting down".into()))
    }

    pub async fn services(&self) -> Vec<ServiceView> {
        let st = self.state.lock().await;
        st.services
            .values()
            .map(|e| ServiceView {
                config: e.config.clone(),
                info: e.info.clone(),
            })
            .collect()
    }

    pub async fn service(&self, name: &str) -> Result<ServiceView, ControlError> {
        let st = self.state.lock().await;
        st.services
            .get(name)
            .map(|e| ServiceView {
                config: e.config.clone(),
                info: e.info.clone(),
            })
            .ok_or_else(|| not_found_service(name))
    }

    pub async fn register_service(
        &self,
        config: ServiceConfig,
    ) -> Result<ServiceView, ControlError> {
        config.validate().map_err(ControlError::InvalidArgument)?;
        let mut st = self.state.lock().await;
        if st.services.contains_key(&config.name) {
            return Err(ControlError::AlreadyExists(format!(
                "service '{}' already exists: use update to change it",
                config.name
            )));
        }
        let info = ServiceInfo::new(st.next_index, &config, &self.stats);
        self.send(Command::SetService(info.clone())).await?;
        st.next_index += 1;
        tracing::info!(service = %config.name, "service registered");
        Ok(self.store_service(&mut st, config, info))
    }

    pub async fn update_service(&self, config: ServiceConfig) -> Result<ServiceView, ControlError> {
        config.validate().map_err(ControlError::InvalidArgument)?;
        let mut st = self.state.lock().await;
        let index = st
            .services
            .get(&config.name)
            .map(|e| e.info.index)
            .ok_or_else(|| not_found_service(&config.name))?;
        let info = ServiceInfo::new(index, &config, &self.stats);
        self.send(Command::SetService(info.clone())).await?;
        // Listeners routing to it get the new settings for calls read from now on.
        for l in st.listeners.values() {
            if let Some(updated) = l.routes.load().with_updated(&info) {
                l.routes.store(Arc::new(updated));
            }
        }
        tracing::info!(service = %config.name, "service updated");
        Ok(self.store_service(&mut st, config, info))
    }

    /// Records a service's (new) settings and persists the state.
    fn store_service(
        &self,
        st: &mut State,
        config: ServiceConfig,
        info: Arc<ServiceInfo>,
    ) -> ServiceView {
        let entry = ServiceEntry {
            config: config.clone(),
            info: info.clone(),
        };
        st.services.insert(config.name.clone(), entry);
        self.persist(st);
        ServiceView { config, info }
    }

    /// Stops routing to the service. Calls already queued or in flight
    /// finish; workers that serve only it get no new calls.
    pub async fn unregister_service(&self, name: &str) -> Result<(), ControlError> {
        let mut st = self.state.lock().await;
        let index = st
            .services
            .get(name)
            .map(|e| e.info.index)
            .ok_or_else(|| not_found_service(name))?;
        if let Some(l) = st
            .listeners
            .values()
            .find(|l| l.config.services.iter().any(|s| s == name))
        {
            return Err(ControlError::FailedPrecondition(format!(
                "service '{name}' is still served by listener '{}': remove that listener first",
                l.config.name
            )));
        }
        self.send(Command::RemoveService(index)).await?;
        st.services.remove(name);
        // Its series leave the views and /readyz stops waiting for a worker
        // of it; calls still finishing update the detached block.
        self.stats.remove_service(name);
        tracing::info!(service = %name, "service unregistered");
        self.persist(&st);
        Ok(())
    }

    fn routes_for(st: &State, config: &ListenerConfig) -> Routes {
        Routes {
            services: config
                .services
                .iter()
                .map(|s| st.services[s].info.clone())
                .collect(),
            default_service: config
                .default_service
                .as_ref()
                .map(|d| st.services[d].info.index),
        }
    }

    /// Binds a listener without starting it (at start-up, before `start_pending`).
    pub async fn bind_listener(
        &self,
        config: ListenerConfig,
    ) -> Result<ListenerHandle, ControlError> {
        let mut st = self.state.lock().await;
        self.bind_locked(&mut st, config)
    }

    fn bind_locked(
        &self,
        st: &mut State,
        config: ListenerConfig,
    ) -> Result<ListenerHandle, ControlError> {
        if st.listeners.contains_key(&config.name) {
            return Err(ControlError::AlreadyExists(format!(
                "listener '{}' already exists",
                config.name
            )));
        }
        config
            .validate(|s| st.services.contains_key(s))
            .and_then(|()| config::frame_fits(&config, self.max_message_size))
            .map_err(ControlError::InvalidArgument)?;
        let socket = {
            let _on_the_data_plane = self.runtime.enter();
            listener::bind(&config).map_err(|e| ControlError::FailedPrecondition(e.to_string()))?
        };
        let tls = match (&config.tls_cert, &config.tls_key) {
            (Some(cert), Some(key)) => Some(Arc::new(
                ListenerTls::load(TlsFiles {
                    cert: cert.clone(),
                    key: key.clone(),
                    client_ca: config.tls_client_ca.clone(),
                })
                .map_err(|e| {
                    ControlError::FailedPrecondition(format!("listener '{}': {e}", config.name))
                })?,
            )),
            _ => None,
        };
        let routes = Arc::new(ArcSwap::from_pointee(Self::routes_for(st, &config)));
        let ctx = ConnectionContext {
            listener: config.name.clone(),
            routes: routes.clone(),
            protocol: config.protocol,
            transport: config.transport.fixed(),
            tls: tls.clone(),
            max_frame_size: config.max_frame_size,
            max_pipeline: config.max_pipeline,
            idle_timeout: config.idle_timeout,
            write_timeout: config.write_timeout,
            dispatch: self.dispatch.clone(),
            stats: self.stats.listener(&config.name),
        };
        let listener = Listener::new(socket, ctx, &config).map_err(|e| {
            ControlError::FailedPrecondition(format!("listener '{}': {e}", config.name))
        })?;
        let handle = listener.handle();
        st.listeners.insert(
            config.name.clone(),
            ListenerEntry {
                config,
                handle: handle.clone(),
                routes,
                stop: self.lifecycle.draining().child_token(),
                abort: CancellationToken::new(),
                tracker: TaskTracker::new(),
                pending: Some(listener),
            },
        );
        Ok(handle)
    }

    /// Starts every bound listener not yet started.
    pub async fn start_pending(&self) {
        let mut st = self.state.lock().await;
        for e in st.listeners.values_mut() {
            Self::start(e, &self.runtime, &self.lifecycle);
        }
    }

    fn start(e: &mut ListenerEntry, runtime: &tokio::runtime::Handle, sup: &Arc<Lifecycle>) {
        if let Some(l) = e.pending.take() {
            tracing::info!(
                listener = %e.handle.name,
                addr = %e.handle.local_addr,
                paused = e.handle.is_paused(),
                "listening",
            );
            let tracker = e.tracker.clone();
            let (stop, sup) = (e.stop.clone(), sup.clone());
            let task = format!("acceptor of listener '{}'", e.handle.name);
            let accept = l.run(stop.clone(), e.abort.clone(), tracker);
            e.tracker
                .spawn_on(async move { sup.run(&task, &stop, accept).await }, runtime);
        }
    }

    /// Binds and starts a listener at runtime.
    pub async fn add_listener(&self, config: ListenerConfig) -> Result<ListenerView, ControlError> {
        let mut st = self.state.lock().await;
        if self.lifecycle.draining().is_cancelled() {
            return Err(ControlError::Unavailable(
                "the data plane is draining".into(),
            ));
        }
        let name = config.name.clone();
        self.bind_locked(&mut st, config)?;
        let e = st.listeners.get_mut(&name).expect("just inserted");
        Self::start(e, &self.runtime, &self.lifecycle);
        let view = ListenerView {
            config: e.config(),
            handle: e.handle.clone(),
            active: 0,
        };
        self.persist(&st);
        Ok(view)
    }

    /// Stops accepting on the listener, lets its connections finish their
    /// calls for up to `timeout`, then closes what is left.
    pub async fn remove_listener(&self, name: &str, timeout: Duration) -> Result<(), ControlError> {
        let entry = {
            let mut st = self.state.lock().await;
            let e = st
                .listeners
                .remove(name)
                .ok_or_else(|| not_found_listener(name))?;
            self.persist(&st);
            e
        };
        tracing::info!(listener = %name, ?timeout, "removing listener: draining its connections");
        entry.stop.cancel();
        entry.tracker.close();
        if tokio::time::timeout(timeout, entry.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(listener = %name, "drain timeout: closing remaining connections");
            entry.abort.cancel();
            entry.tracker.wait().await;
        }
        self.stats.remove_listener(name);
        Ok(())
    }

    /// Pauses (or resumes) one listener, or all when `name` is `None`;
    /// with `drain_connections`, also drains the connections it has (a
    /// listener drain: the listener stays defined, resume brings it back).
    pub async fn set_paused(
        &self,
        name: Option<&str>,
        paused: bool,
        drain_connections: bool,
    ) -> Result<(), ControlError> {
        let mut st = self.state.lock().await;
        let apply = |e: &mut ListenerEntry| {
            apply_pause(e, paused);
            if paused && drain_connections {
                e.handle.drain_connections();
                tracing::info!(listener = %e.config.name, "listener draining: its connections finish their calls and close");
            }
        };
        match name {
            Some(n) => {
                let e = st
                    .listeners
                    .get_mut(n)
                    .ok_or_else(|| not_found_listener(n))?;
                apply(e);
            }
            None => st.listeners.values_mut().for_each(apply),
        }
        self.persist(&st);
        Ok(())
    }

    /// Where runtime changes are persisted, if anywhere.
    pub fn state_file(&self) -> Option<&std::path::Path> {
        self.state_file.as_deref()
    }

    pub async fn listeners(&self) -> Vec<ListenerView> {
        let st = self.state.lock().await;
        st.listeners
            .values()
            .map(|e| ListenerView {
                config: e.config(),
                handle: e.handle.clone(),
                active: self.stats.listener(&e.config.name).active.get(),
            })
            .collect()
    }

    pub async fn workers(&self) -> Result<Vec<WorkerView>, ControlError> {
        let (tx, rx) = oneshot::channel();
        self.send(Command::Workers(tx)).await?;
        rx.await
            .map_err(|_| ControlError::Unavailable("the data plane is shutting down".into()))
    }

    /// Cordons worker `id`; returns its calls in flight (they finish first).
    pub async fn drain_worker(
        &self,
        id: &str,
        peer: Option<String>,
    ) -> Result<usize, ControlError> {
        let (tx, rx) = oneshot::channel();
        self.send(Command::DrainWorker {
            id: id.to_string(),
            peer,
            tx,
        })
        .await?;
        match rx.await {
            Ok(Some(n)) => Ok(n),
            Ok(None) => Err(not_found_worker(id)),
            Err(_) => Err(ControlError::Unavailable(
                "the data plane is shutting down".into(),
            )),
        }
    }

    pub async fn evict(&self, id: &str) -> Result<(), ControlError> {
        let (tx, rx) = oneshot::channel();
        self.send(Command::Evict(id.to_string(), tx)).await?;
        match rx.await {
            Ok(true) => Ok(()),
            Ok(false) => Err(not_found_worker(id)),
            Err(_) => Err(ControlError::Unavailable(
                "the data plane is shutting down".into(),
            )),
        }
    }

    /// Waits until every listener's connections have closed (process drain).
    pub async fn wait_connections(&self) {
        let trackers: Vec<TaskTracker> = {
            let st = self.state.lock().await;
            st.listeners.values().map(|e| e.tracker.clone()).collect()
        };
        for t in trackers {
            t.close();
            t.wait().await;
        }
    }

    /// Closes every connection at once (drain timed out).
    pub async fn abort_connections(&self) {
        let st = self.state.lock().await;
        for e in st.listeners.values() {
            e.abort.cancel();
        }
    }

    /// Writes services and listeners to the state file, atomically. A
    /// failure is logged, not returned: the change itself has happened.
    fn persist(&self, st: &State) {
        let Some(path) = &self.state_file else { return };
        let state = RuntimeState {
            services: st.services.values().map(|e| e.config.clone()).collect(),
            listeners: st.listeners.values().map(ListenerEntry::config).collect(),
        };
        let write = || -> std::io::Result<()> {
            let tmp = path.with_extension("tmp");
            std::fs::write(
                &tmp,
                serde_json::to_vec_pretty(&state).map_err(std::io::Error::other)?,
            )?;
            std::fs::rename(&tmp, path)
        };
        if let Err(e) = write() {
            tracing::error!(
                path = %path.display(),
                error = %e,
                "cannot write the state file: runtime changes will be lost on restart",
            );
        }
    }
}

fn apply_pause(e: &mut ListenerEntry, paused: bool) {
    e.handle.set_paused(paused);
    tracing::info!(listener = %e.config.name, paused, "acceptor state changed");
}

impl ListenerEntry {
    /// Its settings, with the acceptor's current paused state (kept only
    /// in the listener's stats, where the acceptor watches it).
    fn config(&self) -> ListenerConfig {
        ListenerConfig {
            paused: self.handle.is_paused(),
            ..self.config.clone()
        }
    }
}

fn not_found_worker(id: &str) -> ControlError {
    ControlError::NotFound(format!(
        "no worker {}: see `thriftctl workers list`",
        shown(id)
    ))
}

pub(crate) fn not_found_service(name: &str) -> ControlError {
    ControlError::NotFound(format!(
        "no service {}: see `thriftctl services list`",
        shown(name)
    ))
}

pub(crate) fn not_found_listener(name: &str) -> ControlError {
    ControlError::NotFound(format!(
        "no listener {}: see `thriftctl listeners list`",
        shown(name)
    ))
}
