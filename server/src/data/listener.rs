//! Named TCP listeners: binding (including port ranges), the accept loop,
//! `max_connections`, and pausing/resuming the acceptor.
//!
//! A port range `start-end` picks its first port deterministically from the
//! listener name (so a restarted process comes back on the same port when it
//! is free) and scans upward with wrap-around, like the original thriftworker.
//!
//! Pausing stops calling `accept`: new clients wait in the kernel backlog (and
//! are served on resume); connections already accepted keep working.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::{watch, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::connection::{self, ConnectionContext};
use super::tls::{ListenerTls, WATCH_INTERVAL};
use crate::config::{ListenerConfig, Ports};
use crate::telemetry::ListenerStats;

#[derive(Debug, thiserror::Error)]
pub enum ListenerError {
    #[error("listener '{name}': cannot bind {addr}: {source}")]
    Bind {
        name: String,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(
        "listener '{name}': no free port in {host}:{start}-{end}: free one or widen the range"
    )]
    RangeExhausted {
        name: String,
        host: IpAddr,
        start: u16,
        end: u16,
    },
}

/// The first port tried for `name` in `start..=end` (FNV-1a of the name).
pub fn range_start(name: &str, start: u16, end: u16) -> u16 {
    let mut h: u32 = 0x811c9dc5;
    for b in name.bytes() {
        h ^= b as u32;
        h = h.wrapping_mul(0x01000193);
    }
    let width = u32::from(end - start) + 1;
    // < width <= 65,536: the offset fits in u16.
    start + u16::try_from(h % width).unwrap_or(0)
}

fn bind_one(addr: SocketAddr, backlog: u32) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}

/// Binds the listener's socket (scanning a range if configured).
pub fn bind(config: &ListenerConfig) -> Result<TcpListener, ListenerError> {
    let ip = config.address.ip;
    match config.address.ports {
        Ports::One(port) => {
            let addr = SocketAddr::new(ip, port);
            bind_one(addr, config.backlog).map_err(|source| ListenerError::Bind {
                name: config.name.clone(),
                addr,
                source,
            })
        }
        Ports::Range(start, end) => {
            let first = range_start(&config.name, start, end);
            let width = u32::from(end - start) + 1;
            for k in 0..width {
                let offset = (u32::from(first - start) + k) % width;
                let port = start + u16::try_from(offset).unwrap_or(0);
                match bind_one(SocketAddr::new(ip, port), config.backlog) {
                    Ok(l) => return Ok(l),
                    Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => continue,
                    Err(source) => {
                        return Err(ListenerError::Bind {
                            name: config.name.clone(),
                            addr: SocketAddr::new(ip, port),
                            source,
                        })
                    }
                }
            }
            Err(ListenerError::RangeExhausted {
                name: config.name.clone(),
                host: ip,
                start,
                end,
            })
        }
    }
}

/// Control of a running listener (the in-process API the admin API exposes).
#[derive(Clone, Debug)]
pub struct ListenerHandle {
    pub name: String,
    pub local_addr: SocketAddr,
    stats: Arc<ListenerStats>,
    /// The drain token new connections get: the listener's stop token, and
    /// the current "generation" under it (a child) that a listener drain
    /// cancels and replaces.
    generation: Arc<Mutex<Generation>>,
}

#[derive(Debug, Default)]
struct Generation {
    stop: CancellationToken,
    current: CancellationToken,
}

impl ListenerHandle {
    /// Pauses or resumes the acceptor (connections already accepted go on).
    pub fn set_paused(&self, paused: bool) {
        self.stats.paused.send_replace(paused);
    }
    pub fn is_paused(&self) -> bool {
        self.stats.is_paused()
    }

    /// Drains the connections accepted so far, as a shutdown does (each
    /// finishes the calls it has read, then closes; idle ones close at
    /// once), without removing the listener. Connections accepted later
    /// (after a resume) are not affected.
    pub fn drain_connections(&self) {
        if let Ok(mut g) = self.generation.lock() {
            g.current.cancel();
            g.current = g.stop.child_token();
        }
    }

    /// The token a connection accepted now is drained by.
    fn connection_token(&self) -> CancellationToken {
        self.generation
            .lock()
            .map(|g| g.current.clone())
            .unwrap_or_default()
    }
}

/// A bound listener, ready to be spawned.
pub struct Listener {
    socket: TcpListener,
    ctx: Arc<ConnectionContext>,
    max_connections: usize,
    handle: ListenerHandle,
    paused: watch::Receiver<bool>,
}

impl Listener {
    pub fn new(
        socket: TcpListener,
        ctx: ConnectionContext,
        config: &ListenerConfig,
    ) -> std::io::Result<Listener> {
        let local_addr = socket.local_addr()?;
        ctx.stats.paused.send_replace(config.paused);
        let paused = ctx.stats.paused.subscribe();
        let stats = ctx.stats.clone();
        Ok(Listener {
            socket,
            ctx: Arc::new(ctx),
            max_connections: config.max_connections,
            handle: ListenerHandle {
                name: config.name.clone(),
                local_addr,
                stats,
                generation: Arc::default(),
            },
            paused,
        })
    }

    pub fn handle(&self) -> ListenerHandle {
        self.handle.clone()
    }

