//! Shared by the ADS tests: a mesh from the fixtures, a server on 127.0.0.1, a client
//! whose `apply` records what it gets.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use metamesh_control::ads::{AdsClient, AdsClientConfig, AdsServer};
use metamesh_control::source::Loaded;
use metamesh_control::{parse_file, translate, MeshResources};
use metamesh_core::config::{Bootstrap, Locality, Node};
use tokio::sync::{mpsc, oneshot, watch};

/// How long a test waits for something that should happen at once.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// The Aeraki demo fixture, with `edit` applied to its text.
pub fn demo_mesh(edit: impl Fn(String) -> String) -> MeshResources {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/aeraki-demo.yaml");
    let text = std::fs::read_to_string(&path).expect("fixture");
    let text = edit(text);
    let resources = parse_file("aeraki-demo.yaml", &text)
        .unwrap_or_else(|e| panic!("{}", metamesh_control::error::join_errors(&e)));
    let mesh = MeshResources::from_resources(resources);
    mesh.validate()
        .unwrap_or_else(|e| panic!("{}", metamesh_control::error::join_errors(&e)));
    mesh
}

/// The demo mesh with one Thrift endpoint moved: only endpoints change.
pub fn moved_endpoint(text: String) -> String {
    text.replace("172.17.0.41", "172.17.0.42")
}

/// The demo mesh without the Thrift service's documents.
pub fn without_thrift(text: String) -> String {
    text.split("\n---\n")
        .filter(|doc| !doc.contains("namespace: meta-thrift"))
        .collect::<Vec<_>>()
        .join("\n---\n")
}

/// A published mesh.
pub fn loaded(generation: u64, mesh: MeshResources) -> Option<Arc<Loaded>> {
    Some(Arc::new(Loaded {
        generation,
        mesh,
        files: vec!["aeraki-demo.yaml".into()],
    }))
}

/// The proxy of the tests.
pub fn node() -> Node {
    Node {
        id: "consumer-1".into(),
        cluster: "demo".into(),
        locality: Locality {
            region: "bj".into(),
            zone: "800002".into(),
            subzone: String::new(),
        },
        outbound_address: Some("127.0.0.1".into()),
        ..Node::default()
    }
}

/// What the mesh translates to for [`node()`].
pub fn expected(mesh: &MeshResources) -> Bootstrap {
    translate(mesh, &node())
        .unwrap_or_else(|e| panic!("{}", metamesh_control::error::join_errors(&e)))
}

/// A bootstrap as comparable JSON.
pub fn json(b: &Bootstrap) -> serde_json::Value {
    serde_json::to_value(b).expect("bootstrap serializes")
}

/// A running server.
pub struct Running {
    /// Where it listens.
    pub addr: SocketAddr,
    /// The server (for its counters).
    pub server: AdsServer,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    /// `http://addr`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops the server and waits until it has closed its connections.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(PATIENCE, &mut self.task)
            .await
            .expect("server stops")
            .expect("server task");
    }
}

/// Serves `mesh` on `addr` (port 0 for any).
pub async fn serve(mesh: watch::Receiver<Option<Arc<Loaded>>>, addr: SocketAddr) -> Running {
    let listener = tokio::net::TcpListener::bind(addr).await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let server = AdsServer::with_debounce(mesh, Duration::from_millis(20));
    let (stop, stopped) = oneshot::channel::<()>();
    let s = server.clone();
    let task = tokio::spawn(async move {
        s.serve(listener, async {
            let _ = stopped.await;
        })
        .await
        .expect("serve");
    });
    Running {
        addr,
        server,
        stop: Some(stop),
        task,
    }
}

/// A client whose `apply` checks each bootstrap as the proxy does and sends the valid
/// ones to the returned channel; while `refuse` is set, the next `apply` fails once (and
/// clears it).
pub fn recording_client(
    url: String,
    refuse: Arc<AtomicBool>,
) -> (AdsClient, mpsc::UnboundedReceiver<Bootstrap>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let mut config = AdsClientConfig::new(url, node());
    config.initial_backoff = Duration::from_millis(50);
    config.max_backoff = Duration::from_millis(400);
    let client = AdsClient::start(config, move |b: Bootstrap| {
        let tx = tx.clone();
        let refuse = refuse.clone();
        async move {
            if refuse.swap(false, Ordering::SeqCst) {
                return Err("refused by the test: listener port in use".to_string());
            }
            b.validate(&metamesh_protocols::builtin())
                .map_err(|e| e.to_string())?;
            let _ = tx.send(b);
            Ok(())
        }
    });
    (client, rx)
}

/// The next applied bootstrap, within `within`.
pub async fn next(rx: &mut mpsc::UnboundedReceiver<Bootstrap>, within: Duration) -> Bootstrap {
    tokio::time::timeout(within, rx.recv())
        .await
        .expect("a configuration in time")
        .expect("client alive")
}

/// Waits until `f` holds, checking every 10 ms.
pub async fn eventually(what: &str, f: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
