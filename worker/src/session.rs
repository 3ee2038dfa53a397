//! One data plane, as the worker sees it: connect, READY, serve, heartbeat,
//! move credit, reconnect, leave.
//!
//! A worker runs one of these tasks per data plane it is attached to
//! (`fleet.rs` starts and stops them). Each connection to the data plane is
//! a *session* with a number. Replies finished for an older session are
//! dropped: when a connection is lost the data plane has already answered
//! those calls to their clients as "worker died", and their request ids mean
//! nothing to the next session. Those calls still occupy the worker until
//! they finish, so they stay reserved in the credit ledger (as *orphans*).

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use thriftworker_wire::{ServerMsg, WorkerMsg};
use tokio::sync::{mpsc, Notify};
use tokio::time::{timeout, Instant};
use zeromq::util::PeerIdentity;
use zeromq::{DealerSocket, Socket, SocketOptions, SocketRecv, SocketSend, ZmqMessage};

use crate::credit;
use crate::pool::{Done, Job, Pool};
use crate::{Worker, WorkerError};

/// What every session task of one worker shares.
pub(crate) struct Ctx {
    pub worker: Worker,
    pub pool: Pool,
    pub credit: credit::Shared,
    /// A session lost its connection: the fleet resolves the endpoints again.
    pub lost: Notify,
    /// Calls held across every data plane (received, reply not yet sent),
    /// and the most ever held at once: the worker's own check that the
    /// data planes together never exceed its credit.
    pub held: AtomicU32,
    pub peak_held: AtomicU32,
    /// The worker is stopping: a data plane left need not wait for calls
    /// of its earlier sessions (nothing will use the credit they free).
    pub stopping: AtomicBool,
    /// `HOST/PID/`: each connection's identity is this and its number.
    pub identity_prefix: String,
}

impl Ctx {
    fn hold(&self) {
        let now = self.held.fetch_add(1, Ordering::Relaxed) + 1;
        self.peak_held.fetch_max(now, Ordering::Relaxed);
    }

    fn release(&self) {
        self.held.fetch_sub(1, Ordering::Relaxed);
    }
}

/// How a session ended.
enum End {
    /// Connection lost or data plane silent: reconnect.
    Lost(String),
    /// No connection could be made: try again.
    Unreachable(String),
    /// Graceful leave finished (or the drain timeout passed).
    Stopped,
}

/// Finished calls whose replies one turn of the session loop sends (then
/// the loop looks at the data plane's messages and its timers again).
const REPLY_BATCH: usize = 64;

/// How the fleet and the ledger reach one session task: `leave` says the
/// task should leave its data plane; a message on `wake` says "look again"
/// (at `leave`, and at the ledger). A bounded channel of one: pokes that
/// arrive while one is pending merge into it. (Not `watch` receivers: the
/// session loop would register and drop two waiters under a mutex on
/// every turn, measurably more per call than one channel's atomic waker.)
pub(crate) struct Signals {
    pub leave: Arc<AtomicBool>,
    pub wake: mpsc::Receiver<()>,
}

/// Serves data plane `addr` until told to leave (the address is gone, or
/// the worker stops), then leaves it gracefully. Returns an error only when
/// the data plane refused the worker and no other data plane serves it
/// (what retrying cannot fix).
pub(crate) async fn attach(
    ctx: Arc<Ctx>,
    addr: String,
    signals: Signals,
) -> Result<(), WorkerError> {
    let (done_tx, done_rx) = mpsc::unbounded_channel();
    let mut a = Attachment {
        ctx,
        addr,
        sig: Sig {
            leave: signals.leave,
            wake: signals.wake,
            open: true,
        },
        done_tx,
        done_rx,
        number: 0,
        orphans: 0,
    };
    let result = a.run().await;
    a.finish().await;
    result
}

/// A session task's side of [`Signals`].
struct Sig {
    leave: Arc<AtomicBool>,
    wake: mpsc::Receiver<()>,
    /// `wake` has a sender left (when none has, the worker is gone: leave).
    open: bool,
}

