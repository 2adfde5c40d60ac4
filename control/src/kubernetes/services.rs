//! Kubernetes Services and their EndpointSlices as ServiceEntries, as istiod builds them:
//! host `NAME.NAMESPACE.svc.DOMAIN`, the Service's ports, the ready endpoints with the
//! labels of their Pods and the locality of their Nodes.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::error::Source;
use crate::resources::index::{classify_port, PortKind};
use crate::resources::object::{Object, ObjectMeta};
use crate::resources::service_entry::{ServiceEntrySpec, ServicePort, WorkloadEntry};
use crate::resources::ServiceEntry;

/// The label an EndpointSlice names its Service with.
pub(crate) const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Node label: the region of the locality.
pub(crate) const REGION_LABEL: &str = "topology.kubernetes.io/region";
/// Node label: the zone of the locality.
pub(crate) const ZONE_LABEL: &str = "topology.kubernetes.io/zone";
/// Node label: the subzone of the locality (Istio's).
pub(crate) const SUBZONE_LABEL: &str = "topology.istio.io/subzone";

/// Labels by object key (`namespace/name` for Pods, `name` for Nodes).
pub(crate) type LabelsByName = BTreeMap<String, BTreeMap<String, String>>;

/// Why a Service gives no ServiceEntry.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Skip {
    /// An `ExternalName` Service: a DNS alias, not a set of endpoints.
    ExternalName,
    /// No port speaks a meta protocol the control plane knows.
    NoMetaPort,
}

/// What the ServiceEntries are built from.
pub(crate) struct Cluster<'a> {
    /// The cluster's DNS domain, `cluster.local` by default.
    pub domain: &'a str,
    /// Protocol names ports may declare.
    pub protocols: &'a [String],
    /// EndpointSlices by `namespace/service-name`.
    pub slices: BTreeMap<String, Vec<&'a EndpointSlice>>,
    /// Pod labels by `namespace/name`.
    pub pods: &'a LabelsByName,
    /// Node labels by name.
    pub nodes: &'a LabelsByName,
}

/// Groups EndpointSlices by the Service they belong to (`namespace/service-name`).
pub(crate) fn slices_by_service<'a>(
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
) -> BTreeMap<String, Vec<&'a EndpointSlice>> {
    let mut out: BTreeMap<String, Vec<&'a EndpointSlice>> = BTreeMap::new();
    for s in slices {
        let Some(service) = s
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(SERVICE_NAME_LABEL))
        else {
            continue;
        };
        let ns = s.metadata.namespace.as_deref().unwrap_or_default();
        out.entry(format!("{ns}/{service}")).or_default().push(s);
    }
    out
}

