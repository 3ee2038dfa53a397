//! The registry in the Prometheus text format, one section per kind of
//! object (process, methods, services, listeners, workers).
//!
//! Why our own text encoder: every series is either an atomic we own or a
//! dispatcher-written histogram (see `histogram`), so a metrics crate would
//! only contribute its encoder, and `prometheus-client` writes OpenMetrics
//! only, whose counter families `promtool check metrics` (the classic text
//! format linter) reports as problems. This writes the classic text format
//! 0.0.4, which every Prometheus server scrapes.

use std::fmt::Write;
use std::sync::Arc;

use super::histogram::{Histogram, PROMETHEUS_BOUNDS};
use super::outcome::Outcome;
use super::stats::{CloseReason, ListenerStats, MethodStats, ServiceStats, Stats, WorkerStats};
use crate::thrift::Transport;

/// The whole registry in the Prometheus text format.
pub fn encode(stats: &Stats, out: &mut String) {
    let services = stats.services();
    process(stats, out);
    methods(&services, out);
    method_histograms(&services, out);
    service_gauges(&services, out);
    listeners(&stats.listeners(), out);
    workers(stats, &stats.workers(), out);
    lifecycle(stats, out);
}

/// Build info and process-wide gauges.
fn process(stats: &Stats, out: &mut String) {
    family(
        out,
        "thriftworker_build_info",
        "gauge",
        "Version and git commit of this binary (always 1).",
    );
    let build = [("version", super::VERSION), ("git_sha", super::GIT_SHA)];
    sample(out, "thriftworker_build_info", &build, 1);
    // Unlabelled gauges: (name, help, value); the process ones only where
    // /proc has them.
    let rss = resident_memory_bytes().map(|b| b as f64);
    let fds = std::fs::read_dir("/proc/self/fd")
        .ok()
        .map(|d| d.count() as f64);
    let ready = stats.not_ready().is_none();
    let alive = stats.not_live().is_none();
    let process: [(&str, &str, Option<f64>); 7] = [
        (
            "thriftworker_uptime_seconds",
            "Seconds since the data plane started.",
            Some(stats.started.elapsed().as_secs_f64()),
        ),
        (
            "process_start_time_seconds",
            "Start time of the process since the Unix epoch in seconds.",
            Some(stats.started_unix),
        ),
        (
            "process_resident_memory_bytes",
            "Resident memory size in bytes.",
            rss,
        ),
        ("process_open_fds", "Number of open file descriptors.", fds),
        (
            "thriftworker_draining",
            "1 while draining (SIGTERM or the Drain RPC): no new connections are accepted.",
            Some(f64::from(u8::from(stats.draining()))),
        ),
        (
            "thriftworker_alive",
            "1 when /healthz answers 200: every core task runs and the dispatcher is not stalled.",
            Some(f64::from(u8::from(alive))),
        ),
        (
            "thriftworker_ready",
            "1 when /readyz answers 200: alive, not draining and every service has a live worker.",
            Some(f64::from(u8::from(ready))),
        ),
    ];
    for (name, help, value) in process {
        if let Some(v) = value {
            family(out, name, "gauge", help);
            sample(out, name, &[], v);
        }
    }
}

/// Calls, outcomes and late replies per method.
fn methods(services: &[(String, Arc<ServiceStats>)], out: &mut String) {
    family(
        out,
        "thriftworker_calls_total",
        "counter",
        "Calls received, by service, method and kind (call or oneway).",
    );
    for (svc, s) in services {
        for m in s.methods() {
            let l = [("service", svc.as_str()), ("method", &*m.name)];
            sample(
                out,
                "thriftworker_calls_total",
                &[l[0], l[1], ("kind", "call")],
                m.calls.get(),
            );
            sample(
                out,
                "thriftworker_calls_total",
                &[l[0], l[1], ("kind", "oneway")],
                m.oneway.get(),
            );
        }
    }
    family(
        out,
        "thriftworker_call_outcomes_total",
        "counter",
        &super::outcome::help(),
    );
    for (svc, s) in services {
        for m in s.methods() {
            for o in Outcome::ALL {
                sample(
                    out,
                    "thriftworker_call_outcomes_total",
                    &[
                        ("service", svc.as_str()),
                        ("method", &*m.name),
                        ("outcome", o.label()),
                    ],
                    m.count(o),
                );
            }
        }
    }
    family(
        out,
        "thriftworker_late_replies_total",
        "counter",
        "Worker replies that arrived after their call had timed out (dropped).",
    );
    for (svc, s) in services {
        for m in s.methods() {
            sample(
                out,
                "thriftworker_late_replies_total",
                &[("service", svc.as_str()), ("method", &*m.name)],
                m.late_replies.get(),
            );
        }
    }
}

