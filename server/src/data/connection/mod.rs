//! One client connection: read messages in the listener's transport, route
//! each call, write replies in request order, in the transport each call
//! came in.
//!
//! The rooms: this file runs the connection's loop (read, take answers,
//! write, time out, drain); [`pipeline`] keeps answers in request order;
//! [`request`] turns a message into a call. Delimiting messages (framed,
//! unframed, header, or detecting which) is the job of
//! [`crate::thrift::codec`].
//!
//! At the pipeline's bound the connection stops reading (TCP backpressure
//! does the rest). Any frame or header the connection cannot make sense of
//! ends reading (with a counted reason): after a broken frame the stream
//! cannot be resynchronised, and without a seqid there is nothing to answer.
//! A header frame with a protocol or transform the data plane does not
//! support is the exception: it is answered (`INVALID_PROTOCOL`,
//! `INVALID_TRANSFORM`) before reading ends.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use futures::{FutureExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::{sleep_until, Instant};
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;

use super::call::Completion;
use super::dispatch::Command;
use super::routes::Routes;
use super::tls::{ListenerTls, HANDSHAKE_TIMEOUT};
use crate::config::ProtocolSetting;
use crate::telemetry::{CloseReason, ListenerStats};
use crate::thrift::framed::FrameError;
use crate::thrift::header::HeaderFrameError;
use crate::thrift::unframed::SkipError;
use crate::thrift::{
    application_exception, AppErrorKind, Inbound, MessageDecoder, Protocol, ReplyFraming,
    Transport, TransportError,
};

mod pipeline;
mod request;

use pipeline::Pipeline;
use request::{handle_frame, Handled};

/// What a connection needs from its listener; shared by all its connections.
pub struct ConnectionContext {
    pub listener: String,
    /// Where calls go; swapped atomically when a service's settings change.
    pub routes: Arc<ArcSwap<Routes>>,
    pub protocol: ProtocolSetting,
    /// `None`: detect per connection (`auto`).
    pub transport: Option<Transport>,
    /// `Some`: a TLS listener (its configuration, reloadable).
    pub tls: Option<Arc<ListenerTls>>,
    pub max_frame_size: usize,
    pub max_pipeline: usize,
    pub idle_timeout: Duration,
    /// A client that accepts no answer bytes for this long is disconnected.
    pub write_timeout: Duration,
    pub dispatch: mpsc::Sender<Command>,
    pub stats: Arc<ListenerStats>,
}

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
///
/// On a TLS listener the handshake comes first, in this connection's own
/// task (bounded by `HANDSHAKE_TIMEOUT`); one that fails closes the
/// connection, counted as `tls_error`.
pub async fn serve(
    stream: TcpStream,
    ctx: Arc<ConnectionContext>,
    drain: CancellationToken,
    abort: CancellationToken,
) {
    let peer = stream.peer_addr().ok();
    let _ = stream.set_nodelay(true);
    let Some(tls) = ctx.tls.clone() else {
        let (read, write) = stream.into_split();
        return run(
            Connection::new(read, write, peer, ctx, &drain),
            &drain,
            &abort,
        )
        .await;
    };
    let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.acceptor().accept(stream));
    let failed = |error: &dyn std::fmt::Display| {
        ctx.stats.closed(CloseReason::TlsError);
        if let Some(suppressed) = ctx.stats.warn_limit.allow() {
            tracing::warn!(listener = %ctx.listener, peer = peer.map(tracing::field::display), %error, suppressed, "closing connection: TLS handshake failed");
        }
    };
    tokio::select! {
        done = handshake => match done {
            Ok(Ok(stream)) => {
                let (read, write) = tokio::io::split(stream);
                run(Connection::new(read, write, peer, ctx, &drain), &drain, &abort).await
            }
            Ok(Err(e)) => failed(&e),
            Err(_) => failed(&format!("no handshake within {HANDSHAKE_TIMEOUT:?}")),
        },
        _ = abort.cancelled() => ctx.stats.closed(CloseReason::Shutdown),
    }
}

async fn run<R: AsyncRead + Unpin, W: AsyncWrite + TryWriteNow + Unpin>(
    mut conn: Connection<R, W>,
    drain: &CancellationToken,
    abort: &CancellationToken,
) {
    let reason = conn.run(drain, abort).await;
    conn.close(reason).await;
}

/// A write that never waits: `Ok(None)` when the stream takes nothing now.
trait TryWriteNow {
    fn try_write_now(&mut self, buf: &[u8]) -> std::io::Result<Option<usize>>;
}

