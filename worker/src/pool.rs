//! The bounded thread pool that runs the synchronous Thrift processors.
//!
//! Thrift's Rust processors block; running them on the tokio runtime would
//! stall heartbeats. Exactly `concurrency` threads exist, the data plane never
//! sends more calls than that (the credit), so the job channel never holds
//! more than a handful of entries.

use std::io::Cursor;
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};
use std::thread;

use bytes::Bytes;
use thrift::protocol::{
    TBinaryInputProtocol, TBinaryOutputProtocol, TCompactInputProtocol, TCompactOutputProtocol,
    TInputProtocol, TOutputProtocol,
};
use thriftworker_wire::{Protocol, Request};
use tokio::sync::mpsc;

use crate::SharedProcessor;

/// A call for a pool thread, tagged with the connection session it came from.
pub(crate) struct Job {
    pub session: u64,
    pub request: Request,
    pub processor: SharedProcessor,
}

/// A finished call: the encoded reply (empty for oneway calls).
pub(crate) struct Done {
    pub session: u64,
    pub id: u64,
    pub reply: Bytes,
}

pub(crate) struct Pool {
    jobs: std_mpsc::Sender<Job>,
}

impl Pool {
    pub fn start(threads: usize, done: mpsc::UnboundedSender<Done>) -> std::io::Result<Pool> {
        let (jobs, rx) = std_mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..threads {
            let rx = Arc::clone(&rx);
            let done = done.clone();
            thread::Builder::new()
                .name(format!("thrift-proc-{i}"))
                .spawn(move || loop {
                    // The lock is held only while waiting for the next job.
                    let job = match rx.lock() {
                        Ok(guard) => guard.recv(),
                        Err(_) => return,
                    };
                    let Ok(job) = job else { return };
                    let id = job.request.id;
                    let reply = process(&job);
                    if done
                        .send(Done {
                            session: job.session,
                            id,
                            reply,
                        })
                        .is_err()
                    {
                        return;
                    }
                })?;
        }
        Ok(Pool { jobs })
    }

    pub fn submit(&self, job: Job) {
        // Fails only when every thread has exited, i.e. the worker is stopping.
        let _ = self.jobs.send(job);
    }
}

/// Runs one call through its processor, decoding and encoding in the
/// protocol the client used.
pub(crate) fn process(job: &Job) -> Bytes {
    let input = Cursor::new(job.request.message.clone());
    let mut output: Vec<u8> = Vec::with_capacity(256);
    let result = {
        let (mut i, mut o): (Box<dyn TInputProtocol>, Box<dyn TOutputProtocol + '_>) =
            match job.request.protocol {
                Protocol::BinaryStrict => (
                    Box::new(TBinaryInputProtocol::new(input, true)),
                    Box::new(TBinaryOutputProtocol::new(&mut output, true)),
                ),
                Protocol::BinaryLax => (
                    Box::new(TBinaryInputProtocol::new(input, false)),
                    Box::new(TBinaryOutputProtocol::new(&mut output, false)),
                ),
                Protocol::Compact => (
                    Box::new(TCompactInputProtocol::new(input)),
                    Box::new(TCompactOutputProtocol::new(&mut output)),
                ),
            };
        job.processor.process(i.as_mut(), o.as_mut())
    };
    if let Err(e) = result {
        // Generated processors have already written an exception message for
        // the client where they could (unknown method, handler error); the
        // error is only worth a debug line.
        tracing::debug!(request = job.request.id, error = %e, "processor returned an error");
    }
    Bytes::from(output)
}
