//! The bounded thread pool that runs the synchronous Thrift processors.
//!
//! Thrift's Rust processors block; running them on the tokio runtime would
//! stall heartbeats. Exactly `concurrency` threads exist, shared by every data
//! plane the worker is attached to; together the data planes never send more
//! calls than the credit (`concurrency` + `prefetch`, split between them), so
//! the job channel never holds more than `prefetch` calls waiting for a thread.

use std::io::Cursor;
use std::panic::AssertUnwindSafe;
use std::thread;
use std::time::Instant;

use bytes::Bytes;
use thrift::protocol::{
    TBinaryInputProtocol, TBinaryOutputProtocol, TCompactInputProtocol, TCompactOutputProtocol,
    TInputProtocol, TMessageIdentifier, TMessageType, TOutputProtocol,
};
use thrift::{ApplicationError, ApplicationErrorKind};
use thriftworker_wire::{decode_headers, encode_headers, Protocol, Request};
use tokio::sync::mpsc;

use crate::SharedProcessor;

/// A call for a pool thread, tagged with the connection it came from, and
/// where its reply goes (that data plane's session task).
pub(crate) struct Job {
    pub session: u64,
    pub reply_to: mpsc::UnboundedSender<Done>,
    pub request: Request,
    pub processor: SharedProcessor,
    /// When the data plane gives up on the call (received + `timeout_ms`).
    pub deadline: Instant,
}

/// A finished call: the encoded reply (empty for oneway calls) and the
/// reply headers its handler set (a headers frame; empty: none).
pub(crate) struct Done {
    pub session: u64,
    pub id: u64,
    pub reply: Bytes,
    pub headers: Bytes,
}

pub(crate) struct Pool {
    jobs: crossbeam_channel::Sender<Job>,
}

impl Pool {
    pub fn start(threads: usize) -> std::io::Result<Pool> {
        // Multi-consumer: each idle thread waits on the channel itself (a
        // std receiver behind a mutex made the threads queue on the mutex,
        // a futex wake per hand-over).
        let (jobs, rx) = crossbeam_channel::unbounded::<Job>();
        for i in 0..threads {
            let rx = rx.clone();
            thread::Builder::new()
                .name(format!("thrift-proc-{i}"))
                .spawn(move || loop {
                    let Ok(job) = rx.recv() else { return };
                    let id = job.request.id;
                    let (reply, headers) = process(&job);
                    // The session task is gone only once the worker stops
                    // serving that data plane: the reply has nowhere to go.
                    let _ = job.reply_to.send(Done {
                        session: job.session,
                        id,
                        reply,
                        headers,
                    });
                })?;
        }
        Ok(Pool { jobs })
    }

    pub fn submit(&self, job: Job) {
        // Fails only when every thread has exited, i.e. the worker is stopping.
        let _ = self.jobs.send(job);
    }
}

/// Runs one call through its processor (with its headers and deadline in
/// [`crate::context`]); returns the reply and the reply headers the handler
/// set, as a headers frame.
pub(crate) fn process(job: &Job) -> (Bytes, Bytes) {
    // A malformed headers frame from the data plane: the call is served
    // without headers.
    let headers = decode_headers(&job.request.headers).unwrap_or_default();
    let (reply, reply_headers) = crate::context::serve(headers, job.deadline, || answer(job));
    let reply_headers = match reply_headers.is_empty() {
        true => Bytes::new(),
        false => encode_headers(reply_headers.iter().map(|(k, v)| (&k[..], &v[..]))),
    };
    (reply, reply_headers)
}