/// Latency histograms per method.
fn method_histograms(services: &[(String, Arc<ServiceStats>)], out: &mut String) {
    type Pick = fn(&MethodStats) -> &Histogram;
    let histograms: [(&str, &str, Pick); 3] = [
        (
            "thriftworker_call_duration_seconds",
            "Time in the data plane per two-way call, request read to answer handed back, whatever the outcome.",
            |m| &m.total,
        ),
        (
            "thriftworker_call_queue_seconds",
            "Time a call waited before it was sent to a worker.",
            |m| &m.queue_wait,
        ),
        (
            "thriftworker_call_worker_seconds",
            "Time from sending a call to a worker to its reply (worker execution and transport).",
            |m| &m.worker,
        ),
    ];
    for (name, help, get) in histograms {
        family(out, name, "histogram", help);
        for (svc, s) in services {
            for m in s.methods() {
                histogram(
                    out,
                    name,
                    &[("service", svc.as_str()), ("method", &*m.name)],
                    get(&m),
                );
            }
        }
    }
}

/// Queue, in-flight, workers and credit per service.
fn service_gauges(services: &[(String, Arc<ServiceStats>)], out: &mut String) {
    type Gauge = fn(&ServiceStats) -> u64;
    let gauges: [(&str, &str, Gauge); 6] = [
        (
            "thriftworker_service_queue_depth",
            "Calls waiting for a worker with free credit.",
            |s| s.queue_depth.get(),
        ),
        (
            "thriftworker_service_in_flight",
            "Calls sent to workers and not yet answered.",
            |s| s.in_flight.get(),
        ),
        (
            "thriftworker_service_live_workers",
            "Workers registered for the service.",
            |s| s.live_workers.get(),
        ),
        (
            "thriftworker_service_credit",
            "Credit (concurrent calls) announced by the service's live workers.",
            |s| s.total_credit.get(),
        ),
        (
            "thriftworker_service_free_credit",
            "Credit of the service's workers not used by calls in flight.",
            |s| s.free_credit.get(),
        ),
        (
            "thriftworker_service_buffered_request_bytes",
            "Bytes of the service's requests queued or at workers; bounded by its max_buffered_bytes.",
            |s| s.buffered_bytes.get(),
        ),
    ];
    for (name, help, get) in gauges {
        family(out, name, "gauge", help);
        for (svc, s) in services {
            sample(out, name, &[("service", svc.as_str())], get(s));
        }
    }
}

type ListenerFamily = (
    &'static str,
    &'static str,
    &'static str,
    fn(&ListenerStats) -> u64,
);

/// One series per listener each: (name, type, help, value).
const LISTENER_FAMILIES: [ListenerFamily; 11] = [
    (
        "thriftworker_listener_tls_reloads_total",
        "counter",
        "TLS configuration reloads (SIGHUP or changed files) that took effect.",
        |l| l.tls_reloads.get(),
    ),
    (
        "thriftworker_listener_tls_reload_failures_total",
        "counter",
        "TLS configuration reloads that failed (the previous configuration stays).",
        |l| l.tls_reload_failures.get(),
    ),
    (
        "thriftworker_listener_connections_accepted_total",
        "counter",
        "Connections accepted.",
        |l| l.accepted.get(),
    ),
    (
        "thriftworker_listener_connections_refused_total",
        "counter",
        "Connections refused at max_connections.",
        |l| l.refused.get(),
    ),
    (
        "thriftworker_listener_received_bytes_total",
        "counter",
        "Bytes of messages read from clients (framing included).",
        |l| l.bytes_in.get(),
    ),
    (
        "thriftworker_listener_sent_bytes_total",
        "counter",
        "Bytes of answers written to clients (framing included).",
        |l| l.bytes_out.get(),
    ),
    (
        "thriftworker_listener_unknown_service_calls_total",
        "counter",
        "Calls naming no service the listener routes to (answered UNKNOWN_METHOD).",
        |l| l.unknown_service.get(),
    ),
    (
        "thriftworker_listener_invalid_type_calls_total",
        "counter",
        "REPLY or EXCEPTION messages sent as requests (answered INVALID_MESSAGE_TYPE).",
        |l| l.invalid_type.get(),
    ),
    (
        "thriftworker_listener_connections_closed_with_calls_in_flight_total",
        "counter",
        "Connections closed (any reason) with two-way calls not yet answered.",
        |l| l.closed_with_calls_in_flight.get(),
    ),
    (
        "thriftworker_listener_connections_active",
        "gauge",
        "Connections open now.",
        |l| l.active.get(),
    ),
    (
        "thriftworker_listener_paused",
        "gauge",
        "1 while the listener's acceptor is paused.",
        |l| u64::from(l.is_paused()),
    ),
];

