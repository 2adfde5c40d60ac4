//! End-to-end tests of transparent sidecar capture, the Istio way: network namespaces
//! made by the test (an "app" pod and a "provider" network joined by a veth pair), the
//! NAT rules installed by `metamesh iptables --apply` in the app namespace, the real
//! `metamesh proxy` running there as uid 1337, and unmodified Dubbo peers (dubbo-py,
//! see tests/peers/README.md) that only know the services' ordinary addresses.
//!
//! Needs root, `ip netns`, iptables and setpriv; without them each test prints SKIPPED
//! with the reason and returns. Needs the peers installed with
//! `scripts/setup-test-deps.sh`.

mod common;

use std::collections::HashMap;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use common::{
    assert_all_ok, counter, metamesh_bin, peer, python, reload, Provider, Proxy, Spawned, TempDir,
    TempFile, CONSUMER_TIMEOUT, READY_TIMEOUT,
};
use serde_json::Value as Json;

/// The app pod's address.
const APP_IP: &str = "10.77.0.1";
/// The provider network's first address: the service's ordinary address lives here.
const SVC_IP: &str = "10.77.0.2";
/// A second address in the provider network, for the batchjob group.
const BATCH_IP: &str = "10.77.0.3";
/// The uid the proxy runs as and the rules exclude.
const PROXY_UID: &str = "1337";

fn run(what: &str, cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{what}: {cmd:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn ip(args: &[&str]) -> Output {
    run("ip", Command::new("ip").args(args))
}

/// Why this machine cannot run the tests, if it cannot.
fn missing_privileges() -> Option<String> {
    let uid = Command::new("id").arg("-u").output().ok()?;
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        return Some("not running as root (network namespaces and iptables need it)".into());
    }
    for tool in ["ip", "iptables", "iptables-restore", "setpriv", "curl"] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if !found {
            return Some(format!(
                "`{tool}` is not installed (scripts/setup-test-deps.sh installs it)"
            ));
        }
    }
    None
}

/// An app namespace and a provider namespace joined by a veth pair; both removed on
/// drop, also when the test fails.
struct Pod {
    app: String,
    provider: String,
}

impl Pod {
    /// Creates the namespaces, or says why it cannot.
    fn create() -> Result<Pod, String> {
        if let Some(why) = missing_privileges() {
            return Err(why);
        }
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let id = format!(
            "mm{}x{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let app = format!("{id}-app");
        let provider = format!("{id}-prov");
        let out = Command::new("ip").args(["netns", "add", &app]).output();
        match out {
            Ok(o) if o.status.success() => {}
            Ok(o) => {
                return Err(format!(
                    "`ip netns add` failed: {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                ))
            }
            Err(e) => return Err(format!("cannot run `ip netns add`: {e}")),
        }
        // From here on, drop removes what exists.
        let pod = Pod { app, provider };
        ip(&["netns", "add", &pod.provider]);
        ip(&[
            "link",
            "add",
            "name",
            "eth0",
            "netns",
            &pod.app,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &pod.provider,
        ]);
        for (ns, addrs) in [
            (&pod.app, vec![APP_IP]),
            (&pod.provider, vec![SVC_IP, BATCH_IP]),
        ] {
            for a in addrs {
                ip(&["-n", ns, "addr", "add", &format!("{a}/24"), "dev", "eth0"]);
            }
            ip(&["-n", ns, "link", "set", "lo", "up"]);
            ip(&["-n", ns, "link", "set", "eth0", "up"]);
        }
        Ok(pod)
    }

    /// `cmd` run inside namespace `ns`.
    fn exec(ns: &str, program: &Path) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns]).arg(program);
        cmd
    }

    /// Starts a dubbo-py provider in `ns` on `host:port` and waits for it.
    fn provider(&self, ns: &str, group: &str, host: &str, port: u16) -> Provider {
        let mut cmd = Pod::exec(ns, &python());
        cmd.arg(peer("dubbo_provider.py"))
            .args(["--host", host, "--port", &port.to_string()])
            .args(["--group", group, "--log-requests"]);
        let p = Provider::ready(group, Spawned::start(format!("provider[{group}]"), cmd));
        assert_eq!(p.port, port, "provider[{group}] bound another port");
        p
    }