impl TryWriteNow for tokio::net::tcp::OwnedWriteHalf {
    fn try_write_now(&mut self, buf: &[u8]) -> std::io::Result<Option<usize>> {
        match self.try_write(buf) {
            Ok(n) => Ok(Some(n)),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(e),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> TryWriteNow for tokio::io::WriteHalf<S> {
    /// One poll of a write (a TLS stream has no `try_write`).
    fn try_write_now(&mut self, buf: &[u8]) -> std::io::Result<Option<usize>> {
        self.write(buf).now_or_never().transpose()
    }
}

/// What the connection's write branch did.
enum WriteOp {
    Wrote(usize),
    Flushed,
}

/// Writes what `out` holds, or flushes when it holds nothing.
async fn write_or_flush<W: AsyncWrite + Unpin>(
    write: &mut W,
    out: &mut bytes::BytesMut,
) -> std::io::Result<WriteOp> {
    if out.is_empty() {
        write.flush().await.map(|()| WriteOp::Flushed)
    } else {
        write.write_buf(out).await.map(WriteOp::Wrote)
    }
}

/// A connection over its read and write halves: a TCP stream's, or a TLS
/// stream's.
struct Connection<R, W> {
    ctx: Arc<ConnectionContext>,
    peer: Option<SocketAddr>,
    frames: FramedRead<R, MessageDecoder>,
    write: W,
    /// Answers from the dispatcher; `tx` is handed to every call.
    completions: mpsc::Receiver<Completion>,
    tx: mpsc::Sender<Completion>,
    pipeline: Pipeline,
    /// Fixed by the first message.
    protocol: Option<Protocol>,
    /// Counted once, when the first message shows it.
    transport: Option<Transport>,
    draining: bool,
    /// Set when reading has ended (end of stream, bad input): the reason the
    /// connection closes once every call read is answered.
    read_done: Option<CloseReason>,
    idle_deadline: Instant,
    write_deadline: Instant,
    /// A TLS stream may keep encrypted bytes of a write it reported done;
    /// they leave on flush. Set after each write on a TLS connection.
    unflushed: bool,
}

impl<R: AsyncRead + Unpin, W: AsyncWrite + TryWriteNow + Unpin> Connection<R, W> {
    fn new(
        read: R,
        write: W,
        peer: Option<SocketAddr>,
        ctx: Arc<ConnectionContext>,
        drain: &CancellationToken,
    ) -> Connection<R, W> {
        let draining = drain.is_cancelled();
        // Buffers start small or empty: most connections are idle most of
        // the time, and RSS per idle connection is a target
        // (docs/benchmarks.md). The decoder reserves exactly what a larger
        // frame needs once its length is known.
        let decoder = MessageDecoder::new(ctx.transport, ctx.max_frame_size);
        let frames = FramedRead::with_capacity(read, decoder, 2048);
        let (tx, completions) = mpsc::channel(ctx.max_pipeline);
        let now = Instant::now();
        Connection {
            peer,
            frames,
            write,
            completions,
            tx,
            pipeline: Pipeline::new(ctx.max_pipeline),
            protocol: None,
            transport: None,
            draining,
            read_done: None,
            unflushed: false,
            idle_deadline: now + ctx.idle_timeout,
            write_deadline: now + ctx.write_timeout,
            ctx,
        }
    }

    /// The loop; returns why the connection closes.
    async fn run(&mut self, drain: &CancellationToken, abort: &CancellationToken) -> CloseReason {
        loop {
            if self.pipeline.is_idle() {
                if let Some(reason) = self.read_done {
                    return reason;
                }
                if self.draining {
                    return CloseReason::Shutdown;
                }
            }
            let can_read = self.read_done.is_none() && !self.draining && self.pipeline.has_room();
            let writing = self.pipeline.has_output();
            let idle = self.pipeline.is_idle() && !self.draining && self.read_done.is_none();
            tokio::select! {
                frame = self.frames.next(), if can_read => {
                    if let Some(reason) = self.on_frame(frame).await {
                        return reason;
                    }
                    // The rest of what that read brought, without
                    // re-arming every branch per call.
                    if let Some(reason) = self.on_buffered_frames().await {
                        return reason;
                    }
                }
                Some(done) = self.completions.recv() => {
                    self.pipeline.complete(done.slot, done.message, done.headers);
                    // Take any further answers already here, then write in one go.
                    while let Ok(done) = self.completions.try_recv() {
                        self.pipeline.complete(done.slot, done.message, done.headers);
                    }
                }
                // Inside the select, so a client that does not read never
                // stops the connection from taking answers, noticing drain
                // or abort.
                // Answers to write, or (TLS) encrypted bytes to flush.
                done = write_or_flush(&mut self.write, self.pipeline.out()), if writing || self.unflushed => match done {
                    Ok(WriteOp::Wrote(0)) | Err(_) => {
                        self.debug(None, "write failed");
                        return CloseReason::IoError;
                    }
                    Ok(WriteOp::Wrote(_)) => self.wrote(),
                    Ok(WriteOp::Flushed) => self.unflushed = false,
                },
                _ = sleep_until(self.write_deadline), if writing || self.unflushed => {
                    if let Some(suppressed) = self.ctx.stats.warn_limit.allow() {
                        tracing::warn!(
                            listener = %self.ctx.listener,
                            peer = self.peer.map(tracing::field::display),
                            timeout = ?self.ctx.write_timeout,
                            suppressed,
                            "closing connection: the client does not read its answers",
                        );
                    }
                    return CloseReason::WriteTimeout;
                }
                _ = sleep_until(self.idle_deadline), if idle => {
                    self.debug(None, "closing idle connection");
                    return CloseReason::IdleTimeout;
                }
                _ = drain.cancelled(), if !self.draining => self.draining = true,
                // Drain timed out: close with calls unanswered.
                _ = abort.cancelled() => return CloseReason::Shutdown,
            }
            if let Err(reason) = self.write_ready() {
                return reason;
            }
        }
    }

    /// Handles what the message reader produced. Returns a reason to close
    /// at once (the client is gone).
    async fn on_frame(
        &mut self,
        frame: Option<Result<Inbound, TransportError>>,
    ) -> Option<CloseReason> {
        let inbound = match frame {
            // End of stream: the client sent FIN. It may only have
            // half-closed, so its answers are still written (if it is gone,
            // the first write fails).
            None => {
                self.read_done = Some(CloseReason::ClientClose);
                return None;
            }
            // A reset or another I/O error: the client is gone.
            Some(Err(TransportError::Frame(FrameError::Io(e)))) => {
                self.debug(Some(&e), "connection ended");
                return Some(CloseReason::IoError);
            }
            Some(Err(e)) => {
                self.read_done = Some(self.transport_error(e));
                return None;
            }
            Some(Ok(inbound)) => inbound,
        };
        let transport = inbound.framing.transport();
        if self.transport.is_none() {
            self.transport = Some(transport);
            self.ctx.stats.transport_connections[transport.index()].inc();
        }
        self.ctx.stats.transport_calls[transport.index()].inc();
        self.ctx.stats.bytes_in.add(inbound.wire_len as u64);
        self.idle_deadline = Instant::now() + self.ctx.idle_timeout;
        let slot = self.pipeline.next_slot();
        let framing = inbound.framing;
        match handle_frame(&self.ctx, inbound, &mut self.protocol, &self.tx, slot).await {
            Ok(Handled::Slot(answer)) => self.pipeline.push(answer, framing),
            Ok(Handled::NoSlot) => {}
            Err(e) => {
                self.warn(&e, "closing connection: unparseable message header");
                self.read_done = Some(CloseReason::ProtocolError);
            }
        }
        None
    }

    /// Handles the messages already in the read buffer (a client that
    /// pipelines sends several per read), while reading may go on. Reads
    /// nothing from the socket: the select does that.
    async fn on_buffered_frames(&mut self) -> Option<CloseReason> {
        use tokio_util::codec::Decoder;
        // The decoder is borrowed apart from the reader's buffer (an
        // allocation-free placeholder stands in) and put back before
        // returning, whatever happens.
        let mut decoder =
            std::mem::replace(self.frames.decoder_mut(), MessageDecoder::placeholder());
        let mut reason = None;
        while reason.is_none()
            && self.read_done.is_none()
            && !self.draining
            && self.pipeline.has_room()
        {
            // `None`: a partial message (or nothing) is left; `frames.next()`
            // reads the rest, and handles end of stream inside a message.
            let Some(frame) = decoder.decode(self.frames.read_buffer_mut()).transpose() else {
                break;
            };
            reason = self.on_frame(Some(frame)).await;
        }
        *self.frames.decoder_mut() = decoder;
        reason
    }

    /// Why reading ends after a message that could not be delimited or
    /// read (logged); a refused header frame is answered first.
    fn transport_error(&mut self, e: TransportError) -> CloseReason {
        let reason = match &e {
            TransportError::Frame(FrameError::Io(_)) => CloseReason::IoError,
            // End of stream inside a message: the calls before it are answered.
            TransportError::Frame(FrameError::Truncated(_))
            | TransportError::UnframedTruncated(_) => CloseReason::ClientClose,
            TransportError::Frame(FrameError::TooLarge { .. })
            | TransportError::Unframed(SkipError::TooLarge { .. })
            | TransportError::Header(HeaderFrameError::InflatesTooLarge(_)) => {
                CloseReason::FrameTooLarge
            }
            TransportError::Frame(FrameError::Empty | FrameError::Negative(_))
            | TransportError::Unframed(_)
            | TransportError::Header(_) => CloseReason::BadFrame,
            TransportError::Refused { .. } | TransportError::NotAllowed { .. } => {
                CloseReason::ProtocolError
            }
        };
        if reason == CloseReason::ClientClose {
            self.debug(Some(&e), "connection ended");
        } else {
            self.warn(&e, "closing connection: bad message");
        }
        if let TransportError::Refused { error, reply } = &e {
            let kind = match error {
                HeaderFrameError::UnsupportedProtocol(_) => AppErrorKind::InvalidProtocol,
                _ => AppErrorKind::InvalidTransform,
            };
            let text = format!("thriftworker: {error}");
            // The message inside could not be read: no name, seqid 0.
            let answer = application_exception(reply.protocol.protocol(), b"", 0, kind, &text);
            let framing = ReplyFraming::Header(crate::thrift::header::HeaderReply {
                // The answer itself is not compressed: the transform may be
                // what was refused.
                zlib: false,
                ..*reply
            });
            self.pipeline.push(Some(answer), framing);
        }
        reason
    }

    /// Frames every answer next in order and, if the output was empty,
    /// writes it at once: usually the socket takes the whole batch (one
    /// syscall, no timer). What it does not take is written by `run`'s
    /// select under the write timeout.
    fn write_ready(&mut self) -> Result<(), CloseReason> {
        let was_empty = !self.pipeline.has_output();
        let added = self.pipeline.frame_ready();
        if added == 0 {
            return Ok(());
        }
        self.ctx.stats.bytes_out.add(added as u64);
        if was_empty {
            // One attempt, without waiting (what the socket does not take
            // now, the select writes when it can).
            match self.write.try_write_now(self.pipeline.out()) {
                Ok(Some(0)) => {
                    self.debug(None, "write failed");
                    return Err(CloseReason::IoError);
                }
                Ok(Some(n)) => {
                    self.pipeline.written(n);
                    self.unflushed = self.ctx.tls.is_some();
                }
                Ok(None) => {}
                Err(e) => {
                    self.debug(Some(&e), "write failed");
                    return Err(CloseReason::IoError);
                }
            }
            self.touch();
        }
        Ok(())
    }

    /// Logs `what` at debug level with the connection's listener and peer.
    fn debug(&self, error: Option<&dyn std::fmt::Display>, what: &str) {
        tracing::debug!(
            listener = %self.ctx.listener,
            peer = self.peer.map(tracing::field::display),
            error = error.map(tracing::field::display),
            "{what}",
        );
    }

    /// Logs a bad client's `error` with listener and peer, at most ten
    /// times a second per listener (the counters still count every one).
    fn warn(&self, error: &dyn std::fmt::Display, what: &str) {
        if let Some(suppressed) = self.ctx.stats.warn_limit.allow() {
            tracing::warn!(
                listener = %self.ctx.listener,
                peer = self.peer.map(tracing::field::display),
                error = %error,
                suppressed,
                "{what}",
            );
        }
    }

    /// A write went through: on TLS its records may still need a flush.
    fn wrote(&mut self) {
        self.unflushed = self.ctx.tls.is_some();
        self.touch();
    }

    /// The client took bytes: it is neither idle nor failing to read.
    fn touch(&mut self) {
        let now = Instant::now();
        self.idle_deadline = now + self.ctx.idle_timeout;
        self.write_deadline = now + self.ctx.write_timeout;
    }

    async fn close(mut self, reason: CloseReason) {
        self.ctx.stats.closed(reason);
        let unanswered = self.pipeline.unanswered();
        if unanswered > 0 {
            self.ctx.stats.closed_with_calls_in_flight.inc();
        }
        tracing::debug!(?reason, unanswered, "connection closed");
        if reason != CloseReason::WriteTimeout && reason != CloseReason::IoError {
            // A bounded goodbye: never wait on a client that does not read.
            let _ = tokio::time::timeout(self.ctx.write_timeout, self.write.shutdown()).await;
        }
    }
}
