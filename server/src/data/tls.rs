//! TLS on a Thrift listener (rustls, the stack of the admin API): the
//! listener's certificate and key, optionally a CA that client certificates
//! must chain to (mTLS), and reloading them without dropping a connection.
//!
//! A TLS listener speaks only TLS (a plaintext client fails the handshake
//! and is closed, counted as `tls_error`); the transport and protocol
//! detection then run on the decrypted stream. Protocol versions and cipher
//! suites are rustls' defaults (TLS 1.2 and 1.3, forward-secret AEAD suites
//! only).
//!
//! Reload: the files are read again on SIGHUP and when their size or
//! modification time changes (checked every [`WATCH_INTERVAL`]). A new
//! configuration applies to connections accepted afterwards; connections
//! already open keep their session. Files that do not load (missing, no key,
//! a key that does not match) leave the current configuration in place and
//! are logged and counted (`thriftworker_listener_tls_reloads_total{result}`).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

/// How often the certificate files are checked for changes.
pub const WATCH_INTERVAL: Duration = Duration::from_secs(2);
/// A client must complete the TLS handshake within this.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest certificate, key or CA file read (a PEM bundle is kilobytes).
const MAX_FILE: u64 = 1 << 20;

/// Why a listener's TLS files could not be used. Says which file and what to do.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what} {path} is over 1 MiB: is it the right file?")]
    TooLarge { what: &'static str, path: PathBuf },
    #[error("{what} {path} holds no PEM {expected}: use a PEM file (-----BEGIN {expected}-----)")]
    Empty {
        what: &'static str,
        path: PathBuf,
        expected: &'static str,
    },
    #[error("{what} {path}: {reason}")]
    Invalid {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
}

/// The files a TLS listener is configured with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Client certificates must chain to this CA (mTLS); `None`: no client
    /// certificate asked for.
    pub client_ca: Option<PathBuf>,
}

/// A listener's TLS configuration, swappable while it serves.
pub struct ListenerTls {
    files: TlsFiles,
    current: ArcSwap<ServerConfig>,
    /// Size and modification time of the files the current config came from.
    stamp: Mutex<Vec<Option<(u64, SystemTime)>>>,
}

impl ListenerTls {
    /// Loads the files (at start or when the listener is added: an error is
    /// the listener's error).
    pub fn load(files: TlsFiles) -> Result<ListenerTls, TlsError> {
        let stamp = stamp(&files);
        let config = build(&files)?;
        Ok(ListenerTls {
            files,
            current: ArcSwap::from_pointee(config),
            stamp: Mutex::new(stamp),
        })
    }

    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// An acceptor with the configuration in force now.
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.current.load_full())
    }

    /// Whether the files changed on disk since they were last loaded.
    pub fn changed_on_disk(&self) -> bool {
        let now = stamp(&self.files);
        self.stamp.lock().map(|s| *s != now).unwrap_or(true)
    }

    /// Reads the files again and, if they load, makes them the configuration
    /// for new connections. On error the current one stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let now = stamp(&self.files);
        let config = build(&self.files);
        // Recorded either way: a broken file is reported once per change,
        // not every interval.
        if let Ok(mut s) = self.stamp.lock() {
            *s = now;
        }
        self.current.store(Arc::new(config?));
        Ok(())
    }
}

fn stamp(files: &TlsFiles) -> Vec<Option<(u64, SystemTime)>> {
    [
        Some(&files.cert),
        Some(&files.key),
        files.client_ca.as_ref(),
    ]
    .into_iter()
    .flatten()
    .map(|p| {
        std::fs::metadata(p)
            .ok()
            .and_then(|m| Some((m.len(), m.modified().ok()?)))
    })
    .collect()
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    let err = |source| TlsError::Read {
        what,
        path: path.to_owned(),
        source,
    };
    let len = std::fs::metadata(path).map_err(err)?.len();
    if len > MAX_FILE {
        return Err(TlsError::TooLarge {
            what,
            path: path.to_owned(),
        });
    }
    std::fs::read(path).map_err(err)
}

fn certs(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(what, path)?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Invalid {
            what,
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Empty {
            what,
            path: path.to_owned(),
            expected: "CERTIFICATE",
        });
    }
    Ok(certs)
}

/// Builds the rustls configuration from the files.
fn build(files: &TlsFiles) -> Result<ServerConfig, TlsError> {
    let chain = certs("tls_cert", &files.cert)?;
    let key_pem = read("tls_key", &files.key)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|_| TlsError::Empty {
        what: "tls_key",
        path: files.key.clone(),
        expected: "PRIVATE KEY",
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Invalid {
            what: "tls_cert",
            path: files.cert.clone(),
            reason: e.to_string(),
        })?;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for c in certs("tls_client_ca", ca)? {
                roots.add(c).map_err(|e| TlsError::Invalid {
                    what: "tls_client_ca",
                    path: ca.clone(),
                    reason: e.to_string(),
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| TlsError::Invalid {
                    what: "tls_client_ca",
                    path: ca.clone(),
                    reason: e.to_string(),
                })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    builder
        .with_single_cert(chain, key)
        .map_err(|e| TlsError::Invalid {
            what: "tls_key",
            path: files.key.clone(),
            reason: format!("does not go with tls_cert {}: {e}", files.cert.display()),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_and_non_pem_files_are_clear_errors() {
        let dir = std::env::temp_dir().join(format!("tw-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let junk = dir.join("junk.pem");
        std::fs::write(&junk, "not a certificate").unwrap();
        let files = TlsFiles {
            cert: dir.join("missing.pem"),
            key: junk.clone(),
            client_ca: None,
        };
        let e = ListenerTls::load(files).err().unwrap().to_string();
        assert!(
            e.contains("cannot read tls_cert") && e.contains("missing.pem"),
            "{e}"
        );
        let files = TlsFiles {
            cert: junk.clone(),
            key: junk.clone(),
            client_ca: None,
        };
        let e = ListenerTls::load(files).err().unwrap().to_string();
        assert!(e.contains("holds no PEM CERTIFICATE"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
