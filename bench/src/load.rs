//! The load generator. Closed loop: every connection keeps `inflight` requests
//! outstanding (pipelined for Dubbo and Thrift; HTTP/1.1 one at a time), sending a new one
//! as each answer arrives. Open loop: requests are scheduled at fixed intended send times
//! (`rate` spread over the connections) and latency is measured from the intended time,
//! so a stall of the server shows in the tail instead of slowing the sender down.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};
use tokio::time::{sleep_until, Instant};

use crate::procstat;
use crate::proto::{self, Frame, Malformed, Protocol, ThriftTransport};

/// What to run (also the options of `metamesh-bench load`).
#[derive(Clone, Debug, clap::Args)]
pub struct LoadConfig {
    /// Protocol spoken.
    #[arg(long, value_enum)]
    pub protocol: Protocol,
    /// Where to connect.
    #[arg(long)]
    pub target: SocketAddr,
    /// Connections, all opened before the run.
    #[arg(long, default_value_t = 1)]
    pub connections: usize,
    /// Requests outstanding per connection (Dubbo and Thrift pipeline; HTTP/1.1 is always
    /// 1). 0: 1 closed loop, 1024 open loop.
    #[arg(long, default_value_t = 0)]
    pub inflight: usize,
    /// Measured window.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    pub duration: Duration,
    /// Load before the window, not recorded.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "1s")]
    pub warmup: Duration,
    /// Open loop at this many requests per second over all connections, latency measured
    /// from each request's intended send time; closed loop without it.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Every K-th request of a connection carries batchjob (Dubbo attachment
    /// batchjob=true, HTTP header x-batchjob: true); 0: none.
    #[arg(long, default_value_t = 0)]
    pub batchjob_every: u64,
    /// Thrift transport written.
    #[arg(long, value_enum, default_value = "framed")]
    pub thrift_transport: ThriftTransport,
    /// How long to wait for outstanding answers after the window.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "2s")]
    pub drain: Duration,
    /// Measure CPU and memory of these processes (and their children) over the window.
    #[arg(long = "measure-pid", value_delimiter = ',')]
    pub measure_pids: Vec<u32>,
}

/// Latency percentiles in microseconds.
#[derive(Clone, Debug, Serialize)]
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    #[serde(rename = "p99.9")]
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
}

/// CPU and memory of the measured processes.
#[derive(Clone, Debug, Serialize)]
pub struct ProcessReport {
    /// The pids measured (the given ones and their children).
    pub pids: Vec<u32>,
    /// utime + stime over the window, all processes and threads.
    pub cpu_seconds: f64,
    /// `cpu_seconds` per answered request, in microseconds.
    pub cpu_us_per_request: f64,
    /// VmHWM summed over the processes at the end of the window.
    pub peak_rss_kib: u64,
    /// VmRSS summed over the processes at the end of the window.
    pub rss_kib: u64,
}

/// The JSON result of a run.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub protocol: Protocol,
    pub target: String,
    pub mode: &'static str,
    pub connections: usize,
    pub inflight: usize,
    /// Requested rate (open loop).
    pub rate: Option<f64>,
    pub duration_s: f64,
    pub warmup_s: f64,
    /// Requests whose (intended) send time fell in the window.
    pub sent: u64,
    /// Of those, answered with success.
    pub ok: u64,
    /// Of those, failed (error answers, unanswered, connection errors).
    pub errors: u64,
    /// Failures by kind.
    pub error_kinds: BTreeMap<String, u64>,
    /// Connections the server closed and the tool opened again.
    pub reconnects: u64,
    /// `sent` per second of the window (open loop: the rate achieved).
    pub send_rate: f64,
    /// `ok` per second of the window.
    pub throughput: f64,
    /// Latency of the `ok` requests.
    pub latency_us: Latency,
    /// CPU seconds of the load generator itself over the window.
    pub client_cpu_seconds: f64,
    /// The measured processes, when `measure_pids` was given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub process: Option<ProcessReport>,
}

