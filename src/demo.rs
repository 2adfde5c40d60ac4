//! `metamesh demo`: an embedded control plane, a proxy that takes its configuration from it
//! over ADS, two groups of Dubbo providers and a consumer, all on loopback in this
//! process. The consumer tags some requests `batchjob=true`; the MetaRouter sends those to
//! the batchjob group and adds `x-tier: batch`; the table shows live which provider
//! served what, and whether anything went astray. Halfway through, the demo edits the
//! MetaRouter file (`x-tier: batch-live`) and the providers see the change.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::BytesMut;
use metamesh_codecs::hessian2::Value;
use metamesh_core::{Bootstrap, CodecOptions, MessageKind, Protocol, ProxyBuilder, Side};
use metamesh_protocols::dubbo::{build, DubboProtocol};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const INTERFACE: &str = "org.apache.dubbo.samples.DemoService";

/// Options of the demo.
#[derive(clap::Args)]
pub struct DemoArgs {
    /// Stop after this long (default: run until Ctrl-C).
    #[arg(long, value_parser = humantime::parse_duration)]
    duration: Option<Duration>,
    /// Requests per second the consumer sends.
    #[arg(long, default_value_t = 200)]
    rate: u32,
    /// Every Nth request carries `batchjob=true`.
    #[arg(long, default_value_t = 3)]
    batchjob_every: u64,
}

/// What one provider has served.
#[derive(Default)]
struct ProviderCounts {
    batchjob: AtomicU64,
    plain: AtomicU64,
    tagged_batch: AtomicU64,
    tagged_live: AtomicU64,
}

struct Provider {
    group: &'static str,
    name: String,
    addr: SocketAddr,
    counts: ProviderCounts,
}

#[derive(Default)]
struct ConsumerCounts {
    sent: AtomicU64,
    ok: AtomicU64,
    errors: AtomicU64,
    misrouted: AtomicU64,
    response_tagged: AtomicU64,
}

/// A Dubbo provider: answers every call with a string naming itself.
async fn start_provider(group: &'static str, index: usize) -> anyhow::Result<Arc<Provider>> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let provider = Arc::new(Provider {
        group,
        name: format!("{group}-{index}"),
        addr: listener.local_addr()?,
        counts: ProviderCounts::default(),
    });
    let p = provider.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(serve_provider(stream, p.clone()));
        }
    });
    Ok(provider)
}

