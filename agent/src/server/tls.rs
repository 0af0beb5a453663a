//! The listener's TLS (rustls): `metrics.tls_cert` and `metrics.tls_key` as PEM.

use std::path::PathBuf;
use std::sync::Arc;

use super::config::MetricsConfig;
use super::ServerError;

/// The acceptor for `config`'s certificate, or `None` when TLS is not configured.
pub fn acceptor(config: &MetricsConfig) -> Result<Option<tokio_rustls::TlsAcceptor>, ServerError> {
    let (Some(cert), Some(key)) = (&config.tls_cert, &config.tls_key) else {
        return Ok(None);
    };
    let file_error = |what, path: &PathBuf, message: String| ServerError::File {
        what,
        path: path.clone(),
        message,
    };
    let certs: Vec<_> = std::fs::File::open(cert)
        .map_err(|e| file_error("metrics.tls_cert", cert, e.to_string()))
        .and_then(|f| {
            rustls_pemfile::certs(&mut std::io::BufReader::new(f))
                .collect::<Result<_, _>>()
                .map_err(|e| file_error("metrics.tls_cert", cert, e.to_string()))
        })?;
    if certs.is_empty() {
        return Err(file_error(
            "metrics.tls_cert",
            cert,
            "no PEM certificate in it".into(),
        ));
    }
    let private = std::fs::File::open(key)
        .map_err(|e| file_error("metrics.tls_key", key, e.to_string()))
        .and_then(|f| {
            rustls_pemfile::private_key(&mut std::io::BufReader::new(f))
                .map_err(|e| file_error("metrics.tls_key", key, e.to_string()))?
                .ok_or_else(|| file_error("metrics.tls_key", key, "no private key in it".into()))
        })?;
    let tls = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| file_error("metrics.tls_cert", cert, e.to_string()))?
    .with_no_client_auth()
    .with_single_cert(certs, private)
    .map_err(|e| file_error("metrics.tls_cert", cert, e.to_string()))?;
    Ok(Some(tokio_rustls::TlsAcceptor::from(Arc::new(tls))))
}
