//! Reaching the servers: the credentials and TLS settings read at start (so that a
//! missing file is a configuration problem, not a surprise at the first publish), and
//! the connector task that connects, finds (or creates) the stream and keeps trying,
//! with back-off, while the servers are down, refuse the credentials or lack the
//! stream. Each state change is logged once, naming the target and the key to fix.

use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use async_nats::jetstream;
use tokio::sync::watch;
use zeroize::Zeroizing;

use super::config::{AuthKind, NatsConfig};
use super::metrics::NatsMetrics;
use super::subject::SubjectTemplate;

/// Credentials as read at start.
enum Auth {
    None,
    Token(Zeroizing<String>),
    UserPassword(String, Zeroizing<String>),
    Creds(Zeroizing<String>),
    Nkey(Zeroizing<String>),
}

/// Everything a connection attempt needs, read and checked at start.
pub struct Prepared {
    auth: Auth,
    servers: Vec<String>,
    ca_file: Option<std::path::PathBuf>,
    client_cert: Option<(std::path::PathBuf, std::path::PathBuf)>,
    timeout: Duration,
    max_in_flight: usize,
    node: String,
}

fn read(
    what: &str,
    inline: Option<&str>,
    file: Option<&std::path::Path>,
    env: Option<&str>,
) -> Result<Zeroizing<String>, (String, String)> {
    let key = if file.is_some() {
        format!("{what}_file")
    } else if env.is_some() {
        format!("{what}_env")
    } else {
        what.to_owned()
    };
    let value = crate::secrets::read_source(inline, file, env)
        .map_err(|message| (key.clone(), message))?
        .ok_or_else(|| (key.clone(), "not set".to_owned()))?;
    if value.is_empty() {
        return Err((key, "is empty".into()));
    }
    if let Some(found) = crate::secrets::placeholder(value.as_bytes()) {
        return Err((
            key,
            crate::secrets::WeakSecret::Placeholder(found).to_string(),
        ));
    }
    Ok(value)
}

impl Prepared {
    /// Reads the target's credentials and checks its files; the error is (key,
    /// message) and never holds a secret.
    pub fn new(config: &NatsConfig, node: &str) -> Result<Self, (String, String)> {
        let auth = match config.auth_kind() {
            AuthKind::None => Auth::None,
            AuthKind::Token => Auth::Token(read(
                "token",
                config.token.as_deref(),
                config.token_file.as_deref(),
                config.token_env.as_deref(),
            )?),
            AuthKind::UserPassword => Auth::UserPassword(
                config.user.clone().unwrap_or_default(),
                read(
                    "password",
                    config.password.as_deref(),
                    config.password_file.as_deref(),
                    config.password_env.as_deref(),
                )?,
            ),
            AuthKind::Creds => {
                let creds = read("creds", None, config.creds_file.as_deref(), None)?;
                // Parsed now, so that a damaged file is named at start.
                async_nats::ConnectOptions::with_credentials(&creds)
                    .map_err(|e| ("creds_file".to_owned(), format!("not a .creds file: {e}")))?;
                Auth::Creds(creds)
            }
            AuthKind::Nkey => {
                let seed = read(
                    "nkey_seed",
                    None,
                    config.nkey_seed_file.as_deref(),
                    config.nkey_seed_env.as_deref(),
                )?;
                let seed = Zeroizing::new(seed.trim().to_owned());
                if !(seed.starts_with('S') && seed.len() == 58) {
                    return Err((
                        config.auth_key().to_owned(),
                        "not an nkey seed (58 characters starting with S, as `nk -gen user` writes)".into(),
                    ));
                }
                Auth::Nkey(seed)
            }
        };
        for (key, path) in [
            ("ca_file", &config.ca_file),
            ("tls_cert", &config.tls_cert),
            ("tls_key", &config.tls_key),
        ] {
            if let Some(path) = path {
                std::fs::metadata(path)
                    .map_err(|e| (key.to_owned(), format!("{}: {e}", path.display())))?;
            }
        }
        Ok(Self {
            auth,
            servers: config.servers.clone(),
            ca_file: config.ca_file.clone(),
            client_cert: config.tls_cert.clone().zip(config.tls_key.clone()),
            timeout: config.timeout,
            max_in_flight: config.max_in_flight,
            node: node.to_owned(),
        })
    }

