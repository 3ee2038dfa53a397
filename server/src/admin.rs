//! The admin gRPC API (`thriftworker.admin.v1`): a thin translation of
//! [`crate::control`] plus stats, served with `grpc.health.v1` and server
//! reflection on one port, apart from the proxy path.
//!
//! It can reconfigure the data plane, so: loopback by default, an optional
//! bearer token checked on every Admin call (health stays open for probes),
//! optional TLS with optional client-certificate verification. Tokens are
//! never logged.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use thriftworker_proto::admin::v1 as pb;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::config::{
    self, AdminConfig, HumanDuration, ListenerConfig, ProtocolSetting, ServiceConfig,
    DEFAULT_MAX_FRAME_SIZE,
};
use crate::control::{Control, ControlError, ListenerView, ServiceView};
use crate::stats::Stats;

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
    /// Cancelled to ask the process to drain and exit (the Drain RPC).
    pub shutdown_request: CancellationToken,
    /// A drain timeout given by the Drain RPC, overriding the configured one.
    pub drain_timeout: Arc<std::sync::Mutex<Option<Duration>>>,
    /// Cancelled once the process drains.
    pub draining: CancellationToken,
    pub workers_changed: watch::Receiver<u64>,
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
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(thriftworker_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| AdminError::Serve(e.to_string()))?;
    let token = config.token.clone().map(|t| t.0);
    let admin = pb::admin_server::AdminServer::with_interceptor(
        AdminService { ctx },
        move |req: Request<()>| {
            check_token(token.as_deref(), &req)?;
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
        .add_service(admin)
        .serve_with_incoming_shutdown(incoming, stop.cancelled_owned())
        .await
        .map_err(|e| AdminError::Serve(e.to_string()))
}

fn check_token(expected: Option<&[u8]>, req: &Request<()>) -> Result<(), Status> {
    let Some(expected) = expected else {
        return Ok(());
    };
    let given = req
        .metadata()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::as_bytes);
    let ok = given.is_some_and(|g| {
        g.len() == expected.len() && g.iter().zip(expected).fold(0u8, |a, (x, y)| a | (x ^ y)) == 0
    });
    if ok {
        return Ok(());
    }
    tracing::warn!(
        peer = ?req.remote_addr(),
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
        let draining = ctx.draining.is_cancelled() || ctx.stats.not_live().is_some();
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
            _ = ctx.draining.cancelled(), if !draining => {}
        }
    }
}

struct AdminService {
    ctx: AdminContext,
}

fn status(e: ControlError) -> Status {
    match e {
        ControlError::InvalidArgument(m) => Status::invalid_argument(m),
        ControlError::AlreadyExists(m) => Status::already_exists(m),
        ControlError::NotFound(m) => Status::not_found(m),
        ControlError::FailedPrecondition(m) => Status::failed_precondition(m),
        ControlError::Unavailable(m) => Status::unavailable(m),
    }
}

fn ms(d: Duration) -> u64 {
    d.as_millis().min(u64::MAX as u128) as u64
}

fn service_config(
    name: String,
    s: Option<pb::ServiceSettings>,
    base: Option<&ServiceConfig>,
) -> ServiceConfig {
    let s = s.unwrap_or_default();
    let defaults: ServiceConfig = base
        .cloned()
        .unwrap_or_else(|| ServiceConfig::new(name.clone()));
    let pick = |v: u64, d: Duration| if v == 0 { d } else { Duration::from_millis(v) };
    ServiceConfig {
        name,
        timeout: pick(s.timeout_ms, defaults.timeout),
        method_timeouts: if s.method_timeouts_ms.is_empty() {
            defaults.method_timeouts
        } else {
            s.method_timeouts_ms
                .into_iter()
                .map(|(m, v)| (m, HumanDuration(Duration::from_millis(v))))
                .collect()
        },
        queue_timeout: pick(s.queue_timeout_ms, defaults.queue_timeout),
        max_queue: if s.max_queue == 0 {
            defaults.max_queue
        } else {
            s.max_queue as usize
        },
        max_buffered_bytes: defaults.max_buffered_bytes,
        strip_service_prefix: s
            .strip_service_prefix
            .unwrap_or(defaults.strip_service_prefix),
    }
}

