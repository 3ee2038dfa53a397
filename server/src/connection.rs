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

use bytes::{Buf, BufMut, Bytes, BytesMut};
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
    /// A client that accepts no answer bytes for this long is disconnected.
    pub write_timeout: std::time::Duration,
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

/// Bytes of answers waiting to be written beyond which the connection stops
/// reading: a client that sends but does not read cannot make us buffer
/// without bound (its answers stay bounded by `max_pipeline` and this).
const WRITE_HIGH_WATER: usize = 256 * 1024;

/// Serves one connection until the client closes it, an error, idleness, a
/// client that stops reading, or drain (then it finishes the calls it has
/// read and closes).
///
/// Every two-way call that was read gets its answer written before the
/// connection closes on its own account: after end of stream (a client may
/// half-close once it has sent its calls), after a bad frame or header
/// (calls read before it are still answered), and during drain. Only a
/// write error, the write timeout or an aborted drain close it with calls
/// unanswered.
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
    // Slot numbers of pending two-way calls start at `base` (wrapping: at
    // most `max_pipeline` are pending, so differences are unambiguous); an
    // entry is `Some` once its answer is here.
    let mut pending: VecDeque<Option<Bytes>> = VecDeque::new();
    let mut base: u32 = 0;
    let mut out = BytesMut::new();
    let mut protocol: Option<Protocol> = None;
    let mut draining = drain.is_cancelled();
    // Set when reading has ended (end of stream, bad input): the reason the
    // connection closes once every call read is answered.
    let mut read_done: Option<CloseReason> = None;
    let mut idle_deadline = Instant::now() + ctx.idle_timeout;
    let mut write_deadline = Instant::now() + ctx.write_timeout;

    let reason = loop {
        if pending.is_empty() && out.is_empty() {
            if let Some(reason) = read_done {
                break reason;
            }
            if draining {
                break CloseReason::Shutdown;
            }
        }
        let can_read = read_done.is_none()
            && !draining
            && pending.len() < ctx.max_pipeline
            && out.len() < WRITE_HIGH_WATER;
        tokio::select! {
            frame = frames.next(), if can_read => {
                let frame = match frame {
                    // End of stream: the client sent FIN. It may only have
                    // half-closed, so its answers are still written (if it
                    // is gone, the first write fails).
                    None => {
                        read_done = Some(CloseReason::ClientClose);
                        continue;
                    }
                    Some(Err(e)) => {
                        let reason = match &e {
                            // A reset or another I/O error: the client is gone.
                            FrameError::Io(_) => {
                                tracing::debug!(listener = %ctx.listener, ?peer, error = %e, "connection ended");
                                break CloseReason::IoError;
                            }
                            FrameError::Truncated(_) => {
                                tracing::debug!(listener = %ctx.listener, ?peer, error = %e, "connection ended");
                                read_done = Some(CloseReason::ClientClose);
                                continue;
                            }
                            FrameError::TooLarge { .. } => CloseReason::FrameTooLarge,
                            FrameError::Empty | FrameError::Negative(_) => CloseReason::BadFrame,
                        };
                        if let Some(suppressed) = ctx.stats.warn_limit.allow() {
                            tracing::warn!(listener = %ctx.listener, ?peer, error = %e, suppressed, "closing connection: bad frame");
                        }
                        read_done = Some(reason);
                        continue;
                    }
                    Some(Ok(frame)) => frame,
                };
                ctx.stats.bytes_in.add(frame.len() as u64 + 4);
                idle_deadline = Instant::now() + ctx.idle_timeout;
                let slot = base.wrapping_add(pending.len() as u32);
                match handle_frame(&ctx, frame, &mut protocol, &tx, slot).await {
                    Ok(Handled::Slot(answer)) => pending.push_back(answer),
                    Ok(Handled::NoSlot) => {}
                    Err(e) => {
                        if let Some(suppressed) = ctx.stats.warn_limit.allow() {
                            tracing::warn!(listener = %ctx.listener, ?peer, error = %e, suppressed, "closing connection: unparseable message header");
                        }
                        read_done = Some(CloseReason::ProtocolError);
                    }
                }
            }
            Some(done) = completions.recv() => {
                let idx = done.slot.wrapping_sub(base) as usize;
                if let Some(entry) = pending.get_mut(idx) {
                    *entry = Some(done.message);
                }
                // Take any further answers already here, then write in one go.
                while let Ok(done) = completions.try_recv() {
                    let idx = done.slot.wrapping_sub(base) as usize;
                    if let Some(entry) = pending.get_mut(idx) {
                        *entry = Some(done.message);
                    }
                }
            }
            // Inside the select, so a client that does not read never stops
            // the connection from taking answers, noticing drain or abort.
            written = write.write_buf(&mut out), if !out.is_empty() => match written {
                Ok(0) | Err(_) => {
                    tracing::debug!(listener = %ctx.listener, ?peer, "write failed");
                    break CloseReason::IoError;
                }
                Ok(_) => {
                    let now = Instant::now();
                    write_deadline = now + ctx.write_timeout;
                    idle_deadline = now + ctx.idle_timeout;
                }
            },
            _ = sleep_until(write_deadline), if !out.is_empty() => {
                if let Some(suppressed) = ctx.stats.warn_limit.allow() {
                    tracing::warn!(listener = %ctx.listener, ?peer, timeout = ?ctx.write_timeout, suppressed, "closing connection: the client does not read its answers");
                }
                break CloseReason::WriteTimeout;
            }
            _ = sleep_until(idle_deadline), if pending.is_empty() && out.is_empty() && !draining && read_done.is_none() => {
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
        // Queue every answer that is next in order.
        let was_empty = out.is_empty();
        while let Some(Some(_)) = pending.front() {
            let msg = pending.pop_front().flatten().expect("checked");
            base = base.wrapping_add(1);
            out.put_u32(msg.len() as u32);
            out.put_slice(&msg);
            ctx.stats.bytes_out.add(msg.len() as u64 + 4);
        }
        if was_empty && !out.is_empty() {
            // Usually the socket takes the whole batch at once: write it now
            // (one syscall, no timer). What it does not take is written by
            // the select branch above, under the write timeout.
            match write.try_write(&out) {
                Ok(n) => out.advance(n),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => {
                    tracing::debug!(listener = %ctx.listener, ?peer, error = %e, "write failed");
                    break CloseReason::IoError;
                }
            }
            let now = Instant::now();
            idle_deadline = now + ctx.idle_timeout;
            write_deadline = now + ctx.write_timeout;
        }
    };
    ctx.stats.closed(reason);
    let unanswered = pending.iter().filter(|a| a.is_none()).count();
    if unanswered > 0 {
        ctx.stats.closed_with_calls_in_flight.inc();
    }
    tracing::debug!(?reason, unanswered, "connection closed");
    if reason != CloseReason::WriteTimeout && reason != CloseReason::IoError {
        // A bounded goodbye: never wait on a client that does not read.
        let _ = tokio::time::timeout(ctx.write_timeout, write.shutdown()).await;
    }
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
    slot: u32,
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
            max_reply: ctx.max_frame_size as u32,
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