    /// Connection options for one attempt; `events` hears the client's events.
    fn options(&self, link: Arc<Link>) -> async_nats::ConnectOptions {
        let mut options = match &self.auth {
            Auth::None => async_nats::ConnectOptions::new(),
            Auth::Token(token) => async_nats::ConnectOptions::with_token(token.to_string()),
            Auth::UserPassword(user, password) => {
                async_nats::ConnectOptions::with_user_and_password(
                    user.clone(),
                    password.to_string(),
                )
            }
            Auth::Creds(creds) => {
                async_nats::ConnectOptions::with_credentials(creds).expect("checked at start")
            }
            Auth::Nkey(seed) => async_nats::ConnectOptions::with_nkey(seed.to_string()),
        };
        if let Some(ca) = &self.ca_file {
            options = options.add_root_certificates(ca.clone());
        }
        if let Some((cert, key)) = &self.client_cert {
            options = options.add_client_certificate(cert.clone(), key.clone());
        }
        if self.servers.iter().any(|s| s.starts_with("tls://")) {
            options = options.require_tls(true);
        }
        options
            .name(format!("wgpulse {}", self.node))
            .connection_timeout(self.timeout)
            .request_timeout(Some(self.timeout))
            .max_reconnects(None)
            .reconnect_delay_callback(|attempts| {
                Duration::from_millis((250u64 << attempts.min(6)).min(10_000))
            })
            .event_callback(move |event| {
                let link = link.clone();
                async move { link.client_event(event) }
            })
    }
}

/// Why a target cannot publish now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Problem {
    /// Not connected yet (no attempt finished).
    Connecting,
    /// No server could be reached.
    Unreachable(String),
    /// The servers refused the credentials.
    Unauthorized(String),
    /// The stream is missing or could not be read.
    Stream(String),
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Problem::Connecting => write!(f, "connecting"),
            Problem::Unreachable(m) | Problem::Unauthorized(m) | Problem::Stream(m) => {
                write!(f, "{m}")
            }
        }
    }
}

/// The connection shared by the transport, the connector task and the client's
/// event callback.
pub struct Link {
    /// The target's name (for logs).
    pub name: String,
    /// `nats[<i>]`: the configuration key messages point at.
    pub key: String,
    /// The JetStream context once connected and the stream found.
    pub context: RwLock<Option<jetstream::Context>>,
    /// Why it cannot publish, if it cannot.
    pub problem: Mutex<Option<Problem>>,
    /// Whether the client is connected now (the client's own reconnects included).
    connected: Mutex<bool>,
    metrics: NatsMetrics,
}

impl Link {
    /// A link not yet connected.
    pub fn new(name: &str, key: &str, metrics: NatsMetrics) -> Self {
        metrics.connected.with_label_values(&[name]).set(0);
        Self {
            name: name.to_owned(),
            key: key.to_owned(),
            context: RwLock::new(None),
            problem: Mutex::new(Some(Problem::Connecting)),
            connected: Mutex::new(false),
            metrics,
        }
    }

    /// Records a new state; logs it when it differs from the last one.
    fn set_problem(&self, problem: Option<Problem>) {
        let mut current = self.problem.lock().expect("not poisoned");
        if *current == problem {
            return;
        }
        match &problem {
            None => {
                tracing::info!(target_name = %self.name, "NATS target {}: ready to publish", self.name)
            }
            Some(Problem::Connecting) => {}
            Some(Problem::Unreachable(m)) => {
                tracing::warn!(target_name = %self.name, "NATS target {}: {m}; retrying with back-off, events queue in the outbox", self.name)
            }
            Some(Problem::Unauthorized(m) | Problem::Stream(m)) => {
                tracing::error!(target_name = %self.name, "NATS target {}: {m}; retrying with back-off, events queue in the outbox", self.name)
            }
        }
        *current = problem;
    }

    fn set_connected(&self, connected: bool) {
        let mut current = self.connected.lock().expect("not poisoned");
        if *current != connected {
            *current = connected;
            self.metrics
                .connected
                .with_label_values(&[&self.name])
                .set(i64::from(connected));
        }
    }

    /// The client's own events after the first connection: disconnects and
    /// reconnects (logged once each), refused credentials.
    fn client_event(&self, event: async_nats::Event) {
        match event {
            async_nats::Event::Connected => {
                if self.context.read().expect("not poisoned").is_some() {
                    tracing::info!(target_name = %self.name, "NATS target {}: reconnected", self.name);
                }
                self.set_connected(true);
            }
            async_nats::Event::Disconnected => {
                if self.context.read().expect("not poisoned").is_some() {
                    tracing::warn!(target_name = %self.name, "NATS target {}: disconnected; the client reconnects, publishes are retried", self.name);
                }
                self.set_connected(false);
            }
            async_nats::Event::ServerError(async_nats::ServerError::AuthorizationViolation) => {
                tracing::error!(target_name = %self.name, "NATS target {}: the server refused the credentials (authorization violation)", self.name);
            }
            _ => {}
        }
    }

    /// Why the target cannot publish now, if it cannot.
    pub fn problem(&self) -> Option<Problem> {
        self.problem.lock().expect("not poisoned").clone()
    }
}

/// What the connector task needs besides the link.
pub struct Connector {
    /// Credentials and TLS.
    pub prepared: Prepared,
    /// The stream.
    pub stream: String,
    /// Create it when missing.
    pub create_stream: bool,
    /// Replicas of a created stream.
    pub replicas: usize,
    /// Age limit of a created stream.
    pub max_age: Duration,
    /// The subject template (a created stream listens on its prefix).
    pub subject: SubjectTemplate,
    /// The key the auth settings are under (`token_file`, ...).
    pub auth_key: &'static str,
}