fn service_pb(v: &ServiceView) -> pb::Service {
    let st = &v.info.stats;
    let total = st.total_credit.get();
    let in_flight = st.in_flight.get();
    pb::Service {
        name: v.config.name.clone(),
        settings: Some(pb::ServiceSettings {
            timeout_ms: ms(v.config.timeout),
            method_timeouts_ms: v
                .config
                .method_timeouts
                .iter()
                .map(|(k, d)| (k.clone(), ms(d.0)))
                .collect(),
            queue_timeout_ms: ms(v.config.queue_timeout),
            max_queue: v.config.max_queue as u64,
            strip_service_prefix: Some(v.config.strip_service_prefix),
        }),
        live_workers: st.live_workers.get() as u32,
        total_credit: total,
        free_credit: total.saturating_sub(in_flight),
        in_flight,
        queue_depth: st.queue_depth.get(),
        draining: false,
    }
}

fn listener_config(
    name: String,
    s: Option<pb::ListenerSettings>,
) -> Result<ListenerConfig, Status> {
    let s =
        s.ok_or_else(|| Status::invalid_argument("settings are required (address and services)"))?;
    let protocol = match pb::Protocol::try_from(s.protocol) {
        Ok(pb::Protocol::Auto) => ProtocolSetting::Auto,
        Ok(pb::Protocol::Binary) => ProtocolSetting::Binary,
        Ok(pb::Protocol::Compact) => ProtocolSetting::Compact,
        Err(_) => {
            return Err(Status::invalid_argument(format!(
                "unknown protocol {}",
                s.protocol
            )))
        }
    };
    // 0 means "the default"; anything else is checked by the one validator
    // (`ListenerConfig::validate`), saturating so no value wraps first.
    let or = |v: u64, d: usize| {
        if v == 0 {
            d
        } else {
            usize::try_from(v).unwrap_or(usize::MAX)
        }
    };
    Ok(ListenerConfig {
        name,
        address: s.address,
        services: s.services,
        default_service: (!s.default_service.is_empty()).then_some(s.default_service),
        protocol,
        max_frame_size: or(s.max_frame_size, DEFAULT_MAX_FRAME_SIZE),
        max_connections: or(s.max_connections, config::default_max_connections()),
        idle_timeout: if s.idle_timeout_ms == 0 {
            config::default_idle_timeout()
        } else {
            Duration::from_millis(s.idle_timeout_ms)
        },
        write_timeout: config::default_write_timeout(),
        max_pipeline: or(s.max_pipeline, config::default_max_pipeline()),
        backlog: config::default_backlog(),
        paused: s.paused,
    })
}

fn listener_pb(v: &ListenerView) -> pb::Listener {
    let c = &v.config;
    pb::Listener {
        name: c.name.clone(),
        settings: Some(pb::ListenerSettings {
            address: c.address.clone(),
            services: c.services.clone(),
            default_service: c.default_service.clone().unwrap_or_default(),
            protocol: match c.protocol {
                ProtocolSetting::Auto => pb::Protocol::Auto,
                ProtocolSetting::Binary => pb::Protocol::Binary,
                ProtocolSetting::Compact => pb::Protocol::Compact,
            } as i32,
            max_frame_size: c.max_frame_size as u64,
            max_connections: c.max_connections as u64,
            idle_timeout_ms: ms(c.idle_timeout),
            max_pipeline: c.max_pipeline as u64,
            paused: c.paused,
        }),
        bound_address: v.handle.local_addr.to_string(),
        paused: v.handle.is_paused(),
        active_connections: v.active,
    }
}

fn require_name(name: &str, what: &str) -> Result<(), Status> {
    if name.is_empty() {
        return Err(Status::invalid_argument(format!("{what} name is required")));
    }
    // No name that could not have been registered is looked up (or echoed).
    config::check_name(&format!("{what} name"), name).map_err(Status::invalid_argument)
}

