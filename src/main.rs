//! The metamesh command line: run a proxy, validate a configuration, install the
//! sidecar capture rules, or run the demo.
#![deny(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use metamesh_core::{Bootstrap, Proxy, ProxyBuilder, StartError};

mod alloc;
mod demo;
mod iptables;

/// mimalloc: per-thread heaps with free lists of their own, so a request's allocations are
/// freed on the worker that made them and never wait for a lock or consolidate a shared
/// arena.
#[global_allocator]
static ALLOCATOR: alloc::Allocator = alloc::Allocator;

#[derive(Parser)]
#[command(
    name = "metamesh",
    version,
    about = "A service-mesh proxy that any L7 protocol can join"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy with a bootstrap file.
    Proxy {
        /// Bootstrap YAML file.
        #[arg(long, short)]
        config: PathBuf,
        /// How long a shutdown waits for in-flight requests.
        #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
        drain_timeout: Duration,
        /// Worker threads serving connections (default: one per CPU).
        #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
        concurrency: Option<u16>,
    },
    /// Serve xDS (ADS) to proxies from a watched directory of mesh resources
    /// (MetaRouter, DestinationRule, ServiceEntry, LuaHook) or a Kubernetes API server.
    Control {
        /// Directory of YAML resources, watched for changes.
        #[arg(
            long,
            required_unless_present = "kubernetes",
            conflicts_with = "kubernetes"
        )]
        config_dir: Option<PathBuf>,
        /// Read the resources, Services and EndpointSlices from the Kubernetes API server
        /// of the kubeconfig (`KUBECONFIG`) or of the cluster the process runs in.
        #[arg(long)]
        kubernetes: bool,
        /// With --kubernetes: read only this namespace.
        #[arg(long, requires = "kubernetes")]
        namespace: Option<String>,
        /// Address the ADS server listens on.
        #[arg(long, default_value = "127.0.0.1:15010")]
        xds_address: String,
    },
    /// Check a bootstrap file and print every problem found.
    Validate {
        /// Bootstrap YAML file.
        file: PathBuf,
    },
    /// Print (default), install (--apply) or remove (--clean) the iptables NAT rules
    /// that send a pod's inbound and outbound TCP through the proxy's capture listeners.
    Iptables {
        #[command(flatten)]
        rules: iptables::Rules,
        /// Install the rules with `iptables-restore --noflush` (replaces an earlier
        /// installation; needs CAP_NET_ADMIN).
        #[arg(long, conflicts_with = "clean")]
        apply: bool,
        /// Remove the rules and chains an earlier --apply installed.
        #[arg(long)]
        clean: bool,
    },
    /// Start a proxy, demo Dubbo providers and a consumer on loopback, and show live
    /// which provider group serves which requests.
    Demo(demo::DemoArgs),
}

/// The handle that swaps the log filter at runtime (the admin endpoint's `/logging`).
type FilterHandle =
    tracing_subscriber::reload::Handle<tracing_subscriber::EnvFilter, tracing_subscriber::Registry>;

static LOG_FILTER: std::sync::OnceLock<FilterHandle> = std::sync::OnceLock::new();

fn init_tracing(default: &str) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
    tracing_subscriber::registry()
        .with(filter)
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
        .init();
    let _ = LOG_FILTER.set(handle);
}

/// `/logging` through the reloadable filter.
struct LogFilter(FilterHandle);

impl metamesh_core::LogControl for LogFilter {
    fn current(&self) -> String {
        self.0
            .with_current(|f| f.to_string())
            .unwrap_or_else(|e| format!("unknown ({e})"))
    }

    fn set(&self, directive: &str) -> Result<(), String> {
        let filter = tracing_subscriber::EnvFilter::try_new(directive)
            .map_err(|e| format!("invalid filter {directive:?}: {e}"))?;
        self.0.reload(filter).map_err(|e| e.to_string())
    }
}

/// Reads and validates a bootstrap file; errors name the file and the field.
fn load(path: &Path) -> anyhow::Result<Bootstrap> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    Bootstrap::load(&text, &metamesh_protocols::builtin()).map_err(|errors| {
        let lines: Vec<String> = errors
            .0
            .iter()
            .map(|e| format!("{}: {e}", path.display()))
            .collect();
        anyhow::anyhow!("invalid configuration\n{}", lines.join("\n"))
    })
}

/// Resolves on SIGINT or SIGTERM. Handlers are installed when this is called, so call it
/// before announcing readiness.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
        let mut int = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;
        Ok(async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        })
    }
    #[cfg(not(unix))]
    {
        Ok(async {
            let _ = tokio::signal::ctrl_c().await;
        })
    }
}