impl Sig {
    fn leaving(&self) -> bool {
        !self.open || self.leave.load(Ordering::Acquire)
    }

    /// Completes when told to leave (or when the worker is gone).
    async fn wait_leave(&mut self) {
        while !self.leaving() {
            self.open = self.wake.recv().await.is_some();
        }
    }

    /// Waits for a poke; false when told to leave.
    async fn poked(&mut self) -> bool {
        if self.open {
            self.open = self.wake.recv().await.is_some();
        }
        !self.leaving()
    }
}

struct Attachment {
    ctx: Arc<Ctx>,
    addr: String,
    sig: Sig,
    done_tx: mpsc::UnboundedSender<Done>,
    done_rx: mpsc::UnboundedReceiver<Done>,
    /// The current (or last) session number.
    number: u64,
    /// Calls of earlier sessions still running.
    orphans: u32,
}

impl Attachment {
    fn leaving(&self) -> bool {
        self.sig.leaving()
    }

    async fn run(&mut self) -> Result<(), WorkerError> {
        let worker_backoff = (self.ctx.worker.backoff_min, self.ctx.worker.backoff_max);
        let mut backoff = worker_backoff.0;
        loop {
            if self.leaving() {
                return Ok(());
            }
            self.number += 1;
            let socket = tokio::select! {
                s = connect(&self.addr, &self.ctx.identity_prefix) => s,
                _ = self.sig.wait_leave() => return Ok(()),
            };
            let end = match socket {
                Err(e) => End::Unreachable(e),
                Ok(socket) => {
                    let mut session = Session {
                        heartbeat: self.ctx.worker.heartbeat_interval,
                        a: &mut *self,
                        socket,
                        held: 0,
                        credit: 0,
                        reported: 0,
                        unanswered: false,
                        version: thriftworker_wire::VERSION,
                        stopping: false,
                        rejoining: false,
                    };
                    let end = session.serve(&mut backoff).await;
                    let held = session.held;
                    self.detach(held);
                    match end {
                        Ok(end) => end,
                        Err(WorkerError::Refused(why)) if self.others_registered() => {
                            tracing::error!(endpoint = %self.addr, reason = %why, retry_in = ?worker_backoff.1, "this data plane refused the worker (the others serve it): check its worker token and services");
                            backoff = worker_backoff.1;
                            End::Lost(why)
                        }
                        Err(e) => return Err(e),
                    }
                }
            };
            match end {
                End::Stopped => return Ok(()),
                End::Lost(_) | End::Unreachable(_) => {
                    self.ctx.lost.notify_one();
                    if self.leaving() {
                        // Nothing to drain into: the calls in flight were
                        // answered by the data plane when the connection died.
                        return Ok(());
                    }
                    match end {
                        End::Unreachable(why) => {
                            tracing::warn!(endpoint = %self.addr, error = %why, retry_in = ?backoff, "cannot reach the data plane")
                        }
                        End::Lost(why) => {
                            tracing::warn!(endpoint = %self.addr, reason = %why, retry_in = ?backoff, "lost the data plane, reconnecting")
                        }
                        End::Stopped => {}
                    }
                    let until = Instant::now() + backoff;
                    loop {
                        tokio::select! {
                            _ = tokio::time::sleep_until(until) => break,
                            go_on = self.sig.poked() => if !go_on { return Ok(()) },
                            Some(done) = self.done_rx.recv() => self.orphan_done(done),
                        }
                    }
                    backoff = (backoff * 2).min(worker_backoff.1);
                }
            }
        }
    }

    /// Whether another data plane has this worker registered.
    fn others_registered(&self) -> bool {
        self.ctx.credit.with(|l| l.others_registered(&self.addr))
    }

    /// The session ended with `held` calls still running: orphans now.
    fn detach(&mut self, held: u32) {
        self.orphans += held;
        let (addr, orphans) = (&self.addr, self.orphans);
        self.ctx.credit.update(|l| l.detach(addr, orphans));
    }