#[derive(Default)]
struct Counts {
    sent: u64,
    ok: u64,
    reconnects: u64,
    errors: BTreeMap<String, u64>,
}

impl Counts {
    fn error(&mut self, kind: &str, n: u64) {
        if n > 0 {
            *self.errors.entry(kind.to_owned()).or_default() += n;
        }
    }
}

fn new_histogram() -> Histogram<u64> {
    // 1 ns to 100 s, 3 significant digits; the bounds are constants that are valid.
    Histogram::new_with_bounds(1, 100_000_000_000, 3).expect("valid histogram bounds")
}

/// Requests on one connection waiting for their answer: by id when answers can come out
/// of order, in order for HTTP/1.1.
enum Pending {
    ById(HashMap<u64, (Instant, bool)>),
    Fifo(VecDeque<(Instant, bool)>),
}

impl Pending {
    fn len(&self) -> usize {
        match self {
            Pending::ById(m) => m.len(),
            Pending::Fifo(q) => q.len(),
        }
    }

    fn insert(&mut self, id: u64, at: Instant, measured: bool) {
        match self {
            Pending::ById(m) => {
                m.insert(id, (at, measured));
            }
            Pending::Fifo(q) => q.push_back((at, measured)),
        }
    }

    fn take(&mut self, id: u64) -> Option<(Instant, bool)> {
        match self {
            Pending::ById(m) => m.remove(&id),
            Pending::Fifo(q) => q.pop_front(),
        }
    }

    fn clear(&mut self) {
        match self {
            Pending::ById(m) => m.clear(),
            Pending::Fifo(q) => q.clear(),
        }
    }

    fn measured(&self) -> u64 {
        match self {
            Pending::ById(m) => m.values().filter(|v| v.1).count() as u64,
            Pending::Fifo(q) => q.iter().filter(|v| v.1).count() as u64,
        }
    }
}

/// Builds the requests of one connection.
struct Requests {
    protocol: Protocol,
    transport: ThriftTransport,
    plain: Vec<u8>,
    batch: Vec<u8>,
    every: u64,
    n: u64,
    next_id: u64,
}

impl Requests {
    fn new(cfg: &LoadConfig, conn: usize) -> Requests {
        let (plain, batch) = match cfg.protocol {
            Protocol::Dubbo => (
                proto::dubbo_request_body(false),
                proto::dubbo_request_body(true),
            ),
            Protocol::Thrift => (proto::thrift_echo_args("hello"), Vec::new()),
            Protocol::Http => (Vec::new(), Vec::new()),
        };
        Requests {
            protocol: cfg.protocol,
            transport: cfg.thrift_transport,
            plain,
            batch,
            every: cfg.batchjob_every,
            n: conn as u64,
            // Distinct ids per connection make mixed-up answers visible.
            next_id: (conn as u64) << 32,
        }
    }

    /// Appends the next request to `out`; returns its id.
    fn push(&mut self, out: &mut Vec<u8>) -> u64 {
        self.n += 1;
        let batchjob = self.every > 0 && self.n.is_multiple_of(self.every);
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        match self.protocol {
            Protocol::Dubbo => {
                let body = if batchjob { &self.batch } else { &self.plain };
                proto::dubbo_request(out, id, body);
            }
            Protocol::Thrift => {
                let seqid = id as u32 as i32;
                proto::thrift_request(out, self.transport, seqid, &self.plain);
                return u64::from(seqid as u32);
            }
            Protocol::Http => proto::http_request(out, batchjob),
        }
        id
    }
}

fn next_frame(protocol: Protocol, buf: &[u8]) -> Result<Option<Frame>, Malformed> {
    match protocol {
        Protocol::Dubbo => proto::dubbo_frame_at(buf),
        Protocol::Thrift => Ok(proto::thrift_frame_at(buf)?.map(|t| t.frame)),
        Protocol::Http => proto::http_message_at(buf),
    }
}

