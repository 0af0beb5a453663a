//! The `wgpulse` binary: parses the command line, checks the configuration, sets up
//! logging and hands over to [`wgpulse::app`] (or the API client for `peers` and
//! `target`).

use std::path::Path;
use std::process::ExitCode;

use clap::Parser as _;
use wgpulse::cli::{Cli, Command, RunArgs};
use wgpulse::config::Config;

/// jemalloc rather than glibc's malloc: the agent's threads (drain, pipeline, device
/// reader, tokio's workers) each got a glibc arena that kept the memory of a big
/// device read or drain after it was freed (at 10k peers, about 140 MiB of arenas
/// for a 73 MiB heap peak); jemalloc hands unused pages back to the kernel.
#[cfg(not(feature = "system-allocator"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read when it starts (a C `const char *`): a background thread
/// hands freed pages back to the kernel a second after they were freed
/// (`dirty_decay_ms`, default 10 s, and only when something allocates: an idle agent
/// kept the pages of its last device read or state save, 24 MiB at 10k peers) and at
/// once after that (`muzzy_decay_ms`).
#[cfg(not(feature = "system-allocator"))]
#[allow(non_upper_case_globals)]
#[export_name = "_rjem_malloc_conf"]
pub static malloc_conf: Option<&'static u8> = Some(
    &b"background_thread:true,max_background_threads:1,dirty_decay_ms:1000,muzzy_decay_ms:0\0"[0],
);

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => run(args),
        Command::CheckConfig { config } => return check_config(&config),
        Command::Peers { json, api } => {
            return print(wgpulse::apiclient::peers(&api, json));
        }
        Command::Target { action, api } => {
            return print(wgpulse::apiclient::webhook(&api, &action));
        }
        Command::Example {
            dialect,
            events,
            batch,
            template,
        } => return example(&dialect, events, batch, template),
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
    let set_log_level = |level: &str| -> Result<bool, String> {
        let filter = tracing_subscriber::EnvFilter::try_new(level).map_err(|e| e.to_string())?;
        let before = log_filter
            .with_current(|f| f.to_string())
            .unwrap_or_default();
        log_filter.reload(filter).map_err(|e| e.to_string())?;
        Ok(before != level)
    };
    wgpulse::app::run(&config, |app| {
        app.reload(args.config.as_deref(), &set_log_level)
    })?;
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

/// Prints a command's output, or its error as one line with exit code 1.
fn example(dialect: &str, events: Vec<String>, batch: bool, template: Option<String>) -> ExitCode {
    use wgpulse::sink::example::{render, ExampleRequest};
    let dialect = match serde_json::from_value(serde_json::Value::String(dialect.into())) {
        Ok(dialect) => dialect,
        Err(err) => {
            eprintln!("wgpulse: dialect {dialect:?}: {err}");
            return ExitCode::FAILURE;
        }
    };
    match render(&ExampleRequest {
        dialect,
        events,
        batch,
        template,
    }) {
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
