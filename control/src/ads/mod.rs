//! The aggregated discovery service (ADS): a gRPC server that serves each proxy the
//! translation of the current mesh over one stream (state of the world and delta), and
//! the client a proxy runs to take its configuration from such a server. `docs/xds.md`
//! describes versions, nonces, ACK/NACK and ordering.

pub mod client;
pub mod server;

use envoy_types::pb::envoy::config::core::v3 as envoy_core;
use envoy_types::pb::google::protobuf::{value::Kind, Struct, Value};
use metamesh_core::config::{InterceptionMode, Locality, Node};

pub use client::{AdsClient, AdsClientConfig};
pub use server::{AdsCounters, AdsServer};

/// Key of the node metadata field that carries [`Node::outbound_address`].
pub const OUTBOUND_ADDRESS_METADATA: &str = "outbound_address";

/// Key of the node metadata field that carries [`Node::interception_mode`] (`REDIRECT`
/// or `NONE`, as Istio's).
pub const INTERCEPTION_MODE_METADATA: &str = "INTERCEPTION_MODE";

/// The proxy identity a discovery request carries, as core's [`Node`]. The outbound
/// address comes from the string metadata field [`OUTBOUND_ADDRESS_METADATA`].
pub fn node_from_proto(node: &envoy_core::Node) -> Node {
    let locality = node
        .locality
        .as_ref()
        .map_or_else(Locality::default, |l| Locality {
            region: l.region.clone(),
            zone: l.zone.clone(),
            subzone: l.sub_zone.clone(),
        });
    let text = |key: &str| {
        node.metadata
            .as_ref()
            .and_then(|m| m.fields.get(key))
            .and_then(|v| match &v.kind {
                Some(Kind::StringValue(s)) if !s.is_empty() => Some(s.clone()),
                _ => None,
            })
    };
    Node {
        id: node.id.clone(),
        cluster: node.cluster.clone(),
        locality,
        outbound_address: text(OUTBOUND_ADDRESS_METADATA),
        interception_mode: text(INTERCEPTION_MODE_METADATA)
            .and_then(|m| InterceptionMode::from_metadata(&m))
            .unwrap_or_default(),
    }
}

/// Core's [`Node`] as the `node` of a discovery request.
pub fn node_to_proto(node: &Node) -> envoy_core::Node {
    let mut fields = std::collections::BTreeMap::new();
    if let Some(a) = &node.outbound_address {
        fields.insert(OUTBOUND_ADDRESS_METADATA, a.clone());
    }
    if !node.interception_mode.is_none() {
        fields.insert(
            INTERCEPTION_MODE_METADATA,
            node.interception_mode.as_metadata().to_owned(),
        );
    }
    let metadata = (!fields.is_empty()).then(|| Struct {
        fields: fields
            .into_iter()
            .map(|(k, v)| {
                (
                    k.to_owned(),
                    Value {
                        kind: Some(Kind::StringValue(v)),
                    },
                )
            })
            .collect(),
    });
    let l = &node.locality;
    let locality =
        (!l.region.is_empty() || !l.zone.is_empty() || !l.subzone.is_empty()).then(|| {
            envoy_core::Locality {
                region: l.region.clone(),
                zone: l.zone.clone(),
                sub_zone: l.subzone.clone(),
            }
        });
    envoy_core::Node {
        id: node.id.clone(),
        cluster: node.cluster.clone(),
        locality,
        metadata,
        ..envoy_core::Node::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_survive_the_trip_through_a_discovery_request() {
        let node = Node {
            id: "consumer-1".into(),
            cluster: "demo".into(),
            locality: Locality {
                region: "bj".into(),
                zone: "z1".into(),
                subzone: "s1".into(),
            },
            outbound_address: Some("10.0.0.7".into()),
            interception_mode: InterceptionMode::Redirect,
        };
        let back = node_from_proto(&node_to_proto(&node));
        assert_eq!(
            serde_json::to_value(&back).ok(),
            serde_json::to_value(&node).ok()
        );

        let bare = Node::default();
        let proto = node_to_proto(&bare);
        assert!(proto.locality.is_none() && proto.metadata.is_none());
        assert_eq!(node_from_proto(&proto).outbound_address, None);
    }

    #[test]
    fn an_outbound_address_that_is_not_a_string_is_ignored() {
        let mut proto = node_to_proto(&Node::default());
        let mut s = Struct::default();
        s.fields.insert(
            OUTBOUND_ADDRESS_METADATA.into(),
            Value {
                kind: Some(Kind::NumberValue(1.0)),
            },
        );
        proto.metadata = Some(s);
        assert_eq!(node_from_proto(&proto).outbound_address, None);
    }
}