/// Reloads the configuration file on every SIGHUP: listeners, routes, clusters and hooks
/// (a new hook script included) change without a restart; requests already under way
/// finish on the configuration they started with, and a removed listener drains. A file
/// that does not load leaves the running configuration as it is. Each attempt prints one
/// JSON line on stdout, with the listeners' bound addresses after a reload.
#[cfg(unix)]
async fn reload_on_hangup(
    mut hup: tokio::signal::unix::Signal,
    config: PathBuf,
    proxy: Arc<Proxy>,
) {
    while hup.recv().await.is_some() {
        let outcome = match load(&config) {
            Ok(b) => proxy.update(b).await.map_err(|e| match e {
                StartError::Config(errors) => {
                    let lines: Vec<String> = errors
                        .0
                        .iter()
                        .map(|e| format!("{}: {e}", config.display()))
                        .collect();
                    anyhow::anyhow!("invalid configuration\n{}", lines.join("\n"))
                }
                other => anyhow::anyhow!("{}: {other}", config.display()),
            }),
            Err(e) => Err(e),
        };
        let line = match outcome {
            Ok(version) => {
                tracing::info!(version, "configuration reloaded");
                serde_json::json!({
                    "event": "reloaded",
                    "version": version,
                    "listeners": listener_map(&proxy),
                })
            }
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "configuration reload refused; keeping the running one");
                serde_json::json!({ "event": "reload_failed", "error": format!("{e:#}") })
            }
        };
        println!("{line}");
    }
}

/// Listener names and their bound addresses, as the event lines print them.
fn listener_map(proxy: &Proxy) -> serde_json::Map<String, serde_json::Value> {
    proxy
        .listeners()
        .into_iter()
        .map(|(name, addr)| (name, addr.to_string().into()))
        .collect()
}

/// Where the control plane reads the mesh resources from.
enum ControlSource {
    Dir(PathBuf),
    Kubernetes { namespace: Option<String> },
}

async fn start_source(source: &ControlSource) -> anyhow::Result<metamesh_control::source::Watched> {
    match source {
        ControlSource::Dir(dir) => {
            if !dir.is_dir() {
                anyhow::bail!("{}: not a directory", dir.display());
            }
            Ok(metamesh_control::source::DirWatch::start(
                dir.to_owned(),
                metamesh_control::source::DEFAULT_POLL_INTERVAL,
                metamesh_control::source::DEFAULT_SETTLE_TIME,
            ))
        }
        #[cfg(feature = "kubernetes")]
        ControlSource::Kubernetes { namespace } => {
            use metamesh_control::kubernetes::{KubeOptions, KubeWatch};
            let options = KubeOptions {
                namespace: namespace.clone(),
                ..KubeOptions::default()
            };
            KubeWatch::from_environment(options)
                .await
                .context("--kubernetes")
        }
        #[cfg(not(feature = "kubernetes"))]
        ControlSource::Kubernetes { .. } => anyhow::bail!(
            "--kubernetes: this metamesh was built without Kubernetes support \
             (build it with `cargo build --features kubernetes`)"
        ),
    }
}

/// Serves ADS from a watched directory or a Kubernetes API server until SIGINT or
/// SIGTERM.
async fn run_control(source: ControlSource, address: &str) -> anyhow::Result<()> {
    let signal = shutdown_signal()?;
    let watch = start_source(&source).await?;
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .with_context(|| format!("--xds-address: cannot bind {address}"))?;
    let bound = listener.local_addr().context("--xds-address")?;
    let server = metamesh_control::ads::AdsServer::new(watch.subscribe());
    println!(
        "{}",
        serde_json::json!({ "event": "ready", "xds": bound.to_string() })
    );
    match &source {
        ControlSource::Dir(dir) => tracing::info!(%bound, dir = %dir.display(), "serving ADS"),
        ControlSource::Kubernetes { namespace } => {
            tracing::info!(%bound, namespace = namespace.as_deref().unwrap_or("*"), "serving ADS from Kubernetes")
        }
    }
    server
        .serve(listener, signal)
        .await
        .context("ADS server failed")?;
    Ok(())
}

