//! A webhook's address and headers: which URLs and header names a `[[webhooks]]`
//! table may use, and the URL as logs and the API show it (without the parts that
//! may carry secrets).

/// The URL without user info, query or fragment (which may carry secrets), for logs
/// and the API.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(url) => {
            let host = url.host_str().unwrap_or("?");
            match url.port() {
                Some(port) => format!("{}://{host}:{port}{}", url.scheme(), url.path()),
                None => format!("{}://{host}{}", url.scheme(), url.path()),
            }
        }
        Err(_) => "<invalid url>".into(),
    }
}

/// Headers the agent frames or sets itself: refused in `[webhooks.headers]` (a
/// `Content-Length` there made a receiver read 5 bytes of a 754-byte body).
const RESERVED_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authorization",
    "te",
    "trailer",
    "upgrade",
    "expect",
    "authorization",
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
];

/// Why a header name is not allowed in `[webhooks.headers]`, if it is not.
pub fn reserved_header(name: &str) -> Option<&'static str> {
    let lower = name.to_ascii_lowercase();
    if lower == "authorization" {
        return Some("use the authorization, authorization_file or authorization_env key");
    }
    RESERVED_HEADERS
        .contains(&lower.as_str())
        .then_some("the agent frames and sets it itself")
}

/// A webhook URL checked with a URL parser: http or https, a host, a valid port, no
/// fragment.
pub fn parse_url(text: &str) -> Result<url::Url, String> {
    let url = url::Url::parse(text)
        .map_err(|e| format!("{:?} is not a valid URL: {e}", redact_url(text)))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "{:?} is not an http or https URL",
            redact_url(text)
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("{:?} has no host", redact_url(text)));
    }
    if url.fragment().is_some() {
        return Err(format!(
            "{:?} has a #fragment, which is never sent: remove it",
            redact_url(text)
        ));
    }
    Ok(url)
}
