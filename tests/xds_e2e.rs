//! End to end through the control plane: `metamesh control` serves a watched directory of
//! mesh resources over ADS, `metamesh proxy` with `xds.address` in its bootstrap takes its
//! listeners, routes and clusters from it, and real dubbo-py providers and consumers talk
//! through it. Editing the MetaRouter file moves traffic without a restart.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::dubbo::INTERFACE;
use common::{
    assert_all_ok, free_ports, metamesh_bin, peer, python, run_consumer, Provider, Proxy, Spawned,
    TempDir,
};
use serde_json::Value as Json;

fn service_entry(port: u16, user: &Provider, batch: &Provider) -> String {
    format!(
        r#"apiVersion: networking.istio.io/v1beta1
kind: ServiceEntry
metadata:
  name: demo
  namespace: mesh
  annotations: {{ interface: {INTERFACE} }}
spec:
  hosts: [demo.mesh.svc]
  ports: [{{ number: {port}, name: tcp-metaprotocol-dubbo, protocol: TCP }}]
  endpoints:
    - {{ address: 127.0.0.1, ports: {{ tcp-metaprotocol-dubbo: {user} }}, labels: {{ group: user }} }}
    - {{ address: 127.0.0.1, ports: {{ tcp-metaprotocol-dubbo: {batch} }}, labels: {{ group: batchjob }} }}
---
apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata: {{ name: demo, namespace: mesh }}
spec:
  host: demo.mesh.svc
  subsets:
    - {{ name: user, labels: {{ group: user }} }}
    - {{ name: batchjob, labels: {{ group: batchjob }} }}
"#,
        user = user.port,
        batch = batch.port,
    )
}

/// Batch calls go to `batch_subset`, everything else to `user`.
fn meta_router(batch_subset: &str) -> String {
    format!(
        r#"apiVersion: metaprotocol.aeraki.io/v1alpha1
kind: MetaRouter
metadata: {{ name: demo, namespace: mesh }}
spec:
  hosts: [demo.mesh.svc]
  routes:
    - name: batchjob
      match: {{ attributes: {{ batchjob: {{ exact: "true" }} }} }}
      route: [{{ destination: {{ host: demo.mesh.svc, subset: {batch_subset} }} }}]
      requestMutation: [{{ key: x-tier, value: batch }}]
    - name: default
      route: [{{ destination: {{ host: demo.mesh.svc, subset: user }} }}]
"#
    )
}

/// Which provider group served the batch calls of a short consumer run.
fn batch_groups(target: &str) -> Vec<String> {
    let summary = run_consumer(&[
        "--target",
        target,
        "--count",
        "6",
        "--connections",
        "1",
        "--batchjob-every",
        "2",
    ]);
    assert_all_ok(&summary, 6, "probe");
    let groups = summary["by_group"].as_object().cloned().unwrap_or_default();
    groups
        .iter()
        .filter(|(_, g)| g["batchjob_requests"].as_u64().unwrap_or(0) > 0)
        .map(|(name, _)| name.clone())
        .collect()
}

/// Starts `metamesh control` on `dir`; returns it and its ADS address.
fn start_control(dir: &TempDir) -> (Spawned, String) {
    let mut cmd = Command::new(metamesh_bin());
    cmd.args(["control", "--xds-address", "127.0.0.1:0", "--config-dir"])
        .arg(&dir.0)
        .env("RUST_LOG", "info");
    let mut control = Spawned::start("metamesh control", cmd);
    let line = control.next_line(Duration::from_secs(30));
    let ready: Json = serde_json::from_str(&line)
        .unwrap_or_else(|e| control.fail(&format!("ready line {line:?} is not JSON: {e}")));
    let xds = ready["xds"].as_str().unwrap_or_default().to_owned();
    assert!(!xds.is_empty(), "{line}");
    (control, xds)
}