    /// A call of an earlier session finished: its reply is dropped, its
    /// credit comes back.
    fn orphan_done(&mut self, _done: Done) {
        self.ctx.release();
        self.orphans = self.orphans.saturating_sub(1);
        let (addr, orphans) = (&self.addr, self.orphans);
        self.ctx.credit.update(|l| l.orphans(addr, orphans));
    }

    /// Waits (up to the drain timeout) for calls of earlier sessions, so
    /// their credit is given back before this data plane is forgotten.
    async fn finish(&mut self) {
        let deadline = Instant::now() + self.ctx.worker.drain_timeout;
        while self.orphans > 0 && !self.ctx.stopping.load(Ordering::Relaxed) {
            match tokio::time::timeout_at(deadline, self.done_rx.recv()).await {
                Ok(Some(done)) => self.orphan_done(done),
                _ => break,
            }
        }
        self.ctx.credit.update(|l| l.remove(&self.addr));
    }
}

async fn recv(socket: &mut DealerSocket) -> Result<ServerMsg, String> {
    let msg = socket.recv().await.map_err(|e| format!("receive: {e}"))?;
    ServerMsg::decode(msg.into_vecdeque())
        .map_err(|e| format!("bad message from the data plane: {e}"))
}

/// This process's connections so far (each gets a ZeroMQ identity of its own).
static CONNECTIONS: AtomicU64 = AtomicU64::new(0);

/// The ZeroMQ identity of a new connection: `HOST/PID/N`. Each data plane
/// shows it (`thriftctl workers`), so one worker process is recognisable in
/// every data plane it is attached to; N keeps a reconnection from being
/// taken for the connection it replaces.
fn identity(prefix: &str) -> Option<PeerIdentity> {
    let n = CONNECTIONS.fetch_add(1, Ordering::Relaxed) + 1;
    PeerIdentity::try_from(format!("{prefix}{n}").into_bytes()).ok()
}

/// `HOST/PID/`, read once per worker: the start of every connection's
/// identity. The host name is cut to printable ASCII without `/`.
pub(crate) fn identity_prefix() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_default();
    let host: String = host
        .trim()
        .chars()
        .filter(|c| c.is_ascii_graphic() && *c != '/')
        .take(128)
        .collect();
    format!("{host}/{}/", std::process::id())
}

async fn connect(addr: &str, identity_prefix: &str) -> Result<DealerSocket, String> {
    let mut options = SocketOptions::default();
    options.connect_timeout(Duration::from_secs(2));
    if let Some(id) = identity(identity_prefix) {
        options.peer_identity(id);
    }
    let mut socket = DealerSocket::with_options(options);
    socket
        .connect(addr)
        .await
        .map_err(|e| format!("connect {addr}: {e}"))?;
    Ok(socket)
}

struct Session<'a> {
    a: &'a mut Attachment,
    socket: DealerSocket,
    /// Calls of this session received and not answered yet.
    held: u32,
    /// This data plane's credit (READY's, then the last CREDIT sent).
    credit: u32,
    /// `held` as last told to the ledger (told only while it may exceed `credit`).
    reported: u32,
    /// A CREDIT is waiting for its answer.
    unanswered: bool,
    heartbeat: Duration,
    /// The worker protocol version agreed with this data plane (2: calls
    /// carry headers, and replies may; 3: credit moves with CREDIT).
    version: u8,
    /// DISCONNECT sent: finishing the calls held, then leave.
    stopping: bool,
    /// ...and then connect again (to register with a smaller share at a
    /// data plane whose credit cannot move).
    rejoining: bool,
}

