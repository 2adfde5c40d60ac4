//! `metamesh demo`: a proxy, two groups of Dubbo providers and a consumer, all on
//! loopback in this process. The consumer tags some requests `batchjob=true`; the proxy
//! routes those to the batchjob group and adds `x-tier: batch`; the table shows live
//! which provider served what, and whether anything went astray.

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
                    if tier == "batch" {
                        c.tagged_batch.fetch_add(1, Ordering::Relaxed);
                    }
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

fn bootstrap(batch: &[Arc<Provider>], user: &[Arc<Provider>]) -> String {
    let endpoints = |ps: &[Arc<Provider>]| {
        ps.iter()
            .map(|p| {
                format!(
                    "      - {{ address: \"{}\", labels: {{ service_group: {} }} }}\n",
                    p.addr, p.group
                )
            })
            .collect::<String>()
    };
    format!(
        r#"node: {{ id: demo-consumer, cluster: demo }}
admin: {{ address: 127.0.0.1:0 }}
listeners:
  - name: dubbo-out
    address: 127.0.0.1:0
    protocol: dubbo
    route_config: dubbo-routes
routes:
  - name: dubbo-routes
    routes:
      - name: batchjob
        match:
          attributes:
            interface: {{ exact: {INTERFACE} }}
            batchjob: {{ exact: "true" }}
        route: [{{ cluster: demo-batchjob }}]
        request_mutation: [{{ key: x-tier, value: batch }}]
        response_mutation: [{{ key: x-served-by, value: metamesh }}]
        timeout: 2s
      - name: default
        route: [{{ cluster: demo-user }}]
        timeout: 2s
clusters:
  - name: demo-batchjob
    endpoints:
{}  - name: demo-user
    endpoints:
{}"#,
        endpoints(batch),
        endpoints(user)
    )
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
) -> String {
    let mut s = String::new();
    s.push_str(&format!(
        "metamesh demo: consumer -> proxy {proxy} -> Dubbo providers   ({:.0}s, Ctrl-C to stop)\n\n",
        elapsed.as_secs_f64()
    ));
    s.push_str("route `batchjob`: interface=DemoService AND batchjob=true -> demo-batchjob, adds x-tier=batch\n");
    s.push_str("route `default` : everything else                         -> demo-user\n\n");
    s.push_str(&format!(
        "{:<12} {:<10} {:<22} {:>14} {:>12} {:>14}\n",
        "provider", "group", "address", "batchjob=true", "no batchjob", "saw x-tier"
    ));
    let mut by_group: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
    for p in providers {
        let b = p.counts.batchjob.load(Ordering::Relaxed);
        let n = p.counts.plain.load(Ordering::Relaxed);
        let t = p.counts.tagged_batch.load(Ordering::Relaxed);
        let g = by_group.entry(p.group).or_default();
        g.0 += b;
        g.1 += n;
        s.push_str(&format!(
            "{:<12} {:<10} {:<22} {:>14} {:>12} {:>14}\n",
            p.name,
            p.group,
            p.addr.to_string(),
            b,
            n,
            t
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
    let yaml = bootstrap(&batch, &user);
    let config = Bootstrap::load(&yaml, &metamesh_protocols::builtin())
        .map_err(|e| anyhow::anyhow!("demo configuration: {e}"))?;
    let proxy = ProxyBuilder::new()
        .protocols(&metamesh_protocols::builtin())
        .start(config)
        .await
        .context("starting the demo proxy")?;
    let proxy_addr = proxy
        .listener_addr("dubbo-out")
        .context("the demo listener is missing")?;

    let tty = std::io::stdout().is_terminal();
    println!("Proxy configuration (the same YAML `metamesh proxy --config` takes):\n\n{yaml}");
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
    let providers: Vec<_> = batch.iter().chain(user.iter()).cloned().collect();
    let start = Instant::now();
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
    loop {
        tokio::select! {
            _ = &mut stop => break,
            Some(done) = consumers.join_next() => {
                if let Ok(Err(e)) = done {
                    anyhow::bail!("demo consumer failed: {e:#}");
                }
            }
            _ = tick.tick() => {
                let table = render(&providers, &counts, start.elapsed(), proxy_addr);
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
        render(&providers, &counts, start.elapsed(), proxy_addr)
    );
    proxy.shutdown(Duration::from_secs(2)).await;
    let misrouted = counts.misrouted.load(Ordering::Relaxed);
    if misrouted > 0 {
        anyhow::bail!("{misrouted} requests reached the wrong provider group");
    }
    Ok(())
}
