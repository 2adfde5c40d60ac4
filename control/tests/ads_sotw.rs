//! State-of-the-world ADS between the server and the client, in process over 127.0.0.1:
//! first configuration, pushes of changed types only, NACK, malformed requests,
//! reconnection to a new server.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
use metamesh_control::ads::node_to_proto;
use metamesh_control::xds::ResourceKind;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;

mod ads_common;
use ads_common::*;

fn any_port() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_configuration_is_the_translation_and_changes_push_only_changed_types() {
    let (mesh_tx, mesh_rx) = watch::channel(loaded(1, demo_mesh(|t| t)));
    let server = serve(mesh_rx, any_port()).await;
    let (client, mut applied) = recording_client(server.url(), Arc::new(AtomicBool::new(false)));

    let first = next(&mut applied, PATIENCE).await;
    assert_eq!(json(&first), json(&expected(&demo_mesh(|t| t))));
    let mut ready = client.ready();
    tokio::time::timeout(PATIENCE, ready.wait_for(|r| *r))
        .await
        .expect("ready in time")
        .expect("client alive");
    let counters = server.server.counters();
    eventually("every type ACKed", || {
        ResourceKind::ALL.iter().all(|k| counters.acks(*k) == 1)
    })
    .await;
    let before: Vec<u64> = ResourceKind::ALL
        .iter()
        .map(|k| counters.pushes(*k))
        .collect();
    assert_eq!(before, [1; 5]);

    // One endpoint moves: only the endpoints are sent again, within a second.
    let moved = demo_mesh(moved_endpoint);
    let want = expected(&moved);
    mesh_tx.send_replace(loaded(2, moved));
    let second = next(&mut applied, Duration::from_secs(1)).await;
    assert_eq!(json(&second), json(&want));
    eventually("the endpoints ACKed", || {
        counters.acks(ResourceKind::ClusterLoadAssignment) == 2
    })
    .await;
    let after: Vec<u64> = ResourceKind::ALL
        .iter()
        .map(|k| counters.pushes(*k))
        .collect();
    assert_eq!(
        after,
        [1, 2, 1, 1, 1],
        "pushes per type, in ResourceKind::ALL order"
    );

    // A new generation that translates the same for this proxy sends nothing.
    mesh_tx.send_replace(loaded(3, demo_mesh(moved_endpoint)));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let same: Vec<u64> = ResourceKind::ALL
        .iter()
        .map(|k| counters.pushes(*k))
        .collect();
    assert_eq!(same, after);
    assert!(applied.try_recv().is_err(), "nothing new applied");

    // A burst of changes gives one push, of the last state.
    mesh_tx.send_replace(loaded(4, demo_mesh(|t| t)));
    mesh_tx.send_replace(loaded(5, demo_mesh(moved_endpoint)));
    mesh_tx.send_replace(loaded(6, demo_mesh(|t| t)));
    let last = next(&mut applied, Duration::from_secs(1)).await;
    assert_eq!(json(&last), json(&first));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        applied.try_recv().is_err(),
        "one configuration for the burst"
    );
    assert_eq!(counters.pushes(ResourceKind::ClusterLoadAssignment), 3);
    assert_eq!(counters.open_streams(), 1);
    drop(client);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nack_keeps_the_last_good_configuration_and_the_server_serving() {
    let (mesh_tx, mesh_rx) = watch::channel(loaded(1, demo_mesh(|t| t)));
    let server = serve(mesh_rx, any_port()).await;
    let refuse = Arc::new(AtomicBool::new(false));
    let (_client, mut applied) = recording_client(server.url(), refuse.clone());
    let first = next(&mut applied, PATIENCE).await;
    assert_eq!(json(&first), json(&expected(&demo_mesh(|t| t))));

    // The proxy refuses the next configuration: NACK with the reason.
    refuse.store(true, Ordering::SeqCst);
    mesh_tx.send_replace(loaded(2, demo_mesh(moved_endpoint)));
    let counters = server.server.counters();
    eventually("the NACK", || {
        counters.nacks(ResourceKind::ClusterLoadAssignment) == 1
    })
    .await;
    let reason = counters.last_nack().expect("NACK text");
    assert!(reason.contains("listener port in use"), "{reason}");
    assert!(!refuse.load(Ordering::SeqCst));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        counters.pushes(ResourceKind::ClusterLoadAssignment),
        2,
        "a NACKed version is not sent again"
    );
    assert!(applied.try_recv().is_err());

    // A raw stream with an unknown type is ignored; one without a node is refused.
    let mut raw = AggregatedDiscoveryServiceClient::connect(server.url())
        .await
        .expect("connect");
    let (tx, rx) = mpsc::channel(4);
    tx.send(DiscoveryRequest {
        node: Some(node_to_proto(&node())),
        type_url: "type.googleapis.com/example.Unknown".into(),
        ..DiscoveryRequest::default()
    })
    .await
    .expect("send");
    let mut responses = raw
        .stream_aggregated_resources(ReceiverStream::new(rx))
        .await
        .expect("stream")
        .into_inner();
    tx.send(DiscoveryRequest {
        type_url: ResourceKind::Hook.type_url().into(),
        ..DiscoveryRequest::default()
    })
    .await
    .expect("send");
    let hooks = tokio::time::timeout(PATIENCE, responses.message())
        .await
        .expect("in time")
        .expect("response")
        .expect("a response");
    assert_eq!(hooks.type_url, ResourceKind::Hook.type_url());
    assert!(!hooks.nonce.is_empty());

    let (tx2, rx2) = mpsc::channel(4);
    tx2.send(DiscoveryRequest {
        type_url: ResourceKind::Cluster.type_url().into(),
        ..DiscoveryRequest::default()
    })
    .await
    .expect("send");
    let mut refused = raw
        .stream_aggregated_resources(ReceiverStream::new(rx2))
        .await
        .expect("stream")
        .into_inner();
    let status = tokio::time::timeout(PATIENCE, refused.message())
        .await
        .expect("in time")
        .expect_err("refused");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert_eq!(counters.malformed(), 2);

    // The server still serves the proxy: the next change is applied.
    let third = demo_mesh(|t| moved_endpoint(t).replace("172.17.0.40", "172.17.0.39"));
    let want = expected(&third);
    mesh_tx.send_replace(loaded(3, third));
    let got = next(&mut applied, PATIENCE).await;
    assert_eq!(json(&got), json(&want));
    drop(tx);
    server.stop().await;
}