/// Back-off between attempts: 1 s doubling to 15 s.
fn backoff(attempt: u32) -> Duration {
    Duration::from_secs((1u64 << attempt.min(4)).min(15))
}

/// Connects (retrying until it works or the delivery stops), then finds or creates
/// the stream (likewise), then hands the context to the transport.
pub async fn run(connector: Connector, link: Arc<Link>, mut stop: watch::Receiver<bool>) {
    let mut attempt = 0;
    let client = loop {
        match connector
            .prepared
            .options(link.clone())
            .connect(connector.prepared.servers.clone())
            .await
        {
            Ok(client) => break client,
            Err(err) => {
                let problem = match err.kind() {
                    async_nats::ConnectErrorKind::AuthorizationViolation
                    | async_nats::ConnectErrorKind::Authentication => Problem::Unauthorized(format!(
                        "the server refused the credentials ({err}): check {}.{}",
                        link.key, connector.auth_key
                    )),
                    async_nats::ConnectErrorKind::Tls => Problem::Unreachable(format!(
                        "TLS with the servers failed ({err}): check {}.ca_file, {}.tls_cert and the server names in {}.servers",
                        link.key, link.key, link.key
                    )),
                    _ => Problem::Unreachable(format!(
                        "no server of {}.servers could be reached ({err})",
                        link.key
                    )),
                };
                link.set_problem(Some(problem));
            }
        }
        if !sleep(&mut stop, backoff(attempt)).await {
            return;
        }
        attempt += 1;
    };
    link.set_connected(true);
    let context = jetstream::ContextBuilder::new()
        .timeout(connector.prepared.timeout)
        .max_ack_inflight(connector.prepared.max_in_flight)
        .backpressure_on_inflight(true)
        .build(client);
    let mut attempt = 0;
    loop {
        match find_stream(&connector, &link, &context).await {
            Ok(()) => break,
            Err(problem) => link.set_problem(Some(problem)),
        }
        if !sleep(&mut stop, backoff(attempt)).await {
            return;
        }
        attempt += 1;
    }
    *link.context.write().expect("not poisoned") = Some(context);
    link.set_problem(None);
}

/// Waits `wait` unless the delivery stops first (false then).
async fn sleep(stop: &mut watch::Receiver<bool>, wait: Duration) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(wait) => true,
        _ = stop.changed() => false,
    }
}

/// Finds the stream (creating it if configured to) and checks that it listens on
/// the target's subjects.
async fn find_stream(
    connector: &Connector,
    link: &Link,
    context: &jetstream::Context,
) -> Result<(), Problem> {
    let name = &connector.stream;
    let info = match context.get_stream(name).await {
        Ok(mut stream) => stream
            .info()
            .await
            .map(|info| info.config.clone())
            .map_err(|e| Problem::Stream(format!("reading stream {name}: {e}")))?,
        Err(err) => {
            let missing = matches!(
                err.kind(),
                async_nats::jetstream::context::GetStreamErrorKind::JetStream(ref e)
                    if e.error_code() == async_nats::jetstream::ErrorCode::STREAM_NOT_FOUND
            );
            if !missing {
                return Err(Problem::Stream(format!(
                    "reading stream {name} ({err}): is JetStream enabled on the servers?"
                )));
            }
            if !connector.create_stream {
                return Err(Problem::Stream(format!(
                    "stream {name} does not exist: create it, or set {key}.create_stream = true (key {key}.stream)",
                    key = link.key
                )));
            }
            let config = jetstream::stream::Config {
                name: name.clone(),
                subjects: connector.subject.stream_subjects(),
                storage: jetstream::stream::StorageType::File,
                num_replicas: connector.replicas,
                max_age: connector.max_age,
                duplicate_window: Duration::from_secs(120),
                ..Default::default()
            };
            let created = context
                .create_stream(config)
                .await
                .map_err(|e| Problem::Stream(format!("creating stream {name}: {e}")))?;
            tracing::info!(
                target_name = %link.name,
                stream = %name,
                subjects = ?created.cached_info().config.subjects,
                replicas = connector.replicas,
                "NATS target {}: created stream {name}",
                link.name
            );
            created.cached_info().config.clone()
        }
    };
    let sample = connector.subject.render(
        &connector.prepared.node,
        &crate::sink::transport::EventHead {
            id: String::new(),
            entity: "peer_metric".into(),
            event: "connect".into(),
            identifier: "k".into(),
        },
        b"{}",
    );
    if !info
        .subjects
        .iter()
        .any(|filter| super::subject::matches(filter, &sample))
    {
        return Err(Problem::Stream(format!(
            "stream {name} listens on {:?}, not on the target's subjects (e.g. {sample}): check {key}.subject and {key}.stream",
            info.subjects,
            key = link.key
        )));
    }
    Ok(())
}

/// Every problem with what a target reads at start, as (key, message).
pub fn resource_problems(config: &NatsConfig) -> Vec<(String, String)> {
    match Prepared::new(config, "check") {
        Ok(_) => Vec::new(),
        Err(problem) => vec![problem],
    }
}
