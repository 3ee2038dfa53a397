//! The metrics and probe HTTP server, on its own port.
//!
//! It runs on the admin thread (see `app::spawn`), not on the data plane's
//! runtime: the data plane runs on few threads (one by default) and may be
//! saturated; a scrape or a kubelet probe must still answer then, or the pod
//! gets restarted exactly when it is busiest. Everything here reads the
//! registry's atomics: nothing goes through the dispatcher.
//!
//! Endpoints: `/metrics` (see [`super::exposition`]), `/healthz` (the
//! process is up: 200 also while draining, so a drain is never cut short by
//! a liveness restart), `/readyz` (200 only when not draining and every
//! service has a live worker).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::exposition::encode;
use super::stats::Stats;

/// Why the metrics server could not start.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("cannot listen for metrics on {addr}: {source} (set [metrics].address or --metrics-addr to a free port, or 'off')")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Binds the metrics port (a std socket: it is served from another runtime).
pub fn bind(addr: SocketAddr) -> Result<std::net::TcpListener, MetricsError> {
    let l =
        std::net::TcpListener::bind(addr).map_err(|source| MetricsError::Bind { addr, source })?;
    l.set_nonblocking(true)
        .map_err(|source| MetricsError::Bind { addr, source })?;
    Ok(l)
}

/// Connections served at once; more wait in the kernel backlog.
const MAX_CONNECTIONS: usize = 64;

/// Serves until `stop` is cancelled. Runs on the admin thread's runtime
/// (`app::spawn`); `listener` is converted there.
pub async fn serve(listener: std::net::TcpListener, stats: Arc<Stats>, stop: CancellationToken) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "cannot serve metrics");
            return;
        }
    };
    let limit = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let permit = tokio::select! {
            _ = stop.cancelled() => return,
            p = limit.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
        };
        let (stream, _) = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    // E.g. EMFILE: back off instead of spinning on it.
                    tracing::debug!(error = %e, "metrics accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let stats = stats.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let service = hyper::service::service_fn(move |req| {
                let stats = stats.clone();
                async move { Ok::<_, Infallible>(respond(&req, &stats)) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = stop.cancelled() => {}
            }
        });
    }
}

fn respond(req: &Request<Incoming>, stats: &Stats) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            "only GET and HEAD are served\n".into(),
        );
    }
    match req.uri().path() {
        "/metrics" => {
            let mut out = String::with_capacity(16 * 1024);
            encode(stats, &mut out);
            let mut r = text(StatusCode::OK, out);
            r.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            r
        }
        "/healthz" => match stats.not_live() {
            None => text(StatusCode::OK, "ok\n".into()),
            Some(why) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not alive: {why}\n"),
            ),
        },
        "/readyz" => match stats.not_ready() {
            None => text(StatusCode::OK, "ready\n".into()),
            Some(why) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("not ready: {why}\n"),
            ),
        },
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: try /metrics, /healthz or /readyz\n".into(),
        ),
    }
}

fn text(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}
