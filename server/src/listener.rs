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
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::{watch, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::config::ListenerConfig;
use crate::connection::{self, ConnectionContext};
use crate::stats::ListenerStats;

/// A listener's address as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    Port(IpAddr, u16),
    Range(IpAddr, u16, u16),
}

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

/// Parses `host:port`, `host:0` or `host:start-end` (IPv6 as `[::1]:port`).
pub fn parse_address(s: &str) -> Result<Address, String> {
    let (host, port) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("address '{s}' must be host:port or host:start-end"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let ip: IpAddr = if host == "localhost" {
        IpAddr::from([127, 0, 0, 1])
    } else {
        host.parse()
            .map_err(|_| format!("address '{s}': '{host}' is not an IP address"))?
    };
    let num = |p: &str| {
        p.parse::<u16>()
            .map_err(|_| format!("address '{s}': '{p}' is not a port"))
    };
    match port.split_once('-') {
        None => Ok(Address::Port(ip, num(port)?)),
        Some((a, b)) => {
            let (a, b) = (num(a)?, num(b)?);
            if a == 0 || a > b {
                return Err(format!(
                    "address '{s}': port range must be start-end with 0 < start <= end"
                ));
            }
            Ok(Address::Range(ip, a, b))
        }
    }
}

/// The first port tried for `name` in `start..=end` (FNV-1a of the name).
pub fn range_start(name: &str, start: u16, end: u16) -> u16 {
    let mut h: u32 = 0x811c9dc5;
    for b in name.bytes() {
        h ^= b as u32;
        h = h.wrapping_mul(0x01000193);
    }
    let width = (end - start) as u32 + 1;
    start + (h % width) as u16
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
    let address = parse_address(&config.address).expect("validated by config");
    match address {
        Address::Port(ip, port) => {
            let addr = SocketAddr::new(ip, port);
            bind_one(addr, config.backlog).map_err(|source| ListenerError::Bind {
                name: config.name.clone(),
                addr,
                source,
            })
        }
        Address::Range(ip, start, end) => {
            let first = range_start(&config.name, start, end);
            let width = (end - start) as u32 + 1;
            for k in 0..width {
                let port = start + ((first - start) as u32 + k).rem_euclid(width) as u16;
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
    paused: watch::Sender<bool>,
    stats: Arc<ListenerStats>,
}

impl ListenerHandle {
    pub fn pause(&self) {
        self.paused.send_replace(true);
        self.stats.paused.store(true, Ordering::Relaxed);
    }
    pub fn resume(&self) {
        self.paused.send_replace(false);
        self.stats.paused.store(false, Ordering::Relaxed);
    }
    pub fn is_paused(&self) -> bool {
        *self.paused.borrow()
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
        let (tx, rx) = watch::channel(config.paused);
        ctx.stats.paused.store(config.paused, Ordering::Relaxed);
        let stats = ctx.stats.clone();
        Ok(Listener {
            socket,
            ctx: Arc::new(ctx),
            max_connections: config.max_connections,
            handle: ListenerHandle {
                name: config.name.clone(),
                local_addr,
                paused: tx,
                stats,
            },
            paused: rx,
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
                        tracing::warn!(listener = %self.handle.name, error = %e, suppressed, "accept failed");
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(permit) = limit.clone().try_acquire_owned() else {
                stats.refused.inc();
                tracing::debug!(listener = %self.handle.name, %peer, max = self.max_connections, "connection refused: max_connections reached");
                drop(stream);
                continue;
            };
            stats.accepted.inc();
            let active = Active::new(stats.clone());
            let ctx = self.ctx.clone();
            let drain = drain.clone();
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
    fn parses_addresses() {
        let lo = IpAddr::from([127, 0, 0, 1]);
        assert_eq!(parse_address("127.0.0.1:0"), Ok(Address::Port(lo, 0)));
        assert_eq!(parse_address("localhost:9090"), Ok(Address::Port(lo, 9090)));
        assert_eq!(
            parse_address("127.0.0.1:9000-9010"),
            Ok(Address::Range(lo, 9000, 9010))
        );
        assert_eq!(
            parse_address("[::1]:80"),
            Ok(Address::Port("::1".parse().unwrap(), 80))
        );
        for bad in [
            "9090",
            "host:1",
            "127.0.0.1:x",
            "127.0.0.1:10-5",
            "127.0.0.1:0-5",
            "127.0.0.1:70000",
        ] {
            assert!(parse_address(bad).is_err(), "{bad}");
        }
    }

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
