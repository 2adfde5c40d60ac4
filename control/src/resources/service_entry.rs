//! `ServiceEntry`: a service, its ports and its endpoints, with Istio's field names.

use std::collections::BTreeMap;

use serde::de::IgnoredAny;
use serde::Deserialize;

use super::object::Object;

/// API versions a `ServiceEntry` may be written in.
pub const API_VERSIONS: &[&str] = &[
    "networking.istio.io/v1",
    "networking.istio.io/v1beta1",
    "networking.istio.io/v1alpha3",
    "metamesh.io/v1alpha1",
];

/// A `ServiceEntry` resource.
pub type ServiceEntry = Object<ServiceEntrySpec>;

/// A service.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServiceEntrySpec {
    /// The service's names; clusters are named after them.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Virtual IPs: accepted and ignored.
    #[serde(default)]
    pub addresses: Vec<String>,
    /// The service's ports.
    #[serde(default)]
    pub ports: Vec<ServicePort>,
    /// `MESH_EXTERNAL` or `MESH_INTERNAL`: accepted and ignored.
    #[serde(default)]
    pub location: Option<String>,
    /// `NONE`, `STATIC`, `DNS` or `DNS_ROUND_ROBIN`: accepted; endpoints must be IP
    /// addresses whatever it says.
    #[serde(default)]
    pub resolution: Option<String>,
    /// The service's instances.
    #[serde(default)]
    pub endpoints: Vec<WorkloadEntry>,
    /// Instances selected from a workload registry: accepted and ignored (noted).
    #[serde(default)]
    pub workload_selector: Option<IgnoredAny>,
    /// Visibility across namespaces: accepted and ignored.
    #[serde(default)]
    pub export_to: Vec<String>,
    /// Accepted and ignored.
    #[serde(default)]
    pub subject_alt_names: Vec<String>,
}

/// A service port.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServicePort {
    /// Port number.
    #[serde(default)]
    pub number: u32,
    /// Name; `tcp-metaprotocol-<protocol>[-suffix]` makes it a meta-protocol port.
    #[serde(default)]
    pub name: Option<String>,
    /// Istio protocol name (`TCP`, `HTTP`, ...), or a meta protocol (`dubbo`, `thrift`).
    #[serde(default)]
    pub protocol: Option<String>,
    /// Port on the endpoints (default `number`); an endpoint's `ports` entry overrides it.
    #[serde(default)]
    pub target_port: Option<u32>,
}

/// One instance of a service.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WorkloadEntry {
    /// IP address.
    #[serde(default)]
    pub address: String,
    /// Port of this instance per service port name.
    #[serde(default)]
    pub ports: BTreeMap<String, u32>,
    /// Labels, matched by DestinationRule subsets.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Accepted and ignored.
    #[serde(default)]
    pub network: Option<String>,
    /// `region/zone/subzone`.
    #[serde(default)]
    pub locality: Option<String>,
    /// Relative weight (default 1).
    #[serde(default)]
    pub weight: Option<u32>,
    /// Accepted and ignored.
    #[serde(default)]
    pub service_account: Option<String>,
}