/// Takes the dynamic configuration from the bootstrap's xDS server: the static
/// resources of the file stay, the server's are added to them, and every new set
/// replaces the previous one. Returns once the first set is applied.
async fn follow_xds(
    proxy: &Arc<Proxy>,
    base: Bootstrap,
) -> anyhow::Result<metamesh_control::ads::AdsClient> {
    let Some(xds) = base.xds.clone() else {
        anyhow::bail!("no xds server configured");
    };
    let mut node = base.node.clone();
    // With capture on, the control plane makes outbound listeners that the virtual
    // outbound listener reaches by original destination.
    if base.capture.as_ref().is_some_and(|c| c.outbound.enabled) {
        node.interception_mode = metamesh_core::config::InterceptionMode::Redirect;
    }
    let mut client_config = metamesh_control::ads::AdsClientConfig::new(xds.address.clone(), node);
    client_config.admin = base.admin.clone();
    client_config.stats = Some(proxy.store().stats().clone());
    let target = proxy.clone();
    let client = metamesh_control::ads::AdsClient::start(client_config, move |dynamic| {
        let target = target.clone();
        let mut merged = base.clone();
        merged.listeners.extend(dynamic.listeners);
        merged.routes.extend(dynamic.routes);
        merged.clusters.extend(dynamic.clusters);
        merged.hooks.extend(dynamic.hooks);
        async move {
            target
                .update(merged)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        }
    });
    let mut ready = client.ready();
    ready
        .wait_for(|r| *r)
        .await
        .context("the xDS client stopped before the first configuration")?;
    Ok(client)
}

async fn run_proxy(
    config: &Path,
    drain_timeout: Duration,
    concurrency: Option<u16>,
) -> anyhow::Result<()> {
    let bootstrap = load(config)?;
    let signal = shutdown_signal()?;
    let dynamic = bootstrap.xds.is_some();
    let mut builder = ProxyBuilder::new().protocols(&metamesh_protocols::builtin());
    if let Some(n) = concurrency {
        builder = builder.concurrency(n.into());
    }
    if let Some(handle) = LOG_FILTER.get() {
        builder = builder.log_control(Arc::new(LogFilter(handle.clone())));
    }
    if dynamic {
        builder = builder.hold_ready();
    }
    let proxy = builder
        .start(bootstrap.clone())
        .await
        .map_err(|e| anyhow::anyhow!("{}: {e}", config.display()))?;
    let proxy = Arc::new(proxy);
    // With a control plane, the proxy is ready once its first full configuration is in.
    let _xds = if dynamic {
        let client = tokio::select! {
            c = follow_xds(&proxy, bootstrap) => c?,
            _ = shutdown_signal()? => return Ok(()),
        };
        proxy.set_ready(true);
        Some(client)
    } else {
        None
    };
    // One machine-readable line on stdout once every listener is bound.
    let ready = serde_json::json!({
        "event": "ready",
        "listeners": listener_map(&proxy),
        "admin": proxy.admin_addr().map(|a| a.to_string()),
    });
    // Watch SIGHUP before announcing readiness: its default action ends the process.
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::hangup()) {
            Ok(hup) => {
                tokio::spawn(reload_on_hangup(hup, config.to_owned(), proxy.clone()));
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch SIGHUP: configuration reloads are off")
            }
        }
    }
    println!("{ready}");
    signal.await;
    tracing::info!("shutting down: draining in-flight requests");
    if proxy.shutdown(drain_timeout).await {
        tracing::info!("drained");
    } else {
        tracing::warn!(timeout = ?drain_timeout, "drain timed out");
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Validate { file } => match load(&file) {
            Ok(b) => {
                println!(
                    "{}: ok ({} listeners, {} route configurations, {} clusters)",
                    file.display(),
                    b.listeners.len(),
                    b.routes.len(),
                    b.clusters.len()
                );
                Ok(())
            }
            Err(e) => Err(e),
        },
        Command::Proxy {
            config,
            drain_timeout,
            concurrency,
        } => {
            init_tracing("info");
            runtime().and_then(|rt| rt.block_on(run_proxy(&config, drain_timeout, concurrency)))
        }
        Command::Control {
            config_dir,
            kubernetes,
            namespace,
            xds_address,
        } => {
            init_tracing("info");
            let source = match config_dir {
                Some(dir) if !kubernetes => ControlSource::Dir(dir),
                _ => ControlSource::Kubernetes { namespace },
            };
            runtime().and_then(|rt| rt.block_on(run_control(source, &xds_address)))
        }
        Command::Iptables {
            rules,
            apply,
            clean,
        } => {
            let done = if clean {
                iptables::clean().map(|t| {
                    let what = if t.is_empty() {
                        "nothing to remove"
                    } else {
                        "removed"
                    };
                    (t, what)
                })
            } else if apply {
                iptables::apply(&rules).map(|t| (t, "applied"))
            } else {
                rules.render().map(|t| (t, ""))
            };
            done.map(|(text, what)| {
                print!("{text}");
                if !what.is_empty() {
                    eprintln!("metamesh iptables: {what}");
                }
            })
        }
        Command::Demo(args) => {
            init_tracing("warn");
            runtime().and_then(|rt| rt.block_on(demo::run(args)))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}