impl AdminService {
    async fn listener_list(&self) -> pb::ListListenersResponse {
        let listeners = self
            .ctx
            .control
            .listeners()
            .await
            .iter()
            .map(listener_pb)
            .collect();
        pb::ListListenersResponse { listeners }
    }

    /// A snapshot of the registry: the same atomics `/metrics` reads.
    async fn stats(&self, filter: &pb::GetStatsRequest) -> pb::Stats {
        stats_snapshot(&self.ctx.stats, filter)
    }
}

/// Builds `GetStats`'s answer from the registry (no dispatcher round trip).
pub fn stats_snapshot(stats: &Stats, filter: &pb::GetStatsRequest) -> pb::Stats {
    let want = |list: &[String], n: &str| list.is_empty() || list.iter().any(|x| x == n);
    let now_ms = stats.now_ms();
    let services: Vec<_> = stats
        .services()
        .into_iter()
        .filter(|(n, _)| want(&filter.services, n))
        .collect();
    let mut methods = Vec::new();
    for (name, s) in &services {
        for m in s.methods() {
            let o = m.outcomes();
            methods.push(pb::MethodStats {
                service: name.clone(),
                method: m.name.to_string(),
                calls: m.calls.get(),
                oneway: m.oneway.get(),
                success: o[0].1,
                errors: m.errors(),
                total: Some(latency(&m.total)),
                declared_exception: o[1].1,
                app_exception: o[2].1,
                timeouts: o[3].1,
                overloaded: o[4].1,
                no_worker: o[5].1,
                worker_died: o[6].1,
                shutdown: o[7].1,
                empty_reply: o[8].1,
                abandoned: o[9].1,
                bad_reply: o[10].1,
                late_replies: m.late_replies.get(),
                queue_wait: Some(latency(&m.queue_wait)),
                worker: Some(latency(&m.worker)),
            });
        }
    }
    pb::Stats {
        uptime_ms: now_ms,
        draining: stats.draining(),
        services: services
            .into_iter()
            .map(|(name, s)| {
                let t = s.totals();
                pb::ServiceStats {
                    name,
                    calls: t.calls,
                    oneway: t.oneway,
                    replies: t.outcomes[0] + t.outcomes[1] + t.outcomes[2],
                    success: t.outcomes[0],
                    declared_exception: t.outcomes[1],
                    app_exception: t.outcomes[2],
                    timeouts: t.outcomes[3],
                    overloaded: t.outcomes[4],
                    no_worker: t.outcomes[5],
                    worker_died: t.outcomes[6],
                    shutdown: t.outcomes[7],
                    empty_reply: t.outcomes[8],
                    abandoned: t.outcomes[9],
                    bad_reply: t.outcomes[10],
                    errors: t.errors,
                    late_replies: t.late_replies,
                    queue_depth: s.queue_depth.get(),
                    in_flight: s.in_flight.get(),
                    live_workers: s.live_workers.get() as u32,
                    total_credit: s.total_credit.get(),
                    free_credit: s.free_credit.get(),
                }
            })
            .collect(),
        listeners: stats
            .listeners()
            .into_iter()
            .filter(|(n, _)| want(&filter.listeners, n))
            .map(|(name, l)| pb::ListenerStats {
                name,
                accepted: l.accepted.get(),
                active: l.active.get(),
                refused: l.refused.get(),
                closed_client: l.closed_client.get(),
                closed_idle: l.closed_idle.get(),
                closed_frame_too_large: l.closed_frame_too_large.get(),
                closed_bad_frame: l.closed_bad_frame.get(),
                closed_protocol_error: l.closed_protocol_error.get(),
                closed_shutdown: l.closed_shutdown.get(),
                closed_io_error: l.closed_io_error.get(),
                closed_write_timeout: l.closed_write_timeout.get(),
                closed_with_calls_in_flight: l.closed_with_calls_in_flight.get(),
                bytes_in: l.bytes_in.get(),
                bytes_out: l.bytes_out.get(),
                paused: l.paused.load(std::sync::atomic::Ordering::Relaxed),
                unknown_service: l.unknown_service.get(),
                invalid_type: l.invalid_type.get(),
            })
            .collect(),
        methods,
        workers: stats.dispatch.live_workers.get() as u32,
        worker_stats: stats
            .workers()
            .into_iter()
            .map(|w| pb::WorkerStats {
                id: w.id.clone(),
                services: w.services.clone(),
                credit: w.credit,
                in_flight: w.in_flight.get(),
                served: w.served.get(),
                heartbeat_age_ms: now_ms
                    .saturating_sub(w.last_seen_ms.load(std::sync::atomic::Ordering::Relaxed)),
            })
            .collect(),
        version: crate::VERSION.into(),
        git_sha: crate::GIT_SHA.into(),
    }
}

