//! End to end from Kubernetes: `metamesh control --kubernetes` reads a (fake) API server
//! through a kubeconfig, and a third-party xDS client gets the clusters and endpoints
//! derived from its Services, EndpointSlices, Pods, Nodes, MetaRouters and
//! DestinationRules; an EndpointSlice change reaches the client.

mod common;

#[path = "../control/tests/kube/fake_api.rs"]
mod fake_api;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{metamesh_bin, peer, python, Spawned, TempDir};
use fake_api::{fixture, FakeApi};
use serde_json::{json, Value as Json};

const SLICES: &str = "/apis/discovery.k8s.io/v1/endpointslices";
const DUBBO: &str = "dubbo-sample-provider.meta-dubbo.svc.cluster.local";
const THRIFT: &str = "thrift-sample-server.meta-thrift.svc.cluster.local";

fn kubeconfig(dir: &TempDir, server: &str) -> std::path::PathBuf {
    let path = dir.0.join("kubeconfig");
    let text = format!(
        r#"apiVersion: v1
kind: Config
clusters:
  - name: fake
    cluster: {{ server: "{server}" }}
users:
  - name: tester
    user: {{ token: not-checked }}
contexts:
  - name: fake
    context: {{ cluster: fake, user: tester, namespace: default }}
current-context: fake
"#
    );
    std::fs::write(&path, text).expect("write kubeconfig");
    path
}

/// One run of the Python xDS client (Envoy's protos over grpcio) against `xds`.
fn fetch(xds: &str) -> Json {
    let out = Command::new(python())
        .arg(peer("xds_client.py"))
        .args(["--server", xds, "--node-id", "kube-1"])
        .output()
        .expect("run the python xDS client");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}\n{stdout}");
    serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("summary {stdout:?} is not JSON: {e}\n{stderr}"))
}

#[test]
fn an_xds_client_gets_clusters_and_endpoints_from_kubernetes_objects() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let d = common::repo().join("control/tests/fixtures/kube");
    let api = rt.block_on(FakeApi::start(vec![
        ("/api/v1/services", fixture(&d, "services.json")),
        (SLICES, fixture(&d, "endpointslices.json")),
        ("/api/v1/pods", fixture(&d, "pods.json")),
        ("/api/v1/nodes", fixture(&d, "nodes.json")),
        (
            "/apis/metaprotocol.aeraki.io/v1alpha1/metarouters",
            fixture(&d, "metarouters-aeraki.json"),
        ),
        (
            "/apis/networking.istio.io/v1beta1/destinationrules",
            fixture(&d, "destinationrules-v1beta1.json"),
        ),
    ]));
    let dir = TempDir::new("kube");
    let config = kubeconfig(&dir, &api.url());

    let mut cmd = Command::new(metamesh_bin());
    cmd.args(["control", "--kubernetes", "--xds-address", "127.0.0.1:0"])
        .env("KUBECONFIG", &config)
        .env("RUST_LOG", "info");
    let mut control = Spawned::start("metamesh control --kubernetes", cmd);
    let line = control.next_line(Duration::from_secs(30));
    let ready: Json = serde_json::from_str(&line)
        .unwrap_or_else(|e| control.fail(&format!("ready line {line:?} is not JSON: {e}")));
    let xds = ready["xds"].as_str().unwrap_or_default().to_owned();
    assert!(!xds.is_empty(), "{line}");

    let v = fetch(&xds);
    assert_eq!(v["errors"], json!([]), "{v:#}");
    let names: Vec<&str> = v["clusters"]
        .as_array()
        .map(|a| a.iter().filter_map(|c| c["name"].as_str()).collect())
        .unwrap_or_default();
    for want in [
        format!("outbound|20880||{DUBBO}"),
        format!("outbound|20880|v1|{DUBBO}"),
        format!("outbound|20880|v2|{DUBBO}"),
        format!("outbound|20880|batch|{DUBBO}"),
        format!("outbound|9090||{THRIFT}"),
    ] {
        assert!(names.contains(&want.as_str()), "{want} missing: {v:#}");
    }
    let eps = &v["endpoints"];
    assert_eq!(
        eps[format!("outbound|20880||{DUBBO}")],
        json!(["10.244.1.5:20880", "10.244.2.7:20880"]),
        "the not-ready endpoint is left out: {v:#}"
    );
    assert_eq!(
        eps[format!("outbound|20880|batch|{DUBBO}")],
        json!(["10.244.2.7:20880"]),
        "{v:#}"
    );
    assert_eq!(
        eps[format!("outbound|9090||{THRIFT}")],
        json!(["10.244.3.8:9091"]),
        "the named target port resolved through the EndpointSlice: {v:#}"
    );

    // The batch Pod stops being ready: the next fetch no longer gets it.
    let mut slice = api.get(SLICES, "meta-dubbo/dubbo-sample-provider-x7k2p");
    slice["endpoints"][1]["conditions"] = json!({ "ready": false });
    api.apply(SLICES, slice);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let v = fetch(&xds);
        let batch = &v["endpoints"][format!("outbound|20880|batch|{DUBBO}")];
        if batch.as_array().is_some_and(Vec::is_empty) || batch.is_null() {
            assert_eq!(
                v["endpoints"][format!("outbound|20880||{DUBBO}")],
                json!(["10.244.1.5:20880"]),
                "{v:#}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the endpoint change never reached the client: {v:#}\n{}",
            control.stderr()
        );
    }
    drop(control);
    drop(api);
}
