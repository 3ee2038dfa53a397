//! One client connection: read frames, route each call, write replies in
//! request order.
//!
//! Pipelining: up to `max_pipeline` two-way calls may be in flight at once.
//! Each gets a *slot* number in arrival order; answers arrive from the
//! dispatcher in any order and are written strictly by slot. At the bound the
//! connection stops reading (TCP backpressure does the rest). Oneway calls
//! take no slot: they are never answered.
//!
//! Any frame or header the connection cannot make sense of closes it (with a
//! counted reason): after a broken frame the stream cannot be resynchronised,
//! and without a seqid there is nothing to answer.

use std::collections::VecDeque;
use std::sync::Arc;

use arc_swap::ArcSwap;

use bytes::{BufMut, Bytes, BytesMut};
use futures::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::{sleep_until, Instant};
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;

use crate::config::ProtocolSetting;
use crate::dispatch::{Call, Command, Completion, ReplyTo, ServiceInfo};
use crate::frame::{FrameDecoder, FrameError};
use crate::message::{
    self, application_exception, AppErrorKind, Header, HeaderError, MessageType, Protocol,
};
use crate::stats::{CloseReason, ListenerStats};

/// What a connection needs from its listener; shared by all its connections.
pub struct ConnectionContext {
    pub listener: String,
    /// Where calls go; swapped atomically when a service's settings change.
    pub routes: Arc<ArcSwap<Routes>>,
    pub protocol: ProtocolSetting,
    pub max_frame_size: usize,
    pub max_pipeline: usize,
    pub idle_timeout: std::time::Duration,
    pub dispatch: mpsc::Sender<Command>,
    pub stats: Arc<ListenerStats>,
}

/// The services a listener serves, in config order.
#[derive(Debug)]
pub struct Routes {
    pub services: Vec<Arc<ServiceInfo>>,
    /// On a multi-service listener, where names without `Service:` go.
    pub default_service: Option<usize>,
}

/// Where a routed call goes.
enum Route<'a> {
    /// The service, and how many bytes of `Service:` prefix to strip.
    Service(&'a Arc<ServiceInfo>, usize),
    Unknown,
}

impl Routes {
    fn route(&self, name: &[u8]) -> Route<'_> {
        match name.iter().position(|&b| b == b':') {
            Some(colon) => {
                let prefix = &name[..colon];
                match self.services.iter().find(|s| s.name_bytes == prefix) {
                    Some(s) => Route::Service(s, if s.strip_prefix { colon + 1 } else { 0 }),
                    None => Route::Unknown,
                }
            }
            None => {
                let pick = if self.services.len() == 1 {
                    self.services.first()
                } else {
                    self.default_service
                        .and_then(|d| self.services.iter().find(|s| s.index == d))
                };
                match pick {
                    Some(s) => Route::Service(s, 0),
                    None => Route::Unknown,
                }
            }
        }
    }
}

