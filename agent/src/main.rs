//! The `wgpulse` binary: parses the command line, sets up logging and runs the agent.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser as _;
use wgpulse::cli::{Cli, Command, RunArgs};
use wgpulse::config::Config;

/// Bound of the queue between the peer table and delivery.
const EVENT_QUEUE: usize = 4096;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run(args),
        Command::CheckConfig { config } => return check_config(&config),
        Command::Peers { json, api } => {
            return print(wgpulse::apiclient::peers(&api, json));
        }
        Command::Webhook { action, api } => {
            return print(wgpulse::apiclient::webhook(&api, &action));
        }
        Command::Version => {
            println!("wgpulse {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("wgpulse: {}", chain(&err));
            ExitCode::FAILURE
        }
    }
}

/// Reads and checks the configuration the way `check-config` does: every problem
/// (schema, values, the files, variables and secrets it names) is printed, each with
/// its key and line.
fn load_config(path: Option<&Path>, adjust: impl FnOnce(&mut Config)) -> Result<Config, ExitCode> {
    let (text, shown) = match path {
        Some(path) => match std::fs::read_to_string(path) {
            Ok(text) => (text, path),
            Err(err) => {
                eprintln!("wgpulse: reading config file {}: {err}", path.display());
                return Err(ExitCode::FAILURE);
            }
        },
        None => (String::new(), Path::new("<flags>")),
    };
    wgpulse::config::report::check(&text, shown, adjust, wgpulse::preflight::resource_problems)
        .map_err(|problems| {
            for problem in &problems {
                eprintln!("{problem}");
            }
            ExitCode::FAILURE
        })
}

fn run(args: RunArgs) -> anyhow::Result<()> {
    let config = match load_config(args.config.as_deref(), |config| args.apply(config)) {
        Ok(config) => config,
        Err(_) => anyhow::bail!("the configuration has problems (listed above)"),
    };
    let log_filter = init_logging(&config.log_level)?;
    tracing::info!(version = env!("CARGO_PKG_VERSION"), "wgpulse starting");
    // Tokens are read (and weak ones refused) before anything touches the kernel.
    let token = |what, path: &Option<std::path::PathBuf>| {
        path.as_deref()
            .map(|p| wgpulse::server::auth::Token::from_file(what, p))
            .transpose()
    };
    let api_token = token("api.token_file", &config.api.token_file)?;
    let metrics_token = token("metrics.token_file", &config.metrics.token_file)?;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let registry = prometheus::Registry::new();
    let node = config.node_id();
    let delivery = wgpulse::sink::Delivery::start(
        wgpulse::sink::DeliverySettings {
            state_dir: &config.state_dir,
            node: &node,
            outbox: &config.outbox,
            webhooks: &config.webhooks,
        },
        runtime.handle(),
        &registry,
    )
    .context("starting webhook delivery")?;
    let (events, received, stored) = wgpulse::events::EventQueue::durable(EVENT_QUEUE);
    let events = {
        let delivery = delivery.clone();
        events.with_unwritten(std::sync::Arc::new(move || delivery.unwritten()))
    };
    let writer_health = std::sync::Arc::new(wgpulse::outbox::writer::WriterHealth::default());
    let consumer = {
        let delivery = delivery.clone();
        wgpulse::outbox::writer::spawn(
            move |batch| delivery.accept(batch),
            received,
            stored,
            writer_health.clone(),
        )
        .context("starting the event thread")?
    };
    let agent =
        wgpulse::pipeline::start(config.clone(), events, None).context("starting the agent")?;
    registry
        .register(Box::new(wgpulse::metrics::AgentCollector::new(
            agent.shared(),
        )))
        .context("registering the peer metrics")?;
    let state = wgpulse::server::ApiState {
        shared: agent.shared(),
        registry,
        delivery: (!config.webhooks.is_empty()).then(|| delivery.clone()),
        api_token,
        metrics_token,
        writer: Some(writer_health),
    };
    let server = runtime
        .block_on(wgpulse::server::start(&config.metrics, state))
        .context("starting the HTTP listener")?;
    runtime.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        let mut terminate = signal(SignalKind::terminate())?;
        let mut hangup = signal(SignalKind::hangup())?;
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {
                    tracing::info!("SIGINT: stopping");
                    break;
                }
                _ = terminate.recv() => {
                    tracing::info!("SIGTERM: stopping");
                    break;
                }
                _ = hangup.recv() => reload(args.config.as_deref(), &log_filter, &delivery, &agent),
            }
        }
        anyhow::Ok(())
    })?;
    if let Some(server) = server {
        runtime.block_on(server.shutdown());
    }
    agent.stop();
    let _ = consumer.join();
    runtime.block_on(delivery.shutdown(std::time::Duration::from_secs(5)));
    tracing::info!("stopped; datapath detached");
    Ok(())
}