/// Runs one call through its processor, decoding and encoding in the
/// protocol the client used. Never fails and never unwinds: a two-way call
/// always gets an answer. A handler that panics, or a request the processor
/// cannot decode (it then writes nothing), is answered with a
/// `TApplicationException` (INTERNAL_ERROR, PROTOCOL_ERROR), so one bad call
/// neither kills this pool thread nor leaves the data plane waiting.
fn answer(job: &Job) -> Bytes {
    let run = std::panic::catch_unwind(AssertUnwindSafe(|| run_processor(job)));
    match run {
        Ok((output, Ok(()))) => Bytes::from(output),
        // Generated processors write an exception message for the client
        // where they can (unknown method, handler error) and return Err.
        Ok((output, Err(_))) if !output.is_empty() => Bytes::from(output),
        Ok((_, Err(e))) => {
            tracing::debug!(request = job.request.id, error = %e, "request could not be processed");
            let text = format!("thriftworker-worker: request could not be processed: {e}");
            failure_reply(job, ApplicationErrorKind::ProtocolError, &text)
        }
        Err(panic) => {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            tracing::error!(request = job.request.id, panic = %truncate(&message), "handler panicked; answering the call with INTERNAL_ERROR");
            failure_reply(
                job,
                ApplicationErrorKind::InternalError,
                "thriftworker-worker: the handler panicked",
            )
        }
    }
}

/// The processor's output bytes and its result.
fn run_processor(job: &Job) -> (Vec<u8>, thrift::Result<()>) {
    let mut output: Vec<u8> = Vec::with_capacity(256);
    let result = {
        let (mut i, mut o) = protocols(job, &mut output);
        job.processor.process(i.as_mut(), o.as_mut())
    };
    (output, result)
}

type Protocols<'a> = (Box<dyn TInputProtocol>, Box<dyn TOutputProtocol + 'a>);

fn protocols<'a>(job: &Job, output: &'a mut Vec<u8>) -> Protocols<'a> {
    let input = Cursor::new(job.request.message.clone());
    match job.request.protocol {
        Protocol::BinaryStrict => (
            Box::new(TBinaryInputProtocol::new(input, true)),
            Box::new(TBinaryOutputProtocol::new(output, true)),
        ),
        Protocol::BinaryLax => (
            Box::new(TBinaryInputProtocol::new(input, false)),
            Box::new(TBinaryOutputProtocol::new(output, false)),
        ),
        Protocol::Compact => (
            Box::new(TCompactInputProtocol::new(input)),
            Box::new(TCompactOutputProtocol::new(output)),
        ),
    }
}

/// A `TApplicationException` answering `job`'s call (its name and seqid, in
/// its protocol); empty for a oneway call or a header that cannot be read
/// (the data plane then answers "no reply").
fn failure_reply(job: &Job, kind: ApplicationErrorKind, text: &str) -> Bytes {
    let mut output = Vec::with_capacity(128);
    let written = {
        let (mut i, mut o) = protocols(job, &mut output);
        i.read_message_begin().and_then(|ident| {
            if ident.message_type == TMessageType::OneWay {
                return Ok(false);
            }
            o.write_message_begin(&TMessageIdentifier::new(
                ident.name,
                TMessageType::Exception,
                ident.sequence_number,
            ))?;
            let e = ApplicationError::new(kind, truncate(text));
            thrift::Error::write_application_error_to_out_protocol(&e, o.as_mut())?;
            o.write_message_end()?;
            o.flush()?;
            Ok(true)
        })
    };
    match written {
        Ok(true) => Bytes::from(output),
        _ => Bytes::new(),
    }
}

