//! Helpers shared by the end-to-end tests: spawning the `metamesh` binary and the
//! third-party Dubbo peers of `tests/peers`, waiting on their readiness lines, scraping
//! the admin endpoint and reading Prometheus counters.
//!
//! Every child process is owned by a guard that kills it on drop, so a failing test never
//! leaves a provider or a proxy behind.

#![allow(dead_code)]

pub mod dubbo;
pub mod nginx;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long a child gets to print its readiness line.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a consumer run may take.
pub const CONSUMER_TIMEOUT: Duration = Duration::from_secs(60);

/// The repository root (the root package's manifest directory).
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The virtualenv interpreter the peers run on; fails when it was never installed.
pub fn python() -> PathBuf {
    let p = repo().join(".venv/bin/python");
    assert!(
        p.exists(),
        "{} is missing: run scripts/setup-test-deps.sh once to install the third-party \
         Dubbo peers the end-to-end tests talk to",
        p.display()
    );
    p
}

/// A peer script under `tests/peers`.
pub fn peer(script: &str) -> PathBuf {
    repo().join("tests/peers").join(script)
}

/// The `metamesh` binary under test.
pub fn metamesh_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_metamesh"))
}

/// A child process with its stdout delivered line by line and its stderr collected.
/// Killed (and reaped) on drop.
pub struct Spawned {
    what: String,
    child: Child,
    lines: Receiver<String>,
    stderr: Arc<Mutex<String>>,
}

