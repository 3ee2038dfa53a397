//! What `-o json` prints: plain serde structs mirroring the admin API's
//! messages with their snake_case field names (durations stay `*_ms`
//! integers, enums become lower-case strings, maps are sorted), so scripts
//! get a stable shape independent of the generated code. And the tables the
//! same data renders to.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;
use thriftworker_proto::admin::v1 as pb;

use crate::table::{self, fields, Align, Table};

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ServiceSettings {
    pub timeout_ms: u64,
    pub method_timeouts_ms: BTreeMap<String, u64>,
    pub queue_timeout_ms: u64,
    pub max_queue: u64,
    pub strip_service_prefix: Option<bool>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Service {
    pub name: String,
    pub settings: ServiceSettings,
    pub live_workers: u32,
    pub total_credit: u64,
    pub free_credit: u64,
    pub in_flight: u64,
    pub queue_depth: u64,
    pub draining: bool,
}

/// One event (see `thriftctl events`).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Event {
    pub seq: u64,
    pub time_ms: u64,
    pub kind: String,
    pub subject: String,
    pub reason: String,
    pub peer: String,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct EventList {
    pub events: Vec<Event>,
}

impl From<&pb::Event> for Event {
    fn from(e: &pb::Event) -> Self {
        Event {
            seq: e.seq,
            time_ms: e.time_ms,
            kind: e.kind.clone(),
            subject: e.subject.clone(),
            reason: e.reason.clone(),
            peer: e.peer.clone(),
        }
    }
}

/// The time of day of `ms` since the Unix epoch, UTC.
fn clock(ms: u64) -> String {
    let s = ms / 1000;
    format!(
        "{:02}:{:02}:{:02}.{:03}Z",
        (s / 3600) % 24,
        (s / 60) % 60,
        s % 60,
        ms % 1000
    )
}

fn event_columns() -> Table {
    Table::new(&[
        ("TIME", Align::Left),
        ("KIND", Align::Left),
        ("SUBJECT", Align::Left),
        ("BY", Align::Left),
        ("REASON", Align::Left),
    ])
}

fn event_row(t: &mut Table, e: &Event) {
    t.row(vec![
        clock(e.time_ms),
        e.kind.clone(),
        table::or_dash(&e.subject),
        table::or_dash(&e.peer),
        e.reason.clone(),
    ]);
}

pub fn events_table(events: &[Event]) -> String {
    let mut t = event_columns();
    for e in events {
        event_row(&mut t, e);
    }
    t.render()
}

/// One event as a table line under [`events_table`]'s header (watch mode:
/// columns are not aligned across lines).
pub fn event_line(e: &Event) -> String {
    format!(
        "{}  {}  {}  {}  {}\n",
        clock(e.time_ms),
        e.kind,
        table::or_dash(&e.subject),
        table::or_dash(&e.peer),
        e.reason
    )
}

/// A worker being drained.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DrainedWorker {
    pub id: String,
    pub in_flight: u64,
}