/// Error texts go to clients and logs: keep them short.
fn truncate(s: &str) -> String {
    s.chars().take(256).collect()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use thrift::protocol::{TFieldIdentifier, TStructIdentifier, TType};
    use thrift::server::TProcessor;

    use super::*;

    /// A processor that reads the call header and then panics, or fails
    /// without writing anything (as generated code does for arguments it
    /// cannot decode).
    struct Broken {
        panic: bool,
    }

    impl TProcessor for Broken {
        fn process(
            &self,
            i: &mut dyn TInputProtocol,
            _: &mut dyn TOutputProtocol,
        ) -> thrift::Result<()> {
            i.read_message_begin()?;
            if self.panic {
                panic!("capacity overflow");
            }
            i.read_struct_begin()?;
            Err(thrift::Error::Protocol(thrift::ProtocolError::new(
                thrift::ProtocolErrorKind::SizeLimit,
                "string length -1",
            )))
        }
    }

    fn call(protocol: Protocol, message_type: TMessageType) -> Bytes {
        let mut out = Vec::new();
        {
            let mut o: Box<dyn TOutputProtocol> = match protocol {
                Protocol::Compact => Box::new(TCompactOutputProtocol::new(&mut out)),
                _ => Box::new(TBinaryOutputProtocol::new(&mut out, true)),
            };
            o.write_message_begin(&TMessageIdentifier::new("echo", message_type, 42))
                .unwrap();
            o.write_struct_begin(&TStructIdentifier::new("args"))
                .unwrap();
            o.write_field_begin(&TFieldIdentifier::new("msg", TType::String, 1))
                .unwrap();
            o.write_field_stop().unwrap();
            o.write_struct_end().unwrap();
            o.write_message_end().unwrap();
        }
        Bytes::from(out)
    }

    fn job(panic: bool, protocol: Protocol, message_type: TMessageType) -> Job {
        Job {
            session: 1,
            reply_to: tokio::sync::mpsc::unbounded_channel().0,
            request: thriftworker_wire::Request {
                id: 7,
                timeout_ms: 1000,
                protocol,
                service: Bytes::from_static(b"Echo"),
                message: call(protocol, message_type),
                headers: Bytes::new(),
            },
            processor: Arc::new(Broken { panic }),
            deadline: Instant::now(),
        }
    }

    fn exception_of(reply: &Bytes, protocol: Protocol) -> (TMessageIdentifier, thrift::Error) {
        let cursor = Cursor::new(reply.clone());
        let mut i: Box<dyn TInputProtocol> = match protocol {
            Protocol::Compact => Box::new(TCompactInputProtocol::new(cursor)),
            _ => Box::new(TBinaryInputProtocol::new(cursor, true)),
        };
        let ident = i.read_message_begin().unwrap();
        let e = thrift::Error::read_application_error_from_in_protocol(i.as_mut()).unwrap();
        (ident, thrift::Error::Application(e))
    }

    #[test]
    fn a_panicking_handler_is_answered_with_internal_error() {
        for protocol in [Protocol::BinaryStrict, Protocol::Compact] {
            let (reply, _) = process(&job(true, protocol, TMessageType::Call));
            let (ident, e) = exception_of(&reply, protocol);
            assert_eq!(ident.message_type, TMessageType::Exception);
            assert_eq!((ident.name.as_str(), ident.sequence_number), ("echo", 42));
            match e {
                thrift::Error::Application(a) => {
                    assert_eq!(a.kind, ApplicationErrorKind::InternalError)
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn an_undecodable_request_is_answered_with_protocol_error() {
        let (reply, _) = process(&job(false, Protocol::BinaryStrict, TMessageType::Call));
        match exception_of(&reply, Protocol::BinaryStrict).1 {
            thrift::Error::Application(a) => {
                assert_eq!(a.kind, ApplicationErrorKind::ProtocolError);
                assert!(
                    a.message.contains("could not be processed"),
                    "{}",
                    a.message
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_failed_oneway_call_gets_no_answer() {
        assert!(
            process(&job(true, Protocol::BinaryStrict, TMessageType::OneWay))
                .0
                .is_empty()
        );
    }

    /// The pool never shrinks: a thread whose handler panicked serves the
    /// next call (before, the thread died and its credit was lost).
    #[test]
    fn pool_threads_survive_panics() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let pool = Pool::start(1).unwrap();
        for _ in 0..3 {
            let mut job = job(true, Protocol::BinaryStrict, TMessageType::Call);
            job.reply_to = tx.clone();
            pool.submit(job);
            let done = rx.blocking_recv().expect("an answer from the one thread");
            assert!(!done.reply.is_empty());
        }
    }
}
