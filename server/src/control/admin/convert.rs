//! Conversions between the admin API's messages (`admin.proto`) and the
//! control API's and registry's types. Settings left 0 in a request take
//! the config's defaults; every value then goes through the one validator
//! (`config::bounds`), so nothing here checks ranges itself.

use std::time::Duration;

use thriftworker_proto::admin::v1 as pb;
use tonic::Status;

use crate::config::{
    self, Address, HumanDuration, ListenerConfig, ProtocolSetting, ServiceConfig, TransportSetting,
    DEFAULT_MAX_FRAME_SIZE,
};
use crate::control::{ControlError, ListenerView, ServiceView};
use crate::telemetry::{CloseReason, ListenerStats, MethodStats, Outcome, ServiceStats, Stats};
use crate::thrift::Transport;

pub fn status(e: ControlError) -> Status {
    match e {
        ControlError::InvalidArgument(m) => Status::invalid_argument(m),
        ControlError::AlreadyExists(m) => Status::already_exists(m),
        ControlError::NotFound(m) => Status::not_found(m),
        ControlError::FailedPrecondition(m) => Status::failed_precondition(m),
        ControlError::Unavailable(m) => Status::unavailable(m),
    }
}

pub fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

pub fn service_config(
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
        method_timeouts: if s.method_timeouts_ms.is_empty() && !s.clear_method_timeouts {
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
            usize::try_from(s.max_queue).unwrap_or(usize::MAX)
        },
        max_buffered_bytes: defaults.max_buffered_bytes,
        strip_service_prefix: s
            .strip_service_prefix
            .unwrap_or(defaults.strip_service_prefix),
    }
}

pub fn service_pb(v: &ServiceView) -> pb::Service {
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
            clear_method_timeouts: false,
        }),
        live_workers: u32::try_from(st.live_workers.get()).unwrap_or(u32::MAX),
        total_credit: total,
        free_credit: total.saturating_sub(in_flight),
        in_flight,
        queue_depth: st.queue_depth.get(),
        draining: false,
    }
}

