//! Delta ADS with a raw client: wildcard subscription, per-resource versions, initial
//! versions, removal, ACK and NACK.

use std::collections::HashMap;
use std::net::SocketAddr;

use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse,
};
use envoy_types::pb::google::rpc;
use metamesh_control::ads::node_to_proto;
use metamesh_control::xds::ResourceKind;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

mod ads_common;
use ads_common::*;

const THRIFT_CLUSTER: &str = "outbound|9090||thrift-sample-server.meta-thrift.svc.cluster.local";

struct DeltaStream {
    tx: mpsc::Sender<DeltaDiscoveryRequest>,
    rx: Streaming<DeltaDiscoveryResponse>,
}

impl DeltaStream {
    async fn open(url: String, first: DeltaDiscoveryRequest) -> DeltaStream {
        let mut client = AggregatedDiscoveryServiceClient::connect(url)
            .await
            .expect("connect");
        let (tx, rx) = mpsc::channel(8);
        tx.send(first).await.expect("send");
        let rx = client
            .delta_aggregated_resources(ReceiverStream::new(rx))
            .await
            .expect("stream")
            .into_inner();
        DeltaStream { tx, rx }
    }

    async fn send(&self, req: DeltaDiscoveryRequest) {
        self.tx.send(req).await.expect("send");
    }

    async fn next(&mut self) -> DeltaDiscoveryResponse {
        tokio::time::timeout(PATIENCE, self.rx.message())
            .await
            .expect("a response in time")
            .expect("no error")
            .expect("stream open")
    }
}

fn subscribe(kind: ResourceKind) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest {
        node: Some(node_to_proto(&node())),
        type_url: kind.type_url().into(),
        ..DeltaDiscoveryRequest::default()
    }
}

fn ack(kind: ResourceKind, nonce: &str) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest {
        type_url: kind.type_url().into(),
        response_nonce: nonce.into(),
        ..DeltaDiscoveryRequest::default()
    }
}

fn versions(r: &DeltaDiscoveryResponse) -> HashMap<String, String> {
    r.resources
        .iter()
        .map(|r| (r.name.clone(), r.version.clone()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_subscribes_updates_and_removes() {
    let (mesh_tx, mesh_rx) = watch::channel(loaded(1, demo_mesh(|t| t)));
    let server = serve(mesh_rx, SocketAddr::from(([127, 0, 0, 1], 0))).await;
    let counters = server.server.counters();
    let want = expected(&demo_mesh(|t| t));
    let cluster_names: Vec<String> = want.clusters.iter().map(|c| c.name.clone()).collect();
    assert!(
        cluster_names.iter().any(|n| n == THRIFT_CLUSTER),
        "{cluster_names:?}"
    );

    let mut stream = DeltaStream::open(server.url(), subscribe(ResourceKind::Cluster)).await;
    let clusters = stream.next().await;
    assert_eq!(clusters.type_url, ResourceKind::Cluster.type_url());
    let mut got: Vec<String> = clusters.resources.iter().map(|r| r.name.clone()).collect();
    got.sort();
    let mut names = cluster_names.clone();
    names.sort();
    assert_eq!(got, names);
    assert!(clusters.resources.iter().all(|r| !r.version.is_empty()));
    assert!(clusters.removed_resources.is_empty());
    stream
        .send(ack(ResourceKind::Cluster, &clusters.nonce))
        .await;

    // Endpoints by name: only the one asked for.
    stream
        .send(DeltaDiscoveryRequest {
            resource_names_subscribe: vec![THRIFT_CLUSTER.into()],
            ..subscribe(ResourceKind::ClusterLoadAssignment)
        })
        .await;
    let endpoints = stream.next().await;
    assert_eq!(
        endpoints.type_url,
        ResourceKind::ClusterLoadAssignment.type_url()
    );
    assert_eq!(
        endpoints
            .resources
            .iter()
            .map(|r| r.name.as_str())
            .collect::<Vec<_>>(),
        [THRIFT_CLUSTER]
    );
    // A NACK is counted and the same versions are not sent again.
    stream
        .send(DeltaDiscoveryRequest {
            error_detail: Some(rpc::Status {
                code: 3,
                message: "endpoints refused by the test".into(),
                details: Vec::new(),
            }),
            ..ack(ResourceKind::ClusterLoadAssignment, &endpoints.nonce)
        })
        .await;
    eventually("the NACK", || {
        counters.nacks(ResourceKind::ClusterLoadAssignment) == 1
    })
    .await;
    assert_eq!(
        counters.last_nack().as_deref(),
        Some("endpoints refused by the test")
    );
    eventually("the ACK", || counters.acks(ResourceKind::Cluster) == 1).await;

    // The Thrift service goes: its cluster and endpoints are removed.
    mesh_tx.send_replace(loaded(2, demo_mesh(without_thrift)));
    let removed = stream.next().await;
    assert_eq!(removed.type_url, ResourceKind::Cluster.type_url());
    assert_eq!(removed.removed_resources, [THRIFT_CLUSTER]);
    assert!(
        removed.resources.is_empty(),
        "other clusters did not change"
    );
    let removed = stream.next().await;
    assert_eq!(
        removed.type_url,
        ResourceKind::ClusterLoadAssignment.type_url()
    );
    assert_eq!(removed.removed_resources, [THRIFT_CLUSTER]);

    // A new stream that already has the current clusters gets nothing new, and one
    // stale version is sent again.
    let mut initial = versions(&clusters);
    initial.remove(THRIFT_CLUSTER);
    let stale = cluster_names
        .iter()
        .find(|n| *n != THRIFT_CLUSTER)
        .expect("another cluster")
        .clone();
    let mut resumed = DeltaStream::open(
        server.url(),
        DeltaDiscoveryRequest {
            initial_resource_versions: initial.clone(),
            ..subscribe(ResourceKind::Cluster)
        },
    )
    .await;
    let nothing = resumed.next().await;
    assert!(nothing.resources.is_empty(), "{:?}", versions(&nothing));
    assert!(nothing.removed_resources.is_empty());
    initial.insert(stale.clone(), "0".into());
    let mut again = DeltaStream::open(
        server.url(),
        DeltaDiscoveryRequest {
            initial_resource_versions: initial,
            ..subscribe(ResourceKind::Cluster)
        },
    )
    .await;
    let one = again.next().await;
    assert_eq!(
        one.resources
            .iter()
            .map(|r| r.name.as_str())
            .collect::<Vec<_>>(),
        [stale.as_str()]
    );

    // A first request without a node is refused.
    let mut refused = DeltaStream::open(
        server.url(),
        DeltaDiscoveryRequest {
            node: None,
            ..subscribe(ResourceKind::Listener)
        },
    )
    .await;
    let status = tokio::time::timeout(PATIENCE, refused.rx.message())
        .await
        .expect("in time")
        .expect_err("refused");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    drop((stream, resumed, again, refused));
    server.stop().await;
}
