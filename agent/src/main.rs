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
            eprintln!("wgpulse: {err:#}");
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
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(&config.log_level)?)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
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
    let delivery = wgpulse::sink::Delivery::start(&config, runtime.handle(), &registry)
        .context("starting webhook delivery")?;
    let (events, received, stored) = wgpulse::events::EventQueue::durable(EVENT_QUEUE);
    let events = {
        let delivery = delivery.clone();
        events.with_unwritten(std::sync::Arc::new(move || delivery.unwritten()))
    };
    let writer_health = std::sync::Arc::new(wgpulse::sink::writer::WriterHealth::default());
    let consumer =
        wgpulse::sink::writer::spawn(delivery.clone(), received, stored, writer_health.clone())
            .context("starting the event thread")?;
    let agent =
        wgpulse::agent::start(config.clone(), events, None).context("starting the agent")?;
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
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: stopping"),
            _ = terminate.recv() => tracing::info!("SIGTERM: stopping"),
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
