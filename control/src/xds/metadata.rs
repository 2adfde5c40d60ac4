//! The `metamesh` namespace of Envoy metadata: the cluster and endpoint settings Envoy's
//! messages have no field for.

use std::collections::{BTreeMap, HashMap};

use envoy_types::pb::envoy::config::core::v3::Metadata;
use envoy_types::pb::google::protobuf::{Struct, Value};
use metamesh_core::config::{Locality, LocalityLb, LocalityWeight};

use super::wire::{
    as_bool, as_integer, as_list, as_str, as_struct, bool_value, list_value, number_value,
    string_value, struct_value, MAX_EXACT_NUMBER,
};

/// The `filter_metadata` key of metamesh's settings on clusters and endpoints.
pub const METADATA_NAMESPACE: &str = "metamesh";

/// The custom health checker name of the protocol heartbeat probe.
pub const HEARTBEAT_HEALTH_CHECKER: &str = "metamesh.health_checkers.heartbeat";

/// Cluster metadata keys.
pub(crate) const PROTOCOL: &str = "protocol";
pub(crate) const PROTOCOL_OPTIONS: &str = "protocol_options";
pub(crate) const CONNECTIONS_PER_ENDPOINT: &str = "connections_per_endpoint";
pub(crate) const MAX_FRAME_SIZE: &str = "max_frame_size";
pub(crate) const OVERPROVISIONING_FACTOR: &str = "overprovisioning_factor";
pub(crate) const LOCALITY_LB: &str = "locality_lb";
pub(crate) const DEFAULTED: &str = "defaulted";
/// Endpoint metadata key.
pub(crate) const LABELS: &str = "labels";

/// The path of the metamesh namespace inside a message with a `metadata` field.
pub(crate) const METADATA_PATH: &str = "metadata.filter_metadata.metamesh";

/// The cluster settings carried in the cluster's metadata.
#[derive(Clone, Debug, Default)]
pub(crate) struct ClusterExtras {
    pub protocol: Option<String>,
    pub protocol_options: BTreeMap<String, String>,
    pub connections_per_endpoint: Option<u32>,
    pub max_frame_size: Option<usize>,
    pub overprovisioning_factor: Option<u32>,
    pub locality_lb: Option<LocalityLb>,
    /// Envoy field paths written with metamesh's default because the bootstrap left
    /// them unset (Envoy requires them or defaults them differently).
    pub defaulted: Vec<String>,
}

fn strings(map: &BTreeMap<String, String>) -> Value {
    struct_value(Struct {
        fields: map
            .iter()
            .map(|(k, v)| (k.clone(), string_value(v)))
            .collect(),
    })
}