/// An error and its causes on one line, each cause once: many errors already print
/// their source in their own message, and `{:#}` would repeat it.
fn chain(err: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

/// The log filter, reloadable (SIGHUP).
type LogFilter =
    tracing_subscriber::reload::Handle<tracing_subscriber::EnvFilter, tracing_subscriber::Registry>;

fn init_logging(level: &str) -> anyhow::Result<LogFilter> {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let (filter, handle) =
        tracing_subscriber::reload::Layer::new(tracing_subscriber::EnvFilter::try_new(level)?);
    tracing_subscriber::registry()
        .with(filter)
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())),
        )
        .init();
    Ok(handle)
}

/// SIGHUP: re-reads the configuration file and applies what can change safely while
/// running — `log_level`, the contents of `peers_file`, and each webhook's
/// authorization and signing secrets (inline, files, environment) — logging what
/// changed (never a value). Everything else takes effect at the next start. A file
/// with problems changes nothing.
fn reload(
    path: Option<&Path>,
    log_filter: &LogFilter,
    delivery: &wgpulse::sink::Delivery,
    agent: &wgpulse::pipeline::RunningAgent,
) {
    let Some(path) = path else {
        tracing::info!("SIGHUP: no configuration file to re-read; re-reading the peers file");
        agent.reload_names();
        return;
    };
    let config = match std::fs::read_to_string(path)
        .map_err(|e| e.to_string())
        .and_then(|text| {
            wgpulse::config::report::check(
                &text,
                path,
                |_| {},
                wgpulse::preflight::resource_problems,
            )
            .map_err(|problems| {
                problems
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; ")
            })
        }) {
        Ok(config) => config,
        Err(problems) => {
            tracing::error!(
                "SIGHUP: {} not applied, it has problems: {problems}",
                path.display()
            );
            return;
        }
    };
    let mut changed = Vec::new();
    match tracing_subscriber::EnvFilter::try_new(&config.log_level) {
        Ok(filter) => {
            let before = log_filter
                .with_current(|f| f.to_string())
                .unwrap_or_default();
            if log_filter.reload(filter).is_ok() && before != config.log_level {
                changed.push(format!("log_level = {:?}", config.log_level));
            }
        }
        Err(err) => tracing::error!("SIGHUP: log_level: {err}"),
    }
    agent.reload_names();
    for (webhook, result) in delivery.reload_secrets(&config.webhooks) {
        match result {
            Ok(reloaded) => {
                if reloaded.authorization {
                    changed.push(format!("webhook {webhook}: authorization"));
                }
                if reloaded.signing_secrets {
                    changed.push(format!("webhook {webhook}: signing secrets"));
                }
            }
            Err(err) => tracing::error!("SIGHUP: {err}; its previous secrets stay in force"),
        }
    }
    tracing::info!(
        changed = ?changed,
        "SIGHUP: re-read {} (log_level, the peers file and webhook secrets; other settings take effect at the next start)",
        path.display()
    );
}

/// Prints a command's output, or its error as one line with exit code 1.
fn print(result: Result<String, wgpulse::apiclient::ApiClientError>) -> ExitCode {
    match result {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("wgpulse: {err}");
            ExitCode::FAILURE
        }
    }
}

fn check_config(path: &Path) -> ExitCode {
    match load_config(Some(path), |_| {}) {
        Ok(_) => {
            println!("{}: ok", path.display());
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}