#[test]
fn a_third_party_xds_client_fetches_and_acks_clusters_and_endpoints() {
    let providers = Provider::start_all(&["user", "batchjob"], &[]);
    let (user, batch) = (&providers[0], &providers[1]);
    let port = free_ports(1)[0];
    let dir = TempDir::new("mesh-py");
    std::fs::write(dir.0.join("service.yaml"), service_entry(port, user, batch)).expect("write");
    let (_control, xds) = start_control(&dir);
    let out = Command::new(python())
        .arg(peer("xds_client.py"))
        .args([
            "--server",
            &xds,
            "--node-id",
            "py-1",
            "--region",
            "bj",
            "--zone",
            "800002",
        ])
        .output()
        .expect("run the python xDS client");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}\n{stdout}");
    let v: Json = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("summary {stdout:?} is not JSON: {e}\n{stderr}"));
    assert_eq!(v["errors"], serde_json::json!([]), "{v:#}");
    let names: Vec<&str> = v["clusters"]
        .as_array()
        .map(|a| a.iter().filter_map(|c| c["name"].as_str()).collect())
        .unwrap_or_default();
    for want in [
        format!("outbound|{port}||demo.mesh.svc"),
        format!("outbound|{port}|user|demo.mesh.svc"),
        format!("outbound|{port}|batchjob|demo.mesh.svc"),
    ] {
        assert!(names.contains(&want.as_str()), "{want} missing: {v:#}");
    }
    assert_eq!(
        v["endpoints"][format!("outbound|{port}|batchjob|demo.mesh.svc")],
        serde_json::json!([batch.addr()]),
        "{v:#}"
    );
    assert_eq!(
        v["quiet_after_ack"], true,
        "nothing re-sent after the ACKs: {v:#}"
    );
    assert_eq!(v["unknown_type"], "ignored", "{v:#}");
    assert_eq!(v["no_node"], "INVALID_ARGUMENT", "{v:#}");
    assert_eq!(v["served_after"], true, "{v:#}");
}

#[test]
fn a_proxy_follows_the_control_plane_and_a_metarouter_edit() {
    let providers = Provider::start_all(&["user", "batchjob"], &[]);
    let (user, batch) = (&providers[0], &providers[1]);
    let port = free_ports(1)[0];
    let dir = TempDir::new("mesh");
    std::fs::write(dir.0.join("service.yaml"), service_entry(port, user, batch)).expect("write");
    std::fs::write(dir.0.join("router.yaml"), meta_router("batchjob")).expect("write");
    let (control, xds) = start_control(&dir);

    let proxy = Proxy::start(
        &format!(
            r#"node: {{ id: consumer-1, cluster: demo, locality: {{ region: bj, zone: "800002" }} }}
admin: {{ address: 127.0.0.1:0 }}
xds: {{ address: "http://{xds}" }}
"#
        ),
        &[],
    );
    // The ready line comes once the first configuration from the control plane is in:
    // the outbound listener of the service port is already bound.
    let listener = proxy.listener(&format!("outbound_{port}"));
    assert_eq!(listener.port(), port);
    assert_eq!(proxy.scrape("/ready").trim(), "LIVE");

    let target = listener.to_string();
    let summary = run_consumer(&[
        "--target",
        &target,
        "--count",
        "90",
        "--connections",
        "3",
        "--batchjob-every",
        "3",
    ]);
    assert_all_ok(&summary, 90, "first config");
    let groups = &summary["by_group"];
    assert_eq!(groups["batchjob"]["batchjob_requests"], 30, "{summary:#}");
    assert_eq!(groups["user"]["plain_requests"], 60, "{summary:#}");
    assert_eq!(
        groups["batchjob"]["added_attachments"]["x-tier=batch"], 30,
        "{summary:#}"
    );

    // Edit the MetaRouter: batch calls now go to the user group, within a second or so.
    let edited = Instant::now();
    std::fs::write(dir.0.join("router.yaml"), meta_router("user")).expect("write");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if batch_groups(&target) == ["user"] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the MetaRouter edit never reached the proxy"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let took = edited.elapsed();
    eprintln!("MetaRouter edit to routed traffic: {took:?}");
    assert!(took < Duration::from_secs(5), "took {took:?}");
    drop(control);
}