fn locality_weight(w: &LocalityWeight) -> Value {
    let fields: HashMap<String, Value> = [
        ("region", string_value(&w.locality.region)),
        ("zone", string_value(&w.locality.zone)),
        ("subzone", string_value(&w.locality.subzone)),
        ("weight", number_value(f64::from(w.weight))),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    struct_value(Struct { fields })
}

impl ClusterExtras {
    /// The cluster's metadata, when there is anything to carry.
    pub fn to_metadata(&self) -> Result<Option<Metadata>, String> {
        let mut fields = HashMap::new();
        if let Some(p) = &self.protocol {
            fields.insert(PROTOCOL.to_owned(), string_value(p));
        }
        if !self.protocol_options.is_empty() {
            fields.insert(PROTOCOL_OPTIONS.to_owned(), strings(&self.protocol_options));
        }
        if let Some(n) = self.connections_per_endpoint {
            fields.insert(
                CONNECTIONS_PER_ENDPOINT.to_owned(),
                number_value(f64::from(n)),
            );
        }
        if let Some(n) = self.max_frame_size {
            if n as u64 > MAX_EXACT_NUMBER {
                return Err(format!("max_frame_size {n} is above {MAX_EXACT_NUMBER}"));
            }
            fields.insert(MAX_FRAME_SIZE.to_owned(), number_value(n as f64));
        }
        if let Some(n) = self.overprovisioning_factor {
            fields.insert(
                OVERPROVISIONING_FACTOR.to_owned(),
                number_value(f64::from(n)),
            );
        }
        if let Some(l) = &self.locality_lb {
            let mut lf = HashMap::new();
            lf.insert("enabled".to_owned(), bool_value(l.enabled));
            lf.insert(
                "locality_weights".to_owned(),
                list_value(l.locality_weights.iter().map(locality_weight).collect()),
            );
            fields.insert(LOCALITY_LB.to_owned(), struct_value(Struct { fields: lf }));
        }
        if !self.defaulted.is_empty() {
            fields.insert(
                DEFAULTED.to_owned(),
                list_value(self.defaulted.iter().map(|p| string_value(p)).collect()),
            );
        }
        Ok(namespace(fields))
    }

    /// Reads the metamesh namespace of a cluster's metadata; errors carry the path below
    /// `metadata.filter_metadata.metamesh`.
    pub fn from_metadata(metadata: Option<&Metadata>) -> (Self, Vec<(String, String)>) {
        let mut out = ClusterExtras::default();
        let mut errors = Vec::new();
        let Some(s) = metadata.and_then(|m| m.filter_metadata.get(METADATA_NAMESPACE)) else {
            return (out, errors);
        };
        for (key, v) in sorted(s) {
            let path = format!("{METADATA_PATH}.{key}");
            let result: Result<(), String> = match key.as_str() {
                PROTOCOL => as_str(v).map(|p| out.protocol = Some(p.to_owned())),
                PROTOCOL_OPTIONS => {
                    string_map(v, &path, &mut errors).map(|m| out.protocol_options = m)
                }
                CONNECTIONS_PER_ENDPOINT => as_integer(v, u64::from(u32::MAX))
                    .map(|n| out.connections_per_endpoint = Some(n as u32)),
                MAX_FRAME_SIZE => {
                    as_integer(v, usize::MAX as u64).map(|n| out.max_frame_size = Some(n as usize))
                }
                OVERPROVISIONING_FACTOR => as_integer(v, u64::from(u32::MAX))
                    .map(|n| out.overprovisioning_factor = Some(n as u32)),
                LOCALITY_LB => {
                    out.locality_lb = locality_lb(v, &path, &mut errors);
                    Ok(())
                }
                DEFAULTED => as_list(v).map(|items| {
                    for (i, item) in items.iter().enumerate() {
                        match as_str(item) {
                            Ok(p) => out.defaulted.push(p.to_owned()),
                            Err(e) => errors.push((format!("{path}[{i}]"), e)),
                        }
                    }
                }),
                _ => Err("unknown key: this proxy does not know this setting".into()),
            };
            if let Err(e) = result {
                errors.push((path, e));
            }
        }
        (out, errors)
    }
}

/// A struct's fields in key order, so that errors come in a stable order.
fn sorted(s: &Struct) -> Vec<(&String, &Value)> {
    let mut fields: Vec<(&String, &Value)> = s.fields.iter().collect();
    fields.sort_by(|a, b| a.0.cmp(b.0));
    fields
}

fn namespace(fields: HashMap<String, Value>) -> Option<Metadata> {
    if fields.is_empty() {
        return None;
    }
    let mut filter_metadata = HashMap::new();
    filter_metadata.insert(METADATA_NAMESPACE.to_owned(), Struct { fields });
    Some(Metadata {
        filter_metadata,
        typed_filter_metadata: HashMap::new(),
    })
}

fn string_map(
    v: &Value,
    path: &str,
    errors: &mut Vec<(String, String)>,
) -> Result<BTreeMap<String, String>, String> {
    let s = as_struct(v)?;
    let mut out = BTreeMap::new();
    for (k, item) in sorted(s) {
        match as_str(item) {
            Ok(text) => {
                out.insert(k.clone(), text.to_owned());
            }
            Err(e) => errors.push((format!("{path}.{k}"), e)),
        }
    }
    Ok(out)
}

fn locality_lb(v: &Value, path: &str, errors: &mut Vec<(String, String)>) -> Option<LocalityLb> {
    let s = match as_struct(v) {
        Ok(s) => s,
        Err(e) => {
            errors.push((path.to_owned(), e));
            return None;
        }
    };
    let mut out = LocalityLb {
        enabled: false,
        locality_weights: Vec::new(),
    };
    for (key, item) in sorted(s) {
        let p = format!("{path}.{key}");
        match key.as_str() {
            "enabled" => match as_bool(item) {
                Ok(b) => out.enabled = b,
                Err(e) => errors.push((p, e)),
            },
            "locality_weights" => match as_list(item) {
                Ok(items) => {
                    for (i, w) in items.iter().enumerate() {
                        if let Some(w) = weight(w, &format!("{p}[{i}]"), errors) {
                            out.locality_weights.push(w);
                        }
                    }
                }
                Err(e) => errors.push((p, e)),
            },
            _ => errors.push((p, "unknown key".into())),
        }
    }
    Some(out)
}

fn weight(v: &Value, path: &str, errors: &mut Vec<(String, String)>) -> Option<LocalityWeight> {
    let s = match as_struct(v) {
        Ok(s) => s,
        Err(e) => {
            errors.push((path.to_owned(), e));
            return None;
        }
    };
    let mut locality = Locality::default();
    let mut weight = None;
    let before = errors.len();
    for (key, item) in sorted(s) {
        let p = format!("{path}.{key}");
        let field = match key.as_str() {
            "region" => &mut locality.region,
            "zone" => &mut locality.zone,
            "subzone" => &mut locality.subzone,
            "weight" => {
                match as_integer(item, u64::from(u32::MAX)) {
                    Ok(n) => weight = Some(n as u32),
                    Err(e) => errors.push((p, e)),
                }
                continue;
            }
            _ => {
                errors.push((p, "unknown key".into()));
                continue;
            }
        };
        match as_str(item) {
            Ok(text) => *field = text.to_owned(),
            Err(e) => errors.push((p, e)),
        }
    }
    if errors.len() > before {
        return None;
    }
    match weight {
        Some(weight) => Some(LocalityWeight { locality, weight }),
        None => {
            errors.push((format!("{path}.weight"), "required".into()));
            None
        }
    }
}

/// An endpoint's metadata carrying its labels, when it has any.
pub(crate) fn endpoint_metadata(labels: &BTreeMap<String, String>) -> Option<Metadata> {
    if labels.is_empty() {
        return None;
    }
    let mut fields = HashMap::new();
    fields.insert(LABELS.to_owned(), strings(labels));
    namespace(fields)
}

/// The labels in an endpoint's metadata; errors carry the path below the endpoint.
pub(crate) fn endpoint_labels(
    metadata: Option<&Metadata>,
    errors: &mut Vec<(String, String)>,
) -> BTreeMap<String, String> {
    let Some(s) = metadata.and_then(|m| m.filter_metadata.get(METADATA_NAMESPACE)) else {
        return BTreeMap::new();
    };
    let mut labels = BTreeMap::new();
    for (key, v) in sorted(s) {
        let path = format!("{METADATA_PATH}.{key}");
        if key == LABELS {
            match string_map(v, &path, errors) {
                Ok(m) => labels = m,
                Err(e) => errors.push((path, e)),
            }
        } else {
            errors.push((path, "unknown key".into()));
        }
    }
    labels
}
