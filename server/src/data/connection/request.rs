//! One message read from a client, made into a call: protocol checks, the
//! header, routing, the client's deadline (a header-transport call's
//! `client_timeout`), and the answers the connection gives itself (unknown
//! service, wrong message type).

use std::time::Duration;

use bytes::Bytes;
use thriftworker_wire::encode_headers;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::ConnectionContext;
use crate::data::call::{Call, Completion, ReplyTo};
use crate::data::dispatch::Command;
use crate::data::routes::Route;
use crate::thrift::{
    self, application_exception, AppErrorKind, Header, HeaderError, Inbound, MessageType, Protocol,
};

/// The info header in which a header-transport client sends its timeout,
/// in milliseconds (as Apache's, fbthrift's and TTHeader's clients name it).
pub const CLIENT_TIMEOUT_HEADER: &[u8] = b"client_timeout";

/// What became of a frame.
pub enum Handled {
    /// A two-way call took a slot; `Some` if it is already answered.
    Slot(Option<Bytes>),
    /// Oneway: no answer.
    NoSlot,
}

/// Reads the call in `inbound` (the connection's protocol is fixed by its
/// first message) and sends it to the dispatcher, or answers it here.
pub async fn handle_frame(
    ctx: &ConnectionContext,
    inbound: Inbound,
    protocol: &mut Option<Protocol>,
    tx: &mpsc::Sender<Completion>,
    slot: u32,
) -> Result<Handled, HeaderError> {
    let frame = inbound.message;
    let detected = protocol_of(ctx, &frame, protocol)?;
    let header: Header = thrift::parse(&frame, detected)?;
    let name = header.name(&frame);
    let oneway = match header.message_type {
        MessageType::Call => false,
        MessageType::Oneway => true,
        MessageType::Reply | MessageType::Exception => {
            ctx.stats.invalid_type.inc();
            let text = "thriftworker: invalid message type: expected CALL or ONEWAY";
            let kind = AppErrorKind::InvalidMessageType;
            let answer = application_exception(detected, name, header.seqid, kind, text);
            return Ok(Handled::Slot(Some(answer)));
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
            return Ok(Handled::Slot(Some(unknown_service(ctx, &header, name))));
        }
    };
    drop(routes);
    let method = &name[strip..];
    let received = Instant::now();
    let mut budget = svc.timeout_for(method);
    if let Some(client) = client_timeout(&inbound.headers) {
        // The earlier of the client's deadline and ours.
        budget = budget.min(client);
    }
    let deadline = received + budget;
    let (message, name) = if strip > 0 {
        thrift::rename(&frame, &header, method)
    } else {
        (frame, header.name_start..header.name_end)
    };
    // Both ends lie within a message of at most max_frame_size (256 MiB).
    let name_at = (name.start as u32, name.end as u32);
    let headers = (!inbound.headers.is_empty()).then(|| {
        Box::new(encode_headers(
            inbound.headers.iter().map(|(k, v)| (&k[..], &v[..])),
        ))
    });
    let call = Call {
        service: svc.index,
        protocol: detected,
        seqid: header.seqid,
        name_at,
        message,
        headers,
        deadline,
        received,
        reply: (!oneway).then(|| ReplyTo {
            tx: tx.clone(),
            slot,
            // At most MAX_FRAME_SIZE (256 MiB).
            max_reply: u32::try_from(ctx.max_frame_size).unwrap_or(u32::MAX),
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

/// The client's own timeout from its info headers: a positive number of
/// milliseconds (0, absent or unreadable: none).
fn client_timeout(headers: &[(Bytes, Bytes)]) -> Option<Duration> {
    let (_, value) = headers
        .iter()
        .find(|(k, _)| k.as_ref() == CLIENT_TIMEOUT_HEADER)?;
    // A u64 has at most 20 digits; a longer value is not read at all.
    if value.len() > 20 {
        return None;
    }
    let text = std::str::from_utf8(value).ok()?;
    let ms: u64 = text.trim().parse().ok()?;
    (ms > 0).then(|| Duration::from_millis(ms))
}

/// The protocol of `frame`: one the listener accepts, and the same as the
/// connection's earlier messages (the first one fixes it).
fn protocol_of(
    ctx: &ConnectionContext,
    frame: &[u8],
    protocol: &mut Option<Protocol>,
) -> Result<Protocol, HeaderError> {
    let detected = thrift::detect(frame)?;
    ctx.protocol.check(detected)?;
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
    Ok(detected)
}

/// The UNKNOWN_METHOD answer to a call naming no service of this listener.
fn unknown_service(ctx: &ConnectionContext, header: &Header, name: &[u8]) -> Bytes {
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
    application_exception(
        header.protocol,
        bare,
        header.seqid,
        AppErrorKind::UnknownMethod,
        &text,
    )
}