impl Cluster<'_> {
    /// The ServiceEntry of a Service, or why it has none.
    pub fn service_entry(&self, svc: &Service) -> Result<ServiceEntry, Skip> {
        let spec = svc.spec.clone().unwrap_or_default();
        if spec.type_.as_deref() == Some("ExternalName") {
            return Err(Skip::ExternalName);
        }
        let name = svc.metadata.name.clone().unwrap_or_default();
        let namespace = svc.metadata.namespace.clone().unwrap_or_default();
        let key = format!("{namespace}/{name}");
        let slices = self.slices.get(&key).map(Vec::as_slice).unwrap_or_default();

        let ports: Vec<ServicePort> = spec
            .ports
            .unwrap_or_default()
            .into_iter()
            // Meta protocols run over TCP (the default protocol).
            .filter(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP")
            .map(|p| {
                let port_name = p.name.clone().filter(|n| !n.is_empty());
                let target_port = match &p.target_port {
                    Some(IntOrString::Int(n)) => u32::try_from(*n).ok(),
                    // A named target port: the EndpointSlices carry its number.
                    _ => slice_port(slices, port_name.as_deref().unwrap_or("")),
                };
                ServicePort {
                    number: u32::try_from(p.port).unwrap_or(0),
                    name: port_name,
                    protocol: p.app_protocol.clone().filter(|a| !a.is_empty()),
                    target_port,
                }
            })
            .collect();
        let meta = ports
            .iter()
            .any(|p| matches!(classify_port(p, self.protocols), PortKind::Meta(_)));
        if !meta {
            return Err(Skip::NoMetaPort);
        }

        let mut seen = BTreeSet::new();
        let mut endpoints = Vec::new();
        for slice in slices {
            if slice.address_type != "IPv4" && slice.address_type != "IPv6" {
                continue;
            }
            let slice_ports: BTreeMap<String, u32> = slice
                .ports
                .iter()
                .flatten()
                .filter_map(|p| {
                    let name = p.name.clone().unwrap_or_default();
                    let number = u32::try_from(p.port?).ok()?;
                    (!name.is_empty()).then_some((name, number))
                })
                .collect();
            for ep in &slice.endpoints {
                // Kubernetes: a missing `ready` means ready. A terminating endpoint is
                // not ready (even while still serving) and gets no new requests.
                let ready = ep.conditions.as_ref().and_then(|c| c.ready) != Some(false);
                let Some(address) = ep.addresses.first() else {
                    continue;
                };
                if !ready || !seen.insert(address.clone()) {
                    continue;
                }
                endpoints.push(WorkloadEntry {
                    address: address.clone(),
                    ports: slice_ports.clone(),
                    labels: self.pod_labels(ep),
                    locality: self.locality(ep),
                    ..WorkloadEntry::default()
                });
            }
        }

        Ok(Object {
            api_version: "networking.istio.io/v1".into(),
            kind: "ServiceEntry".into(),
            metadata: ObjectMeta {
                name,
                namespace: Some(namespace.clone()),
                labels: svc.metadata.labels.clone().unwrap_or_default(),
                annotations: svc.metadata.annotations.clone().unwrap_or_default(),
                ..ObjectMeta::default()
            },
            spec: ServiceEntrySpec {
                hosts: vec![format!(
                    "{}.{namespace}.svc.{}",
                    svc.metadata.name.as_deref().unwrap_or_default(),
                    self.domain
                )],
                ports,
                location: Some("MESH_INTERNAL".into()),
                resolution: Some("STATIC".into()),
                endpoints,
                ..ServiceEntrySpec::default()
            },
            status: None,
            source: Source {
                file: "kubernetes:v1/Service".into(),
                document: 1,
            },
        })
    }

    fn pod_labels(
        &self,
        ep: &k8s_openapi::api::discovery::v1::Endpoint,
    ) -> BTreeMap<String, String> {
        let Some(target) = &ep.target_ref else {
            return BTreeMap::new();
        };
        if target.kind.as_deref() != Some("Pod") {
            return BTreeMap::new();
        }
        let key = format!(
            "{}/{}",
            target.namespace.as_deref().unwrap_or_default(),
            target.name.as_deref().unwrap_or_default()
        );
        self.pods.get(&key).cloned().unwrap_or_default()
    }

    /// `region/zone/subzone` from the Node's labels, the zone falling back to the
    /// endpoint's `zone`. Without a region there is no locality.
    fn locality(&self, ep: &k8s_openapi::api::discovery::v1::Endpoint) -> Option<String> {
        let empty = BTreeMap::new();
        let node = ep
            .node_name
            .as_ref()
            .and_then(|n| self.nodes.get(n))
            .unwrap_or(&empty);
        let get = |k: &str| node.get(k).map(String::as_str).unwrap_or_default();
        let region = get(REGION_LABEL);
        if region.is_empty() || region.contains('/') {
            return None;
        }
        let zone = Some(get(ZONE_LABEL))
            .filter(|z| !z.is_empty())
            .or(ep.zone.as_deref())
            .unwrap_or_default();
        let subzone = get(SUBZONE_LABEL);
        Some(match (zone.is_empty(), subzone.is_empty()) {
            (true, _) => region.to_owned(),
            (false, true) => format!("{region}/{zone}"),
            (false, false) => format!("{region}/{zone}/{subzone}"),
        })
    }
}