fn latency(h: &crate::histogram::Histogram) -> pb::LatencySummary {
    let s = h.snapshot();
    let ms = |ns: f64| ns / 1e6;
    pb::LatencySummary {
        count: s.count,
        p50_ms: ms(s.quantile_ns(0.5)),
        p90_ms: ms(s.quantile_ns(0.9)),
        p99_ms: ms(s.quantile_ns(0.99)),
        max_ms: ms(s.max_ns as f64),
    }
}

type StatsStream = Pin<Box<dyn Stream<Item = Result<pb::Stats, Status>> + Send>>;

#[tonic::async_trait]
impl pb::admin_server::Admin for AdminService {
    async fn list_services(
        &self,
        _: Request<pb::ListServicesRequest>,
    ) -> Result<Response<pb::ListServicesResponse>, Status> {
        let services = self
            .ctx
            .control
            .services()
            .await
            .iter()
            .map(service_pb)
            .collect();
        Ok(Response::new(pb::ListServicesResponse { services }))
    }

    async fn get_service(
        &self,
        req: Request<pb::GetServiceRequest>,
    ) -> Result<Response<pb::Service>, Status> {
        let name = req.into_inner().name;
        require_name(&name, "service")?;
        let v = self.ctx.control.service(&name).await.map_err(status)?;
        Ok(Response::new(service_pb(&v)))
    }

    async fn register_service(
        &self,
        req: Request<pb::RegisterServiceRequest>,
    ) -> Result<Response<pb::Service>, Status> {
        let r = req.into_inner();
        require_name(&r.name, "service")?;
        let config = service_config(r.name, r.settings, None);
        let v = self
            .ctx
            .control
            .register_service(config)
            .await
            .map_err(status)?;
        Ok(Response::new(service_pb(&v)))
    }

    async fn update_service(
        &self,
        req: Request<pb::UpdateServiceRequest>,
    ) -> Result<Response<pb::Service>, Status> {
        let r = req.into_inner();
        require_name(&r.name, "service")?;
        let current = self.ctx.control.service(&r.name).await.map_err(status)?;
        let config = service_config(r.name, r.settings, Some(&current.config));
        let v = self
            .ctx
            .control
            .update_service(config)
            .await
            .map_err(status)?;
        Ok(Response::new(service_pb(&v)))
    }