/// Killing the control plane leaves the proxy serving on its last configuration; a
/// control plane started again on the same address is found by the proxy, which resyncs
/// and follows the next MetaRouter edit.
#[test]
fn the_proxy_rides_out_a_control_plane_restart() {
    let providers = Provider::start_all(&["user", "batchjob"], &[]);
    let (user, batch) = (&providers[0], &providers[1]);
    let ports = free_ports(2);
    let (port, xds_port) = (ports[0], ports[1]);
    let dir = TempDir::new("mesh-restart");
    std::fs::write(dir.0.join("service.yaml"), service_entry(port, user, batch)).expect("write");
    std::fs::write(dir.0.join("router.yaml"), meta_router("batchjob")).expect("write");
    let control_on = |dir: &TempDir| {
        let mut cmd = Command::new(metamesh_bin());
        cmd.args([
            "control",
            "--xds-address",
            &format!("127.0.0.1:{xds_port}"),
            "--config-dir",
        ])
        .arg(&dir.0)
        .env("RUST_LOG", "info");
        let mut control = Spawned::start("metamesh control", cmd);
        let line = control.next_line(Duration::from_secs(30));
        assert!(line.contains("\"ready\""), "{line}");
        control
    };
    let mut control = control_on(&dir);
    let proxy = Proxy::start(
        &format!(
            "node: {{ id: consumer-2, cluster: demo }}\nadmin: {{ address: 127.0.0.1:0 }}\nxds: {{ address: \"http://127.0.0.1:{xds_port}\" }}\n"
        ),
        &[],
    );
    let target = proxy.listener(&format!("outbound_{port}")).to_string();
    assert_eq!(batch_groups(&target), ["batchjob"]);

    // The control plane dies: traffic carries on unchanged.
    control.kill();
    let summary = run_consumer(&[
        "--target",
        &target,
        "--count",
        "60",
        "--connections",
        "2",
        "--batchjob-every",
        "3",
    ]);
    assert_all_ok(&summary, 60, "without a control plane");
    assert_eq!(batch_groups(&target), ["batchjob"]);

    // A new one on the same address, with an edited MetaRouter: the proxy reconnects,
    // resyncs and follows it.
    std::fs::write(dir.0.join("router.yaml"), meta_router("user")).expect("write");
    let _control = control_on(&dir);
    let deadline = Instant::now() + Duration::from_secs(30);
    while batch_groups(&target) != ["user"] {
        assert!(Instant::now() < deadline, "the proxy never resynced");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Consumers calling in a loop on another thread, 200 calls over 4 connections a run.
struct Load {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<Vec<Json>>,
}

impl Load {
    fn start(target: &str) -> Load {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let thread = {
            let (stop, target) = (stop.clone(), target.to_owned());
            std::thread::spawn(move || {
                let mut runs = Vec::new();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    runs.push(run_consumer(&[
                        "--target",
                        &target,
                        "--count",
                        "200",
                        "--connections",
                        "4",
                        "--batchjob-every",
                        "3",
                    ]));
                }
                runs
            })
        };
        Load { stop, thread }
    }

    /// Stops the load; checks every call of every run succeeded. Returns the runs and
    /// the number of calls.
    fn finish(self, what: &str) -> (Vec<Json>, u64) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let runs = self.thread.join().expect("load thread");
        for r in &runs {
            assert_all_ok(r, 200, what);
        }
        let calls = runs.iter().map(|r| r["sent"].as_u64().unwrap_or(0)).sum();
        (runs, calls)
    }
}

