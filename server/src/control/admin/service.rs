//! The `thriftworker.admin.v1.Admin` service: each RPC checks its names,
//! calls the control API and converts the answer (see [`super::convert`]).

use std::pin::Pin;
use std::time::Duration;

use futures::Stream;
use thriftworker_proto::admin::v1 as pb;
use tonic::{Request, Response, Status};

use super::convert::{
    listener_config, listener_pb, ms, require_name, service_config, service_pb, stats_snapshot,
    status,
};
use super::AdminContext;
use crate::telemetry::events::EventKind;

pub struct AdminService {
    pub ctx: AdminContext,
}

impl AdminService {
    /// A stats filter naming a service or listener that does not exist is an
    /// error (NOT_FOUND), not an empty result.
    fn check_stats_filter(&self, filter: &pb::GetStatsRequest) -> Result<(), Status> {
        /// The first name wanted that is not among the `known`.
        fn unknown<'a, V>(wanted: &'a [String], known: &[(String, V)]) -> Option<&'a String> {
            wanted.iter().find(|w| !known.iter().any(|(n, _)| n == *w))
        }
        if let Some(s) = unknown(&filter.services, &self.ctx.stats.services()) {
            return Err(status(crate::control::not_found_service(s)));
        }
        if let Some(l) = unknown(&filter.listeners, &self.ctx.stats.listeners()) {
            return Err(status(crate::control::not_found_listener(l)));
        }
        Ok(())
    }

    /// The reloadable log filter, or why there is none.
    fn log_filter(&self) -> Result<&crate::telemetry::log_filter::LogFilter, Status> {
        self.ctx.log_filter.as_deref().ok_or_else(|| {
            Status::failed_precondition(
                "this process cannot change its log filter (it was not started by the thriftworker binary)",
            )
        })
    }

    /// An admin change: logged with who asked, and recorded as an event.
    fn changed(&self, kind: EventKind, subject: &str, reason: String, peer: &Option<String>) {
        tracing::info!(
            event = kind.label(),
            subject,
            reason = %reason,
            peer = peer.as_deref().map(tracing::field::display),
            "admin change"
        );
        self.ctx
            .stats
            .events
            .record(kind, subject, reason, peer.clone());
    }

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
}

type StatsStream = Pin<Box<dyn Stream<Item = Result<pb::Stats, Status>> + Send>>;
type EventStream = Pin<Box<dyn Stream<Item = Result<pb::Event, Status>> + Send>>;

fn event_pb(e: &crate::telemetry::events::Event) -> pb::Event {
    pb::Event {
        seq: e.seq,
        time_ms: e.time_ms,
        kind: e.kind.label().into(),
        subject: e.subject.clone(),
        reason: e.reason.clone(),
        peer: e.peer.clone(),
    }
}

/// What differs between the start-up and current lists, by name; an entry
/// changed if its settings serialize differently.
fn diff<T: serde::Serialize>(
    what: &str,
    start: &[T],
    now: &[T],
    name: impl Fn(&T) -> String,
    out: &mut Vec<String>,
) {
    let same = |a: &T, b: &T| toml::to_string(a).ok() == toml::to_string(b).ok();
    for n in now {
        match start.iter().find(|s| name(s) == name(n)) {
            None => out.push(format!("{what} {} added at run time", name(n))),
            Some(s) if !same(s, n) => out.push(format!("{what} {} changed at run time", name(n))),
            Some(_) => {}
        }
    }
    for s in start {
        if !now.iter().any(|n| name(n) == name(s)) {
            out.push(format!("{what} {} removed at run time", name(s)));
        }
    }
}

/// Refuses a change made with the read-only admin token.
fn require_write<T>(req: &Request<T>) -> Result<(), Status> {
    if req.extensions().get::<super::ReadOnly>().is_some() {
        return Err(Status::permission_denied(
            "the read-only admin token may only read: use the admin token to change anything",
        ));
    }
    Ok(())
}