    /// Accepts until `drain` is cancelled; each connection runs on `tracker`
    /// and is told about drain through the same token (it then finishes the
    /// calls it has read), and closes at once if `abort` is cancelled.
    pub async fn run(
        mut self,
        drain: CancellationToken,
        abort: CancellationToken,
        tracker: TaskTracker,
    ) {
        let limit = Arc::new(Semaphore::new(self.max_connections));
        let stats = self.ctx.stats.clone();
        if let Ok(mut g) = self.handle.generation.lock() {
            g.current = drain.child_token();
            g.stop = drain.clone();
        }
        if let Some(tls) = self.ctx.tls.clone() {
            let name = self.handle.name.clone();
            tracker.spawn(watch_tls(tls, name, stats.clone(), drain.clone()));
        }
        loop {
            // Wait while paused (connections queue in the backlog).
            while *self.paused.borrow_and_update() {
                tokio::select! {
                    r = self.paused.changed() => if r.is_err() { return },
                    _ = drain.cancelled() => return,
                }
            }
            // Biased: when a pause and a new connection are both ready, the
            // pause wins (the connection stays in the backlog), so a client
            // that connects after `pause` returned is not accepted.
            let accepted = tokio::select! {
                biased;
                _ = drain.cancelled() => return,
                _ = self.paused.changed() => continue,
                a = self.socket.accept() => a,
            };
            let (stream, peer) = match accepted {
                Ok(s) => s,
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    if let Some(suppressed) = stats.warn_limit.allow() {
                        tracing::warn!(
                            listener = %self.handle.name,
                            error = %e,
                            suppressed,
                            "accept failed",
                        );
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(permit) = limit.clone().try_acquire_owned() else {
                stats.refused.inc();
                tracing::debug!(
                    listener = %self.handle.name,
                    %peer,
                    max = self.max_connections,
                    "connection refused: max_connections reached",
                );
                drop(stream);
                continue;
            };
            stats.accepted.inc();
            let active = Active::new(stats.clone());
            let ctx = self.ctx.clone();
            // The listener's stop token, or a listener drain's (a child).
            let drain = self.handle.connection_token();
            let abort = abort.clone();
            // One span per connection (debug level: free when disabled);
            // the dispatcher adds one per call.
            let span = tracing::debug_span!("conn", listener = %self.handle.name, %peer);
            tracker.spawn(
                async move {
                    tracing::debug!("connection accepted");
                    connection::serve(stream, ctx, drain, abort).await;
                    // Also dropped if the connection task panics (the panic
                    // hook logs and counts it; only this connection ends).
                    drop((active, permit));
                }
                .instrument(span),
            );
        }
    }
}

/// Reloads a TLS listener's certificate files on SIGHUP and when they
/// change on disk (checked every `WATCH_INTERVAL`), until `stop`.
async fn watch_tls(
    tls: Arc<ListenerTls>,
    listener: String,
    stats: Arc<ListenerStats>,
    stop: CancellationToken,
) {
    use tokio::signal::unix::{signal, SignalKind};
    // Without a SIGHUP stream (it cannot fail on Unix in practice), the
    // files are still watched.
    let mut hangup = signal(SignalKind::hangup()).ok();
    let mut tick = tokio::time::interval(WATCH_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        let why = tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {
                if !tls.changed_on_disk() {
                    continue;
                }
                "the files changed"
            }
            Some(()) = async { hangup.as_mut()?.recv().await } => "SIGHUP",
        };
        match tls.reload() {
            Ok(()) => {
                stats.tls_reloads.inc();
                tracing::info!(%listener, why, "TLS certificate reloaded: new connections use it");
            }
            Err(error) => {
                stats.tls_reload_failures.inc();
                tracing::error!(%listener, why, %error, "TLS certificate reload failed: the previous one stays in use; fix the files");
            }
        }
    }
}

/// One active connection in the listener's gauge, for as long as it lives.
struct Active(Arc<ListenerStats>);

impl Active {
    fn new(stats: Arc<ListenerStats>) -> Active {
        stats.active.inc();
        Active(stats)
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        self.0.active.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_start_is_deterministic_and_in_range() {
        for name in ["echo", "mux", "a", ""] {
            let p = range_start(name, 9000, 9009);
            assert!((9000..=9009).contains(&p));
            assert_eq!(p, range_start(name, 9000, 9009));
        }
        assert_eq!(range_start("x", 5, 5), 5);
    }

    fn cfg(name: &str, address: &str) -> ListenerConfig {
        toml::from_str(&format!(
            "name='{name}'\naddress='{address}'\nservices=['S']"
        ))
        .unwrap()
    }

    #[tokio::test]
    async fn range_scans_upward_with_wraparound_and_reports_exhaustion() {
        // Hold a free port, then ask for a range of exactly that port.
        let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = held.local_addr().unwrap().port();
        let err = bind(&cfg("echo", &format!("127.0.0.1:{port}-{port}"))).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("listener 'echo'") && text.contains(&format!("{port}-{port}")),
            "{text}"
        );
        // A two-port range where the preferred port is taken binds the other.
        let (lo, hi) = if port > 1024 {
            (port - 1, port)
        } else {
            (port, port + 1)
        };
        let l = bind(&cfg("echo", &format!("127.0.0.1:{lo}-{hi}")));
        if let Ok(l) = l {
            assert_ne!(l.local_addr().unwrap().port(), port);
        }
    }
}
