//! The `thriftworker` binary: config → runtime → servers → wait for a signal → drain.
#![forbid(unsafe_code)]

use anyhow::Context;
use clap::Parser;
use thriftworker::app;
use thriftworker::config::{Cli, Config, LogFormat};
use thriftworker::lifecycle;
use thriftworker::telemetry::log_filter::LogFilter;
use thriftworker::telemetry::Stats;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config = Config::load(&cli)?;
    let log_filter = init_tracing(&cli.log, config.server.log_format)?;
    lifecycle::install_panic_hook();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if config.server.threads > 0 {
        builder.worker_threads(config.server.threads);
    }
    let runtime = builder
        .enable_all()
        .thread_name("thriftworker")
        .build()
        .context("cannot start the tokio runtime")?;
    runtime.block_on(async {
        let built = app::build(config).await?.with_log_filter(log_filter);
        if let Some(path) = &cli.ready_file {
            write_ready_file(path, &built.addresses())?;
        }
        let running = built.spawn().await;
        start_watchdog(running.stats().clone());
        let failed = tokio::select! {
            _ = shutdown_signal() => false,
            _ = running.shutdown_requested() => false,
            _ = running.failed() => true,
        };
        let running_failure = running.stats().core.failure();
        running.shutdown().await;
        if failed {
            let why = running_failure.unwrap_or_default();
            anyhow::bail!(
                "{why} (see the log above); exiting so a supervisor can restart thriftworker"
            );
        }
        anyhow::Ok(())
    })
}

/// A dispatcher that stops turning its loop (a bug, or a dependency that
/// blocks) cannot be seen from inside its runtime, which may be blocked too.
/// This thread reads the dispatcher's beat; the probes already answer 503
/// after a few missed beats, and past `WATCHDOG_EXIT` the process exits so
/// that it is restarted even where nothing watches the probes.
fn start_watchdog(stats: std::sync::Arc<Stats>) {
    const WATCHDOG_EXIT: u64 = 60_000;
    let spawned = std::thread::Builder::new()
        .name("thriftworker-watchdog".into())
        .spawn(move || loop {
            std::thread::sleep(std::time::Duration::from_secs(1));
            if let Some(ms) = stats.core.stalled(stats.now_ms()) {
                tracing::error!(stalled_ms = ms, "dispatcher stalled: probes answer 503");
                if ms > WATCHDOG_EXIT {
                    tracing::error!(
                        "dispatcher stalled for over 60 s: exiting so thriftworker is restarted"
                    );
                    std::process::exit(70);
                }
            }
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot start the watchdog thread");
    }
}

/// Installs the subscriber; returns the handle that lets the admin API read
/// and replace its filter at run time.
fn init_tracing(filter: &str, format: LogFormat) -> anyhow::Result<LogFilter> {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .with_context(|| format!("invalid --log filter '{filter}'"))?;
    // Colour only on a terminal (a log file or a pipe gets plain text), and
    // never with NO_COLOR set (https://no-color.org).
    use std::io::IsTerminal;
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    let ansi = std::io::stderr().is_terminal() && !no_color;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    // Each format has its own subscriber type: its reload handle is wrapped
    // in the same two closures.
    macro_rules! reloadable {
        ($builder:expr) => {{
            let builder = $builder.with_filter_reloading();
            let handle = builder.reload_handle();
            builder.init();
            let get = handle.clone();
            LogFilter::new(
                move || get.with_current(|f| f.to_string()).unwrap_or_default(),
                move |new| {
                    let f =
                        tracing_subscriber::EnvFilter::try_new(new).map_err(|e| e.to_string())?;
                    handle.reload(f).map_err(|e| e.to_string())
                },
            )
        }};
    }
    Ok(match format {
        LogFormat::Text => reloadable!(builder),
        LogFormat::Json => reloadable!(builder.json()),
    })
}

/// Writes the bound addresses as JSON, atomically (write + rename), so a
/// reader never sees a partial file.
fn write_ready_file(path: &std::path::Path, addresses: &app::BoundAddresses) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(addresses)?)
        .with_context(|| format!("cannot write ready file {}", tmp.display()))?;
    std::fs::rename(&tmp, path)
        .with_context(|| format!("cannot write ready file {}", path.display()))?;
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("cannot install the SIGTERM handler");
    // SIGHUP reloads TLS certificates (each TLS listener watches for it);
    // handled here too, so it never terminates the process.
    let mut hangup = signal(SignalKind::hangup()).expect("cannot install the SIGHUP handler");
    tokio::spawn(async move {
        while hangup.recv().await.is_some() {
            tracing::info!("SIGHUP received: TLS listeners reload their certificate files");
        }
    });
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
    }
}