async fn serve_provider(mut stream: TcpStream, p: Arc<Provider>) {
    let mut codec = DubboProtocol.codec(&CodecOptions::new(Side::Downstream));
    let mut buf = BytesMut::with_capacity(4096);
    let mut out = Vec::new();
    loop {
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(req)) if req.kind == MessageKind::Request => {
                    let batch = req.metadata.get("batchjob") == Some("true");
                    let tier = req.metadata.get("x-tier").unwrap_or("-").to_owned();
                    let c = &p.counts;
                    if batch { &c.batchjob } else { &c.plain }.fetch_add(1, Ordering::Relaxed);
                    match tier.as_str() {
                        "batch" => c.tagged_batch.fetch_add(1, Ordering::Relaxed),
                        LIVE_TIER => c.tagged_live.fetch_add(1, Ordering::Relaxed),
                        _ => 0,
                    };
                    let text = format!("served by {} (x-tier={tier})", p.name);
                    let attachments = [("provider", p.name.as_str())];
                    let frame = build::response(
                        req.request_id as i64,
                        &Value::from(text.as_str()),
                        &attachments,
                    );
                    out.extend_from_slice(&frame);
                }
                Ok(Some(hb)) => {
                    if let Some(reply) = DubboProtocol.heartbeat_reply(&hb) {
                        out.extend_from_slice(&reply.frame);
                    }
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
        if !out.is_empty() {
            if stream.write_all(&out).await.is_err() {
                return;
            }
            out.clear();
        }
        match stream.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// The `x-tier` value the live MetaRouter edit switches to.
const LIVE_TIER: &str = "batch-live";

/// The demo service: a ServiceEntry with every provider (labelled by group) on `port`,
/// and a DestinationRule with one subset per group.
fn service_yaml(providers: &[Arc<Provider>], port: u16) -> String {
    let endpoints: String = providers
        .iter()
        .map(|p| {
            format!(
                "    - {{ address: {}, ports: {{ tcp-metaprotocol-dubbo: {} }}, labels: {{ service_group: {} }} }}\n",
                p.addr.ip(),
                p.addr.port(),
                p.group
            )
        })
        .collect();
    format!(
        r#"apiVersion: networking.istio.io/v1beta1
kind: ServiceEntry
metadata:
  name: demo
  namespace: demo
  annotations: {{ interface: {INTERFACE} }}
spec:
  hosts: [demo.demo.svc]
  ports: [{{ number: {port}, name: tcp-metaprotocol-dubbo, protocol: TCP }}]
  endpoints:
{endpoints}---
apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata: {{ name: demo, namespace: demo }}
spec:
  host: demo.demo.svc
  subsets:
    - {{ name: batchjob, labels: {{ service_group: batchjob }} }}
    - {{ name: user, labels: {{ service_group: user }} }}
"#
    )
}

/// The MetaRouter: `batchjob=true` to the batchjob subset, tagged `x-tier: {tier}`.
fn router_yaml(tier: &str) -> String {
    format!(
        r#"apiVersion: metaprotocol.aeraki.io/v1alpha1
kind: MetaRouter
metadata: {{ name: demo, namespace: demo }}
spec:
  hosts: [demo.demo.svc]
  routes:
    - name: batchjob
      match:
        attributes:
          interface: {{ exact: {INTERFACE} }}
          batchjob: {{ exact: "true" }}
      route: [{{ destination: {{ host: demo.demo.svc, subset: batchjob }} }}]
      requestMutation: [{{ key: x-tier, value: {tier} }}]
      responseMutation: [{{ key: x-served-by, value: metamesh }}]
      timeout: 2s
    - name: default
      route: [{{ destination: {{ host: demo.demo.svc, subset: user }} }}]
      timeout: 2s
"#
    )
}

/// A directory of its own under the system's temporary directory, removed on drop.
struct MeshDir(std::path::PathBuf);

impl MeshDir {
    fn new() -> anyhow::Result<MeshDir> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let dir =
            std::env::temp_dir().join(format!("metamesh-demo-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        Ok(MeshDir(dir))
    }

    fn write(&self, name: &str, text: &str) -> anyhow::Result<()> {
        let path = self.0.join(name);
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))
    }
}

impl Drop for MeshDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One consumer connection: sends at its share of the rate, one request in flight.
async fn consume(
    proxy: SocketAddr,
    worker: u64,
    workers: u64,
    rate: u32,
    every: u64,
    counts: Arc<ConsumerCounts>,
) -> anyhow::Result<()> {
    let mut stream = TcpStream::connect(proxy).await?;
    stream.set_nodelay(true)?;
    let mut codec = DubboProtocol.codec(&CodecOptions::new(Side::Upstream));
    let mut buf = BytesMut::with_capacity(4096);
    let per_worker = (f64::from(rate.max(1)) / workers as f64).max(0.1);
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / per_worker));
    let mut n = worker;
    loop {
        tick.tick().await;
        n += workers;
        let batch = every > 0 && n.is_multiple_of(every);
        let attachments: &[(&str, &str)] = if batch { &[("batchjob", "true")] } else { &[] };
        let req = build::Request {
            dubbo_version: "2.0.2",
            interface: INTERFACE,
            version: "1.0.0",
            method: "sayHello",
            args: &[("Ljava/lang/String;", Value::from("metamesh"))],
            attachments,
            two_way: true,
        }
        .encode(n as i64);
        counts.sent.fetch_add(1, Ordering::Relaxed);
        stream.write_all(&req).await?;
        let reply = loop {
            if let Some(m) = codec.decode(&mut buf).map_err(|e| anyhow::anyhow!("{e}"))? {
                break m;
            }
            if stream.read_buf(&mut buf).await? == 0 {
                anyhow::bail!("proxy closed the connection");
            }
        };
        if reply.request_id != n || reply.kind != MessageKind::Response {
            counts.errors.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        counts.ok.fetch_add(1, Ordering::Relaxed);
        let served_by = reply.metadata.get("provider").unwrap_or("");
        if served_by.starts_with("batchjob") != batch {
            counts.misrouted.fetch_add(1, Ordering::Relaxed);
        }
        if reply.metadata.get("x-served-by") == Some("metamesh") {
            counts.response_tagged.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn render(
    providers: &[Arc<Provider>],
    c: &ConsumerCounts,
    elapsed: Duration,
    proxy: SocketAddr,
    (tier, edit_note): (&str, &str),
) -> String {
    let mut s = String::new();
    s.push_str(&format!(
        "metamesh demo: consumer -> proxy {proxy} -> Dubbo providers; routes from the embedded control plane over ADS   ({:.0}s, Ctrl-C to stop)\n\n",
        elapsed.as_secs_f64()
    ));
    s.push_str(&format!(
        "route `batchjob`: interface=DemoService AND batchjob=true -> subset batchjob, adds x-tier={tier}\n"
    ));
    s.push_str("route `default` : everything else                         -> subset user\n");
    s.push_str(edit_note);
    s.push('\n');
    s.push_str(&format!(
        "{:<12} {:<10} {:<22} {:>14} {:>12} {:>13} {:>18}\n",
        "provider",
        "group",
        "address",
        "batchjob=true",
        "no batchjob",
        "x-tier=batch",
        "x-tier=batch-live"
    ));
    let mut by_group: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
    for p in providers {
        let b = p.counts.batchjob.load(Ordering::Relaxed);
        let n = p.counts.plain.load(Ordering::Relaxed);
        let t = p.counts.tagged_batch.load(Ordering::Relaxed);
        let live = p.counts.tagged_live.load(Ordering::Relaxed);
        let g = by_group.entry(p.group).or_default();
        g.0 += b;
        g.1 += n;
        s.push_str(&format!(
            "{:<12} {:<10} {:<22} {:>14} {:>12} {:>13} {:>18}\n",
            p.name,
            p.group,
            p.addr.to_string(),
            b,
            n,
            t,
            live
        ));
    }
    s.push('\n');
    for (g, (b, n)) in &by_group {
        s.push_str(&format!(
            "group {g:<9} batchjob=true: {b:>7}   no batchjob: {n:>7}\n"
        ));
    }
    s.push_str(&format!(
        "\nconsumer: sent {}  ok {}  errors {}  misrouted {}  replies tagged x-served-by=metamesh {}\n",
        c.sent.load(Ordering::Relaxed),
        c.ok.load(Ordering::Relaxed),
        c.errors.load(Ordering::Relaxed),
        c.misrouted.load(Ordering::Relaxed),
        c.response_tagged.load(Ordering::Relaxed),
    ));
    s
}

/// Runs the demo until Ctrl-C or `--duration`.
pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let mut batch = Vec::new();
    let mut user = Vec::new();
    for i in 1..=2 {
        batch.push(start_provider("batchjob", i).await?);
        user.push(start_provider("user", i).await?);
    }
    let providers: Vec<_> = batch.iter().chain(user.iter()).cloned().collect();

    // The mesh: a directory the embedded control plane watches.
    let port = {
        let probe = TcpListener::bind("127.0.0.1:0").await?;
        probe.local_addr()?.port()
    };
    let mesh = MeshDir::new()?;
    let service = service_yaml(&providers, port);
    mesh.write("service.yaml", &service)?;
    mesh.write("router.yaml", &router_yaml("batch"))?;
    let watch = metamesh_control::source::DirWatch::start(
        mesh.0.clone(),
        metamesh_control::source::DEFAULT_POLL_INTERVAL,
        metamesh_control::source::DEFAULT_SETTLE_TIME,
    );
    let ads = TcpListener::bind("127.0.0.1:0").await?;
    let ads_addr = ads.local_addr()?;
    let (stop_ads, ads_stopped) = tokio::sync::oneshot::channel::<()>();
    let server = metamesh_control::ads::AdsServer::new(watch.subscribe());
    let ads_task = tokio::spawn(server.serve(ads, async move {
        let _ = ads_stopped.await;
    }));

    // The proxy knows only its node and where the control plane is.
    let yaml = format!(
        "node: {{ id: demo-consumer, cluster: demo, locality: {{ region: bj, zone: \"800002\" }} }}\nadmin: {{ address: 127.0.0.1:0 }}\nxds: {{ address: \"http://{ads_addr}\" }}\n"
    );
    let config = Bootstrap::load(&yaml, &metamesh_protocols::builtin())
        .map_err(|e| anyhow::anyhow!("demo configuration: {e}"))?;
    let proxy = Arc::new(
        ProxyBuilder::new()
            .protocols(&metamesh_protocols::builtin())
            .hold_ready()
            .start(config.clone())
            .await
            .context("starting the demo proxy")?,
    );
    let xds_client =
        tokio::time::timeout(Duration::from_secs(30), crate::follow_xds(&proxy, config))
            .await
            .context("no configuration from the control plane within 30s")??;
    proxy.set_ready(true);
    let proxy_addr = proxy
        .listener_addr(&format!("outbound_{port}"))
        .context("the demo listener is missing")?;

    let tty = std::io::stdout().is_terminal();
    println!(
        "Proxy bootstrap (`metamesh proxy --config`):\n\n{yaml}\nMesh resources in {} (what `metamesh control --config-dir` serves):\n\n{service}---\n{}",
        mesh.0.display(),
        router_yaml("batch")
    );
    let counts = Arc::new(ConsumerCounts::default());
    let workers = 4;
    let mut consumers = tokio::task::JoinSet::new();
    for w in 0..workers {
        consumers.spawn(consume(
            proxy_addr,
            w,
            workers,
            args.rate,
            args.batchjob_every,
            counts.clone(),
        ));
    }
    let start = Instant::now();
    // Halfway through (or after 10 s without a duration), edit the MetaRouter file.
    let edit_after = args.duration.map_or(Duration::from_secs(10), |d| d / 2);
    let mut tier = "batch";
    let mut edit_note = String::new();
    let mut tick = tokio::time::interval(Duration::from_millis(if tty { 500 } else { 2000 }));
    let stop = async {
        match args.duration {
            Some(d) => tokio::time::sleep(d).await,
            None => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    };
    tokio::pin!(stop);
    let edit = tokio::time::sleep(edit_after);
    tokio::pin!(edit);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = &mut edit, if tier == "batch" => {
                mesh.write("router.yaml", &router_yaml(LIVE_TIER))?;
                tier = LIVE_TIER;
                edit_note = format!(
                    "(MetaRouter edited at {:.0}s: x-tier batch -> {LIVE_TIER}; the control plane pushed it, no restart)\n",
                    start.elapsed().as_secs_f64()
                );
            }
            Some(done) = consumers.join_next() => {
                if let Ok(Err(e)) = done {
                    anyhow::bail!("demo consumer failed: {e:#}");
                }
            }
            _ = tick.tick() => {
                let table = render(&providers, &counts, start.elapsed(), proxy_addr, (tier, &edit_note));
                let mut out = std::io::stdout().lock();
                if tty {
                    // Clear the screen and redraw in place.
                    let _ = write!(out, "\x1b[2J\x1b[H{table}");
                } else {
                    let _ = writeln!(out, "{table}");
                }
                let _ = out.flush();
            }
        }
    }
    consumers.abort_all();
    println!(
        "\nfinal:\n{}",
        render(
            &providers,
            &counts,
            start.elapsed(),
            proxy_addr,
            (tier, &edit_note)
        )
    );
    proxy.shutdown(Duration::from_secs(2)).await;
    drop(xds_client);
    let _ = stop_ads.send(());
    let _ = ads_task.await;
    let misrouted = counts.misrouted.load(Ordering::Relaxed);
    if misrouted > 0 {
        anyhow::bail!("{misrouted} requests reached the wrong provider group");
    }
    Ok(())
}