/// The endpoint port number of a service port name, as the EndpointSlices give it.
fn slice_port(slices: &[&EndpointSlice], name: &str) -> Option<u32> {
    slices
        .iter()
        .flat_map(|s| s.ports.iter().flatten())
        .find(|p| p.name.as_deref().unwrap_or_default() == name)
        .and_then(|p| p.port)
        .and_then(|p| u32::try_from(p).ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn service(spec: serde_json::Value) -> Service {
        serde_json::from_value(json!({
            "metadata": { "name": "svc", "namespace": "ns" },
            "spec": spec,
        }))
        .expect("a Service")
    }

    fn slice(address_type: &str, endpoints: serde_json::Value) -> EndpointSlice {
        serde_json::from_value(json!({
            "metadata": {
                "name": "svc-abcde",
                "namespace": "ns",
                "labels": { SERVICE_NAME_LABEL: "svc" },
            },
            "addressType": address_type,
            "endpoints": endpoints,
            "ports": [{ "port": 7001, "protocol": "TCP" }],
        }))
        .expect("an EndpointSlice")
    }

    fn build(
        svc: &Service,
        slices: &[EndpointSlice],
        nodes: &LabelsByName,
    ) -> Result<ServiceEntry, Skip> {
        let protocols = crate::MeshResources::new().protocols().to_vec();
        let pods = LabelsByName::new();
        let cluster = Cluster {
            domain: "cluster.local",
            protocols: &protocols,
            slices: slices_by_service(slices),
            pods: &pods,
            nodes,
        };
        cluster.service_entry(svc)
    }

    #[test]
    fn an_unnamed_dubbo_port_takes_its_target_port_from_the_slices() {
        // Headless, one unnamed port declared Dubbo by appProtocol, a named target port.
        let svc = service(json!({
            "clusterIP": "None",
            "ports": [
                { "port": 20880, "appProtocol": "dubbo", "targetPort": "dubbo" },
                { "port": 53, "protocol": "UDP", "appProtocol": "dubbo" },
            ],
        }));
        let slices = [
            slice(
                "IPv4",
                json!([
                    { "addresses": ["10.0.0.1"] },
                    { "addresses": ["10.0.0.2"], "conditions": { "ready": false, "serving": true, "terminating": true } },
                    { "addresses": ["10.0.0.1"], "conditions": { "ready": true } },
                ]),
            ),
            slice("FQDN", json!([{ "addresses": ["db.example.com"] }])),
        ];
        let se = build(&svc, &slices, &LabelsByName::new()).expect("an entry");
        assert_eq!(se.spec.hosts, ["svc.ns.svc.cluster.local"]);
        assert_eq!(se.spec.ports.len(), 1, "UDP ports are left out");
        assert_eq!(se.spec.ports[0].protocol.as_deref(), Some("dubbo"));
        assert_eq!(se.spec.ports[0].target_port, Some(7001));
        let addresses: Vec<&str> = se
            .spec
            .endpoints
            .iter()
            .map(|e| e.address.as_str())
            .collect();
        // No `ready` means ready; a terminating endpoint is left out; duplicates once.
        assert_eq!(addresses, ["10.0.0.1"]);
        assert_eq!(se.spec.endpoints[0].locality, None);
    }

    #[test]
    fn locality_needs_a_region_and_takes_the_endpoint_zone_last() {
        let svc =
            service(json!({ "ports": [{ "name": "tcp-metaprotocol-thrift", "port": 9090 }] }));
        let slices = [slice(
            "IPv4",
            json!([
                { "addresses": ["10.0.0.1"], "nodeName": "n1", "zone": "z-ep" },
                { "addresses": ["10.0.0.2"], "nodeName": "n2", "zone": "z-ep" },
                { "addresses": ["10.0.0.3"], "nodeName": "unknown", "zone": "z-ep" },
            ]),
        )];
        let mut nodes = LabelsByName::new();
        nodes.insert(
            "n1".into(),
            [(REGION_LABEL, "r"), (ZONE_LABEL, "z"), (SUBZONE_LABEL, "s")]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
        );
        nodes.insert(
            "n2".into(),
            [(REGION_LABEL.to_owned(), "r".to_owned())]
                .into_iter()
                .collect(),
        );
        let se = build(&svc, &slices, &nodes).expect("an entry");
        let got: Vec<Option<&str>> = se
            .spec
            .endpoints
            .iter()
            .map(|e| e.locality.as_deref())
            .collect();
        assert_eq!(got, [Some("r/z/s"), Some("r/z-ep"), None]);
    }

    #[test]
    fn external_names_and_services_without_meta_ports_give_nothing() {
        let external = service(json!({
            "type": "ExternalName",
            "externalName": "db.example.com",
            "ports": [{ "name": "tcp-metaprotocol-dubbo", "port": 20880 }],
        }));
        assert_eq!(
            build(&external, &[], &LabelsByName::new()),
            Err(Skip::ExternalName)
        );
        let web = service(json!({ "ports": [{ "name": "http", "port": 80 }] }));
        assert_eq!(
            build(&web, &[], &LabelsByName::new()),
            Err(Skip::NoMetaPort)
        );
    }
}