struct ConnResult {
    counts: Counts,
    hist: Histogram<u64>,
}

struct Window {
    measure_start: Instant,
    end: Instant,
    drain_end: Instant,
}

impl Window {
    fn measured(&self, at: Instant) -> bool {
        at >= self.measure_start && at < self.end
    }
}

async fn run_connection(
    mut stream: TcpStream,
    cfg: LoadConfig,
    conn: usize,
    mut ticks: Option<UnboundedReceiver<Instant>>,
    w: Window,
) -> ConnResult {
    let mut counts = Counts::default();
    let mut hist = new_histogram();
    let inflight = if cfg.protocol == Protocol::Http {
        1
    } else {
        cfg.inflight.max(1)
    };
    let mut pending = if cfg.protocol == Protocol::Http {
        Pending::Fifo(VecDeque::new())
    } else {
        Pending::ById(HashMap::with_capacity(inflight * 2))
    };
    let open = ticks.is_some();
    // Open loop: intended send times handed over by the pacer, not yet sent.
    let mut due: VecDeque<Instant> = VecDeque::new();
    let mut reqs = Requests::new(&cfg, conn);
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let mut out = Vec::with_capacity(16 * 1024);
    let mut broken: Option<&'static str> = None;

    loop {
        let now = Instant::now();
        let sending = if open {
            ticks.is_some() || !due.is_empty()
        } else {
            now < w.end
        };
        out.clear();
        while pending.len() < inflight {
            let at = if open {
                match due.pop_front() {
                    Some(at) => at,
                    None => break,
                }
            } else if sending {
                now
            } else {
                break;
            };
            let id = reqs.push(&mut out);
            let measured = w.measured(at);
            counts.sent += u64::from(measured);
            pending.insert(id, at, measured);
        }
        if !sending && (pending.measured() == 0 || now >= w.drain_end) {
            break;
        }
        if !out.is_empty() {
            if let Err(e) = stream.write_all(&out).await {
                broken = Some(io_kind(&e));
                break;
            }
        }
        let wake = match (sending, open) {
            (true, false) => w.end,
            (true, true) => w.drain_end.max(now + cfg.drain),
            (false, _) => w.drain_end,
        };
        tokio::select! {
            r = stream.read_buf(&mut buf) => match r {
                Ok(0) => {
                    // The server closed: what was outstanding is lost; carry on with a
                    // new connection, as clients do.
                    counts.error("connection_closed", pending.measured());
                    pending.clear();
                    buf.clear();
                    if !sending {
                        break;
                    }
                    match reconnect(cfg.target, &mut counts).await {
                        Ok(s) => { stream = s; continue; }
                        Err(e) => { broken = Some(e); break; }
                    }
                }
                Ok(_) => {}
                Err(e) => { broken = Some(io_kind(&e)); break; }
            },
            t = recv(&mut ticks) => {
                match t {
                    Some(at) => due.push_back(at),
                    None => ticks = None,
                }
                continue;
            }
            _ = sleep_until(wake) => {
                if open {
                    // The pacer is gone without a goodbye: stop waiting for it.
                    ticks = None;
                    due.clear();
                }
                continue;
            }
        }
        let now = Instant::now();
        let mut close = false;
        loop {
            match next_frame(cfg.protocol, &buf) {
                Ok(Some(f)) => {
                    buf.advance(f.len);
                    close |= f.close;
                    if f.event {
                        continue;
                    }
                    let Some((at, measured)) = pending.take(f.id) else {
                        counts.error("unknown_id", 1);
                        continue;
                    };
                    if !measured {
                        continue;
                    }
                    if f.ok {
                        counts.ok += 1;
                        let ns = now.saturating_duration_since(at).as_nanos() as u64;
                        hist.saturating_record(ns.max(1));
                    } else {
                        counts.error(&format!("status_{}", f.status), 1);
                    }
                }
                Ok(None) => break,
                Err(m) => {
                    broken = Some(m.0);
                    break;
                }
            }
        }
        if broken.is_some() {
            break;
        }
        if close {
            // The server announced it closes (nginx after `keepalive_requests`).
            counts.error("connection_closed", pending.measured());
            pending.clear();
            buf.clear();
            match reconnect(cfg.target, &mut counts).await {
                Ok(s) => stream = s,
                Err(e) => {
                    broken = Some(e);
                    break;
                }
            }
        }
    }
    let lost = pending.measured() + due.iter().filter(|at| w.measured(**at)).count() as u64;
    counts.sent += due.iter().filter(|at| w.measured(**at)).count() as u64;
    counts.error(broken.unwrap_or("unanswered"), lost);
    ConnResult { counts, hist }
}

