//! One worker's life: connect, READY, serve, heartbeat, reconnect, leave.
//!
//! Each connection to the data plane is a *session* with a number. Replies
//! finished for an older session are dropped: when a connection is lost the
//! data plane has already answered those calls to their clients as "worker
//! died", and their request ids mean nothing to the next session.

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use thriftworker_wire::{ServerMsg, WorkerMsg};
use tokio::sync::mpsc;
use tokio::time::{sleep, timeout, Instant};
use zeromq::{DealerSocket, Socket, SocketOptions, SocketRecv, SocketSend, ZmqMessage};

use crate::pool::{Done, Job, Pool};
use crate::{Worker, WorkerError};

/// How a session ended.
enum End {
    /// Connection lost or data plane silent: reconnect.
    Lost(String),
    /// Graceful stop finished.
    Stopped,
}

/// Finished calls whose replies one turn of the session loop sends (then
/// the loop looks at the data plane's messages and its timers again).
const REPLY_BATCH: usize = 64;

pub(crate) async fn run(
    worker: Worker,
    shutdown: impl Future<Output = ()>,
) -> Result<(), WorkerError> {
    let (done_tx, mut done_rx) = mpsc::unbounded_channel();
    let pool = Pool::start(worker.concurrency, done_tx)?;
    tokio::pin!(shutdown);
    let mut stopping = false;
    let mut backoff = worker.backoff_min;
    let mut session_no = 0u64;
    loop {
        session_no += 1;
        let socket = tokio::select! {
            s = connect(&worker) => s,
            _ = &mut shutdown, if !stopping => return Ok(()),
        };
        let socket = match socket {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(endpoint = %worker.endpoint, error = %e, retry_in = ?backoff, "cannot reach the data plane");
                tokio::select! {
                    _ = sleep(backoff) => {}
                    _ = &mut shutdown, if !stopping => return Ok(()),
                }
                backoff = (backoff * 2).min(worker.backoff_max);
                continue;
            }
        };
        let mut session = Session {
            worker: &worker,
            pool: &pool,
            number: session_no,
            socket,
            in_flight: 0,
            heartbeat: worker.heartbeat_interval,
            version: thriftworker_wire::VERSION,
        };
        match session
            .serve(&mut shutdown, &mut stopping, &mut done_rx, &mut backoff)
            .await?
        {
            End::Stopped => return Ok(()),
            End::Lost(why) => {
                tracing::warn!(endpoint = %worker.endpoint, reason = %why, retry_in = ?backoff, "lost the data plane, reconnecting");
                if stopping {
                    // Nothing to drain into: the calls in flight were
                    // answered by the data plane when the connection died.
                    return Ok(());
                }
                tokio::select! {
                    _ = sleep(backoff) => {}
                    _ = &mut shutdown => return Ok(()),
                }
                backoff = (backoff * 2).min(worker.backoff_max);
            }
        }
    }
}

async fn connect(worker: &Worker) -> Result<DealerSocket, String> {
    let mut options = SocketOptions::default();
    options.connect_timeout(Duration::from_secs(2));
    let mut socket = DealerSocket::with_options(options);
    socket
        .connect(&worker.endpoint)
        .await
        .map_err(|e| format!("connect {}: {e}", worker.endpoint))?;
    Ok(socket)
}

struct Session<'a> {
    worker: &'a Worker,
    pool: &'a Pool,
    number: u64,
    socket: DealerSocket,
    in_flight: usize,
    heartbeat: Duration,
    /// The worker protocol version agreed with this data plane (2: calls
    /// carry headers, and replies may).
    version: u8,
}