impl Session<'_> {
    fn worker(&self) -> &Worker {
        &self.a.ctx.worker
    }

    async fn send(&mut self, msg: WorkerMsg) -> Result<(), String> {
        let frames = msg.encode();
        let message = ZmqMessage::try_from(frames).map_err(|e| format!("encode: {e}"))?;
        self.socket
            .send(message)
            .await
            .map_err(|e| format!("send: {e}"))
    }

    /// Reply headers go only to a data plane that speaks version 2 (one
    /// that speaks version 1 would refuse the REPLY).
    fn reply_headers(&self, headers: Bytes) -> Bytes {
        match self.version >= thriftworker_wire::VERSION_2 {
            true => headers,
            false => Bytes::new(),
        }
    }

    async fn recv(&mut self) -> Result<ServerMsg, String> {
        recv(&mut self.socket).await
    }

    fn ready(&self, version: u8) -> WorkerMsg {
        WorkerMsg::Ready {
            version,
            credit: self.credit,
            token: self.worker().token.clone(),
            services: self.worker().service_names.clone(),
        }
    }

    /// Waits until the ledger gives this data plane some credit (at once
    /// when it is the only one), while finishing calls of earlier sessions.
    async fn wait_for_credit(&mut self) -> Option<u32> {
        let addr = self.a.addr.clone();
        self.a.ctx.credit.update(|l| l.join(&addr));
        loop {
            if let Some(c) = self.a.ctx.credit.with(|l| l.grant_ready(&addr)) {
                return Some(c);
            }
            tracing::debug!(endpoint = %addr, "waiting for the other data planes to give up credit");
            tokio::select! {
                go_on = self.a.sig.poked() => if !go_on { return None },
                Some(done) = self.a.done_rx.recv() => self.a.orphan_done(done),
            }
        }
    }

    /// READY as the newest version; a data plane that speaks an older one
    /// refuses it (DISCONNECT "refused: unsupported worker protocol version
    /// N ..."), and is then sent READY one version lower on the same
    /// connection.
    async fn handshake(&mut self) -> Result<Result<(), String>, WorkerError> {
        self.version = thriftworker_wire::VERSION;
        if let Err(e) = self.send(self.ready(self.version)).await {
            return Ok(Err(e));
        }
        let deadline = self.worker().heartbeat_interval * self.worker().heartbeat_liveness;
        loop {
            match timeout(deadline, self.recv()).await {
                Err(_) => return Ok(Err("no answer to READY".into())),
                Ok(Err(e)) => return Ok(Err(e)),
                Ok(Ok(ServerMsg::ReadyAck {
                    version,
                    heartbeat_interval_ms,
                    worker_id,
                })) => {
                    self.version = version.min(self.version);
                    if heartbeat_interval_ms > 0 {
                        self.heartbeat = Duration::from_millis(heartbeat_interval_ms.into());
                    }
                    let (addr, version) = (self.a.addr.clone(), self.version);
                    self.a.ctx.credit.update(|l| l.registered(&addr, version));
                    tracing::info!(
                        endpoint = %self.a.addr,
                        worker_id = %String::from_utf8_lossy(&worker_id),
                        credit = self.credit,
                        protocol_version = self.version,
                        "worker ready"
                    );
                    return Ok(Ok(()));
                }
                Ok(Ok(ServerMsg::Disconnect { reason }))
                    if self.version > thriftworker_wire::VERSION_1
                        && contains(&reason, b"unsupported worker protocol version") =>
                {
                    self.version -= 1;
                    tracing::info!(
                        endpoint = %self.a.addr,
                        "the data plane does not speak worker protocol version {}: trying version {}",
                        self.version + 1,
                        self.version
                    );
                    if let Err(e) = self.send(self.ready(self.version)).await {
                        return Ok(Err(e));
                    }
                }
                Ok(Ok(ServerMsg::Disconnect { reason })) => {
                    return Err(WorkerError::Refused(
                        String::from_utf8_lossy(&reason).into_owned(),
                    ))
                }
                Ok(Ok(_)) => continue,
            }
        }
    }

    /// Tells the ledger how many calls this session holds, when that may
    /// exceed its credit (after a lowering): only then does it matter, so
    /// with a steady credit this costs nothing per call.
    fn report_held(&mut self) {
        if self.held != self.reported && (self.held > self.credit || self.reported > self.credit) {
            self.reported = self.held;
            let (addr, held) = (&self.a.addr, self.held);
            self.a.ctx.credit.update(|l| l.held(addr, held));
        }
    }

    /// Sends the CREDIT the ledger asks for, if any. A data plane of an
    /// older version cannot take CREDIT: when it holds credit another one
    /// waits for, this connection leaves it gracefully and registers again.
    async fn move_credit(&mut self) -> Result<(), String> {
        if self.stopping || self.unanswered {
            return Ok(());
        }
        if self.version < thriftworker_wire::VERSION_3 {
            let addr = &self.a.addr;
            if self.a.ctx.credit.with(|l| l.should_rejoin(addr)) {
                tracing::info!(endpoint = %addr, credit = self.credit, protocol_version = self.version, "this data plane cannot take CREDIT: registering again to share the credit with another one");
                self.rejoining = true;
                return self.leave().await;
            }
            return Ok(());
        }
        let addr = self.a.addr.clone();
        let held = self.held;
        let change = self.a.ctx.credit.with(|l| {
            let c = l.next_change(&addr)?;
            // Lowered: what is held now may exceed the new credit.
            l.held(&addr, held);
            Some(c)
        });
        let Some(credit) = change else {
            return Ok(());
        };
        tracing::debug!(endpoint = %addr, from = self.credit, to = credit, held, "moving credit");
        self.credit = credit;
        self.reported = held;
        self.unanswered = true;
        self.send(WorkerMsg::Credit { credit }).await
    }

    /// DISCONNECT: no new calls from this data plane; the ones held are
    /// finished. The data plane answers DISCONNECT once it has every reply;
    /// waiting for that (bounded by the drain timeout) guarantees none is
    /// lost in a socket buffer when the connection closes.
    async fn leave(&mut self) -> Result<(), String> {
        self.stopping = true;
        self.send(WorkerMsg::Disconnect {
            reason: Bytes::from_static(b"worker stopping"),
        })
        .await
    }

    async fn serve(&mut self, backoff: &mut Duration) -> Result<End, WorkerError> {
        let Some(credit) = self.wait_for_credit().await else {
            return Ok(End::Stopped);
        };
        self.credit = credit;
        if let Err(e) = self.handshake().await? {
            return Ok(End::Lost(e));
        }
        *backoff = self.worker().backoff_min;
        let mut last_recv = Instant::now();
        let mut last_send = Instant::now();
        let mut tick = tokio::time::interval(self.heartbeat / 2);
        let mut drain_deadline: Option<Instant> = None;
        // The split may have changed during the handshake.
        if let Err(e) = self.move_credit().await {
            return Ok(End::Lost(e));
        }
        loop {
            tokio::select! {
                msg = recv(&mut self.socket) => {
                    last_recv = Instant::now();
                    match msg {
                        Err(e) => return Ok(End::Lost(e)),
                        Ok(ServerMsg::Request(request)) => {
                            // Even when stopping: this request crossed our DISCONNECT
                            // and must still get its one REPLY.
                            let Some(processor) = self.worker().services.get(&request.service) else {
                                tracing::warn!(service = %String::from_utf8_lossy(&request.service), "request for a service this worker does not serve");
                                let id = request.id;
                                if let Err(e) = self.send(WorkerMsg::Reply { id, message: Bytes::new(), headers: Bytes::new() }).await {
                                    return Ok(End::Lost(e));
                                }
                                continue;
                            };
                            let deadline = std::time::Instant::now() + Duration::from_millis(request.timeout_ms.into());
                            let job = Job {
                                session: self.a.number,
                                reply_to: self.a.done_tx.clone(),
                                request,
                                processor: processor.clone(),
                                deadline,
                            };
                            if self.worker().inline {
                                let (reply, headers) = crate::pool::process(&job);
                                let headers = self.reply_headers(headers);
                                let id = job.request.id;
                                if let Err(e) = self.send(WorkerMsg::Reply { id, message: reply, headers }).await {
                                    return Ok(End::Lost(e));
                                }
                                last_send = Instant::now();
                                continue;
                            }
                            self.held += 1;
                            self.a.ctx.hold();
                            self.a.ctx.pool.submit(job);
                        }
                        Ok(ServerMsg::CreditAck { .. }) => {
                            self.unanswered = false;
                            let (addr, held) = (self.a.addr.clone(), self.held);
                            self.reported = held;
                            self.a.ctx.credit.update(|l| {
                                l.held(&addr, held);
                                l.answered(&addr);
                            });
                        }
                        Ok(ServerMsg::Heartbeat) => {}
                        Ok(ServerMsg::ReadyAck { .. }) => {}
                        Ok(ServerMsg::Disconnect { reason }) => {
                            if self.stopping && self.held == 0 {
                                if self.rejoining && !self.a.leaving() {
                                    return Ok(End::Lost("registering again with a smaller share".into()));
                                }
                                return Ok(End::Stopped);
                            }
                            return Ok(End::Lost(format!("data plane said DISCONNECT: {}", String::from_utf8_lossy(&reason))));
                        }
                    }
                }
                Some(done) = self.a.done_rx.recv() => {
                    // And every other reply already finished: one wake of
                    // this task (and one clock read) for a batch of replies.
                    let mut next = Some(done);
                    let mut budget = REPLY_BATCH;
                    while let Some(done) = next {
                        budget -= 1;
                        if done.session == self.a.number {
                            self.a.ctx.release();
                            self.held = self.held.saturating_sub(1);
                            let headers = self.reply_headers(done.headers);
                            if let Err(e) = self.send(WorkerMsg::Reply { id: done.id, message: done.reply, headers }).await {
                                return Ok(End::Lost(e));
                            }
                        } else {
                            self.a.orphan_done(done);
                        }
                        next = if budget > 0 { self.a.done_rx.try_recv().ok() } else { None };
                    }
                    self.report_held();
                    last_send = Instant::now();
                }
                r = self.a.sig.wake.recv(), if self.a.sig.open => {
                    self.a.sig.open &= r.is_some();
                    if self.a.leaving() && (!self.stopping || self.rejoining) {
                        // Leave (already leaving to register again: now for good).
                        self.rejoining = false;
                        if !self.stopping {
                            tracing::info!(endpoint = %self.a.addr, held = self.held, "leaving: DISCONNECT sent, finishing calls in flight");
                            if let Err(e) = self.leave().await {
                                return Ok(End::Lost(e));
                            }
                        }
                        drain_deadline.get_or_insert(Instant::now() + self.worker().drain_timeout);
                    } else if let Err(e) = self.move_credit().await {
                        return Ok(End::Lost(e));
                    }
                }
                _ = tick.tick() => {
                    let now = Instant::now();
                    if now.duration_since(last_recv) > self.heartbeat * self.worker().heartbeat_liveness {
                        return Ok(End::Lost(format!("no message from the data plane for {:?}", now.duration_since(last_recv))));
                    }
                    if now.duration_since(last_send) >= self.heartbeat {
                        if let Err(e) = self.send(WorkerMsg::Heartbeat).await {
                            return Ok(End::Lost(e));
                        }
                        last_send = now;
                    }
                    if self.stopping && drain_deadline.is_none() {
                        drain_deadline = Some(now + self.worker().drain_timeout);
                    }
                    if let Some(deadline) = drain_deadline {
                        if now >= deadline {
                            tracing::warn!(endpoint = %self.a.addr, held = self.held, "drain timeout: leaving with calls unfinished");
                            return Ok(End::Stopped);
                        }
                    }
                }
            }
        }
    }
}

/// Whether `haystack` contains `needle`.
fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}