    async fn unregister_service(
        &self,
        req: Request<pb::UnregisterServiceRequest>,
    ) -> Result<Response<pb::UnregisterServiceResponse>, Status> {
        let name = req.into_inner().name;
        require_name(&name, "service")?;
        self.ctx
            .control
            .unregister_service(&name)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::UnregisterServiceResponse {}))
    }

    async fn list_listeners(
        &self,
        _: Request<pb::ListListenersRequest>,
    ) -> Result<Response<pb::ListListenersResponse>, Status> {
        Ok(Response::new(self.listener_list().await))
    }

    async fn add_listener(
        &self,
        req: Request<pb::AddListenerRequest>,
    ) -> Result<Response<pb::Listener>, Status> {
        let r = req.into_inner();
        require_name(&r.name, "listener")?;
        let config = listener_config(r.name, r.settings)?;
        let v = self
            .ctx
            .control
            .add_listener(config)
            .await
            .map_err(status)?;
        Ok(Response::new(listener_pb(&v)))
    }

    async fn remove_listener(
        &self,
        req: Request<pb::RemoveListenerRequest>,
    ) -> Result<Response<pb::RemoveListenerResponse>, Status> {
        let r = req.into_inner();
        require_name(&r.name, "listener")?;
        let timeout = if r.drain_timeout_ms == 0 {
            Duration::from_secs(30)
        } else {
            Duration::from_millis(r.drain_timeout_ms)
        };
        self.ctx
            .control
            .remove_listener(&r.name, timeout)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::RemoveListenerResponse {}))
    }

    async fn pause_listeners(
        &self,
        req: Request<pb::PauseListenersRequest>,
    ) -> Result<Response<pb::ListListenersResponse>, Status> {
        let r = req.into_inner();
        self.set_paused(&r.name, r.all, true).await
    }

    async fn resume_listeners(
        &self,
        req: Request<pb::ResumeListenersRequest>,
    ) -> Result<Response<pb::ListListenersResponse>, Status> {
        let r = req.into_inner();
        self.set_paused(&r.name, r.all, false).await
    }

    async fn list_workers(
        &self,
        req: Request<pb::ListWorkersRequest>,
    ) -> Result<Response<pb::ListWorkersResponse>, Status> {
        let service = req.into_inner().service;
        let workers = self
            .ctx
            .control
            .workers()
            .await
            .map_err(status)?
            .into_iter()
            .filter(|w| service.is_empty() || w.services.contains(&service))
            .map(|w| pb::Worker {
                id: w.id,
                services: w.services,
                credit: w.credit,
                in_flight: w.in_flight,
                last_heartbeat_ms: ms(w.last_heartbeat),
                identity: w.identity.iter().map(|b| format!("{b:02x}")).collect(),
                leaving: w.leaving,
            })
            .collect();
        Ok(Response::new(pb::ListWorkersResponse { workers }))
    }

    async fn evict_worker(
        &self,
        req: Request<pb::EvictWorkerRequest>,
    ) -> Result<Response<pb::EvictWorkerResponse>, Status> {
        let id = req.into_inner().id;
        require_name(&id, "worker")?;
        self.ctx.control.evict(&id).await.map_err(status)?;
        Ok(Response::new(pb::EvictWorkerResponse {}))
    }

    async fn drain(
        &self,
        req: Request<pb::DrainRequest>,
    ) -> Result<Response<pb::DrainResponse>, Status> {
        let t = req.into_inner().timeout_ms;
        if t > 0 {
            *self
                .ctx
                .drain_timeout
                .lock()
                .unwrap_or_else(|e| e.into_inner()) = Some(Duration::from_millis(t));
        }
        tracing::info!("drain requested through the admin API");
        self.ctx.shutdown_request.cancel();
        Ok(Response::new(pb::DrainResponse {}))
    }

    async fn get_stats(
        &self,
        req: Request<pb::GetStatsRequest>,
    ) -> Result<Response<pb::Stats>, Status> {
        Ok(Response::new(self.stats(&req.into_inner()).await))
    }

    type WatchStatsStream = StatsStream;

    async fn watch_stats(
        &self,
        req: Request<pb::WatchStatsRequest>,
    ) -> Result<Response<StatsStream>, Status> {
        let r = req.into_inner();
        let filter = r.filter.unwrap_or_default();
        let interval = Duration::from_millis(if r.interval_ms == 0 {
            1000
        } else {
            r.interval_ms.max(50)
        });
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let me = AdminService {
            ctx: self.ctx.clone(),
        };
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            loop {
                tick.tick().await;
                if tx.send(Ok(me.stats(&filter).await)).await.is_err() {
                    return; // client went away
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}

impl AdminService {
    async fn set_paused(
        &self,
        name: &str,
        all: bool,
        paused: bool,
    ) -> Result<Response<pb::ListListenersResponse>, Status> {
        if all != name.is_empty() {
            return Err(Status::invalid_argument(
                "give either a listener name or all = true",
            ));
        }
        self.ctx
            .control
            .set_paused((!all).then_some(name), paused)
            .await
            .map_err(status)?;
        Ok(Response::new(self.listener_list().await))
    }
}