pub fn listener_config(
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
    let transport = match pb::Transport::try_from(s.transport) {
        Ok(pb::Transport::Auto) => TransportSetting::Auto,
        Ok(pb::Transport::Framed) => TransportSetting::Framed,
        Ok(pb::Transport::Unframed) => TransportSetting::Unframed,
        Ok(pb::Transport::Header) => TransportSetting::Header,
        Err(_) => {
            return Err(Status::invalid_argument(format!(
                "unknown transport {}: use auto, framed, unframed or header",
                s.transport
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
    let address = Address::parse(&s.address)
        .map_err(|e| Status::invalid_argument(format!("listener '{name}': {e}")))?;
    Ok(ListenerConfig {
        name,
        address,
        services: s.services,
        default_service: (!s.default_service.is_empty()).then_some(s.default_service),
        protocol,
        transport,
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
        tls_cert: path(s.tls_cert),
        tls_key: path(s.tls_key),
        tls_client_ca: path(s.tls_client_ca),
    })
}

/// An optional path from the API (empty: none).
fn path(p: String) -> Option<std::path::PathBuf> {
    (!p.is_empty()).then(|| p.into())
}

fn shown_path(p: &Option<std::path::PathBuf>) -> String {
    p.as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_default()
}

pub fn listener_pb(v: &ListenerView) -> pb::Listener {
    let c = &v.config;
    pb::Listener {
        name: c.name.clone(),
        settings: Some(pb::ListenerSettings {
            address: c.address.to_string(),
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
            tls_cert: shown_path(&c.tls_cert),
            tls_key: shown_path(&c.tls_key),
            tls_client_ca: shown_path(&c.tls_client_ca),
            transport: match c.transport {
                TransportSetting::Auto => pb::Transport::Auto,
                TransportSetting::Framed => pb::Transport::Framed,
                TransportSetting::Unframed => pb::Transport::Unframed,
                TransportSetting::Header => pb::Transport::Header,
            } as i32,
        }),
        bound_address: v.handle.local_addr.to_string(),
        paused: v.handle.is_paused(),
        active_connections: v.active,
    }
}

pub fn require_name(name: &str, what: &str) -> Result<(), Status> {
    if name.is_empty() {
        return Err(Status::invalid_argument(format!("{what} name is required")));
    }
    // No name that could not have been registered is looked up (or echoed).
    config::check_name(&format!("{what} name"), name).map_err(Status::invalid_argument)
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
    let methods = services
        .iter()
        .flat_map(|(name, s)| s.methods().into_iter().map(move |m| method_pb(name, &m)))
        .collect();
    pb::Stats {
        uptime_ms: now_ms,
        draining: stats.draining(),
        services: services
            .into_iter()
            .map(|(name, s)| service_stats_pb(name, &s))
            .collect(),
        listeners: stats
            .listeners()
            .into_iter()
            .filter(|(n, _)| want(&filter.listeners, n))
            .map(|(name, l)| listener_stats_pb(name, &l))
            .collect(),
        methods,
        workers: u32::try_from(stats.dispatch.live_workers.get()).unwrap_or(u32::MAX),
        worker_stats: stats
            .workers()
            .into_iter()
            .map(|w| pb::WorkerStats {
                id: w.id.clone(),
                services: w.services.clone(),
                credit: u32::try_from(w.credit.get()).unwrap_or(u32::MAX),
                in_flight: w.in_flight.get(),
                served: w.served.get(),
                heartbeat_age_ms: now_ms
                    .saturating_sub(w.last_seen_ms.load(std::sync::atomic::Ordering::Relaxed)),
            })
            .collect(),
        version: crate::telemetry::VERSION.into(),
        git_sha: crate::telemetry::GIT_SHA.into(),
    }
}

/// The admin API's field for outcome `o`: the one place outcomes meet the
/// proto's named fields (a new outcome is a compile error here until its
/// field exists).
macro_rules! outcome_field {
    ($msg:expr, $o:expr) => {
        match $o {
            Outcome::Success => &mut $msg.success,
            Outcome::DeclaredException => &mut $msg.declared_exception,
            Outcome::AppException => &mut $msg.app_exception,
            Outcome::Timeout => &mut $msg.timeouts,
            Outcome::Overloaded => &mut $msg.overloaded,
            Outcome::NoWorker => &mut $msg.no_worker,
            Outcome::WorkerDied => &mut $msg.worker_died,
            Outcome::Shutdown => &mut $msg.shutdown,
            Outcome::EmptyReply => &mut $msg.empty_reply,
            Outcome::Abandoned => &mut $msg.abandoned,
            Outcome::BadReply => &mut $msg.bad_reply,
        }
    };
}

fn method_pb(service: &str, m: &MethodStats) -> pb::MethodStats {
    let mut out = pb::MethodStats {
        service: service.to_string(),
        method: m.name.to_string(),
        calls: m.calls.get(),
        oneway: m.oneway.get(),
        errors: m.errors(),
        total: Some(latency(&m.total)),
        late_replies: m.late_replies.get(),
        queue_wait: Some(latency(&m.queue_wait)),
        worker: Some(latency(&m.worker)),
        ..Default::default()
    };
    for o in Outcome::ALL {
        *outcome_field!(out, o) = m.count(o);
    }
    out
}

fn service_stats_pb(name: String, s: &ServiceStats) -> pb::ServiceStats {
    let t = s.totals();
    // Answers of the worker: what a reply told the client.
    let replies = [
        Outcome::Success,
        Outcome::DeclaredException,
        Outcome::AppException,
    ];
    let mut out = pb::ServiceStats {
        name,
        calls: t.calls,
        oneway: t.oneway,
        replies: replies.iter().map(|&o| t.count(o)).sum(),
        errors: t.errors,
        late_replies: t.late_replies,
        queue_depth: s.queue_depth.get(),
        in_flight: s.in_flight.get(),
        live_workers: u32::try_from(s.live_workers.get()).unwrap_or(u32::MAX),
        total_credit: s.total_credit.get(),
        free_credit: s.free_credit.get(),
        ..Default::default()
    };
    for o in Outcome::ALL {
        *outcome_field!(out, o) = t.count(o);
    }
    out
}

fn listener_stats_pb(name: String, l: &ListenerStats) -> pb::ListenerStats {
    let mut out = pb::ListenerStats {
        name,
        accepted: l.accepted.get(),
        active: l.active.get(),
        refused: l.refused.get(),
        closed_with_calls_in_flight: l.closed_with_calls_in_flight.get(),
        bytes_in: l.bytes_in.get(),
        bytes_out: l.bytes_out.get(),
        paused: l.is_paused(),
        unknown_service: l.unknown_service.get(),
        invalid_type: l.invalid_type.get(),
        tls_reloads: l.tls_reloads.get(),
        tls_reload_failures: l.tls_reload_failures.get(),
        transport_connections: Transport::ALL
            .iter()
            .map(|t| {
                (
                    t.label().to_string(),
                    l.transport_connections[t.index()].get(),
                )
            })
            .collect(),
        transport_calls: Transport::ALL
            .iter()
            .map(|t| (t.label().to_string(), l.transport_calls[t.index()].get()))
            .collect(),
        ..Default::default()
    };
    for r in CloseReason::ALL {
        let field = match r {
            CloseReason::ClientClose => &mut out.closed_client,
            CloseReason::IdleTimeout => &mut out.closed_idle,
            CloseReason::FrameTooLarge => &mut out.closed_frame_too_large,
            CloseReason::BadFrame => &mut out.closed_bad_frame,
            CloseReason::ProtocolError => &mut out.closed_protocol_error,
            CloseReason::Shutdown => &mut out.closed_shutdown,
            CloseReason::IoError => &mut out.closed_io_error,
            CloseReason::WriteTimeout => &mut out.closed_write_timeout,
            CloseReason::TlsError => &mut out.closed_tls_error,
        };
        *field = l.closed_for(r);
    }
    out
}

fn latency(h: &crate::telemetry::histogram::Histogram) -> pb::LatencySummary {
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