/// The caller's address, for the log and the event of an admin change.
/// With a client certificate (mTLS), its subject too: `ADDR (CN=...)`.
fn peer_of<T>(req: &Request<T>) -> Option<String> {
    let addr = req.remote_addr().map(|a| a.to_string());
    let subject = req
        .peer_certs()
        .and_then(|certs| certs.first().and_then(|c| super::cert::subject(c)));
    match (addr, subject) {
        (Some(a), Some(s)) => Some(format!("{a} ({s})")),
        (a, None) => a,
        (None, Some(s)) => Some(s),
    }
}

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
        require_write(&req)?;
        let peer = peer_of(&req);
        let r = req.into_inner();
        require_name(&r.name, "service")?;
        let config = service_config(r.name, r.settings, None);
        let v = self
            .ctx
            .control
            .register_service(config)
            .await
            .map_err(status)?;
        self.changed(
            EventKind::ServiceRegistered,
            &v.config.name,
            "registered through the admin API".into(),
            &peer,
        );
        Ok(Response::new(service_pb(&v)))
    }

    async fn update_service(
        &self,
        req: Request<pb::UpdateServiceRequest>,
    ) -> Result<Response<pb::Service>, Status> {
        require_write(&req)?;
        let peer = peer_of(&req);
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
        self.changed(
            EventKind::ServiceUpdated,
            &v.config.name,
            "settings updated through the admin API".into(),
            &peer,
        );
        Ok(Response::new(service_pb(&v)))
    }

    async fn unregister_service(
        &self,
        req: Request<pb::UnregisterServiceRequest>,
    ) -> Result<Response<pb::UnregisterServiceResponse>, Status> {
        require_write(&req)?;
        let peer = peer_of(&req);
        let name = req.into_inner().name;
        require_name(&name, "service")?;
        self.ctx
            .control
            .unregister_service(&name)
            .await
            .map_err(status)?;
        self.changed(
            EventKind::ServiceUnregistered,
            &name,
            "unregistered through the admin API".into(),
            &peer,
        );
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
        require_write(&req)?;
        let peer = peer_of(&req);
        let r = req.into_inner();
        require_name(&r.name, "listener")?;
        let config = listener_config(r.name, r.settings)?;
        let v = self
            .ctx
            .control
            .add_listener(config)
            .await
            .map_err(status)?;
        self.changed(
            EventKind::ListenerAdded,
            &v.config.name,
            format!("bound {}", v.handle.local_addr),
            &peer,
        );
        Ok(Response::new(listener_pb(&v)))
    }

    async fn remove_listener(
        &self,
        req: Request<pb::RemoveListenerRequest>,
    ) -> Result<Response<pb::RemoveListenerResponse>, Status> {
        require_write(&req)?;
        let peer = peer_of(&req);
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
        self.changed(
            EventKind::ListenerRemoved,
            &r.name,
            "removed through the admin API; its connections were drained".into(),
            &peer,
        );
        Ok(Response::new(pb::RemoveListenerResponse {}))
    }

    async fn pause_listeners(
        &self,
        req: Request<pb::PauseListenersRequest>,
    ) -> Result<Response<pb::ListListenersResponse>, Status> {
        require_write(&req)?;
        let peer = peer_of(&req);
        let r = req.into_inner();
        self.set_paused(&r.name, r.all, true, r.drain_connections, &peer)
            .await
    }

    async fn resume_listeners(
        &self,
        req: Request<pb::ResumeListenersRequest>,
    ) -> Result<Response<pb::ListListenersResponse>, Status> {
        require_write(&req)?;
        let peer = peer_of(&req);
        let r = req.into_inner();
        self.set_paused(&r.name, r.all, false, false, &peer).await
    }

    async fn list_workers(
        &self,
        req: Request<pb::ListWorkersRequest>,
    ) -> Result<Response<pb::ListWorkersResponse>, Status> {
        let service = req.into_inner().service;
        if !service.is_empty() {
            // An unknown service is an error, not an empty list.
            self.ctx.control.service(&service).await.map_err(status)?;
        }
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
                name: printable(&w.identity),
                leaving: w.leaving,
            })
            .collect();
        Ok(Response::new(pb::ListWorkersResponse { workers }))
    }

    async fn evict_worker(
        &self,
        req: Request<pb::EvictWorkerRequest>,
    ) -> Result<Response<pb::EvictWorkerResponse>, Status> {
        require_write(&req)?;
        let peer = peer_of(&req);
        let id = req.into_inner().id;
        require_name(&id, "worker")?;
        self.ctx.control.evict(&id).await.map_err(status)?;
        self.changed(
            EventKind::WorkerEvicted,
            &id,
            "evicted through the admin API; its calls in flight were answered \"worker died\""
                .into(),
            &peer,
        );
        Ok(Response::new(pb::EvictWorkerResponse {}))
    }

    async fn drain_worker(
        &self,
        req: Request<pb::DrainWorkerRequest>,
    ) -> Result<Response<pb::DrainWorkerResponse>, Status> {
        require_write(&req)?;
        let peer = peer_of(&req);
        let id = req.into_inner().id;
        require_name(&id, "worker")?;
        // The dispatcher records the event (before the worker may leave).
        let in_flight = self
            .ctx
            .control
            .drain_worker(&id, peer)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::DrainWorkerResponse {
            in_flight: in_flight as u64,
        }))
    }

    async fn drain(
        &self,
        req: Request<pb::DrainRequest>,
    ) -> Result<Response<pb::DrainResponse>, Status> {
        require_write(&req)?;
        let peer = peer_of(&req);
        let t = req.into_inner().timeout_ms;
        self.changed(
            EventKind::DrainStarted,
            "",
            "drain requested through the admin API".into(),
            &peer,
        );
        let timeout = (t > 0).then(|| Duration::from_millis(t));
        self.ctx.lifecycle.request_drain(timeout);
        Ok(Response::new(pb::DrainResponse {}))
    }

    async fn list_events(
        &self,
        _req: Request<pb::ListEventsRequest>,
    ) -> Result<Response<pb::ListEventsResponse>, Status> {
        let events = self
            .ctx
            .stats
            .events
            .history()
            .iter()
            .map(event_pb)
            .collect();
        Ok(Response::new(pb::ListEventsResponse { events }))
    }

    type WatchEventsStream = EventStream;

    async fn watch_events(
        &self,
        req: Request<pb::WatchEventsRequest>,
    ) -> Result<Response<EventStream>, Status> {
        let include_history = req.into_inner().include_history;
        let (past, mut live) = self.ctx.stats.events.subscribe();
        // Bounded: a watcher that does not read holds at most this many here
        // (and the broadcast channel's history beyond, reported as missed).
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move {
            if include_history {
                for e in &past {
                    if tx.send(Ok(event_pb(e))).await.is_err() {
                        return;
                    }
                }
            }
            loop {
                let next = tokio::select! {
                    e = live.recv() => e,
                    _ = tx.closed() => return,
                };
                let msg = match next {
                    Ok(e) => event_pb(&e),
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => pb::Event {
                        kind: "events_missed".into(),
                        reason: format!("{n} events were missed: this watcher read too slowly"),
                        ..Default::default()
                    },
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                };
                if tx.send(Ok(msg)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn get_config(
        &self,
        _req: Request<pb::GetConfigRequest>,
    ) -> Result<Response<pb::ConfigDump>, Status> {
        let start = &self.ctx.config;
        let services: Vec<_> = self
            .ctx
            .control
            .services()
            .await
            .into_iter()
            .map(|v| v.config)
            .collect();
        let listeners: Vec<_> = self
            .ctx
            .control
            .listeners()
            .await
            .into_iter()
            .map(|v| v.config)
            .collect();
        let mut changes = Vec::new();
        diff(
            "service",
            &start.services,
            &services,
            |s| s.name.clone(),
            &mut changes,
        );
        diff(
            "listener",
            &start.listeners,
            &listeners,
            |l| l.name.clone(),
            &mut changes,
        );
        let effective = crate::config::Config {
            services,
            listeners,
            ..(**start).clone()
        };
        let internal = |e: &dyn std::fmt::Display| {
            Status::internal(format!("cannot encode the configuration: {e}"))
        };
        Ok(Response::new(pb::ConfigDump {
            toml: toml::to_string_pretty(&effective).map_err(|e| internal(&e))?,
            json: serde_json::to_string_pretty(&effective).map_err(|e| internal(&e))?,
            runtime_changes: changes,
            state_file: self
                .ctx
                .control
                .state_file()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            admin_token_set: start.admin.token.is_some(),
            worker_token_set: start.workers.token.is_some(),
        }))
    }

    async fn get_log_level(
        &self,
        _req: Request<pb::GetLogLevelRequest>,
    ) -> Result<Response<pb::LogLevel>, Status> {
        let filter = self.log_filter()?;
        Ok(Response::new(pb::LogLevel {
            filter: filter.current(),
        }))
    }

    async fn set_log_level(
        &self,
        req: Request<pb::SetLogLevelRequest>,
    ) -> Result<Response<pb::LogLevel>, Status> {
        require_write(&req)?;
        let peer = peer_of(&req);
        let wanted = req.into_inner().filter;
        let filter = self.log_filter()?;
        let before = filter.current();
        filter.replace(wanted.trim()).map_err(|e| {
            Status::invalid_argument(format!(
                "invalid log filter: {e} (examples: \"info\", \"info,thriftworker::data=debug\")"
            ))
        })?;
        let now = filter.current();
        tracing::warn!(
            peer = peer.as_deref().map(tracing::field::display),
            before = %before,
            now = %now,
            "log filter changed through the admin API"
        );
        self.ctx.stats.events.record(
            EventKind::LogLevelChanged,
            "",
            format!("{before} -> {now}"),
            peer,
        );
        Ok(Response::new(pb::LogLevel { filter: now }))
    }

    async fn get_stats(
        &self,
        req: Request<pb::GetStatsRequest>,
    ) -> Result<Response<pb::Stats>, Status> {
        // A snapshot of the registry: the same atomics `/metrics` reads.
        let filter = req.into_inner();
        self.check_stats_filter(&filter)?;
        let snapshot = stats_snapshot(&self.ctx.stats, &filter);
        Ok(Response::new(snapshot))
    }

    type WatchStatsStream = StatsStream;

    async fn watch_stats(
        &self,
        req: Request<pb::WatchStatsRequest>,
    ) -> Result<Response<StatsStream>, Status> {
        let r = req.into_inner();
        let filter = r.filter.unwrap_or_default();
        self.check_stats_filter(&filter)?;
        let interval = Duration::from_millis(if r.interval_ms == 0 {
            1000
        } else {
            r.interval_ms.max(50)
        });
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let stats = self.ctx.stats.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            loop {
                tick.tick().await;
                if tx.send(Ok(stats_snapshot(&stats, &filter))).await.is_err() {
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
        drain_connections: bool,
        peer: &Option<String>,
    ) -> Result<Response<pb::ListListenersResponse>, Status> {
        if all != name.is_empty() {
            return Err(Status::invalid_argument(
                "give either a listener name or all = true",
            ));
        }
        self.ctx
            .control
            .set_paused((!all).then_some(name), paused, drain_connections)
            .await
            .map_err(status)?;
        let kind = match (paused, drain_connections) {
            (false, _) => EventKind::ListenerResumed,
            (true, false) => EventKind::ListenerPaused,
            (true, true) => EventKind::ListenerDraining,
        };
        let subject = if all { "*" } else { name };
        self.changed(kind, subject, "through the admin API".into(), peer);
        Ok(Response::new(self.listener_list().await))
    }
}

/// A worker's ZeroMQ identity as text, if it is printable ASCII (it is
/// chosen by the peer: anything else is not shown as text).
fn printable(identity: &[u8]) -> String {
    match identity.iter().all(|b| (0x21..=0x7e).contains(b)) {
        true => String::from_utf8_lossy(identity).into_owned(),
        false => String::new(),
    }
}