    /// Runs the unmodified dubbo-py consumer in `ns` against `target` and returns its
    /// summary.
    fn consumer(&self, ns: &str, target: &str, args: &[&str]) -> Json {
        let mut cmd = Pod::exec(ns, &python());
        cmd.arg(peer("dubbo_consumer.py"))
            .args(["--target", target, "--timeout", "3"])
            .args(args);
        let mut proc = Spawned::start(format!("consumer {target}"), cmd);
        let line = proc.next_line(CONSUMER_TIMEOUT);
        let status = proc.wait_exit(Duration::from_secs(10));
        if !status.success() {
            proc.fail(&format!("exited with {status}"));
        }
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("summary {line:?}: {e}"))
    }

    /// `metamesh iptables ARGS` in the app namespace, as root.
    fn iptables(&self, bin: &Path, args: &[&str]) -> String {
        let out = run(
            "metamesh iptables",
            Pod::exec(&self.app, bin).arg("iptables").args(args),
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `iptables -t nat -S` of the app namespace.
    fn nat_rules(&self) -> String {
        let out = run(
            "iptables -S",
            Pod::exec(&self.app, Path::new("iptables")).args(["-t", "nat", "-S"]),
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Starts `metamesh proxy` in the app namespace as uid 1337 and waits for its ready
    /// line.
    fn proxy(&self, bin: &Path, yaml: &str) -> Proxy {
        let config = TempFile::new("capture", yaml);
        let mut cmd = Pod::exec(&self.app, Path::new("setpriv"));
        cmd.args([
            &format!("--reuid={PROXY_UID}"),
            &format!("--regid={PROXY_UID}"),
            "--clear-groups",
        ])
        .arg(bin)
        .args(["proxy", "--config"])
        .arg(&config.path)
        .env("RUST_LOG", "info,metamesh_core::capture=debug");
        let mut proc = Spawned::start("metamesh proxy (uid 1337)", cmd);
        let line = proc.next_line(READY_TIMEOUT);
        let ready: Json = serde_json::from_str(&line).unwrap_or(Json::Null);
        if ready["event"] != "ready" {
            proc.fail(&format!("unexpected first line {line:?}"));
        }
        let listeners: HashMap<String, SocketAddr> = ready["listeners"]
            .as_object()
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.parse().ok()?)))
                    .collect()
            })
            .unwrap_or_default();
        for (name, addr) in [
            ("virtual_outbound", "0.0.0.0:15001"),
            ("virtual_inbound", "0.0.0.0:15006"),
        ] {
            assert_eq!(
                listeners.get(name).map(|a| a.to_string()).as_deref(),
                Some(addr),
                "{line}"
            );
        }
        Proxy {
            listeners,
            // The admin endpoint is on the app namespace's loopback: see `metrics`.
            admin: SocketAddr::from(([127, 0, 0, 1], 15000)),
            proc,
            config,
        }
    }

    /// The proxy's metrics, fetched with curl inside the app namespace.
    fn metrics(&self) -> String {
        let out = run(
            "scrape",
            Pod::exec(&self.app, Path::new("curl"))
                .args(["-sf", "http://127.0.0.1:15000/stats/prometheus"]),
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        for ns in [&self.app, &self.provider] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

/// The `metamesh` binary, runnable by uid 1337: the build's own when it can, else a copy
/// in a world-readable temp directory (a target directory under /root is not).
fn proxy_binary(app_ns: &str) -> (PathBuf, Option<TempDir>) {
    let bin = metamesh_bin();
    let ok = Pod::exec(app_ns, Path::new("setpriv"))
        .args([
            &format!("--reuid={PROXY_UID}"),
            &format!("--regid={PROXY_UID}"),
            "--clear-groups",
        ])
        .arg(&bin)
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if ok {
        return (bin, None);
    }
    let dir = TempDir::new("capture-bin");
    let copy = dir.0.join("metamesh");
    std::fs::copy(&bin, &copy).unwrap_or_else(|e| panic!("copy {}: {e}", bin.display()));
    (copy, Some(dir))
}

fn config(policy: &str) -> String {
    config_with(policy, "", "")
}

/// [`config`] with more listeners and clusters (YAML list items).
fn config_with(policy: &str, listeners: &str, clusters: &str) -> String {
    format!(
        r#"admin: {{ address: 127.0.0.1:15000 }}
capture:
  outbound: {{ outbound_traffic_policy: {policy} }}
listeners:
  - name: outbound_demo
    address: {SVC_IP}:20880
    protocol: dubbo
    route_config: demo-routes
    bind_to_port: false
  - name: inbound_20880
    address: 0.0.0.0:20880
    protocol: dubbo
    route_config: inbound-routes
    bind_to_port: false
    traffic_direction: inbound
{listeners}
routes:
  - name: demo-routes
    routes:
      - name: batchjob
        match: {{ attributes: {{ batchjob: {{ exact: "true" }} }} }}
        route: [{{ cluster: demo-batchjob }}]
        request_mutation: [{{ key: x-tier, value: batch }}]
      - name: default
        route: [{{ cluster: demo-user }}]
  - name: inbound-routes
    routes:
      - name: local-app
        route: [{{ cluster: local-app }}]
        request_mutation: [{{ key: x-inbound, value: metamesh }}]
clusters:
  - {{ name: demo-user, endpoints: [{{ address: "{SVC_IP}:20880" }}] }}
  - {{ name: demo-batchjob, endpoints: [{{ address: "{BATCH_IP}:20880" }}] }}
  - {{ name: local-app, endpoints: [{{ address: "{APP_IP}:20880" }}] }}
{clusters}
"#
    )
}

/// Sets up the pod, or prints SKIPPED and returns None.
fn pod(test: &str) -> Option<Pod> {
    match Pod::create() {
        Ok(p) => Some(p),
        Err(why) => {
            // Straight to the stderr handle: the harness captures `eprintln!` of passing
            // tests, and a skip must be seen.
            let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {why}");
            None
        }
    }
}

/// Every `(group, key, want)`: the consumer summary's `by_group[group][key]` is `want`.
fn assert_groups(summary: &Json, want: &[(&str, &str, u64)]) {
    let got: Vec<(&str, &str, u64)> = want
        .iter()
        .map(|&(g, k, _)| (g, k, summary["by_group"][g][k].as_u64().unwrap_or(0)))
        .collect();
    assert_eq!(got, want, "{summary:#}");
}

fn added(summary: &Json, group: &str, kv: &str) -> u64 {
    summary["by_group"][group]["added_attachments"][kv]
        .as_u64()
        .unwrap_or(0)
}

/// The app calls the service's ordinary address: the rules send it to 15001, the proxy
/// routes by the `batchjob` attachment to the other provider group. A destination no
/// listener is configured for passes through under allow_any and is closed under
/// registry_only (switched by a configuration reload).
#[test]
fn outbound_calls_are_captured_routed_and_passed_through() {
    let Some(pod) = pod("outbound_calls_are_captured_routed_and_passed_through") else {
        return;
    };
    let (bin, _copy) = proxy_binary(&pod.app);
    let user = pod.provider(&pod.provider, "user", SVC_IP, 20880);
    let batch = pod.provider(&pod.provider, "batchjob", BATCH_IP, 20880);
    let direct = pod.provider(&pod.provider, "direct", SVC_IP, 20882);

    // Installing twice leaves one set of rules.
    let printed = pod.iptables(&bin, &["--proxy-uid", PROXY_UID]);
    pod.iptables(&bin, &["--apply", "--proxy-uid", PROXY_UID]);
    pod.iptables(&bin, &["--apply", "--proxy-uid", PROXY_UID]);
    let rules = pod.nat_rules();
    assert_eq!(rules.matches("-j METAMESH_INBOUND").count(), 1, "{rules}");
    assert_eq!(rules.matches("-j METAMESH_OUTPUT").count(), 1, "{rules}");
    assert_eq!(
        rules.matches("--uid-owner 1337 -j RETURN").count(),
        1,
        "{rules}"
    );
    assert!(printed.contains("-A METAMESH_REDIRECT -p tcp -j REDIRECT --to-ports 15001"));

    let mut proxy = pod.proxy(&bin, &config("allow_any"));
    let target = format!("{SVC_IP}:20880");
    let summary = pod.consumer(
        &pod.app,
        &target,
        &[
            "--count",
            "60",
            "--connections",
            "3",
            "--batchjob-every",
            "3",
        ],
    );
    assert_all_ok(&summary, 60, "captured calls");
    assert_groups(
        &summary,
        &[
            ("batchjob", "batchjob_requests", 20),
            ("batchjob", "plain_requests", 0),
            ("user", "plain_requests", 40),
            ("user", "batchjob_requests", 0),
        ],
    );
    assert_eq!(
        added(&summary, "batchjob", "x-tier=batch"),
        20,
        "{summary:#}"
    );
    assert_eq!(batch.served().len(), 20);
    assert_eq!(user.served().len(), 40);
    let m = pod.metrics();
    let captured = [
        ("listener", "virtual_outbound"),
        ("target", "outbound_demo"),
    ];
    assert_eq!(
        counter(&m, "metamesh_capture_cx_total", &captured),
        3,
        "{m}"
    );
    assert_eq!(
        counter(
            &m,
            "metamesh_downstream_rq_total",
            &[("listener", "outbound_demo")]
        ),
        60,
        "{m}"
    );

    // An unknown destination under allow_any: plain TCP to where the app sent it.
    let target = format!("{SVC_IP}:20882");
    let summary = pod.consumer(&pod.app, &target, &["--count", "10", "--connections", "1"]);
    assert_all_ok(&summary, 10, "passthrough");
    assert_groups(&summary, &[("direct", "plain_requests", 10)]);
    assert_eq!(direct.served().len(), 10);
    let m = pod.metrics();
    let vo = [("listener", "virtual_outbound")];
    assert_eq!(
        counter(&m, "metamesh_capture_passthrough_cx_total", &vo),
        1,
        "{m}"
    );
    assert_eq!(
        counter(&m, "metamesh_capture_blocked_cx_total", &vo),
        0,
        "{m}"
    );

    // registry_only, by reload: the unknown destination is closed, the service still
    // routed.
    let outcome = reload(&mut proxy, &config("registry_only"));
    assert_eq!(outcome["event"], "reloaded", "{outcome}");
    let summary = pod.consumer(&pod.app, &target, &["--count", "3", "--connections", "1"]);
    assert_eq!(summary["ok"].as_u64(), Some(0), "{summary:#}");
    assert_eq!(summary["error_count"].as_u64(), Some(3), "{summary:#}");
    assert_eq!(
        direct.served().len(),
        10,
        "nothing reached the unknown destination"
    );
    let m = pod.metrics();
    assert!(
        counter(&m, "metamesh_capture_blocked_cx_total", &vo) >= 1,
        "{m}"
    );
    assert_eq!(
        counter(&m, "metamesh_capture_passthrough_cx_total", &vo),
        1,
        "{m}"
    );
    let summary = pod.consumer(
        &pod.app,
        &format!("{SVC_IP}:20880"),
        &[
            "--count",
            "6",
            "--connections",
            "1",
            "--batchjob-every",
            "2",
        ],
    );
    assert_all_ok(&summary, 6, "routed after the reload");
    assert_groups(
        &summary,
        &[
            ("batchjob", "batchjob_requests", 3),
            ("user", "plain_requests", 3),
        ],
    );

    // A listener for the unknown destination, added at runtime, serves it from then on.
    let listener = format!(
        "  - {{ name: outbound_direct, address: \"{SVC_IP}:20882\", protocol: dubbo, \
         route_config: demo-routes, bind_to_port: false, traffic_direction: outbound }}"
    );
    let outcome = reload(&mut proxy, &config_with("registry_only", &listener, ""));
    assert_eq!(outcome["event"], "reloaded", "{outcome}");
    assert_eq!(
        outcome["listeners"]["outbound_direct"],
        format!("{SVC_IP}:20882"),
        "{outcome}"
    );
    let summary = pod.consumer(&pod.app, &target, &["--count", "4", "--connections", "1"]);
    assert_all_ok(&summary, 4, "listener added at runtime");
    // Its routes send plain calls to the user group, not to where the app called.
    assert_groups(&summary, &[("user", "plain_requests", 4)]);
    assert_eq!(direct.served().len(), 10);
    let m = pod.metrics();
    let added_target = [
        ("listener", "virtual_outbound"),
        ("target", "outbound_direct"),
    ];
    assert_eq!(
        counter(&m, "metamesh_capture_cx_total", &added_target),
        1,
        "{m}"
    );

    // The proxy's own connections were never captured (no loop, nothing refused).
    assert_eq!(counter(&m, "metamesh_capture_error_total", &vo), 0, "{m}");

    drop(proxy);
    let removed = pod.iptables(&bin, &["--clean"]);
    assert!(removed.contains("-X METAMESH_OUTPUT"), "{removed}");
    let rules = pod.nat_rules();
    assert!(!rules.contains("METAMESH"), "{rules}");
}

/// A call from the provider network to the app's address: the rules send it to 15006;
/// on a port with an inbound listener the proxy serves it with that listener's routes
/// (a request mutation shows it), on another port it passes through to the app.
#[test]
fn inbound_calls_reach_the_local_app_through_15006() {
    let Some(pod) = pod("inbound_calls_reach_the_local_app_through_15006") else {
        return;
    };
    let (bin, _copy) = proxy_binary(&pod.app);
    let app = pod.provider(&pod.app, "app", APP_IP, 20880);
    let plain = pod.provider(&pod.app, "app-plain", APP_IP, 20890);
    pod.iptables(&bin, &["--apply", "--proxy-uid", PROXY_UID]);
    let _proxy = pod.proxy(&bin, &config("registry_only"));

    let summary = pod.consumer(
        &pod.provider,
        &format!("{APP_IP}:20880"),
        &["--count", "20", "--connections", "2"],
    );
    assert_all_ok(&summary, 20, "inbound listener");
    assert_groups(&summary, &[("app", "plain_requests", 20)]);
    assert_eq!(
        added(&summary, "app", "x-inbound=metamesh"),
        20,
        "{summary:#}"
    );
    assert_eq!(app.served().len(), 20);

    let summary = pod.consumer(
        &pod.provider,
        &format!("{APP_IP}:20890"),
        &["--count", "5", "--connections", "1"],
    );
    assert_all_ok(&summary, 5, "inbound passthrough");
    assert_groups(&summary, &[("app-plain", "plain_requests", 5)]);
    let none = summary["by_group"]["app-plain"]["added_attachments"]
        .as_object()
        .map_or(0, |m| m.len());
    assert_eq!(none, 0, "passthrough changes nothing: {summary:#}");
    assert_eq!(plain.served().len(), 5);

    let m = pod.metrics();
    let vi = [("listener", "virtual_inbound")];
    let captured = [("listener", "virtual_inbound"), ("target", "inbound_20880")];
    assert_eq!(
        counter(&m, "metamesh_capture_cx_total", &captured),
        2,
        "{m}"
    );
    assert_eq!(
        counter(&m, "metamesh_capture_passthrough_cx_total", &vi),
        1,
        "{m}"
    );
    assert_eq!(counter(&m, "metamesh_capture_error_total", &vi), 0, "{m}");
    assert_eq!(
        counter(
            &m,
            "metamesh_downstream_rq_total",
            &[("listener", "inbound_20880")]
        ),
        20,
        "{m}"
    );
}