/// Connections and bytes per listener.
fn listeners(listeners: &[(String, Arc<ListenerStats>)], out: &mut String) {
    for (name, kind, help, get) in LISTENER_FAMILIES {
        family(out, name, kind, help);
        for (n, l) in listeners {
            sample(out, name, &[("listener", n.as_str())], get(l));
        }
    }
    family(
        out,
        "thriftworker_listener_connections_closed_total",
        "counter",
        "Connections closed, by reason.",
    );
    for (n, l) in listeners {
        for reason in CloseReason::ALL {
            sample(
                out,
                "thriftworker_listener_connections_closed_total",
                &[("listener", n.as_str()), ("reason", reason.label())],
                l.closed_for(reason),
            );
        }
    }
    type PerTransport = fn(&ListenerStats, Transport) -> u64;
    let per_transport: [(&str, &str, PerTransport); 2] = [
        (
            "thriftworker_listener_transport_connections_total",
            "Connections, by the transport their first message came in.",
            |l, t| l.transport_connections[t.index()].get(),
        ),
        (
            "thriftworker_listener_transport_calls_total",
            "Messages read, by transport.",
            |l, t| l.transport_calls[t.index()].get(),
        ),
    ];
    for (name, help, get) in per_transport {
        family(out, name, "counter", help);
        for (n, l) in listeners {
            for t in Transport::ALL {
                sample(
                    out,
                    name,
                    &[("listener", n.as_str()), ("transport", t.label())],
                    get(l, t),
                );
            }
        }
    }
}

/// Per worker (series disappear when the worker leaves).
fn workers(stats: &Stats, workers: &[Arc<WorkerStats>], out: &mut String) {
    let now_ms = stats.now_ms();
    family(
        out,
        "thriftworker_worker_in_flight",
        "gauge",
        "Calls the worker holds now.",
    );
    for w in workers {
        sample(
            out,
            "thriftworker_worker_in_flight",
            &[("worker", w.id.as_str())],
            w.in_flight.get(),
        );
    }
    family(
        out,
        "thriftworker_worker_credit",
        "gauge",
        "Calls the worker may hold at once from this data plane: its READY credit, or its latest CREDIT (a worker attached to several data planes shares its credit between them).",
    );
    for w in workers {
        sample(
            out,
            "thriftworker_worker_credit",
            &[("worker", w.id.as_str())],
            w.credit.get(),
        );
    }
    family(
        out,
        "thriftworker_worker_calls_served_total",
        "counter",
        "Replies received from the worker.",
    );
    for w in workers {
        sample(
            out,
            "thriftworker_worker_calls_served_total",
            &[("worker", w.id.as_str())],
            w.served.get(),
        );
    }
    family(
        out,
        "thriftworker_worker_heartbeat_age_seconds",
        "gauge",
        "Seconds since the worker was last heard from.",
    );
    for w in workers {
        let last = w.last_seen_ms.load(std::sync::atomic::Ordering::Relaxed);
        sample(
            out,
            "thriftworker_worker_heartbeat_age_seconds",
            &[("worker", w.id.as_str())],
            now_ms.saturating_sub(last) as f64 / 1000.0,
        );
    }
}

/// Worker lifecycle and process-wide dispatch counters.
fn lifecycle(stats: &Stats, out: &mut String) {
    let d = &stats.dispatch;
    for (name, kind, help, v) in [
        (
            "thriftworker_workers_live",
            "gauge",
            "Workers registered now.",
            d.live_workers.get(),
        ),
        (
            "thriftworker_workers_registered_total",
            "counter",
            "Worker registrations accepted.",
            d.workers_registered.get(),
        ),
        (
            "thriftworker_workers_refused_total",
            "counter",
            "Worker registrations refused (token, unknown service, bad READY).",
            d.workers_refused.get(),
        ),
        (
            "thriftworker_workers_dead_total",
            "counter",
            "Workers declared dead (missed heartbeats, disconnected, evicted).",
            d.workers_dead.get(),
        ),
        (
            "thriftworker_worker_bad_messages_total",
            "counter",
            "Malformed messages from workers (dropped).",
            d.bad_worker_messages.get(),
        ),
        (
            "thriftworker_worker_unknown_replies_total",
            "counter",
            "Replies for calls the worker did not hold (dropped).",
            d.unknown_replies.get(),
        ),
        (
            "thriftworker_worker_bad_replies_total",
            "counter",
            "Replies that did not match their call (protocol, type, name, seqid or size); the client got an exception instead.",
            d.bad_replies.get(),
        ),
        (
            "thriftworker_workers_stuck_total",
            "counter",
            "Workers evicted for holding a call past [workers].stuck_timeout after its deadline.",
            d.workers_stuck.get(),
        ),
        (
            "thriftworker_worker_peers_dropped_total",
            "counter",
            "Worker-port connections closed for misbehaving (traffic before READY, not reading).",
            d.peers_dropped.get(),
        ),
        (
            "thriftworker_buffered_request_bytes",
            "gauge",
            "Bytes of requests queued or at workers (all services); bounded by [server].max_buffered_bytes.",
            d.buffered_bytes.get(),
        ),
        (
            "thriftworker_panics_total",
            "counter",
            "Panics in any thread (a bug: each is logged).",
            super::PANICS.load(std::sync::atomic::Ordering::Relaxed),
        ),
    ] {
        family(out, name, kind, help);
        sample(out, name, &[], v);
    }
}

