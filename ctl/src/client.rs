//! Connecting to the admin API: address normalisation, TLS, the bearer
//! token, and turning transport errors and gRPC statuses into one clear line.

use std::error::Error as StdError;
use std::future::Future;
use std::path::Path;
use std::time::Duration;

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Request, Status};

use thriftworker_proto::admin::v1::admin_client::AdminClient;
use tonic_health::pb::health_client::HealthClient;

use crate::cli::{GlobalArgs, DEFAULT_ADDR};
use crate::Failure;

/// Environment variable holding the admin token itself.
pub const TOKEN_ENV: &str = "THRIFTCTL_TOKEN";

/// Adds `authorization: Bearer <token>` to every call when a token is set.
#[derive(Clone)]
pub struct Auth(Option<MetadataValue<Ascii>>);

impl Interceptor for Auth {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if let Some(token) = &self.0 {
            req.metadata_mut().insert("authorization", token.clone());
        }
        Ok(req)
    }
}

pub type Admin = AdminClient<InterceptedService<Channel, Auth>>;
pub type Health = HealthClient<InterceptedService<Channel, Auth>>;

/// How to reach the server, worked out from the flags before connecting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The URL as shown in messages: always with its scheme.
    pub url: String,
    pub tls: bool,
}

/// `host:port` gets `http://`, or `https://` when TLS is asked for; an
/// explicit scheme must agree with the TLS flags.
pub fn target(addr: Option<&str>, tls_flags: bool) -> Result<Target, Failure> {
    let addr = addr.map(str::trim).unwrap_or(DEFAULT_ADDR);
    if addr.is_empty() {
        return Err(Failure::usage("--addr is empty"));
    }
    let (url, tls) = match addr.split_once("://") {
        Some(("http", _)) if tls_flags => {
            return Err(Failure::usage(format!(
            "--addr {addr} is plain http but --tls-* flags were given; use https:// or drop them"
        )))
        }
        Some(("http", _)) => (addr.to_string(), false),
        Some(("https", _)) => (addr.to_string(), true),
        Some((scheme, _)) => {
            return Err(Failure::usage(format!(
                "--addr {addr}: unsupported scheme '{scheme}' (use http://, https:// or HOST:PORT)"
            )))
        }
        None if tls_flags => (format!("https://{addr}"), true),
        None => (format!("http://{addr}"), false),
    };
    let url = url.trim_end_matches('/').to_string();
    Ok(Target { url, tls })
}

/// The token: from --token-file / THRIFTCTL_TOKEN_FILE, else THRIFTCTL_TOKEN.
pub fn load_token(file: Option<&Path>) -> Result<Option<String>, Failure> {
    let token = match file {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                Failure::usage(format!("cannot read token file {}: {e}", path.display()))
            })?;
            let token = text.trim().to_string();
            if token.is_empty() {
                return Err(Failure::usage(format!(
                    "token file {} is empty",
                    path.display()
                )));
            }
            token
        }
        None => match std::env::var(TOKEN_ENV) {
            Ok(t) if !t.trim().is_empty() => t.trim().to_string(),
            _ => return Ok(None),
        },
    };
    Ok(Some(token))
}

fn bearer(token: Option<String>) -> Result<Auth, Failure> {
    match token {
        None => Ok(Auth(None)),
        Some(t) => MetadataValue::try_from(format!("Bearer {t}"))
            .map(|v| Auth(Some(v)))
            .map_err(|_| {
                Failure::usage("the admin token contains characters not allowed in a header")
            }),
    }
}

fn read(path: &Path, what: &str) -> Result<Vec<u8>, Failure> {
    std::fs::read(path)
        .map_err(|e| Failure::usage(format!("cannot read {what} {}: {e}", path.display())))
}

fn tls_config(g: &GlobalArgs) -> Result<ClientTlsConfig, Failure> {
    let ca = g.tls_ca.as_deref().ok_or_else(|| {
        Failure::usage(
            "TLS needs --tls-ca (PEM of the CA that signed the server's certificate): \
             thriftctl has no built-in trust roots",
        )
    })?;
    let mut tls =
        ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(ca, "--tls-ca")?));
    match (&g.tls_cert, &g.tls_key) {
        (Some(cert), Some(key)) => {
            tls = tls.identity(Identity::from_pem(
                read(cert, "--tls-cert")?,
                read(key, "--tls-key")?,
            ))
        }
        (None, None) => {}
        _ => return Err(Failure::usage("--tls-cert and --tls-key go together")),
    }
    if let Some(domain) = &g.tls_domain {
        tls = tls.domain_name(domain.clone());
    }
    Ok(tls)
}