/// Serves one connection until the client closes it, an error, idleness, or
/// drain (then it finishes the calls it has read and closes).
pub async fn serve(
    stream: TcpStream,
    ctx: Arc<ConnectionContext>,
    drain: CancellationToken,
    abort: CancellationToken,
) {
    let peer = stream.peer_addr().ok();
    let _ = stream.set_nodelay(true);
    let (read, mut write) = stream.into_split();
    // Buffers start small or empty: most connections are idle most of the
    // time, and RSS per idle connection is a target (docs/benchmarks.md).
    // The decoder reserves exactly what a larger frame needs once its length
    // is known.
    let mut frames = FramedRead::with_capacity(read, FrameDecoder::new(ctx.max_frame_size), 2048);
    let (tx, mut completions) = mpsc::channel::<Completion>(ctx.max_pipeline);
    // Slot numbers of pending two-way calls start at `base`; an entry is
    // `Some` once its answer is here.
    let mut pending: VecDeque<Option<Bytes>> = VecDeque::new();
    let mut base: u64 = 0;
    let mut out = BytesMut::new();
    let mut protocol: Option<Protocol> = None;
    let mut draining = drain.is_cancelled();
    let mut idle_deadline = Instant::now() + ctx.idle_timeout;

    let reason = loop {
        if draining && pending.is_empty() {
            break CloseReason::Shutdown;
        }
        tokio::select! {
            frame = frames.next(), if !draining && pending.len() < ctx.max_pipeline => {
                let frame = match frame {
                    None => break CloseReason::ClientClose,
                    Some(Err(e)) => {
                        let reason = match &e {
                            FrameError::TooLarge { .. } => CloseReason::FrameTooLarge,
                            FrameError::Io(_) => CloseReason::IoError,
                            FrameError::Truncated(_) => CloseReason::ClientClose,
                            FrameError::Empty | FrameError::Negative(_) => CloseReason::BadFrame,
                        };
                        if reason != CloseReason::IoError && !matches!(e, FrameError::Truncated(_)) {
                            if let Some(suppressed) = ctx.stats.warn_limit.allow() {
                                tracing::warn!(listener = %ctx.listener, ?peer, error = %e, suppressed, "closing connection: bad frame");
                            }
                        } else {
                            tracing::debug!(listener = %ctx.listener, ?peer, error = %e, "connection ended");
                        }
                        break reason;
                    }
                    Some(Ok(frame)) => frame,
                };
                ctx.stats.bytes_in.add(frame.len() as u64 + 4);
                idle_deadline = Instant::now() + ctx.idle_timeout;
                match handle_frame(&ctx, frame, &mut protocol, &tx, base + pending.len() as u64).await {
                    Ok(Handled::Slot(answer)) => pending.push_back(answer),
                    Ok(Handled::NoSlot) => {}
                    Err(e) => {
                        if let Some(suppressed) = ctx.stats.warn_limit.allow() {
                            tracing::warn!(listener = %ctx.listener, ?peer, error = %e, suppressed, "closing connection: unparseable message header");
                        }
                        break CloseReason::ProtocolError;
                    }
                }
            }
            Some(done) = completions.recv() => {
                let idx = (done.slot - base) as usize;
                if let Some(entry) = pending.get_mut(idx) {
                    *entry = Some(done.message);
                }
                // Take any further answers already here, then write in one go.
                while let Ok(done) = completions.try_recv() {
                    let idx = (done.slot - base) as usize;
                    if let Some(entry) = pending.get_mut(idx) {
                        *entry = Some(done.message);
                    }
                }
            }
            _ = sleep_until(idle_deadline), if pending.is_empty() && !draining => {
                tracing::debug!(listener = %ctx.listener, ?peer, "closing idle connection");
                break CloseReason::IdleTimeout;
            }
            _ = drain.cancelled(), if !draining => {
                draining = true;
            }
            _ = abort.cancelled() => {
                // Drain timed out: close with calls unanswered.
                break CloseReason::Shutdown;
            }
        }
        // Write every answer that is next in order.
        while let Some(Some(_)) = pending.front() {
            let msg = pending.pop_front().flatten().expect("checked");
            base += 1;
            out.put_u32(msg.len() as u32);
            out.put_slice(&msg);
        }
        if !out.is_empty() {
            ctx.stats.bytes_out.add(out.len() as u64);
            if let Err(e) = write.write_all(&out).await {
                tracing::debug!(listener = %ctx.listener, ?peer, error = %e, "write failed");
                break CloseReason::IoError;
            }
            out.clear();
            idle_deadline = Instant::now() + ctx.idle_timeout;
        }
    };
    ctx.stats.closed(reason);
    let unanswered = pending.iter().filter(|a| a.is_none()).count();
    if unanswered > 0 {
        ctx.stats.closed_with_calls_in_flight.inc();
    }
    tracing::debug!(?reason, unanswered, "connection closed");
    let _ = write.shutdown().await;
}