impl Session<'_> {
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
        match self.version >= 2 {
            true => headers,
            false => Bytes::new(),
        }
    }

    async fn recv(&mut self) -> Result<ServerMsg, String> {
        let msg = self
            .socket
            .recv()
            .await
            .map_err(|e| format!("receive: {e}"))?;
        ServerMsg::decode(msg.into_vecdeque())
            .map_err(|e| format!("bad message from the data plane: {e}"))
    }

    fn ready(&self, version: u8) -> WorkerMsg {
        WorkerMsg::Ready {
            version,
            credit: self.worker.credit as u32,
            token: self.worker.token.clone(),
            services: self.worker.service_names.clone(),
        }
    }

    /// READY as the newest version; a data plane that only speaks version 1
    /// refuses it (DISCONNECT "refused: unsupported worker protocol version
    /// 2 ..."), and is then sent READY as version 1 on the same connection.
    async fn handshake(&mut self) -> Result<Result<(), String>, WorkerError> {
        self.version = thriftworker_wire::VERSION;
        if let Err(e) = self.send(self.ready(self.version)).await {
            return Ok(Err(e));
        }
        let deadline = self.worker.heartbeat_interval * self.worker.heartbeat_liveness;
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
                    tracing::info!(
                        endpoint = %self.worker.endpoint,
                        worker_id = %String::from_utf8_lossy(&worker_id),
                        credit = self.worker.credit,
                        protocol_version = self.version,
                        "worker ready"
                    );
                    return Ok(Ok(()));
                }
                Ok(Ok(ServerMsg::Disconnect { reason }))
                    if self.version > thriftworker_wire::VERSION_1
                        && contains(&reason, b"unsupported worker protocol version") =>
                {
                    tracing::info!("the data plane speaks worker protocol version 1: serving without call headers");
                    self.version = thriftworker_wire::VERSION_1;
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

    async fn serve(
        &mut self,
        shutdown: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
        stopping: &mut bool,
        done_rx: &mut mpsc::UnboundedReceiver<Done>,
        backoff: &mut Duration,
    ) -> Result<End, WorkerError> {
        if let Err(e) = self.handshake().await? {
            return Ok(End::Lost(e));
        }
        *backoff = self.worker.backoff_min;
        let mut last_recv = Instant::now();
        let mut last_send = Instant::now();
        let mut tick = tokio::time::interval(self.heartbeat / 2);
        let mut drain_deadline: Option<Instant> = None;
        if *stopping {
            // A stop was asked while we were reconnecting.
            return Ok(End::Stopped);
        }
        loop {
            tokio::select! {
                msg = self.recv() => {
                    last_recv = Instant::now();
                    match msg {
                        Err(e) => return Ok(End::Lost(e)),
                        Ok(ServerMsg::Request(request)) => {
                            // Even when stopping: this request crossed our DISCONNECT
                            // and must still get its one REPLY.
                            let Some(processor) = self.worker.services.get(&request.service) else {
                                tracing::warn!(service = %String::from_utf8_lossy(&request.service), "request for a service this worker does not serve");
                                let id = request.id;
                                if let Err(e) = self.send(WorkerMsg::Reply { id, message: Bytes::new(), headers: Bytes::new() }).await {
                                    return Ok(End::Lost(e));
                                }
                                continue;
                            };
                            let deadline = std::time::Instant::now() + Duration::from_millis(request.timeout_ms.into());
                            let job = Job { session: self.number, request, processor: processor.clone(), deadline };
                            if self.worker.inline {
                                let (reply, headers) = crate::pool::process(&job);
                                let headers = self.reply_headers(headers);
                                let id = job.request.id;
                                if let Err(e) = self.send(WorkerMsg::Reply { id, message: reply, headers }).await {
                                    return Ok(End::Lost(e));
                                }
                                last_send = Instant::now();
                                continue;
                            }
                            self.in_flight += 1;
                            self.pool.submit(job);
                        }
                        Ok(ServerMsg::Heartbeat) => {}
                        Ok(ServerMsg::ReadyAck { .. }) => {}
                        Ok(ServerMsg::Disconnect { reason }) => {
                            if *stopping && self.in_flight == 0 {
                                return Ok(End::Stopped);
                            }
                            return Ok(End::Lost(format!("data plane said DISCONNECT: {}", String::from_utf8_lossy(&reason))));
                        }
                    }
                }
                Some(done) = done_rx.recv() => {
                    // And every other reply already finished: one wake of
                    // this task (and one clock read) for a batch of replies.
                    let mut next = Some(done);
                    let mut budget = REPLY_BATCH;
                    while let Some(done) = next {
                        budget -= 1;
                        if done.session == self.number {
                            self.in_flight = self.in_flight.saturating_sub(1);
                            let headers = self.reply_headers(done.headers);
                            if let Err(e) = self.send(WorkerMsg::Reply { id: done.id, message: done.reply, headers }).await {
                                return Ok(End::Lost(e));
                            }
                        }
                        next = if budget > 0 { done_rx.try_recv().ok() } else { None };
                    }
                    last_send = Instant::now();
                }
                _ = tick.tick() => {
                    let now = Instant::now();
                    if now.duration_since(last_recv) > self.heartbeat * self.worker.heartbeat_liveness {
                        return Ok(End::Lost(format!("no message from the data plane for {:?}", now.duration_since(last_recv))));
                    }
                    if now.duration_since(last_send) >= self.heartbeat {
                        if let Err(e) = self.send(WorkerMsg::Heartbeat).await {
                            return Ok(End::Lost(e));
                        }
                        last_send = now;
                    }
                    if let Some(deadline) = drain_deadline {
                        if now >= deadline {
                            tracing::warn!(in_flight = self.in_flight, "drain timeout: leaving with calls unfinished");
                            return Ok(End::Stopped);
                        }
                    }
                }
                _ = shutdown.as_mut(), if !*stopping => {
                    *stopping = true;
                    tracing::info!(in_flight = self.in_flight, "stopping: DISCONNECT sent, finishing calls in flight");
                    if let Err(e) = self.send(WorkerMsg::Disconnect { reason: Bytes::from_static(b"worker stopping") }).await {
                        return Ok(End::Lost(e));
                    }
                    // The data plane answers DISCONNECT once it has every
                    // reply; waiting for that (bounded) guarantees none is
                    // lost in a socket buffer when the process exits.
                    drain_deadline = Some(Instant::now() + self.worker.drain_timeout);
                }
            }
        }
    }
}

/// Whether `haystack` contains `needle`.
fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}