/// An open connection and what every call needs.
pub struct Conn {
    pub peer: Peer,
    pub timeout: Duration,
    channel: Channel,
    auth: Auth,
}

impl Conn {
    pub async fn open(g: &GlobalArgs, timeout: Duration) -> Result<Conn, Failure> {
        let tls_flags = g.tls_ca.is_some()
            || g.tls_cert.is_some()
            || g.tls_key.is_some()
            || g.tls_domain.is_some();
        let target = target(g.addr.as_deref(), tls_flags)?;
        let auth = bearer(load_token(g.token_file.as_deref())?)?;
        let mut endpoint = Endpoint::from_shared(target.url.clone())
            .map_err(|e| Failure::usage(format!("--addr {}: {}", target.url, chain(&e))))?
            .connect_timeout(timeout)
            .tcp_nodelay(true);
        if target.tls {
            endpoint = endpoint
                .tls_config(tls_config(g)?)
                .map_err(|e| Failure::usage(format!("TLS settings: {}", chain(&e))))?;
        }
        let channel = match tokio::time::timeout(timeout, endpoint.connect()).await {
            Ok(Ok(channel)) => channel,
            Ok(Err(e)) => return Err(Failure::error(connect_error(&target.url, &e))),
            Err(_) => {
                return Err(Failure::error(format!(
                    "cannot connect to {}: no answer within {}",
                    target.url,
                    humantime::format_duration(timeout)
                )))
            }
        };
        Ok(Conn {
            peer: Peer {
                url: target.url,
                tls: target.tls,
                client_cert: g.tls_cert.is_some(),
            },
            timeout,
            channel,
            auth,
        })
    }

    pub fn admin(&self) -> Admin {
        AdminClient::with_interceptor(self.channel.clone(), self.auth.clone())
    }

    pub fn health(&self) -> Health {
        HealthClient::with_interceptor(self.channel.clone(), self.auth.clone())
    }

    /// A request carrying the call deadline (sent as grpc-timeout).
    pub fn request<T>(&self, message: T) -> Request<T> {
        self.request_with_timeout(message, self.timeout)
    }

    pub fn request_with_timeout<T>(&self, message: T, timeout: Duration) -> Request<T> {
        let mut req = Request::new(message);
        req.set_timeout(timeout);
        req
    }

    /// Runs one call, enforcing `timeout` on our side too, and turns a
    /// failure into "WHAT: CODE: message".
    pub async fn call<T>(
        &self,
        what: &str,
        timeout: Duration,
        fut: impl Future<Output = Result<tonic::Response<T>, Status>>,
    ) -> Result<T, Failure> {
        match tokio::time::timeout(timeout + Duration::from_millis(500), fut).await {
            Ok(Ok(resp)) => Ok(resp.into_inner()),
            Ok(Err(status)) => Err(Failure::error(status_line(what, &self.peer, &status))),
            Err(_) => Err(Failure::error(format!(
                "{what}: DEADLINE_EXCEEDED: no answer within {}",
                humantime::format_duration(timeout)
            ))),
        }
    }
}

/// The canonical gRPC name of a status code, as in the gRPC docs.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// What the hints of an error line need to know about the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub url: String,
    pub tls: bool,
    pub client_cert: bool,
}

/// `services register Echo: ALREADY_EXISTS: service 'Echo' already exists`
pub fn status_line(what: &str, peer: &Peer, status: &Status) -> String {
    let code = code_name(status.code());
    // Transport failures say little more than "transport error" in the
    // message: the cause is in the source chain.
    let mut parts = Vec::new();
    push_unique(&mut parts, status.message().trim());
    let transport = StdError::source(status).is_some();
    if let Some(source) = StdError::source(status) {
        for part in chain_parts(source) {
            push_unique(&mut parts, &part);
        }
    }
    let mut line = format!("{what}: {code}");
    if !parts.is_empty() {
        line.push_str(": ");
        line.push_str(&parts.join(": "));
    }
    match status.code() {
        Code::Unauthenticated => {
            line.push_str(" (give the admin token with --token-file or THRIFTCTL_TOKEN)")
        }
        Code::Unimplemented => line.push_str(&format!(
            " (does {} serve the thriftworker admin API?)",
            peer.url
        )),
        _ if transport && !peer.tls => line.push_str(&format!(
            " (does {} require TLS? then give --tls-ca)",
            peer.url
        )),
        _ if transport && !peer.client_cert => line.push_str(&format!(
            " (does {} require a client certificate? then give --tls-cert and --tls-key)",
            peer.url
        )),
        _ => {}
    }
    line
}