/// 50 configuration pushes while consumers keep calling: every call succeeds.
#[test]
fn fifty_pushes_under_load_fail_no_request() {
    let providers = Provider::start_all(&["user", "batchjob"], &[]);
    let (user, batch) = (&providers[0], &providers[1]);
    let port = free_ports(1)[0];
    let dir = TempDir::new("mesh-pushes");
    std::fs::write(dir.0.join("service.yaml"), service_entry(port, user, batch)).expect("write");
    std::fs::write(dir.0.join("router.yaml"), meta_router("batchjob")).expect("write");
    let (_control, xds) = start_control(&dir);
    let proxy = Proxy::start(
        &format!(
            "node: {{ id: consumer-3, cluster: demo }}\nadmin: {{ address: 127.0.0.1:0 }}\nxds: {{ address: \"http://{xds}\" }}\n"
        ),
        &[],
    );
    let target = proxy.listener(&format!("outbound_{port}")).to_string();

    let load = Load::start(&target);
    for i in 1..=50 {
        let tier = format!("batch-{i}");
        let text = meta_router("batchjob").replace("value: batch }", &format!("value: {tier} }}"));
        assert!(text.contains(&tier), "{text}");
        std::fs::write(dir.0.join("router.yaml"), &text).expect("write");
        let deadline = Instant::now() + Duration::from_secs(20);
        while !proxy
            .scrape("/config_dump")
            .contains(&format!("\"{tier}\""))
        {
            assert!(Instant::now() < deadline, "push {i} never arrived");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let (runs, calls) = load.finish("a run during the pushes");
    eprintln!(
        "50 pushes applied during {} consumer runs, {calls} calls",
        runs.len()
    );
    assert!(runs.len() >= 2, "the load ran across the pushes");
}

/// A resource the control plane cannot accept is refused there, with the file and field
/// named, and the proxies keep their configuration; one the proxy cannot apply (a
/// listener port already taken on its host) is NACKed with the proxy's reason. Traffic
/// flows on the last good configuration throughout, and a corrected resource is taken.
#[test]
fn invalid_resources_are_refused_or_nacked_while_traffic_flows() {
    let providers = Provider::start_all(&["user", "batchjob"], &[]);
    let (user, batch) = (&providers[0], &providers[1]);
    let ports = free_ports(3);
    let (port, taken, free) = (ports[0], ports[1], ports[2]);
    let dir = TempDir::new("mesh-nack");
    std::fs::write(dir.0.join("service.yaml"), service_entry(port, user, batch)).expect("write");
    std::fs::write(dir.0.join("router.yaml"), meta_router("batchjob")).expect("write");
    let (control, xds) = start_control(&dir);
    let proxy = Proxy::start(
        &format!(
            "node: {{ id: consumer-4, cluster: demo }}\nadmin: {{ address: 127.0.0.1:0 }}\nxds: {{ address: \"http://{xds}\" }}\n"
        ),
        &[],
    );
    let target = proxy.listener(&format!("outbound_{port}")).to_string();
    let acked = |kind: &str| {
        proxy.counter(
            "metamesh_xds_update_total",
            &[("type", kind), ("result", "ack")],
        )
    };
    let listener_acks = acked("Listener");
    assert!(listener_acks >= 1, "{}", proxy.scrape("/stats/prometheus"));
    let load = Load::start(&target);

    // 1. A MetaRouter whose match regex does not compile: refused by the control plane.
    let broken = meta_router("batchjob")
        .replace(r#"{ exact: "true" }"#, r#"{ regex: "(true" }"#)
        .replace("value: batch }", "value: never }");
    assert!(
        broken.contains("(true") && broken.contains("never"),
        "{broken}"
    );
    std::fs::write(dir.0.join("router.yaml"), &broken).expect("write");
    let refusal = common::wait_for(
        Duration::from_secs(10),
        "the control plane refuses the MetaRouter",
        || {
            let log = control.stderr();
            log.lines()
                .find(|l| l.contains("mesh resources refused"))
                .map(str::to_owned)
        },
    );
    for needle in [
        "router.yaml",
        "MetaRouter",
        "spec.routes[0].match.attributes.batchjob.regex",
    ] {
        assert!(refusal.contains(needle), "{needle:?} not in {refusal}");
    }
    assert_eq!(
        batch_groups(&target),
        ["batchjob"],
        "the last good routes stay"
    );
    assert!(!proxy.scrape("/config_dump").contains("\"never\""));

    // 2. A new service whose port is taken on the proxy's host: the proxy NACKs.
    let blocker = std::net::TcpListener::bind(("127.0.0.1", taken)).expect("hold a port");
    std::fs::write(dir.0.join("router.yaml"), meta_router("batchjob")).expect("write");
    let other = |p: u16| {
        service_entry(p, user, batch)
            .replace("name: demo\n", "name: other\n")
            .replace("demo.mesh.svc", "other.mesh.svc")
            .replace("metadata: { name: demo,", "metadata: { name: other,")
    };
    std::fs::write(dir.0.join("other.yaml"), other(taken)).expect("write");
    proxy.wait_counter(
        "metamesh_xds_update_total",
        &[("type", "Listener"), ("result", "nack")],
        1,
    );
    let nack = common::wait_for(
        Duration::from_secs(10),
        "the control plane logs the NACK",
        || {
            control
                .stderr()
                .lines()
                .find(|l| l.contains("NACK"))
                .map(str::to_owned)
        },
    );
    assert!(
        nack.contains("consumer-4") && nack.contains(&taken.to_string()),
        "{nack}"
    );
    assert_eq!(
        batch_groups(&target),
        ["batchjob"],
        "traffic flows after the NACK"
    );

    // 3. The service moved to a free port: taken, ACKed, and it routes.
    std::fs::write(dir.0.join("other.yaml"), other(free)).expect("write");
    proxy.wait_counter(
        "metamesh_xds_update_total",
        &[("type", "Listener"), ("result", "ack")],
        listener_acks + 1,
    );
    // The ACK follows the bind, so the listener is there; with no MetaRouter of its own
    // the service balances over all its endpoints.
    let summary = run_consumer(&[
        "--target",
        &format!("127.0.0.1:{free}"),
        "--count",
        "20",
        "--connections",
        "2",
    ]);
    assert_all_ok(&summary, 20, "the corrected service");
    let info = proxy.scrape("/stats/prometheus");
    assert_eq!(
        info.lines()
            .filter(
                |l| l.starts_with("metamesh_xds_config_info{") && l.contains("type=\"Listener\"")
            )
            .count(),
        1,
        "one Listener version in force:\n{info}"
    );
    drop(blocker);
    let (runs, calls) = load.finish("a run during the refusals");
    eprintln!(
        "refusal, NACK and recovery during {} consumer runs, {calls} calls, 0 failed",
        runs.len()
    );
    assert!(!runs.is_empty());
}