/// Writes one metric family's HELP and TYPE lines.
fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// Writes a label value with the escapes the text format requires.
fn escaped(out: &mut String, v: &str) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// Writes `name{labels} value`; `labels` are (name, value) pairs.
fn sample(out: &mut String, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
    out.push_str(name);
    if !labels.is_empty() {
        out.push('{');
        for (i, (k, v)) in labels.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(k);
            out.push_str("=\"");
            escaped(out, v);
            out.push('"');
        }
        out.push('}');
    }
    let _ = writeln!(out, " {value}");
}

/// [`PROMETHEUS_BOUNDS`] as `le` label values.
const LE: [&str; PROMETHEUS_BOUNDS.len()] = [
    "0.00005", "0.0001", "0.00025", "0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05",
    "0.1", "0.25", "0.5", "1", "2.5", "5", "10", "30", "60",
];

fn histogram(out: &mut String, name: &str, labels: &[(&str, &str)], h: &Histogram) {
    let s = h.snapshot();
    let bucket = format!("{name}_bucket");
    let mut with_le: Vec<(&str, &str)> = labels.to_vec();
    let cumulative = s.prometheus_buckets();
    for (i, le) in LE.iter().enumerate() {
        with_le.push(("le", le));
        sample(out, &bucket, &with_le, cumulative[i]);
        with_le.pop();
    }
    with_le.push(("le", "+Inf"));
    sample(out, &bucket, &with_le, s.count);
    sample(out, &format!("{name}_sum"), labels, s.sum_ns as f64 / 1e9);
    sample(out, &format!("{name}_count"), labels, s.count);
}

/// VmRSS from /proc/self/status (Linux); None elsewhere.
fn resident_memory_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn le_labels_match_the_bounds() {
        for (le, b) in LE.iter().zip(PROMETHEUS_BOUNDS) {
            assert_eq!(le.parse::<f64>().unwrap(), b);
        }
    }

    #[test]
    fn label_values_are_escaped() {
        let mut out = String::new();
        sample(&mut out, "m", &[("method", "a\"b\\c\nd")], 1);
        assert_eq!(out, "m{method=\"a\\\"b\\\\c\\nd\"} 1\n");
    }

    #[test]
    fn histogram_buckets_are_cumulative_and_end_with_count() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(70));
        h.observe(Duration::from_millis(2));
        let mut out = String::new();
        histogram(&mut out, "h_seconds", &[("service", "S")], &h);
        assert!(
            out.contains("h_seconds_bucket{service=\"S\",le=\"0.00005\"} 0\n"),
            "{out}"
        );
        assert!(
            out.contains("h_seconds_bucket{service=\"S\",le=\"0.0001\"} 1\n"),
            "{out}"
        );
        assert!(
            out.contains("h_seconds_bucket{service=\"S\",le=\"0.0025\"} 2\n"),
            "{out}"
        );
        assert!(
            out.contains("h_seconds_bucket{service=\"S\",le=\"+Inf\"} 2\n"),
            "{out}"
        );
        assert!(out.contains("h_seconds_count{service=\"S\"} 2\n"), "{out}");
        assert!(
            out.contains("h_seconds_sum{service=\"S\"} 0.00207\n"),
            "{out}"
        );
    }

    #[test]
    fn every_family_has_help_and_type() {
        let stats = Stats::default();
        stats.listener("l");
        let s = stats.service("S");
        s.method(b"m");
        let mut out = String::new();
        encode(&stats, &mut out);
        let mut typed = std::collections::HashSet::new();
        for line in out.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                typed.insert(rest.split(' ').next().unwrap().to_string());
            } else if !line.starts_with('#') {
                let name = line.split(['{', ' ']).next().unwrap();
                let base = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|suf| name.strip_suffix(suf).filter(|b| typed.contains(*b)))
                    .unwrap_or(name);
                assert!(typed.contains(base), "no TYPE for {name}");
            }
        }
        assert!(
            out.contains("thriftworker_calls_total{service=\"S\",method=\"m\",kind=\"call\"} 0")
        );
    }
}