enum Handled {
    /// A two-way call took a slot; `Some` if it is already answered.
    Slot(Option<Bytes>),
    /// Oneway: no answer.
    NoSlot,
}

async fn handle_frame(
    ctx: &ConnectionContext,
    frame: Bytes,
    protocol: &mut Option<Protocol>,
    tx: &mpsc::Sender<Completion>,
    slot: u64,
) -> Result<Handled, HeaderError> {
    let detected = message::detect(&frame)?;
    match (ctx.protocol, detected) {
        (ProtocolSetting::Binary, Protocol::Compact) => {
            return Err(HeaderError::NotAllowed("compact"))
        }
        (ProtocolSetting::Compact, Protocol::BinaryStrict | Protocol::BinaryLax) => {
            return Err(HeaderError::NotAllowed("binary"))
        }
        _ => {}
    }
    match protocol {
        None => *protocol = Some(detected),
        Some(p) if *p != detected => {
            return Err(HeaderError::ProtocolMismatch {
                got: detected.as_str(),
                expected: p.as_str(),
            })
        }
        Some(_) => {}
    }
    let header: Header = message::parse(&frame, detected)?;
    let name = header.name(&frame);
    let oneway = match header.message_type {
        MessageType::Call => false,
        MessageType::Oneway => true,
        MessageType::Reply | MessageType::Exception => {
            let text = "thriftworker: invalid message type: expected CALL or ONEWAY";
            ctx.stats.invalid_type.inc();
            return Ok(Handled::Slot(Some(application_exception(
                detected,
                name,
                header.seqid,
                AppErrorKind::InvalidMessageType,
                text,
            ))));
        }
    };
    let routes = ctx.routes.load();
    let (svc, strip) = match routes.route(name) {
        Route::Service(s, strip) => (s.clone(), strip),
        Route::Unknown => {
            ctx.stats.unknown_service.inc();
            if oneway {
                return Ok(Handled::NoSlot);
            }
            let service = name
                .iter()
                .position(|&b| b == b':')
                .map_or(&b""[..], |c| &name[..c]);
            let text = if service.is_empty() {
                format!(
                    "thriftworker: unknown service: listener '{}' serves several services; call 'Service:method'",
                    ctx.listener
                )
            } else {
                format!(
                    "thriftworker: unknown service '{}' on listener '{}'",
                    String::from_utf8_lossy(service),
                    ctx.listener
                )
            };
            // Answer with the bare method name: multiplexed clients (the Rust
            // one, for one) expect the reply name without the `Service:` prefix.
            let bare = &name[service.len() + usize::from(!service.is_empty())..];
            return Ok(Handled::Slot(Some(application_exception(
                detected,
                bare,
                header.seqid,
                AppErrorKind::UnknownMethod,
                &text,
            ))));
        }
    };
    drop(routes);
    let method = &name[strip..];
    let received = Instant::now();
    let deadline = received + svc.timeout_for(method);
    let (message, name) = if strip > 0 {
        let (renamed, range) = message::rename(&frame, &header, method);
        let n = renamed.slice(range);
        (renamed, n)
    } else {
        let n = frame.slice(header.name_start..header.name_end);
        (frame, n)
    };
    let call = Call {
        service: svc.index,
        protocol: detected,
        seqid: header.seqid,
        name,
        message,
        deadline,
        received,
        reply: (!oneway).then(|| ReplyTo {
            tx: tx.clone(),
            slot,
        }),
        method: 0,
    };
    // Backpressure: waits if the dispatcher is behind.
    if ctx.dispatch.send(Command::Call(call)).await.is_err() {
        // The dispatcher is gone (shutting down): nothing can be served.
        return Err(HeaderError::NotAllowed("any (shutting down)"));
    }
    Ok(if oneway {
        Handled::NoSlot
    } else {
        Handled::Slot(None)
    })
}