/// The next intended send time, or never when there is no pacer.
async fn recv(ticks: &mut Option<UnboundedReceiver<Instant>>) -> Option<Instant> {
    match ticks {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Open loop: a thread of its own hands out intended send times at `rate` per second,
/// round robin over the connections, until `end`. A thread sleeping with the OS timer is
/// precise to tens of microseconds, where the runtime's timer works in milliseconds; the
/// time a request waits to be sent (here, or behind a busy connection) counts in its
/// latency.
fn pace(rate: f64, start: Instant, end: Instant, conns: Vec<UnboundedSender<Instant>>) {
    let start = start.into_std();
    let end = end.into_std();
    let interval = Duration::from_secs_f64(1.0 / rate.max(1e-3));
    let mut k: u32 = 0;
    let mut at = start;
    while at < end {
        let now = std::time::Instant::now();
        if at > now {
            std::thread::sleep(at - now);
        }
        let i = k as usize % conns.len();
        // A connection that ended early stops taking requests; the others carry on.
        let _ = conns[i].send(Instant::from_std(at));
        k = k.wrapping_add(1);
        at += interval;
    }
}

async fn reconnect(target: SocketAddr, counts: &mut Counts) -> Result<TcpStream, &'static str> {
    let s = TcpStream::connect(target).await.map_err(|e| io_kind(&e))?;
    let _ = s.set_nodelay(true);
    counts.reconnects += 1;
    Ok(s)
}

fn io_kind(e: &std::io::Error) -> &'static str {
    match e.kind() {
        std::io::ErrorKind::ConnectionReset => "connection_reset",
        std::io::ErrorKind::BrokenPipe => "broken_pipe",
        _ => "io_error",
    }
}

fn us(ns: u64) -> f64 {
    (ns as f64 / 100.0).round() / 10.0
}