/// Removing a service changes clusters, endpoints, routes and listeners. The server sends
/// clusters first, so for a moment the routes still name removed clusters: the client
/// waits for the rest of the update instead of refusing it, then applies and ACKs it all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_that_spans_types_is_applied_whole_not_nacked() {
    let (mesh_tx, mesh_rx) = watch::channel(loaded(1, demo_mesh(|t| t)));
    let server = serve(mesh_rx, any_port()).await;
    let (_client, mut applied) = recording_client(server.url(), Arc::new(AtomicBool::new(false)));
    let first = next(&mut applied, PATIENCE).await;
    assert_eq!(json(&first), json(&expected(&demo_mesh(|t| t))));

    let smaller = demo_mesh(without_thrift);
    let want = expected(&smaller);
    assert!(want.clusters.len() < first.clusters.len());
    mesh_tx.send_replace(loaded(2, smaller));
    let second = next(&mut applied, PATIENCE).await;
    assert_eq!(json(&second), json(&want));
    let counters = server.server.counters();
    eventually("every changed type ACKed", || {
        [
            ResourceKind::Cluster,
            ResourceKind::ClusterLoadAssignment,
            ResourceKind::RouteConfiguration,
            ResourceKind::Listener,
        ]
        .iter()
        .all(|k| counters.acks(*k) == 2)
    })
    .await;
    for kind in ResourceKind::ALL {
        assert_eq!(counters.nacks(kind), 0, "{kind} NACKed");
    }
    assert!(
        applied.try_recv().is_err(),
        "one configuration for the update"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_reconnects_to_a_new_server_and_resyncs() {
    let (_mesh_tx, mesh_rx) = watch::channel(loaded(1, demo_mesh(|t| t)));
    let first_server = serve(mesh_rx, any_port()).await;
    let addr = first_server.addr;
    let (client, mut applied) =
        recording_client(first_server.url(), Arc::new(AtomicBool::new(false)));
    let first = next(&mut applied, PATIENCE).await;
    assert_eq!(json(&first), json(&expected(&demo_mesh(|t| t))));
    first_server.stop().await;

    // A new server on the same port, with another mesh (its generations start again).
    let moved = demo_mesh(moved_endpoint);
    let want = expected(&moved);
    let (_mesh_tx2, mesh_rx2) = watch::channel(loaded(1, moved));
    let second_server = serve(mesh_rx2, addr).await;
    let second = next(&mut applied, PATIENCE).await;
    assert_eq!(json(&second), json(&want));
    let counters = second_server.server.counters();
    eventually("every type sent again and ACKed", || {
        ResourceKind::ALL.iter().all(|k| counters.acks(*k) == 1)
    })
    .await;
    assert!(*client.ready().borrow());
    drop(client);
    second_server.stop().await;
}
