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
    pub leaving: bool,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct WorkerList {
    pub workers: Vec<Worker>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LatencySummary {
    pub count: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct MethodStats {
    pub service: String,
    pub method: String,
    pub calls: u64,
    pub oneway: u64,
    pub success: u64,
    pub errors: u64,
    pub total: Option<LatencySummary>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ServiceStats {
    pub name: String,
    pub calls: u64,
    pub oneway: u64,
    pub replies: u64,
    pub overloaded: u64,
    pub timeouts: u64,
    pub worker_died: u64,
    pub late_replies: u64,
    pub queue_depth: u64,
    pub in_flight: u64,
    pub live_workers: u32,
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
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub paused: bool,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Stats {
    pub uptime_ms: u64,
    pub draining: bool,
    pub services: Vec<ServiceStats>,
    pub listeners: Vec<ListenerStats>,
    pub methods: Vec<MethodStats>,
    pub workers: u32,
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

impl From<&pb::MethodStats> for MethodStats {
    fn from(m: &pb::MethodStats) -> Self {
        MethodStats {
            service: m.service.clone(),
            method: m.method.clone(),
            calls: m.calls,
            oneway: m.oneway,
            success: m.success,
            errors: m.errors,
            total: m.total.as_ref().map(Into::into),
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
            overloaded: s.overloaded,
            timeouts: s.timeouts,
            worker_died: s.worker_died,
            late_replies: s.late_replies,
            queue_depth: s.queue_depth,
            in_flight: s.in_flight,
            live_workers: s.live_workers,
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
            bytes_in: l.bytes_in,
            bytes_out: l.bytes_out,
            paused: l.paused,
        }
    }
}

impl From<&pb::Stats> for Stats {
    fn from(s: &pb::Stats) -> Self {
        Stats {
            uptime_ms: s.uptime_ms,
            draining: s.draining,
            services: s.services.iter().map(Into::into).collect(),
            listeners: s.listeners.iter().map(Into::into).collect(),
            methods: s.methods.iter().map(Into::into).collect(),
            workers: s.workers,
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

pub fn services_table(services: &[Service]) -> String {
    let mut t = Table::new(&[
        ("NAME", Align::Left),
        ("WORKERS", Align::Right),
        ("CREDIT", Align::Right),
        ("IN-FLIGHT", Align::Right),
        ("QUEUE", Align::Right),
        ("TIMEOUT", Align::Left),
        ("QUEUE-TIMEOUT", Align::Left),
        ("MAX-QUEUE", Align::Right),
        ("STRIP", Align::Left),
        ("STATE", Align::Left),
    ]);
    for s in services {
        t.row(vec![
            s.name.clone(),
            s.live_workers.to_string(),
            format!("{}/{}", s.free_credit, s.total_credit),
            s.in_flight.to_string(),
            s.queue_depth.to_string(),
            table::ms(s.settings.timeout_ms),
            table::ms(s.settings.queue_timeout_ms),
            s.settings.max_queue.to_string(),
            strip(&s.settings),
            service_state(s),
        ]);
    }
    t.render()
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

pub fn listeners_table(listeners: &[Listener]) -> String {
    let mut t = Table::new(&[
        ("NAME", Align::Left),
        ("ADDRESS", Align::Left),
        ("SERVICES", Align::Left),
        ("DEFAULT", Align::Left),
        ("PROTOCOL", Align::Left),
        ("ACTIVE", Align::Right),
        ("STATE", Align::Left),
    ]);
    for l in listeners {
        let address = if l.bound_address.is_empty() {
            l.settings.address.clone()
        } else {
            l.bound_address.clone()
        };
        t.row(vec![
            l.name.clone(),
            address,
            table::list(&l.settings.services),
            table::or_dash(&l.settings.default_service),
            l.settings.protocol.to_string(),
            l.active_connections.to_string(),
            if l.paused { "paused" } else { "accepting" }.to_string(),
        ]);
    }
    t.render()
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
            table::or_dash(&w.identity),
            if w.leaving { "leaving" } else { "ready" }.to_string(),
        ]);
    }
    t.render()
}

/// calls/s per service: from the difference with the previous sample when
/// there is one (watching), else the average since the server started.
pub fn call_rates(prev: Option<&Stats>, cur: &Stats) -> BTreeMap<String, f64> {
    let mut rates = BTreeMap::new();
    for s in &cur.services {
        let before = prev.filter(|p| p.uptime_ms < cur.uptime_ms).and_then(|p| {
            p.services
                .iter()
                .find(|ps| ps.name == s.name)
                .map(|ps| (ps.calls, p.uptime_ms))
        });
        let rate = match before {
            Some((calls, uptime)) if calls <= s.calls => {
                (s.calls - calls) as f64 * 1000.0 / (cur.uptime_ms - uptime) as f64
            }
            _ if cur.uptime_ms > 0 => s.calls as f64 * 1000.0 / cur.uptime_ms as f64,
            _ => 0.0,
        };
        rates.insert(s.name.clone(), rate);
    }
    rates
}

pub fn stats_view(prev: Option<&Stats>, cur: &Stats) -> String {
    let mut out = format!(
        "uptime {}   workers {}   {}\n",
        table::uptime(cur.uptime_ms),
        cur.workers,
        if cur.draining { "DRAINING" } else { "running" }
    );
    let rates = call_rates(prev, cur);
    let mut t = Table::new(&[
        ("SERVICE", Align::Left),
        ("CALLS", Align::Right),
        ("CALLS/S", Align::Right),
        ("ERRORS", Align::Right),
        ("QUEUE", Align::Right),
        ("IN-FLIGHT", Align::Right),
        ("WORKERS", Align::Right),
    ]);
    for s in &cur.services {
        t.row(vec![
            s.name.clone(),
            s.calls.to_string(),
            table::rate(rates.get(&s.name).copied().unwrap_or(0.0)),
            (s.overloaded + s.timeouts + s.worker_died).to_string(),
            s.queue_depth.to_string(),
            s.in_flight.to_string(),
            s.live_workers.to_string(),
        ]);
    }
    out.push('\n');
    out.push_str(&t.render());

    let mut t = Table::new(&[
        ("LISTENER", Align::Left),
        ("ACCEPTED", Align::Right),
        ("ACTIVE", Align::Right),
        ("REFUSED", Align::Right),
        ("PAUSED", Align::Left),
    ]);
    for l in &cur.listeners {
        t.row(vec![
            l.name.clone(),
            l.accepted.to_string(),
            l.active.to_string(),
            l.refused.to_string(),
            table::yes_no(l.paused),
        ]);
    }
    out.push('\n');
    out.push_str(&t.render());

    if !cur.methods.is_empty() {
        let mut t = Table::new(&[
            ("METHOD", Align::Left),
            ("CALLS", Align::Right),
            ("P50", Align::Right),
            ("P99", Align::Right),
        ]);
        for m in &cur.methods {
            let (p50, p99) = m
                .total
                .as_ref()
                .map(|l| (table::latency(l.p50_ms), table::latency(l.p99_ms)))
                .unwrap_or(("-".into(), "-".into()));
            t.row(vec![
                format!("{}:{}", m.service, m.method),
                m.calls.to_string(),
                p50,
                p99,
            ]);
        }
        out.push('\n');
        out.push_str(&t.render());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(uptime_ms: u64, calls: u64) -> Stats {
        Stats {
            uptime_ms,
            draining: false,
            services: vec![ServiceStats {
                name: "Echo".into(),
                calls,
                oneway: 0,
                replies: calls,
                overloaded: 1,
                timeouts: 2,
                worker_died: 3,
                late_replies: 0,
                queue_depth: 4,
                in_flight: 5,
                live_workers: 2,
            }],
            listeners: vec![ListenerStats {
                name: "echo".into(),
                accepted: 10,
                active: 1,
                refused: 0,
                closed_client: 0,
                closed_idle: 0,
                closed_frame_too_large: 0,
                closed_bad_frame: 0,
                closed_protocol_error: 0,
                bytes_in: 0,
                bytes_out: 0,
                paused: true,
            }],
            methods: vec![MethodStats {
                service: "Echo".into(),
                method: "echo".into(),
                calls,
                oneway: 0,
                success: calls,
                errors: 0,
                total: Some(LatencySummary {
                    count: calls,
                    p50_ms: 0.5,
                    p90_ms: 1.0,
                    p99_ms: 12.0,
                    max_ms: 20.0,
                }),
            }],
            workers: 2,
        }
    }

    #[test]
    fn rates_since_start_and_between_samples() {
        let first = stats(10_000, 100);
        assert_eq!(call_rates(None, &first)["Echo"], 10.0);
        let second = stats(12_000, 160);
        assert_eq!(call_rates(Some(&first), &second)["Echo"], 30.0);
        // A restarted server (uptime went back) falls back to the average.
        let restarted = stats(1_000, 5);
        assert_eq!(call_rates(Some(&second), &restarted)["Echo"], 5.0);
        assert_eq!(call_rates(None, &stats(0, 0))["Echo"], 0.0);
    }

    #[test]
    fn stats_tables() {
        let view = stats_view(None, &stats(10_000, 100));
        assert_eq!(
            view,
            "uptime 10s   workers 2   running\n\
             \n\
             SERVICE  CALLS  CALLS/S  ERRORS  QUEUE  IN-FLIGHT  WORKERS\n\
             Echo       100     10.0       6      4          5        2\n\
             \n\
             LISTENER  ACCEPTED  ACTIVE  REFUSED  PAUSED\n\
             echo            10       1        0  yes\n\
             \n\
             METHOD     CALLS     P50     P99\n\
             Echo:echo    100  0.50ms  12.0ms\n"
        );
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
            "NAME  ADDRESS         SERVICES   DEFAULT  PROTOCOL  ACTIVE  STATE\n\
             echo  127.0.0.1:4242  Echo,Calc  -        auto           3  paused\n"
        );
        let w = Worker::from(&pb::Worker {
            id: "7".into(),
            services: vec!["Echo".into()],
            credit: 4,
            in_flight: 1,
            last_heartbeat_ms: 250,
            identity: "00ab".into(),
            leaving: false,
        });
        assert_eq!(
            workers_table(&[w]),
            "ID  SERVICES  CREDIT  IN-FLIGHT  LAST-SEEN  IDENTITY  STATE\n\
             7   Echo           4          1  250ms ago  00ab      ready\n"
        );
    }
}