/// Opens the connections, runs the load and returns the report.
pub async fn run(cfg: LoadConfig) -> anyhow::Result<Report> {
    let mut streams = Vec::with_capacity(cfg.connections);
    for _ in 0..cfg.connections.max(1) {
        let s = TcpStream::connect(cfg.target)
            .await
            .map_err(|e| anyhow::anyhow!("cannot connect to {}: {e}", cfg.target))?;
        s.set_nodelay(true)?;
        streams.push(s);
    }
    let connections = streams.len();
    let inflight = match (cfg.inflight, cfg.rate) {
        (0, Some(_)) => 1024,
        (0, None) => 1,
        (n, _) => n,
    };
    let cfg = LoadConfig {
        connections,
        inflight,
        ..cfg
    };
    let ticks = procstat::clock_ticks();
    let pids = procstat::with_children(&cfg.measure_pids);
    let start = Instant::now();
    let measure_start = start + cfg.warmup;
    let end = measure_start + cfg.duration;
    let drain_end = end + cfg.drain;

    let mut tasks = Vec::with_capacity(connections);
    let mut senders = Vec::new();
    for (i, s) in streams.into_iter().enumerate() {
        let w = Window {
            measure_start,
            end,
            drain_end,
        };
        let rx = cfg.rate.map(|_| {
            let (tx, rx) = unbounded_channel();
            senders.push(tx);
            rx
        });
        tasks.push(tokio::spawn(run_connection(s, cfg.clone(), i, rx, w)));
    }
    let pacer = cfg
        .rate
        .map(|rate| tokio::task::spawn_blocking(move || pace(rate, start, end, senders)));
    sleep_until(measure_start).await;
    let cpu0 = procstat::cpu_seconds(&pids, ticks);
    let own0 = procstat::own_cpu_seconds(ticks);
    sleep_until(end).await;
    let cpu1 = procstat::cpu_seconds(&pids, ticks);
    let own1 = procstat::own_cpu_seconds(ticks);
    let peak = procstat::status_kib(&pids, "VmHWM");
    let rss = procstat::status_kib(&pids, "VmRSS");

    if let Some(p) = pacer {
        p.await?;
    }
    let mut counts = Counts::default();
    let mut hist = new_histogram();
    for t in tasks {
        let r = t.await?;
        counts.sent += r.counts.sent;
        counts.ok += r.counts.ok;
        counts.reconnects += r.counts.reconnects;
        for (k, v) in r.counts.errors {
            counts.error(&k, v);
        }
        hist.add(&r.hist)?;
    }
    let errors = counts.errors.values().sum();
    let secs = cfg.duration.as_secs_f64();
    let process = (!pids.is_empty()).then(|| {
        let cpu = cpu1 - cpu0;
        ProcessReport {
            pids: pids.clone(),
            cpu_seconds: cpu,
            cpu_us_per_request: if counts.ok > 0 {
                cpu * 1e6 / counts.ok as f64
            } else {
                0.0
            },
            peak_rss_kib: peak,
            rss_kib: rss,
        }
    });
    Ok(Report {
        protocol: cfg.protocol,
        target: cfg.target.to_string(),
        mode: if cfg.rate.is_some() { "open" } else { "closed" },
        connections,
        inflight: if cfg.protocol == Protocol::Http {
            1
        } else {
            cfg.inflight
        },
        rate: cfg.rate,
        duration_s: secs,
        warmup_s: cfg.warmup.as_secs_f64(),
        sent: counts.sent,
        ok: counts.ok,
        errors,
        error_kinds: counts.errors,
        reconnects: counts.reconnects,
        send_rate: counts.sent as f64 / secs,
        throughput: counts.ok as f64 / secs,
        latency_us: Latency {
            p50: us(hist.value_at_quantile(0.50)),
            p90: us(hist.value_at_quantile(0.90)),
            p99: us(hist.value_at_quantile(0.99)),
            p999: us(hist.value_at_quantile(0.999)),
            max: us(hist.max()),
            mean: us(hist.mean() as u64),
        },
        client_cpu_seconds: own1 - own0,
        process,
    })
}

/// What `idle` measured.
#[derive(Clone, Debug, Serialize)]
pub struct IdleReport {
    pub target: String,
    pub connections: usize,
    pub pids: Vec<u32>,
    pub rss_before_kib: u64,
    pub rss_after_kib: u64,
    pub added_kib: i64,
    pub bytes_per_connection: f64,
}

/// Opens `n` connections that send nothing, holds them for `hold`, and reports how much
/// the resident memory of `pids` (children included) grew.
pub async fn idle(
    target: SocketAddr,
    n: usize,
    hold: Duration,
    pids: &[u32],
) -> anyhow::Result<IdleReport> {
    let pids = procstat::with_children(pids);
    let before = procstat::status_kib(&pids, "VmRSS");
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        conns.push(
            TcpStream::connect(target)
                .await
                .map_err(|e| anyhow::anyhow!("connection {} to {target}: {e}", conns.len()))?,
        );
    }
    tokio::time::sleep(hold).await;
    let after = procstat::status_kib(&pids, "VmRSS");
    drop(conns);
    let added = after as i64 - before as i64;
    Ok(IdleReport {
        target: target.to_string(),
        connections: n,
        pids,
        rss_before_kib: before,
        rss_after_kib: after,
        added_kib: added,
        bytes_per_connection: added as f64 * 1024.0 / n.max(1) as f64,
    })
}