impl Spawned {
    /// Starts `cmd` with stdin closed and stdout/stderr captured.
    pub fn start(what: impl Into<String>, mut cmd: Command) -> Spawned {
        let what = what.into();
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what} ({cmd:?}): {e}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let collected = Arc::new(Mutex::new(String::new()));
        let sink = collected.clone();
        thread::spawn(move || {
            let mut r = BufReader::new(stderr);
            let mut line = Vec::new();
            loop {
                line.clear();
                match r.read_until(b'\n', &mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => sink
                        .lock()
                        .unwrap()
                        .push_str(&String::from_utf8_lossy(&line)),
                }
            }
        });
        Spawned {
            what,
            child,
            lines,
            stderr: collected,
        }
    }

    /// The OS process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the child wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Panics with the child's state and stderr.
    pub fn fail(&mut self, why: &str) -> ! {
        let status = match self.child.try_wait() {
            Ok(Some(s)) => format!("exited with {s}"),
            Ok(None) => "still running".to_owned(),
            Err(e) => format!("state unknown: {e}"),
        };
        // Give the stderr reader a moment to catch the last words of a dying child.
        if !status.contains("running") {
            thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "{}: {why} ({status})\n--- stderr of {} ---\n{}",
            self.what,
            self.what,
            self.stderr()
        );
    }

    /// The next stdout line, waiting at most `timeout`; fails with the child's stderr.
    pub fn next_line(&mut self, timeout: Duration) -> String {
        match self.lines.recv_timeout(timeout) {
            Ok(line) => line,
            Err(RecvTimeoutError::Timeout) => {
                self.fail(&format!("no stdout line within {timeout:?}"))
            }
            Err(RecvTimeoutError::Disconnected) => self.fail("stdout closed"),
        }
    }

    /// Skips stdout lines until one satisfies `pred`; fails after `timeout`.
    pub fn wait_line(&mut self, timeout: Duration, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self.next_line(left);
            if pred(&line) {
                return line;
            }
        }
    }

    /// Waits for the child to exit; fails after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return status,
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(10)),
                Ok(None) => self.fail(&format!("did not exit within {timeout:?}")),
                Err(e) => self.fail(&format!("wait failed: {e}")),
            }
        }
    }

    /// Sends SIGKILL and reaps the child (a crash: no goodbye on its connections).
    pub fn kill(&mut self) {
        if let Err(e) = self.child.kill() {
            self.fail(&format!("kill failed: {e}"));
        }
        if let Err(e) = self.child.wait() {
            self.fail(&format!("wait after kill failed: {e}"));
        }
    }

    /// Sends SIGTERM.
    pub fn terminate(&mut self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM {} failed", self.pid());
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `tests/peers/dubbo_provider.py` process.
pub struct Provider {
    pub group: String,
    pub port: u16,
    pub proc: Spawned,
}

impl Provider {
    /// Starts a provider; call [`Provider::ready`] to wait for it.
    pub fn spawn(group: &str, extra: &[&str]) -> Spawned {
        let mut cmd = Command::new(python());
        cmd.arg(peer("dubbo_provider.py"))
            .args(["--host", "127.0.0.1", "--port", "0", "--group", group])
            .args(extra);
        Spawned::start(format!("provider[{group}]"), cmd)
    }

    /// Waits for `READY <port>`.
    pub fn ready(group: &str, mut proc: Spawned) -> Provider {
        let line = proc.wait_line(READY_TIMEOUT, |l| l.starts_with("READY "));
        let port = match line["READY ".len()..].trim().parse() {
            Ok(p) => p,
            Err(_) => proc.fail(&format!("bad readiness line {line:?}")),
        };
        Provider {
            group: group.to_owned(),
            port,
            proc,
        }
    }

    /// Starts a provider on a fixed `port` (for example to restart one where it was) and
    /// waits for it.
    pub fn start_on(group: &str, port: u16, extra: &[&str]) -> Provider {
        let port = port.to_string();
        // The script's last --port wins over the --port 0 that spawn passes.
        let mut args = vec!["--port", port.as_str()];
        args.extend_from_slice(extra);
        Provider::ready(group, Provider::spawn(group, &args))
    }

    /// Starts one provider per entry of `groups` in parallel and waits for all of them.
    pub fn start_all(groups: &[&str], extra: &[&str]) -> Vec<Provider> {
        let spawned: Vec<_> = groups.iter().map(|g| Provider::spawn(g, extra)).collect();
        groups
            .iter()
            .zip(spawned)
            .map(|(g, p)| Provider::ready(g, p))
            .collect()
    }

    /// `127.0.0.1:<port>`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The echoes of the requests it answered, when started with `--log-requests`
    /// (one stderr line `served <JSON>` each).
    pub fn served(&self) -> Vec<serde_json::Value> {
        self.proc
            .stderr()
            .lines()
            .filter_map(|l| l.strip_prefix("served "))
            .map(|j| {
                serde_json::from_str(j).unwrap_or_else(|e| {
                    panic!("provider[{}]: bad served line {j:?}: {e}", self.group)
                })
            })
            .collect()
    }

    /// Lines of its stderr containing `needle`.
    pub fn stderr_count(&self, needle: &str) -> usize {
        self.proc.stderr().matches(needle).count()
    }
}

/// A file under the system temp directory, removed on drop.
pub struct TempFile {
    pub path: PathBuf,
}

impl TempFile {
    /// Writes `text` to a fresh file named after `stem`.
    pub fn new(stem: &str, text: &str) -> TempFile {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let name = format!(
            "metamesh-e2e-{stem}-{}-{}-{nanos}.yaml",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let path = std::env::temp_dir().join(name);
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        TempFile { path }
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A directory under the system temp directory, removed with its contents on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// Creates a fresh, empty directory named after `stem`.
    pub fn new(stem: &str) -> TempDir {
        let f = TempFile::new(stem, "");
        let dir = f.path.with_extension("d");
        drop(f);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// An endpoint list in YAML flow style: `[{ address: "a" }, { address: "b" }]`.
pub fn endpoint_list<S: AsRef<str>>(addrs: impl IntoIterator<Item = S>) -> String {
    let list: Vec<String> = addrs
        .into_iter()
        .map(|a| format!("{{ address: \"{}\" }}", a.as_ref()))
        .collect();
    format!("[{}]", list.join(", "))
}

/// The endpoint list of `providers`, in YAML flow style.
pub fn provider_endpoints(providers: &[&Provider]) -> String {
    endpoint_list(providers.iter().map(|p| p.addr()))
}

/// A running `metamesh proxy`.
pub struct Proxy {
    pub listeners: HashMap<String, SocketAddr>,
    pub admin: SocketAddr,
    pub proc: Spawned,
    pub config: TempFile,
}

impl Proxy {
    /// Writes `yaml` to a temp file, starts the proxy on it and waits for its ready line.
    pub fn start(yaml: &str, extra: &[&str]) -> Proxy {
        let config = TempFile::new("proxy", yaml);
        let mut cmd = Command::new(metamesh_bin());
        cmd.arg("proxy")
            .arg("--config")
            .arg(&config.path)
            .args(extra)
            .env("RUST_LOG", "info");
        let mut proc = Spawned::start("metamesh proxy", cmd);
        let line = proc.next_line(READY_TIMEOUT);
        let ready: serde_json::Value = match serde_json::from_str(&line) {
            Ok(v) => v,
            Err(e) => proc.fail(&format!("ready line {line:?} is not JSON: {e}")),
        };
        if ready["event"] != "ready" {
            proc.fail(&format!("unexpected first line {line:?}"));
        }
        let mut listeners = HashMap::new();
        if let Some(map) = ready["listeners"].as_object() {
            for (name, addr) in map {
                let addr = addr.as_str().and_then(|a| a.parse().ok());
                match addr {
                    Some(a) => listeners.insert(name.clone(), a),
                    None => proc.fail(&format!("bad listener address in {line:?}")),
                };
            }
        }
        let Some(admin) = ready["admin"].as_str().and_then(|a| a.parse().ok()) else {
            proc.fail(&format!("no admin address in {line:?}"))
        };
        Proxy {
            listeners,
            admin,
            proc,
            config,
        }
    }

    /// The bound address of listener `name`.
    pub fn listener(&self, name: &str) -> SocketAddr {
        *self
            .listeners
            .get(name)
            .unwrap_or_else(|| panic!("no listener {name:?} in {:?}", self.listeners))
    }

    /// GET `path` on the admin endpoint.
    pub fn scrape(&self, path: &str) -> String {
        scrape(self.admin, path)
    }

    /// Current value of a counter (summed over series whose labels include `labels`).
    pub fn counter(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        counter(&self.scrape("/stats/prometheus"), name, labels)
    }

    /// `/clusters?format=json`, parsed.
    pub fn clusters_json(&self) -> serde_json::Value {
        let text = self.scrape("/clusters?format=json");
        serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("/clusters?format=json is not JSON ({e}): {text}"))
    }

    /// Waits until every endpoint of `cluster` whose address is in `addrs` reports
    /// `"health": want` in `/clusters?format=json`; fails with the last answer after
    /// `timeout`.
    pub fn wait_health(&self, cluster: &str, addrs: &[String], want: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let json = self.clusters_json();
            let healths: Vec<Option<String>> = addrs
                .iter()
                .map(|a| {
                    endpoint_of(&json, cluster, a)
                        .and_then(|e| e["health"].as_str().map(str::to_owned))
                })
                .collect();
            if healths.iter().all(|h| h.as_deref() == Some(want)) {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "cluster {cluster}: endpoints {addrs:?} are {healths:?}, want {want:?} \
                     within {timeout:?}\n--- /clusters?format=json ---\n{json:#}"
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until the counter equals `want`; fails with the whole exposition otherwise.
    pub fn wait_counter(&self, name: &str, labels: &[(&str, &str)], want: u64) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let text = self.scrape("/stats/prometheus");
            let got = counter(&text, name, labels);
            if got == want {
                return;
            }
            if Instant::now() > deadline {
                panic!("{name}{labels:?} is {got}, want {want}\n--- /stats/prometheus ---\n{text}");
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A consumer running in the background.
pub struct Consumer {
    proc: Spawned,
}

impl Consumer {
    /// Starts `tests/peers/dubbo_consumer.py` with `args`.
    pub fn spawn(args: &[&str]) -> Consumer {
        let mut cmd = Command::new(python());
        cmd.arg(peer("dubbo_consumer.py")).args(args);
        Consumer {
            proc: Spawned::start(format!("consumer {}", args.join(" ")), cmd),
        }
    }

    /// Waits for its JSON summary.
    pub fn finish(mut self) -> serde_json::Value {
        let line = self.proc.next_line(CONSUMER_TIMEOUT);
        let status = self.proc.wait_exit(Duration::from_secs(10));
        if !status.success() {
            self.proc.fail(&format!("exited with {status}"));
        }
        match serde_json::from_str(&line) {
            Ok(v) => v,
            Err(e) => self
                .proc
                .fail(&format!("summary {line:?} is not JSON: {e}")),
        }
    }
}

/// Runs a consumer to completion and returns its JSON summary.
pub fn run_consumer(args: &[&str]) -> serde_json::Value {
    Consumer::spawn(args).finish()
}

/// A number of a consumer summary; fails when it is missing.
pub fn json_u64(v: &serde_json::Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} missing from consumer summary: {v:#}"))
}

/// The messages of a consumer summary's `errors`.
pub fn errors_of(summary: &serde_json::Value) -> Vec<String> {
    summary["errors"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|e| e.as_str().unwrap_or_default().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Every `(key, want)`: the consumer summary's number `key` is `want`.
pub fn assert_counts(summary: &serde_json::Value, what: &str, want: &[(&str, u64)]) {
    for &(key, want) in want {
        assert_eq!(
            json_u64(summary, key),
            want,
            "{what}: {key} should be {want}\n--- consumer summary ---\n{summary:#}"
        );
    }
}

/// ok == sent == `count`, nothing mismatched, no error.
pub fn assert_served(summary: &serde_json::Value, count: u64, what: &str) {
    assert_counts(
        summary,
        what,
        &[
            ("sent", count),
            ("ok", count),
            ("mismatched", 0),
            ("error_count", 0),
        ],
    );
}

/// [`assert_served`], and no attachment changed.
pub fn assert_all_ok(summary: &serde_json::Value, count: u64, what: &str) {
    assert_served(summary, count, what);
    assert_counts(summary, what, &[("attachment_errors", 0)]);
}

/// All `count` requests failed (none timed out), and every reported error contains every
/// one of `needles`.
pub fn assert_errors(summary: &serde_json::Value, count: u64, needles: &[&str], what: &str) {
    assert_counts(
        summary,
        what,
        &[
            ("sent", count),
            ("ok", 0),
            ("error_count", count),
            ("timeouts", 0),
        ],
    );
    let errors = errors_of(summary);
    assert!(!errors.is_empty(), "{what}: {summary:#}");
    for e in &errors {
        for n in needles {
            assert!(e.contains(n), "{what}: error {e:?} does not mention {n:?}");
        }
    }
}

/// A tiny HTTP/1.1 GET; returns the body of a 200 response and fails on anything else.
pub fn scrape(addr: SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("connect to admin {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)
        .unwrap_or_else(|e| panic!("read admin {path}: {e}"));
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("malformed HTTP response from admin {path}: {text:?}"));
    let status = head.lines().next().unwrap_or_default();
    assert!(
        status.starts_with("HTTP/1.1 200"),
        "GET {path}: {status}\n{body}"
    );
    assert!(
        !head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "chunked admin responses are not handled by this helper"
    );
    body.to_owned()
}

/// Parses `name{k="v",...} value` lines of a Prometheus/OpenMetrics exposition and sums the
/// series named `name` whose labels include every pair of `labels`. 0 when none does.
pub fn counter(text: &str, name: &str, labels: &[(&str, &str)]) -> u64 {
    let mut sum = 0.0;
    for line in text.lines() {
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (series, value) = match line.rsplit_once(' ') {
            Some(x) => x,
            None => continue,
        };
        let (metric, label_text) = match series.split_once('{') {
            Some((m, rest)) => (m, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        if metric != name {
            continue;
        }
        let found: HashMap<&str, &str> = label_text
            .split(',')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.trim(), v.trim().trim_matches('"')))
            .collect();
        if labels.iter().all(|(k, v)| found.get(k) == Some(v)) {
            sum += value.trim().parse::<f64>().unwrap_or_else(|e| {
                panic!("bad sample value in {line:?}: {e}");
            });
        }
    }
    sum as u64
}

/// Polls `f` every 20 ms until it returns `Some`; fails after `timeout` with `what`.
pub fn wait_for<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(20));
    }
}

/// The entry of endpoint `addr` of cluster `cluster` in a `/clusters?format=json` answer.
pub fn endpoint_of<'a>(
    clusters: &'a serde_json::Value,
    cluster: &str,
    addr: &str,
) -> Option<&'a serde_json::Value> {
    clusters["clusters"]
        .as_array()?
        .iter()
        .find(|c| c["name"] == cluster)?["endpoints"]
        .as_array()?
        .iter()
        .find(|e| e["address"] == addr)
}

/// `n` distinct loopback ports nothing listens on (all bound at once, then released).
pub fn free_ports(n: usize) -> Vec<u16> {
    let held: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    held.iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

/// A loopback port nothing listens on (bound, then released).
pub fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// Runs `metamesh validate FILE`.
pub fn validate(path: &Path) -> std::process::Output {
    Command::new(metamesh_bin())
        .arg("validate")
        .arg(path)
        .stdin(Stdio::null())
        .output()
        .expect("run metamesh validate")
}

/// A `tests/peers/thrift_server.py` process (Apache Thrift's `TThreadedServer`).
pub struct ThriftServer {
    pub group: String,
    pub port: u16,
    pub proc: Spawned,
}

impl ThriftServer {
    /// Starts a server of group `group`; `args` picks the wire format (`--transport`,
    /// `--protocol`, `--multiplexed`, ...). Call [`ThriftServer::ready`] to wait for it.
    pub fn spawn(group: &str, args: &[&str]) -> Spawned {
        let mut cmd = Command::new(python());
        cmd.arg(peer("thrift_server.py"))
            .args(["--host", "127.0.0.1", "--port", "0", "--group", group])
            .args(args);
        Spawned::start(format!("thrift server[{group}]"), cmd)
    }

    /// Waits for `READY <port>`.
    pub fn ready(group: &str, proc: Spawned) -> ThriftServer {
        // The readiness line is the same as the Dubbo provider's.
        let Provider { group, port, proc } = Provider::ready(group, proc);
        ThriftServer { group, port, proc }
    }

    /// Starts one server per `(group, args)` in parallel and waits for all of them.
    pub fn start_all(servers: &[(&str, &[&str])]) -> Vec<ThriftServer> {
        let spawned: Vec<_> = servers
            .iter()
            .map(|(g, args)| ThriftServer::spawn(g, args))
            .collect();
        servers
            .iter()
            .zip(spawned)
            .map(|((g, _), p)| ThriftServer::ready(g, p))
            .collect()
    }

    /// `127.0.0.1:<port>`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

/// Starts `tests/peers/thrift_client.py` with `args` in the background; its
/// [`Consumer::finish`] returns the JSON summary.
pub fn spawn_thrift_client(args: &[&str]) -> Consumer {
    let mut cmd = Command::new(python());
    cmd.arg(peer("thrift_client.py")).args(args);
    Consumer {
        proc: Spawned::start(format!("thrift client {}", args.join(" ")), cmd),
    }
}

/// Runs `tests/peers/thrift_client.py` to completion and returns its JSON summary.
pub fn run_thrift_client(args: &[&str]) -> serde_json::Value {
    spawn_thrift_client(args).finish()
}

/// Peak resident memory of a process, from /proc.
pub fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmHWM")
}

/// Sends SIGHUP to the proxy.
pub fn hangup(proxy: &Proxy) {
    let status = Command::new("kill")
        .args(["-HUP", &proxy.proc.pid().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -HUP {} failed", proxy.proc.pid());
}

/// Writes `yaml` over the proxy's configuration file, sends SIGHUP and returns the JSON
/// line the proxy prints about the reload.
pub fn reload(proxy: &mut Proxy, yaml: &str) -> serde_json::Value {
    std::fs::write(&proxy.config.path, yaml).expect("rewrite the configuration");
    hangup(proxy);
    reload_outcome(proxy)
}

/// The next `reloaded` / `reload_failed` line on the proxy's stdout.
pub fn reload_outcome(proxy: &mut Proxy) -> serde_json::Value {
    let line = proxy.proc.wait_line(Duration::from_secs(30), |l| {
        serde_json::from_str::<serde_json::Value>(l)
            .ok()
            .and_then(|v| v["event"].as_str().map(|e| e.starts_with("reload")))
            .unwrap_or(false)
    });
    serde_json::from_str(&line).expect("reload line is JSON")
}
