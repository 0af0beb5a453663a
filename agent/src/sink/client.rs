//! Pooled HTTP clients: hyper-util's legacy client over hyper-rustls, HTTP/1.1 and
//! HTTP/2, idle connections closed by a timer. One client per distinct trust set: the
//! system roots alone, or the system roots plus one webhook's `ca_file`, so a private
//! CA meant for one receiver is trusted for that receiver only; webhooks with the
//! same trust set share one client and its pool.

use std::collections::HashMap;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

/// The shared client type.
pub type HttpClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Errors building the client.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// A `ca_file` could not be read or holds no certificate.
    #[error("ca_file {path}: {message}")]
    CaFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// TLS could not be set up.
    #[error("setting up TLS: {0}")]
    Tls(String),
}

/// How long an idle pooled connection is kept.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// The clients built so far, by trust set (`None`: the system roots alone).
#[derive(Default)]
pub struct Clients {
    by_trust: HashMap<Option<PathBuf>, HttpClient>,
}

impl Clients {
    /// The client trusting the system roots and `ca_file` (built at the first ask;
    /// needs a runtime context for its pool timer).
    pub fn for_ca_file(&mut self, ca_file: Option<&Path>) -> Result<HttpClient, ClientError> {
        let key = ca_file.map(Path::to_path_buf);
        if let Some(client) = self.by_trust.get(&key) {
            return Ok(client.clone());
        }
        let client = build(ca_file)?;
        self.by_trust.insert(key, client.clone());
        Ok(client)
    }

    /// How many distinct clients (trust sets) there are.
    pub fn len(&self) -> usize {
        self.by_trust.len()
    }

    /// Whether none was built.
    pub fn is_empty(&self) -> bool {
        self.by_trust.is_empty()
    }
}

/// Reads the PEM certificates of a `ca_file` (at least one).
pub fn read_ca_file(
    path: &Path,
) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, ClientError> {
    let ca_error = |message: String| ClientError::CaFile {
        path: path.to_path_buf(),
        message,
    };
    let file = std::fs::File::open(path).map_err(|e| ca_error(e.to_string()))?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut BufReader::new(file))
        .collect::<Result<_, _>>()
        .map_err(|e| ca_error(e.to_string()))?;
    if certs.is_empty() {
        return Err(ca_error("no PEM certificate in it".into()));
    }
    Ok(certs)
}

/// Builds a client trusting the system roots and, if given, `ca_file`.
pub fn build(ca_file: Option<&Path>) -> Result<HttpClient, ClientError> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for cert in native.certs {
        let _ = roots.add(cert);
    }
    if let Some(path) = ca_file {
        for cert in read_ca_file(path)? {
            roots.add(cert).map_err(|e| ClientError::CaFile {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?;
        }
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| ClientError::Tls(e.to_string()))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .build();
    Ok(Client::builder(TokioExecutor::new())
        .pool_idle_timeout(IDLE_TIMEOUT)
        .pool_timer(TokioTimer::new())
        .build(https))
}
