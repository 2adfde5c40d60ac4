//! `kv-proxy`: a metamesh proxy that speaks the built-in protocols plus `kv`. It is the
//! whole of what shipping a proxy with your own protocol takes: a registry with your
//! protocol in it, a bootstrap validated against that registry, and `ProxyBuilder`.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use metamesh_core::{Bootstrap, ProtocolRegistry, ProxyBuilder};

/// A metamesh proxy with the kv protocol registered next to the built-in ones.
#[derive(Parser)]
#[command(name = "kv-proxy", version)]
struct Cli {
    /// Bootstrap YAML file (listeners may say `protocol: kv`).
    #[arg(long, short)]
    config: PathBuf,
    /// How long a shutdown waits for in-flight requests.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    drain_timeout: Duration,
}

/// Reads `path` and checks it against `protocols`; errors name the file and each field.
fn load(path: &Path, protocols: &ProtocolRegistry) -> anyhow::Result<Bootstrap> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    Bootstrap::load(&text, protocols)
        .map_err(|errors| anyhow::anyhow!("{}: invalid configuration\n{errors}", path.display()))
}

/// Waits for SIGINT or SIGTERM; the handlers are in place from [`Stop::install`] on, so a
/// signal that comes right after the ready line is not missed.
#[cfg(unix)]
struct Stop(tokio::signal::unix::Signal, tokio::signal::unix::Signal);

#[cfg(unix)]
impl Stop {
    fn install() -> anyhow::Result<Stop> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Stop(
            signal(SignalKind::interrupt()).context("cannot watch SIGINT")?,
            signal(SignalKind::terminate()).context("cannot watch SIGTERM")?,
        ))
    }

    async fn wait(mut self) {
        tokio::select! {
            _ = self.0.recv() => {}
            _ = self.1.recv() => {}
        }
    }
}

/// Waits for Ctrl-C.
#[cfg(not(unix))]
struct Stop;

#[cfg(not(unix))]
impl Stop {
    fn install() -> anyhow::Result<Stop> {
        Ok(Stop)
    }

    async fn wait(self) {
        let _ = tokio::signal::ctrl_c().await;
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    // Step 1: every protocol this binary speaks, kv included.
    let protocols = kv_protocol::registry();
    // Step 2: a bootstrap checked against them (an unknown protocol name is an error).
    let bootstrap = load(&cli.config, &protocols)?;
    let stop = Stop::install()?;
    // Step 3: the generic proxy, unchanged.
    let proxy = ProxyBuilder::new()
        .protocols(&protocols)
        .start(bootstrap)
        .await
        .map_err(|e| anyhow::anyhow!("{}: {e}", cli.config.display()))?;
    // One machine-readable line on stdout once every listener is bound.
    let listeners: serde_json::Map<String, serde_json::Value> = proxy
        .listeners()
        .iter()
        .map(|(name, addr)| (name.clone(), addr.to_string().into()))
        .collect();
    let ready = serde_json::json!({
        "event": "ready",
        "protocols": protocols.names(),
        "listeners": listeners,
        "admin": proxy.admin_addr().map(|a| a.to_string()),
    });
    println!("{ready}");
    stop.wait().await;
    tracing::info!("shutting down: draining in-flight requests");
    if proxy.shutdown(cli.drain_timeout).await {
        tracing::info!("drained");
    } else {
        tracing::warn!(timeout = ?cli.drain_timeout, "drain timed out");
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
        .and_then(|rt| rt.block_on(run(cli)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