fn push_unique(parts: &mut Vec<String>, part: &str) {
    if !part.is_empty() && !parts.iter().any(|p| p.contains(part)) {
        parts.push(part.to_string());
    }
}

fn chain_parts(err: &(dyn StdError + 'static)) -> Vec<String> {
    let mut parts = Vec::new();
    let mut cur: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(e) = cur {
        push_unique(&mut parts, e.to_string().trim());
        cur = e.source();
    }
    parts
}

/// Every message of an error's source chain, joined, without repeats.
pub fn chain(err: &(dyn StdError + 'static)) -> String {
    chain_parts(err).join(": ")
}

fn io_kind(err: &(dyn StdError + 'static)) -> Option<std::io::ErrorKind> {
    let mut cur: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return Some(io.kind());
        }
        cur = e.source();
    }
    None
}

fn connect_error(url: &str, err: &(dyn StdError + 'static)) -> String {
    use std::io::ErrorKind;
    let reason = match io_kind(err) {
        Some(ErrorKind::ConnectionRefused) => {
            "connection refused (is thriftworker running with the admin API on that address?)"
                .to_string()
        }
        Some(ErrorKind::TimedOut) => "timed out".to_string(),
        _ => chain(err),
    };
    format!("cannot connect to {url}: {reason}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        let t = |a: Option<&str>, tls| target(a, tls).map_err(|f| f.message);
        assert_eq!(
            t(None, false).unwrap(),
            Target {
                url: "http://127.0.0.1:9901".into(),
                tls: false
            }
        );
        assert_eq!(
            t(None, true).unwrap(),
            Target {
                url: "https://127.0.0.1:9901".into(),
                tls: true
            }
        );
        assert_eq!(
            t(Some("10.1.2.3:9000"), false).unwrap().url,
            "http://10.1.2.3:9000"
        );
        assert_eq!(
            t(Some("admin.local:9000"), true).unwrap().url,
            "https://admin.local:9000"
        );
        assert_eq!(
            t(Some("http://[::1]:9901/"), false).unwrap().url,
            "http://[::1]:9901"
        );
        assert!(t(Some("https://h:1"), false).unwrap().tls);
        assert!(t(Some("http://h:1"), true)
            .unwrap_err()
            .contains("plain http"));
        assert!(t(Some("unix:///x"), false).unwrap_err().contains("scheme"));
        assert!(t(Some(""), false).is_err());
    }

    #[test]
    fn status_lines() {
        let peer = Peer {
            url: "http://x".into(),
            tls: false,
            client_cert: false,
        };
        let s = Status::already_exists("service 'Echo' already exists");
        assert_eq!(
            status_line("services register Echo", &peer, &s),
            "services register Echo: ALREADY_EXISTS: service 'Echo' already exists"
        );
        let s = Status::unauthenticated("missing token");
        assert!(status_line("services list", &peer, &s)
            .starts_with("services list: UNAUTHENTICATED: missing token (give"));
        assert_eq!(
            status_line("drain", &peer, &Status::new(Code::Internal, "")),
            "drain: INTERNAL"
        );
        // A transport failure: the cause, once, and a hint about TLS.
        let io = std::io::Error::new(std::io::ErrorKind::BrokenPipe, "broken pipe");
        let s = Status::from_error(Box::new(io));
        let line = status_line("services list", &peer, &s);
        assert!(line.starts_with("services list: UNKNOWN: "), "{line}");
        assert_eq!(line.matches("broken pipe").count(), 1, "{line}");
        assert!(
            line.ends_with("(does http://x require TLS? then give --tls-ca)"),
            "{line}"
        );
    }

    #[test]
    fn unique_parts() {
        let mut parts = Vec::new();
        for p in [
            "transport error",
            "transport error",
            "",
            "connection closed",
            "closed",
        ] {
            push_unique(&mut parts, p);
        }
        assert_eq!(parts, vec!["transport error", "connection closed"]);
    }

    #[test]
    fn connection_refused_message() {
        let io = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(
            connect_error("http://127.0.0.1:9901", &io),
            "cannot connect to http://127.0.0.1:9901: connection refused \
             (is thriftworker running with the admin API on that address?)"
        );
    }

    #[test]
    fn bearer_header() {
        let Auth(v) = bearer(Some("s3cret".into())).unwrap();
        assert_eq!(v.unwrap().to_str().unwrap(), "Bearer s3cret");
        assert!(bearer(Some("bad\ntoken".into())).is_err());
        assert!(bearer(None).unwrap().0.is_none());
    }
}