/// The data plane's log filter.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LogLevel {
    pub filter: String,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ServiceList {
    pub services: Vec<Service>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ListenerSettings {
    pub address: String,
    pub services: Vec<String>,
    pub default_service: String,
    pub protocol: &'static str,
    pub transport: &'static str,
    /// PEM paths (empty: plaintext).
    pub tls_cert: String,
    pub tls_key: String,
    pub tls_client_ca: String,
    pub max_frame_size: u64,
    pub max_connections: u64,
    pub idle_timeout_ms: u64,
    pub max_pipeline: u64,
    pub paused: bool,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Listener {
    pub name: String,
    pub settings: ListenerSettings,
    pub bound_address: String,
    pub paused: bool,
    pub active_connections: u64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ListenerList {
    pub listeners: Vec<Listener>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Worker {
    pub id: String,
    pub services: Vec<String>,
    pub credit: u32,
    pub in_flight: u32,
    pub last_heartbeat_ms: u64,
    pub identity: String,
    /// The identity as text (HOST/PID/N for our libraries), or empty.
    pub name: String,
    pub leaving: bool,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct WorkerList {
    pub workers: Vec<Worker>,
}

/// Latency estimated from the server's histogram (quantiles within ~12%;
/// max is exact). All zero while `count` is 0.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct LatencySummary {
    pub count: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// Declares [`Outcomes`] from one list of the admin API's outcome fields,
/// which `MethodStats` and `ServiceStats` name alike: the struct (fields in
/// the order of the list, which is the order of the JSON keys) and its
/// conversions from both messages.
macro_rules! outcomes {
    ($($field:ident,)*) => {
        /// How the calls of a method or service ended: one counter per
        /// outcome (`server/src/telemetry/outcome.rs`), each named as its
        /// admin API field. In JSON, fields of the enclosing object.
        #[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
        pub struct Outcomes {
            $(pub $field: u64,)*
        }

        impl From<&pb::MethodStats> for Outcomes {
            fn from(m: &pb::MethodStats) -> Self {
                Outcomes { $($field: m.$field,)* }
            }
        }

        impl From<&pb::ServiceStats> for Outcomes {
            fn from(s: &pb::ServiceStats) -> Self {
                Outcomes { $($field: s.$field,)* }
            }
        }
    };
}

// Every outcome of a call, one line each, in the order of the views.
outcomes! {
    success,
    declared_exception,
    app_exception,
    timeouts,
    overloaded,
    no_worker,
    worker_died,
    shutdown,
    empty_reply,
    abandoned,
    bad_reply,
}

/// One method of one service. Every call ends in one of the [`Outcomes`];
/// `errors` sums all but success, declared_exception and abandoned.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct MethodStats {
    pub service: String,
    pub method: String,
    pub calls: u64,
    pub oneway: u64,
    #[serde(flatten)]
    pub outcomes: Outcomes,
    pub errors: u64,
    pub late_replies: u64,
    /// Request read to answer handed back (two-way calls).
    pub total: LatencySummary,
    pub queue_wait: LatencySummary,
    pub worker: LatencySummary,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ServiceStats {
    pub name: String,
    pub calls: u64,
    pub oneway: u64,
    pub replies: u64,
    #[serde(flatten)]
    pub outcomes: Outcomes,
    pub errors: u64,
    pub late_replies: u64,
    pub queue_depth: u64,
    pub in_flight: u64,
    pub live_workers: u32,
    pub total_credit: u64,
    pub free_credit: u64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ListenerStats {
    pub name: String,
    pub accepted: u64,
    pub active: u64,
    pub refused: u64,
    pub closed_client: u64,
    pub closed_idle: u64,
    pub closed_frame_too_large: u64,
    pub closed_bad_frame: u64,
    pub closed_protocol_error: u64,
    pub closed_shutdown: u64,
    pub closed_io_error: u64,
    pub closed_write_timeout: u64,
    pub closed_tls_error: u64,
    pub closed_with_calls_in_flight: u64,
    pub tls_reloads: u64,
    pub tls_reload_failures: u64,
    /// By transport label (sorted).
    pub transport_connections: BTreeMap<String, u64>,
    pub transport_calls: BTreeMap<String, u64>,
    pub unknown_service: u64,
    pub invalid_type: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub paused: bool,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct WorkerStats {
    pub id: String,
    pub services: Vec<String>,
    pub credit: u32,
    pub in_flight: u64,
    pub served: u64,
    pub heartbeat_age_ms: u64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Stats {
    pub uptime_ms: u64,
    pub draining: bool,
    pub version: String,
    pub git_sha: String,
    pub services: Vec<ServiceStats>,
    pub listeners: Vec<ListenerStats>,
    pub methods: Vec<MethodStats>,
    pub workers: u32,
    pub worker_stats: Vec<WorkerStats>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct HealthStatus {
    pub service: String,
    pub status: String,
}

/// The answer of calls that return nothing (`{}` in JSON).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Empty {}

// -- from the generated messages ------------------------------------------------

fn sorted<V: Copy>(m: &HashMap<String, V>) -> BTreeMap<String, V> {
    m.iter().map(|(k, v)| (k.clone(), *v)).collect()
}

impl ListenerSettings {
    /// `off`, `on`, or `mtls` (client certificates required).
    pub fn tls_state(&self) -> &'static str {
        match (self.tls_cert.is_empty(), self.tls_client_ca.is_empty()) {
            (true, _) => "off",
            (false, true) => "on",
            (false, false) => "mtls",
        }
    }
}

pub fn transport_name(t: i32) -> &'static str {
    match pb::Transport::try_from(t) {
        Ok(pb::Transport::Auto) => "auto",
        Ok(pb::Transport::Framed) => "framed",
        Ok(pb::Transport::Unframed) => "unframed",
        Ok(pb::Transport::Header) => "header",
        Err(_) => "unknown",
    }
}

pub fn protocol_name(p: i32) -> &'static str {
    match pb::Protocol::try_from(p) {
        Ok(pb::Protocol::Auto) => "auto",
        Ok(pb::Protocol::Binary) => "binary",
        Ok(pb::Protocol::Compact) => "compact",
        Err(_) => "unknown",
    }
}

impl From<&pb::ServiceSettings> for ServiceSettings {
    fn from(s: &pb::ServiceSettings) -> Self {
        ServiceSettings {
            timeout_ms: s.timeout_ms,
            method_timeouts_ms: sorted(&s.method_timeouts_ms),
            queue_timeout_ms: s.queue_timeout_ms,
            max_queue: s.max_queue,
            strip_service_prefix: s.strip_service_prefix,
        }
    }
}

impl From<&pb::Service> for Service {
    fn from(s: &pb::Service) -> Self {
        Service {
            name: s.name.clone(),
            settings: (&s.settings.clone().unwrap_or_default()).into(),
            live_workers: s.live_workers,
            total_credit: s.total_credit,
            free_credit: s.free_credit,
            in_flight: s.in_flight,
            queue_depth: s.queue_depth,
            draining: s.draining,
        }
    }
}

impl From<&pb::ListenerSettings> for ListenerSettings {
    fn from(s: &pb::ListenerSettings) -> Self {
        ListenerSettings {
            address: s.address.clone(),
            services: s.services.clone(),
            default_service: s.default_service.clone(),
            protocol: protocol_name(s.protocol),
            transport: transport_name(s.transport),
            tls_cert: s.tls_cert.clone(),
            tls_key: s.tls_key.clone(),
            tls_client_ca: s.tls_client_ca.clone(),
            max_frame_size: s.max_frame_size,
            max_connections: s.max_connections,
            idle_timeout_ms: s.idle_timeout_ms,
            max_pipeline: s.max_pipeline,
            paused: s.paused,
        }
    }
}

impl From<&pb::Listener> for Listener {
    fn from(l: &pb::Listener) -> Self {
        Listener {
            name: l.name.clone(),
            settings: (&l.settings.clone().unwrap_or_default()).into(),
            bound_address: l.bound_address.clone(),
            paused: l.paused,
            active_connections: l.active_connections,
        }
    }
}

impl From<&pb::Worker> for Worker {
    fn from(w: &pb::Worker) -> Self {
        Worker {
            id: w.id.clone(),
            services: w.services.clone(),
            credit: w.credit,
            in_flight: w.in_flight,
            last_heartbeat_ms: w.last_heartbeat_ms,
            identity: w.identity.clone(),
            name: w.name.clone(),
            leaving: w.leaving,
        }
    }
}

impl From<&pb::LatencySummary> for LatencySummary {
    fn from(l: &pb::LatencySummary) -> Self {
        LatencySummary {
            count: l.count,
            p50_ms: l.p50_ms,
            p90_ms: l.p90_ms,
            p99_ms: l.p99_ms,
            max_ms: l.max_ms,
        }
    }
}

fn latency_summary(l: &Option<pb::LatencySummary>) -> LatencySummary {
    l.as_ref().map(Into::into).unwrap_or_default()
}

impl From<&pb::MethodStats> for MethodStats {
    fn from(m: &pb::MethodStats) -> Self {
        MethodStats {
            service: m.service.clone(),
            method: m.method.clone(),
            calls: m.calls,
            oneway: m.oneway,
            outcomes: m.into(),
            errors: m.errors,
            late_replies: m.late_replies,
            total: latency_summary(&m.total),
            queue_wait: latency_summary(&m.queue_wait),
            worker: latency_summary(&m.worker),
        }
    }
}

impl From<&pb::ServiceStats> for ServiceStats {
    fn from(s: &pb::ServiceStats) -> Self {
        ServiceStats {
            name: s.name.clone(),
            calls: s.calls,
            oneway: s.oneway,
            replies: s.replies,
            outcomes: s.into(),
            errors: s.errors,
            late_replies: s.late_replies,
            queue_depth: s.queue_depth,
            in_flight: s.in_flight,
            live_workers: s.live_workers,
            total_credit: s.total_credit,
            free_credit: s.free_credit,
        }
    }
}

impl From<&pb::ListenerStats> for ListenerStats {
    fn from(l: &pb::ListenerStats) -> Self {
        ListenerStats {
            name: l.name.clone(),
            accepted: l.accepted,
            active: l.active,
            refused: l.refused,
            closed_client: l.closed_client,
            closed_idle: l.closed_idle,
            closed_frame_too_large: l.closed_frame_too_large,
            closed_bad_frame: l.closed_bad_frame,
            closed_protocol_error: l.closed_protocol_error,
            closed_shutdown: l.closed_shutdown,
            closed_io_error: l.closed_io_error,
            closed_write_timeout: l.closed_write_timeout,
            closed_tls_error: l.closed_tls_error,
            closed_with_calls_in_flight: l.closed_with_calls_in_flight,
            tls_reloads: l.tls_reloads,
            tls_reload_failures: l.tls_reload_failures,
            transport_connections: sorted(&l.transport_connections),
            transport_calls: sorted(&l.transport_calls),
            unknown_service: l.unknown_service,
            invalid_type: l.invalid_type,
            bytes_in: l.bytes_in,
            bytes_out: l.bytes_out,
            paused: l.paused,
        }
    }
}

impl From<&pb::WorkerStats> for WorkerStats {
    fn from(w: &pb::WorkerStats) -> Self {
        WorkerStats {
            id: w.id.clone(),
            services: w.services.clone(),
            credit: w.credit,
            in_flight: w.in_flight,
            served: w.served,
            heartbeat_age_ms: w.heartbeat_age_ms,
        }
    }
}

impl From<&pb::Stats> for Stats {
    fn from(s: &pb::Stats) -> Self {
        Stats {
            uptime_ms: s.uptime_ms,
            draining: s.draining,
            version: s.version.clone(),
            git_sha: s.git_sha.clone(),
            services: s.services.iter().map(Into::into).collect(),
            listeners: s.listeners.iter().map(Into::into).collect(),
            methods: s.methods.iter().map(Into::into).collect(),
            workers: s.workers,
            worker_stats: s.worker_stats.iter().map(Into::into).collect(),
        }
    }
}

// -- tables ---------------------------------------------------------------------

fn service_state(s: &Service) -> String {
    if s.draining {
        "draining".into()
    } else if s.live_workers == 0 {
        "no workers".into()
    } else {
        "serving".into()
    }
}

fn strip(s: &ServiceSettings) -> String {
    table::yes_no(s.strip_service_prefix.unwrap_or(true))
}

/// A table column: header, alignment, the cell of a row, and whether only
/// `-o wide` shows it. Each list's columns are one table that both views
/// read.
type Column<T> = (&'static str, Align, fn(&T) -> String, bool);

fn render_columns<T>(columns: &[Column<T>], rows: &[T], wide: bool) -> String {
    let shown: Vec<&Column<T>> = columns.iter().filter(|c| wide || !c.3).collect();
    let header: Vec<(&str, Align)> = shown.iter().map(|c| (c.0, c.1)).collect();
    let mut t = Table::new(&header);
    for r in rows {
        t.row(shown.iter().map(|c| (c.2)(r)).collect());
    }
    t.render()
}

const SERVICE_COLUMNS: &[Column<Service>] = &[
    ("NAME", Align::Left, |s| s.name.clone(), false),
    (
        "WORKERS",
        Align::Right,
        |s| s.live_workers.to_string(),
        false,
    ),
    (
        "CREDIT",
        Align::Right,
        |s| format!("{}/{}", s.free_credit, s.total_credit),
        false,
    ),
    (
        "IN-FLIGHT",
        Align::Right,
        |s| s.in_flight.to_string(),
        false,
    ),
    ("QUEUE", Align::Right, |s| s.queue_depth.to_string(), false),
    (
        "TIMEOUT",
        Align::Left,
        |s| table::ms(s.settings.timeout_ms),
        false,
    ),
    (
        "METHOD-TIMEOUTS",
        Align::Left,
        |s| {
            let methods: Vec<String> = s
                .settings
                .method_timeouts_ms
                .iter()
                .map(|(m, v)| format!("{m}={}", table::ms(*v)))
                .collect();
            table::list(&methods)
        },
        true,
    ),
    (
        "QUEUE-TIMEOUT",
        Align::Left,
        |s| table::ms(s.settings.queue_timeout_ms),
        false,
    ),
    (
        "MAX-QUEUE",
        Align::Right,
        |s| s.settings.max_queue.to_string(),
        false,
    ),
    ("STRIP", Align::Left, |s| strip(&s.settings), false),
    ("STATE", Align::Left, service_state, false),
];

pub fn services_table(services: &[Service]) -> String {
    render_columns(SERVICE_COLUMNS, services, false)
}

/// `-o wide`: with the per-method deadlines.
pub fn services_table_wide(services: &[Service]) -> String {
    render_columns(SERVICE_COLUMNS, services, true)
}

const LISTENER_COLUMNS: &[Column<Listener>] = &[
    ("NAME", Align::Left, |l| l.name.clone(), false),
    (
        "ADDRESS",
        Align::Left,
        |l| {
            if l.bound_address.is_empty() {
                l.settings.address.clone()
            } else {
                l.bound_address.clone()
            }
        },
        false,
    ),
    (
        "CONFIGURED",
        Align::Left,
        |l| l.settings.address.clone(),
        true,
    ),
    (
        "SERVICES",
        Align::Left,
        |l| table::list(&l.settings.services),
        false,
    ),
    (
        "DEFAULT",
        Align::Left,
        |l| table::or_dash(&l.settings.default_service),
        false,
    ),
    (
        "PROTOCOL",
        Align::Left,
        |l| l.settings.protocol.to_string(),
        false,
    ),
    (
        "TRANSPORT",
        Align::Left,
        |l| l.settings.transport.to_string(),
        false,
    ),
    (
        "TLS",
        Align::Left,
        |l| l.settings.tls_state().to_string(),
        false,
    ),
    (
        "MAX-FRAME",
        Align::Right,
        |l| l.settings.max_frame_size.to_string(),
        true,
    ),
    (
        "MAX-CONNS",
        Align::Right,
        |l| l.settings.max_connections.to_string(),
        true,
    ),
    (
        "IDLE",
        Align::Left,
        |l| table::ms(l.settings.idle_timeout_ms),
        true,
    ),
    (
        "PIPELINE",
        Align::Right,
        |l| l.settings.max_pipeline.to_string(),
        true,
    ),
    (
        "ACTIVE",
        Align::Right,
        |l| l.active_connections.to_string(),
        false,
    ),
    (
        "STATE",
        Align::Left,
        |l| if l.paused { "paused" } else { "accepting" }.to_string(),
        false,
    ),
];

pub fn listeners_table(listeners: &[Listener]) -> String {
    render_columns(LISTENER_COLUMNS, listeners, false)
}

/// `-o wide`: every listener setting.
pub fn listeners_table_wide(listeners: &[Listener]) -> String {
    render_columns(LISTENER_COLUMNS, listeners, true)
}

pub fn service_detail(s: &Service) -> String {
    let methods = if s.settings.method_timeouts_ms.is_empty() {
        "-".to_string()
    } else {
        s.settings
            .method_timeouts_ms
            .iter()
            .map(|(m, ms)| format!("{m}={}", table::ms(*ms)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    fields(&[
        ("name", s.name.clone()),
        ("state", service_state(s)),
        ("timeout", table::ms(s.settings.timeout_ms)),
        ("method timeouts", methods),
        ("queue timeout", table::ms(s.settings.queue_timeout_ms)),
        ("max queue", s.settings.max_queue.to_string()),
        ("strip service prefix", strip(&s.settings)),
        ("live workers", s.live_workers.to_string()),
        (
            "credit (free/total)",
            format!("{}/{}", s.free_credit, s.total_credit),
        ),
        ("in flight", s.in_flight.to_string()),
        ("queued", s.queue_depth.to_string()),
    ])
}

pub fn listener_detail(l: &Listener) -> String {
    let s = &l.settings;
    let n = |v: u64| {
        if v == 0 {
            "default".to_string()
        } else {
            v.to_string()
        }
    };
    fields(&[
        ("name", l.name.clone()),
        ("address", s.address.clone()),
        ("bound address", table::or_dash(&l.bound_address)),
        ("services", table::list(&s.services)),
        ("default service", table::or_dash(&s.default_service)),
        ("protocol", s.protocol.to_string()),
        ("transport", s.transport.to_string()),
        ("tls", s.tls_state().to_string()),
        ("tls cert", table::or_dash(&s.tls_cert)),
        ("tls client ca", table::or_dash(&s.tls_client_ca)),
        ("max frame size", n(s.max_frame_size)),
        ("max connections", n(s.max_connections)),
        ("idle timeout", table::ms(s.idle_timeout_ms)),
        ("max pipeline", n(s.max_pipeline)),
        (
            "state",
            if l.paused { "paused" } else { "accepting" }.to_string(),
        ),
        ("active connections", l.active_connections.to_string()),
    ])
}

pub fn worker_detail(w: &Worker) -> String {
    fields(&[
        ("id", w.id.clone()),
        ("services", table::list(&w.services)),
        ("credit", w.credit.to_string()),
        ("in flight", w.in_flight.to_string()),
        ("last seen", format!("{}ms ago", w.last_heartbeat_ms)),
        ("identity", table::or_dash(&w.identity)),
        ("name", table::or_dash(&w.name)),
        (
            "state",
            if w.leaving { "leaving" } else { "ready" }.to_string(),
        ),
    ])
}

pub fn workers_table(workers: &[Worker]) -> String {
    let mut t = Table::new(&[
        ("ID", Align::Left),
        ("SERVICES", Align::Left),
        ("CREDIT", Align::Right),
        ("IN-FLIGHT", Align::Right),
        ("LAST-SEEN", Align::Right),
        ("IDENTITY", Align::Left),
        ("STATE", Align::Left),
    ]);
    for w in workers {
        t.row(vec![
            w.id.clone(),
            table::list(&w.services),
            w.credit.to_string(),
            w.in_flight.to_string(),
            format!("{}ms ago", w.last_heartbeat_ms),
            // The name when it has one: which process this is, across data planes.
            table::or_dash(if w.name.is_empty() {
                &w.identity
            } else {
                &w.name
            }),
            if w.leaving { "leaving" } else { "ready" }.to_string(),
        ]);
    }
    t.render()
}

// -- the stats screen -----------------------------------------------------------

/// The counters of one row that CALLS/S and ERR% come from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Counts {
    /// Calls received, two-way and oneway.
    calls: u64,
    /// Calls that ended, in any outcome.
    finished: u64,
    errors: u64,
}

impl Counts {
    /// Finished: the answers of the service (success, declared exception)
    /// and the errors; abandoned calls are neither.
    fn of(calls: u64, oneway: u64, o: &Outcomes, errors: u64) -> Counts {
        Counts {
            calls: calls + oneway,
            finished: o.success + o.declared_exception + errors,
            errors,
        }
    }

    fn service(s: &ServiceStats) -> Counts {
        Counts::of(s.calls, s.oneway, &s.outcomes, s.errors)
    }

    fn method(m: &MethodStats) -> Counts {
        Counts::of(m.calls, m.oneway, &m.outcomes, m.errors)
    }

    /// Whether `before` can be an earlier sample of the same counters.
    fn follows(self, before: Counts) -> bool {
        self.calls >= before.calls
            && self.finished >= before.finished
            && self.errors >= before.errors
    }
}

/// What one row did over the window of the screen.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Activity {
    /// Calls received per second, two-way and oneway.
    pub calls_per_s: f64,
    /// Errors in percent of the calls that finished; None when none did.
    pub err_pct: Option<f64>,
}

/// CALLS/S and ERR% of every service and method, over one window.
#[derive(Debug, Clone, PartialEq)]
pub struct Rates {
    /// Milliseconds since the previous sample, or None: averages since the
    /// server started (one-shot, first frame of --watch, server restarted).
    pub window_ms: Option<u64>,
    pub services: BTreeMap<String, Activity>,
    /// By (service, method).
    pub methods: BTreeMap<(String, String), Activity>,
}

/// Rates from the difference with the previous sample when there is one
/// (watching), else the average since the server started. A row missing
/// from the previous sample, or whose counters went back (re-registered),
/// counts from zero over the window.
pub fn rates(prev: Option<&Stats>, cur: &Stats) -> Rates {
    let prev = prev.filter(|p| p.uptime_ms < cur.uptime_ms);
    let window_ms = prev.map(|p| cur.uptime_ms - p.uptime_ms);
    let activity = |now: Counts, before: Option<Counts>| {
        let (base, ms) = match window_ms {
            Some(ms) => (before.filter(|b| now.follows(*b)).unwrap_or_default(), ms),
            None => (Counts::default(), cur.uptime_ms),
        };
        let calls = now.calls - base.calls;
        let finished = now.finished - base.finished;
        let errors = now.errors - base.errors;
        Activity {
            calls_per_s: if ms > 0 {
                calls as f64 * 1000.0 / ms as f64
            } else {
                0.0
            },
            err_pct: (finished > 0).then(|| errors as f64 * 100.0 / finished as f64),
        }
    };
    let services = cur
        .services
        .iter()
        .map(|s| {
            let before = prev.and_then(|p| p.services.iter().find(|ps| ps.name == s.name));
            let a = activity(Counts::service(s), before.map(Counts::service));
            (s.name.clone(), a)
        })
        .collect();
    let methods = cur
        .methods
        .iter()
        .map(|m| {
            let before = prev.and_then(|p| {
                p.methods
                    .iter()
                    .find(|pm| pm.service == m.service && pm.method == m.method)
            });
            let a = activity(Counts::method(m), before.map(Counts::method));
            ((m.service.clone(), m.method.clone()), a)
        })
        .collect();
    Rates {
        window_ms,
        services,
        methods,
    }
}

/// P50 and P99 cells of a latency summary: "-" before the first call.
fn p50_p99(l: &LatencySummary) -> (String, String) {
    if l.count == 0 {
        ("-".into(), "-".into())
    } else {
        (table::latency(l.p50_ms), table::latency(l.p99_ms))
    }
}

fn stats_header(cur: &Stats, rates: &Rates) -> String {
    let mut parts = vec![format!("uptime {}", table::uptime(cur.uptime_ms))];
    if !cur.version.is_empty() {
        let mut v = format!("thriftworker {}", cur.version);
        if !cur.git_sha.is_empty() {
            v.push_str(&format!(" ({})", cur.git_sha));
        }
        parts.push(v);
    }
    parts.push(format!("workers {}", cur.workers));
    parts.push(if cur.draining { "DRAINING" } else { "running" }.into());
    parts.push(match rates.window_ms {
        Some(ms) => format!("rates: last {}", table::window(ms)),
        None => "rates: since start".into(),
    });
    parts.join("   ") + "\n"
}

/// The screen of `thriftctl stats`: a header line, then services, methods
/// and listeners. CALLS/S and ERR% cover the time since `prev` when given
/// (--watch), else the whole uptime; the other columns are totals or gauges.
pub fn stats_view(prev: Option<&Stats>, cur: &Stats) -> String {
    let rates = rates(prev, cur);
    let mut out = stats_header(cur, &rates);

    let mut t = Table::new(&[
        ("SERVICE", Align::Left),
        ("CALLS", Align::Right),
        ("CALLS/S", Align::Right),
        ("ERRORS", Align::Right),
        ("ERR%", Align::Right),
        ("QUEUE", Align::Right),
        ("IN-FLIGHT", Align::Right),
        ("WORKERS", Align::Right),
        ("CREDIT", Align::Right),
    ]);
    for s in &cur.services {
        let a = rates.services.get(&s.name);
        t.row(vec![
            s.name.clone(),
            (s.calls + s.oneway).to_string(),
            table::rate(a.map_or(0.0, |a| a.calls_per_s)),
            s.errors.to_string(),
            table::percent(a.and_then(|a| a.err_pct)),
            s.queue_depth.to_string(),
            s.in_flight.to_string(),
            s.live_workers.to_string(),
            format!("{}/{}", s.free_credit, s.total_credit),
        ]);
    }
    out.push('\n');
    out.push_str(&t.render());

    out.push('\n');
    if cur.methods.is_empty() {
        out.push_str("methods: no calls yet\n");
    } else {
        let mut t = Table::new(&[
            ("SERVICE:METHOD", Align::Left),
            ("CALLS", Align::Right),
            ("CALLS/S", Align::Right),
            ("ERR%", Align::Right),
            ("P50", Align::Right),
            ("P99", Align::Right),
        ]);
        let mut methods: Vec<&MethodStats> = cur.methods.iter().collect();
        methods.sort_by(|a, b| (&a.service, &a.method).cmp(&(&b.service, &b.method)));
        for m in methods {
            let a = rates.methods.get(&(m.service.clone(), m.method.clone()));
            let (p50, p99) = p50_p99(&m.total);
            t.row(vec![
                format!("{}:{}", m.service, m.method),
                (m.calls + m.oneway).to_string(),
                table::rate(a.map_or(0.0, |a| a.calls_per_s)),
                table::percent(a.and_then(|a| a.err_pct)),
                p50,
                p99,
            ]);
        }
        out.push_str(&t.render());
    }

    let mut t = Table::new(&[
        ("LISTENER", Align::Left),
        ("ACTIVE", Align::Right),
        ("ACCEPTED", Align::Right),
        ("REFUSED", Align::Right),
        ("CLOSED-BAD", Align::Right),
        ("PAUSED", Align::Left),
    ]);
    for l in &cur.listeners {
        t.row(vec![
            l.name.clone(),
            l.active.to_string(),
            l.accepted.to_string(),
            l.refused.to_string(),
            (l.closed_bad_frame
                + l.closed_frame_too_large
                + l.closed_protocol_error
                + l.closed_tls_error)
                .to_string(),
            table::yes_no(l.paused),
        ]);
    }
    out.push('\n');
    out.push_str(&t.render());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lat(count: u64, p50_ms: f64, p99_ms: f64) -> LatencySummary {
        LatencySummary {
            count,
            p50_ms,
            p90_ms: p99_ms,
            p99_ms,
            max_ms: p99_ms * 2.0,
        }
    }

    fn service(name: &str, calls: u64, errors: u64) -> ServiceStats {
        ServiceStats {
            name: name.into(),
            calls,
            oneway: 0,
            replies: calls - errors,
            outcomes: Outcomes {
                success: calls - errors,
                timeouts: errors,
                ..Outcomes::default()
            },
            errors,
            late_replies: 0,
            queue_depth: 4,
            in_flight: 0,
            live_workers: 2,
            total_credit: 8,
            free_credit: 8,
        }
    }

    /// A method whose calls all finished: `errors` timed out, the rest
    /// split between success and `declared` exceptions.
    fn method(
        service: &str,
        name: &str,
        (calls, oneway, declared, errors): (u64, u64, u64, u64),
        total: LatencySummary,
    ) -> MethodStats {
        MethodStats {
            service: service.into(),
            method: name.into(),
            calls,
            oneway,
            outcomes: Outcomes {
                success: calls + oneway - declared - errors,
                declared_exception: declared,
                timeouts: errors,
                ..Outcomes::default()
            },
            errors,
            late_replies: 0,
            total,
            queue_wait: LatencySummary::default(),
            worker: LatencySummary::default(),
        }
    }

    fn listener() -> ListenerStats {
        ListenerStats {
            name: "echo".into(),
            accepted: 10,
            active: 1,
            refused: 2,
            closed_client: 5,
            closed_idle: 0,
            closed_frame_too_large: 1,
            closed_bad_frame: 2,
            closed_protocol_error: 3,
            closed_shutdown: 0,
            closed_io_error: 0,
            closed_write_timeout: 0,
            closed_tls_error: 0,
            closed_with_calls_in_flight: 0,
            tls_reloads: 0,
            tls_reload_failures: 0,
            transport_connections: BTreeMap::new(),
            transport_calls: BTreeMap::new(),
            unknown_service: 0,
            invalid_type: 0,
            bytes_in: 0,
            bytes_out: 0,
            paused: true,
        }
    }

    fn stats(uptime_ms: u64, methods: Vec<MethodStats>) -> Stats {
        let mut calls = 0;
        let mut errors = 0;
        for m in &methods {
            calls += m.calls + m.oneway;
            errors += m.errors;
        }
        Stats {
            uptime_ms,
            draining: false,
            version: "0.1.0".into(),
            git_sha: "3f2a9c1d0b7e".into(),
            services: vec![service("Echo", calls, errors)],
            listeners: vec![listener()],
            methods,
            workers: 2,
            worker_stats: vec![],
        }
    }

    fn echo_only(uptime_ms: u64, calls: u64) -> Stats {
        stats(
            uptime_ms,
            vec![method(
                "Echo",
                "echo",
                (calls, 0, 0, 0),
                lat(calls, 0.5, 12.0),
            )],
        )
    }

    #[test]
    fn rates_since_start_and_between_samples() {
        let first = echo_only(10_000, 100);
        let r = rates(None, &first);
        assert_eq!(r.window_ms, None);
        assert_eq!(r.services["Echo"].calls_per_s, 10.0);
        assert_eq!(r.methods[&("Echo".into(), "echo".into())].calls_per_s, 10.0);
        let second = echo_only(12_000, 160);
        let r = rates(Some(&first), &second);
        assert_eq!(r.window_ms, Some(2000));
        assert_eq!(r.services["Echo"].calls_per_s, 30.0);
        assert_eq!(r.methods[&("Echo".into(), "echo".into())].calls_per_s, 30.0);
        // A restarted server (uptime went back) falls back to the average.
        let restarted = echo_only(1_000, 5);
        let r = rates(Some(&second), &restarted);
        assert_eq!(r.window_ms, None);
        assert_eq!(r.services["Echo"].calls_per_s, 5.0);
        // Nothing yet: no rate, no error share.
        let r = rates(None, &stats(0, vec![]));
        assert_eq!(r.services["Echo"].calls_per_s, 0.0);
        assert_eq!(r.services["Echo"].err_pct, None);
    }

    #[test]
    fn rates_of_new_and_reset_rows_count_from_zero() {
        let first = echo_only(10_000, 100);
        let mut second = echo_only(11_000, 50);
        second.methods.push(method(
            "Echo",
            "fresh",
            (4, 0, 0, 1),
            LatencySummary::default(),
        ));
        let r = rates(Some(&first), &second);
        // echo went back from 100 to 50 (re-registered): 50 in the window.
        assert_eq!(r.methods[&("Echo".into(), "echo".into())].calls_per_s, 50.0);
        let fresh = r.methods[&("Echo".into(), "fresh".into())];
        assert_eq!(fresh.calls_per_s, 4.0);
        assert_eq!(fresh.err_pct, Some(25.0));
    }

    #[test]
    fn stats_view_since_start() {
        let view = stats_view(None, &echo_only(10_000, 100));
        assert_eq!(
            view,
            "uptime 10s   thriftworker 0.1.0 (3f2a9c1d0b7e)   workers 2   running   rates: since start\n\
             \n\
             SERVICE  CALLS  CALLS/S  ERRORS  ERR%  QUEUE  IN-FLIGHT  WORKERS  CREDIT\n\
             Echo       100     10.0       0  0.0%      4          0        2     8/8\n\
             \n\
             SERVICE:METHOD  CALLS  CALLS/S  ERR%     P50     P99\n\
             Echo:echo         100     10.0  0.0%  0.50ms  12.0ms\n\
             \n\
             LISTENER  ACTIVE  ACCEPTED  REFUSED  CLOSED-BAD  PAUSED\n\
             echo           1        10        2           6  yes\n"
        );
    }

    #[test]
    fn stats_view_over_an_interval() {
        // 2 s apart. echo: 100 -> 300 calls, errors 0 -> 10 (of 200 finished
        // in the window; 5 declared exceptions are answers, not errors); log:
        // oneway only, 40 -> 50, so no latency at all. The service: 210
        // calls finished in the window, 10 errors.
        let before = stats(
            10_000,
            vec![
                method("Echo", "echo", (100, 0, 0, 0), lat(100, 0.42, 9.5)),
                method("Echo", "log", (0, 40, 0, 0), LatencySummary::default()),
            ],
        );
        let mut now = stats(
            12_000,
            vec![
                // Listed out of order: the view sorts by service and method.
                method("Echo", "log", (0, 50, 0, 0), LatencySummary::default()),
                method("Echo", "echo", (300, 0, 5, 10), lat(300, 0.42, 1234.5)),
            ],
        );
        now.draining = true;
        now.git_sha = String::new();
        let view = stats_view(Some(&before), &now);
        assert_eq!(
            view,
            "uptime 12s   thriftworker 0.1.0   workers 2   DRAINING   rates: last 2s\n\
             \n\
             SERVICE  CALLS  CALLS/S  ERRORS  ERR%  QUEUE  IN-FLIGHT  WORKERS  CREDIT\n\
             Echo       350      105      10  4.8%      4          0        2     8/8\n\
             \n\
             SERVICE:METHOD  CALLS  CALLS/S  ERR%     P50    P99\n\
             Echo:echo         300      100  5.0%  0.42ms  1.23s\n\
             Echo:log           50      5.0  0.0%       -      -\n\
             \n\
             LISTENER  ACTIVE  ACCEPTED  REFUSED  CLOSED-BAD  PAUSED\n\
             echo           1        10        2           6  yes\n"
        );
    }

    #[test]
    fn stats_view_without_calls() {
        let mut s = stats(1_000, vec![]);
        s.version = String::new();
        let view = stats_view(None, &s);
        assert!(
            view.starts_with("uptime 1s   workers 2   running   rates: since start\n"),
            "{view}"
        );
        assert!(
            view.contains("\nmethods: no calls yet\n\nLISTENER"),
            "{view}"
        );
        assert!(!view.contains("SERVICE:METHOD"), "{view}");
    }

    /// The keys of a JSON object in the order they are written, which a
    /// `serde_json::Value` (a sorted map) does not keep.
    struct Keys(Vec<String>);

    impl<'de> serde::Deserialize<'de> for Keys {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Keys, D::Error> {
            d.deserialize_map(Keys(Vec::new()))
        }
    }

    impl<'de> serde::de::Visitor<'de> for Keys {
        type Value = Keys;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a JSON object")
        }

        fn visit_map<A: serde::de::MapAccess<'de>>(mut self, mut map: A) -> Result<Keys, A::Error> {
            while let Some((key, serde::de::IgnoredAny)) = map.next_entry()? {
                self.0.push(key);
            }
            Ok(self)
        }
    }

    fn keys_in_order(value: &impl Serialize) -> Vec<String> {
        let text = serde_json::to_string(value).unwrap();
        serde_json::from_str::<Keys>(&text).unwrap().0
    }

    /// `before`, then every outcome in the order of the table, then `after`.
    fn around_outcomes(before: &[&str], after: &[&str]) -> Vec<String> {
        let outcomes = keys_in_order(&Outcomes::default());
        let words = |w: &[&str]| w.iter().map(|k| k.to_string()).collect::<Vec<_>>();
        [words(before), outcomes, words(after)].concat()
    }

    /// The field names of a generated message, from its derived `Debug`
    /// (`Name { field: value, ... }`): prost has no reflection.
    fn proto_fields(message: &impl std::fmt::Debug) -> Vec<String> {
        let text = format!("{message:?}");
        let (_, body) = text.split_once(" { ").unwrap();
        let mut fields: Vec<String> = body
            .trim_end_matches(" }")
            .split(", ")
            .map(|f| f.split_once(": ").unwrap().0.to_string())
            .collect();
        fields.sort_unstable();
        fields
    }

    fn sorted_keys(value: &impl Serialize) -> Vec<String> {
        let mut keys = keys_in_order(value);
        keys.sort_unstable();
        keys
    }

    fn method_pb() -> pb::MethodStats {
        pb::MethodStats {
            service: "Echo".into(),
            method: "echo".into(),
            calls: 3,
            success: 2,
            errors: 1,
            timeouts: 1,
            total: Some(pb::LatencySummary {
                count: 3,
                p50_ms: 0.5,
                p90_ms: 0.9,
                p99_ms: 1.5,
                max_ms: 2.0,
            }),
            ..Default::default()
        }
    }

    fn service_pb() -> pb::ServiceStats {
        pb::ServiceStats {
            name: "Echo".into(),
            errors: 4,
            total_credit: 8,
            free_credit: 6,
            ..Default::default()
        }
    }

    #[test]
    fn method_stats_json() {
        let m = MethodStats::from(&method_pb());
        assert_eq!(
            keys_in_order(&m),
            around_outcomes(
                &["service", "method", "calls", "oneway"],
                &["errors", "late_replies", "total", "queue_wait", "worker"]
            )
        );
        let v = serde_json::to_value(&m).unwrap();
        assert_eq!(v["total"]["p99_ms"], 1.5);
        assert_eq!(v["success"], 2);
        assert_eq!(v["timeouts"], 1);
        // A summary the server left out reads as zeros, not null.
        assert_eq!(
            v["queue_wait"],
            serde_json::json!({"count": 0, "p50_ms": 0.0, "p90_ms": 0.0, "p99_ms": 0.0, "max_ms": 0.0})
        );
    }

    #[test]
    fn service_stats_json() {
        let s = ServiceStats::from(&service_pb());
        assert_eq!(
            keys_in_order(&s),
            around_outcomes(
                &["name", "calls", "oneway", "replies"],
                &[
                    "errors",
                    "late_replies",
                    "queue_depth",
                    "in_flight",
                    "live_workers",
                    "total_credit",
                    "free_credit",
                ]
            )
        );
        let v = serde_json::to_value(&s).unwrap();
        assert!(v.get("unknown_service").is_none(), "moved to listeners");
    }

    /// A field added to the admin API (a new outcome above all) shows in
    /// `-o json` too, under its own name.
    #[test]
    fn the_json_has_every_field_of_the_messages() {
        let m = pb::MethodStats::default();
        assert_eq!(sorted_keys(&MethodStats::from(&m)), proto_fields(&m));
        let s = pb::ServiceStats::default();
        assert_eq!(sorted_keys(&ServiceStats::from(&s)), proto_fields(&s));
    }

    fn stats_pb() -> pb::Stats {
        pb::Stats {
            uptime_ms: 5,
            version: "0.1.0".into(),
            git_sha: "abc".into(),
            services: vec![service_pb()],
            listeners: vec![pb::ListenerStats {
                name: "echo".into(),
                refused: 1,
                closed_bad_frame: 2,
                unknown_service: 3,
                invalid_type: 4,
                closed_shutdown: 5,
                closed_io_error: 6,
                closed_write_timeout: 0,
                ..Default::default()
            }],
            methods: vec![method_pb()],
            worker_stats: vec![pb::WorkerStats {
                id: "7".into(),
                services: vec!["Echo".into()],
                credit: 4,
                in_flight: 1,
                served: 99,
                heartbeat_age_ms: 250,
            }],
            workers: 1,
            draining: false,
        }
    }

    #[test]
    fn stats_json() {
        let s = Stats::from(&stats_pb());
        assert_eq!(
            keys_in_order(&s),
            [
                "uptime_ms",
                "draining",
                "version",
                "git_sha",
                "services",
                "listeners",
                "methods",
                "workers",
                "worker_stats",
            ]
        );
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["version"], "0.1.0");
        assert_eq!(v["git_sha"], "abc");
        let svc = &v["services"][0];
        assert_eq!(
            (&svc["errors"], &svc["total_credit"], &svc["free_credit"]),
            (&4.into(), &8.into(), &6.into())
        );
        let l = &v["listeners"][0];
        assert_eq!(l["refused"], 1);
        assert_eq!(l["closed_bad_frame"], 2);
        assert_eq!(l["unknown_service"], 3);
        assert_eq!(l["invalid_type"], 4);
        assert_eq!(l["closed_shutdown"], 5);
        assert_eq!(l["closed_io_error"], 6);
        assert_eq!(
            v["worker_stats"][0],
            serde_json::json!({
                "id": "7",
                "services": ["Echo"],
                "credit": 4,
                "in_flight": 1,
                "served": 99,
                "heartbeat_age_ms": 250
            })
        );
        assert_eq!(v["methods"][0]["total"]["count"], 3);
    }

    #[test]
    fn json_shape_is_snake_case_and_sorted() {
        let mut settings = pb::ServiceSettings {
            timeout_ms: 5000,
            queue_timeout_ms: 1000,
            max_queue: 10,
            strip_service_prefix: Some(false),
            ..Default::default()
        };
        settings.method_timeouts_ms.insert("z".into(), 1);
        settings.method_timeouts_ms.insert("a".into(), 2);
        let s = Service::from(&pb::Service {
            name: "Echo".into(),
            settings: Some(settings),
            live_workers: 1,
            ..Default::default()
        });
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(
            json,
            r#"{"name":"Echo","settings":{"timeout_ms":5000,"method_timeouts_ms":{"a":2,"z":1},"queue_timeout_ms":1000,"max_queue":10,"strip_service_prefix":false},"live_workers":1,"total_credit":0,"free_credit":0,"in_flight":0,"queue_depth":0,"draining":false}"#
        );
        let l = Listener::from(&pb::Listener {
            name: "x".into(),
            settings: Some(pb::ListenerSettings {
                protocol: pb::Protocol::Compact as i32,
                ..Default::default()
            }),
            ..Default::default()
        });
        assert_eq!(
            serde_json::to_value(&l).unwrap()["settings"]["protocol"],
            "compact"
        );
        assert_eq!(serde_json::to_string(&Empty {}).unwrap(), "{}");
    }

    #[test]
    fn listener_and_worker_tables() {
        let l = Listener::from(&pb::Listener {
            name: "echo".into(),
            settings: Some(pb::ListenerSettings {
                address: "127.0.0.1:0".into(),
                services: vec!["Echo".into(), "Calc".into()],
                ..Default::default()
            }),
            bound_address: "127.0.0.1:4242".into(),
            paused: true,
            active_connections: 3,
        });
        assert_eq!(
            listeners_table(&[l]),
            "NAME  ADDRESS         SERVICES   DEFAULT  PROTOCOL  TRANSPORT  TLS  ACTIVE  STATE\n\
             echo  127.0.0.1:4242  Echo,Calc  -        auto      auto       off       3  paused\n"
        );
        let w = Worker::from(&pb::Worker {
            id: "7".into(),
            services: vec!["Echo".into()],
            credit: 4,
            in_flight: 1,
            last_heartbeat_ms: 250,
            identity: "00ab".into(),
            name: String::new(),
            leaving: false,
        });
        let named = Worker::from(&pb::Worker {
            id: "8".into(),
            services: vec!["Echo".into()],
            credit: 130,
            in_flight: 0,
            last_heartbeat_ms: 5,
            identity: "682f312f32".into(),
            name: "h/1/2".into(),
            leaving: true,
        });
        assert_eq!(
            workers_table(&[w, named]),
            "ID  SERVICES  CREDIT  IN-FLIGHT  LAST-SEEN  IDENTITY  STATE\n\
             7   Echo           4          1  250ms ago  00ab      ready\n\
             8   Echo         130          0    5ms ago  h/1/2     leaving\n"
        );
    }
}
