//! Lookups over a set of resources shared by validation and translation: services and
//! their meta-protocol ports, the DestinationRule and MetaRouter of a host, the hooks of
//! a host, and the traffic policy in force for a port or subset.

use std::collections::BTreeMap;

use super::destination_rule::{
    ConnectionPoolSettings, DestinationRule, LoadBalancerSettings, OutlierDetection, Subset,
    TrafficPolicy,
};
use super::lua_hook::LuaHook;
use super::meta_router::{Destination, MetaRouter};
use super::service_entry::{ServiceEntry, ServicePort};
use super::MeshResources;

/// Prefix of Aeraki's meta-protocol port names: `tcp-metaprotocol-<protocol>[-suffix]`.
pub(crate) const METAPROTOCOL_PREFIX: &str = "tcp-metaprotocol-";

/// What a ServiceEntry port is.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum PortKind {
    /// A meta-protocol port speaking this protocol.
    Meta(String),
    /// Not a meta-protocol port (skipped, with the reason).
    Other(String),
    /// Contradictory declaration.
    Invalid(String),
}

/// Decides the protocol of a port from its name and its `protocol` field.
pub(crate) fn classify_port(port: &ServicePort, protocols: &[String]) -> PortKind {
    let name = port.name.as_deref().unwrap_or("").to_ascii_lowercase();
    let known = |p: &str| protocols.iter().any(|k| k == p);
    let from_name = if let Some(rest) = name.strip_prefix(METAPROTOCOL_PREFIX) {
        let proto = rest.split('-').next().unwrap_or("");
        if proto.is_empty() {
            return PortKind::Invalid(format!(
                "port name {name:?} names no protocol (expected {METAPROTOCOL_PREFIX}<protocol>)"
            ));
        }
        if !known(proto) {
            return PortKind::Other(format!(
                "meta protocol {proto:?} is not known to the control plane (known: {})",
                protocols.join(", ")
            ));
        }
        Some(proto.to_owned())
    } else {
        // Aeraki's older names for its dedicated Dubbo and Thrift proxies.
        ["dubbo", "thrift"]
            .into_iter()
            .find(|p| {
                known(p) && (name == format!("tcp-{p}") || name.starts_with(&format!("tcp-{p}-")))
            })
            .map(str::to_owned)
    };
    let declared = port.protocol.as_deref().unwrap_or("");
    let lower = declared.to_ascii_lowercase();
    let from_protocol = known(&lower).then(|| lower.clone());
    match (from_name, from_protocol) {
        (Some(a), Some(b)) if a != b => PortKind::Invalid(format!(
            "port name {name:?} says {a} but protocol says {declared}"
        )),
        (Some(p), _) | (None, Some(p)) => PortKind::Meta(p),
        (None, None) => PortKind::Other(if declared.is_empty() {
            "no meta protocol declared (name it tcp-metaprotocol-<protocol> or set protocol)"
                .to_owned()
        } else {
            format!("protocol {declared} is not a meta protocol")
        }),
    }
}

/// The request attribute that tells services apart when several share a port, per
/// protocol: Dubbo's `interface`, Thrift's multiplexed `service`, HTTP's `:authority`.
pub(crate) fn host_attribute(protocol: &str) -> Option<&'static str> {
    match protocol {
        "dubbo" => Some("interface"),
        "thrift" => Some("service"),
        "http" => Some(":authority"),
        _ => None,
    }
}

/// A meta-protocol port of a service.
#[derive(Clone, Debug)]
pub(crate) struct MetaPort<'a> {
    /// Position in the ServiceEntry's `ports`.
    pub index: usize,
    /// Port number.
    pub number: u16,
    /// Port name (may be empty).
    pub name: &'a str,
    /// Protocol name.
    pub protocol: String,
    /// The declaration.
    pub spec: &'a ServicePort,
}

/// A service: one host of a ServiceEntry.
#[derive(Clone, Debug)]
pub(crate) struct Service<'a> {
    /// The host as written (cluster names use it).
    pub host: &'a str,
    /// The ServiceEntry.
    pub entry: &'a ServiceEntry,
    /// Its meta-protocol ports with a valid number.
    pub ports: Vec<MetaPort<'a>>,
}

impl<'a> Service<'a> {
    /// The meta-protocol port with this number.
    pub fn port(&self, number: u16) -> Option<&MetaPort<'a>> {
        self.ports.iter().find(|p| p.number == number)
    }
}

/// Hosts compare case-insensitively (they are DNS names).
pub(crate) fn host_key(host: &str) -> String {
    host.to_ascii_lowercase()
}

/// True when a MetaRouter's `gateways` include the sidecars.
pub(crate) fn applies_to_sidecars(r: &MetaRouter) -> bool {
    r.spec.gateways.is_empty() || r.spec.gateways.iter().any(|g| g == "mesh")
}

/// Lookups over one [`MeshResources`].
pub(crate) struct Index<'a> {
    /// Services by host key; the first ServiceEntry (by namespace and name) wins a host.
    pub services: BTreeMap<String, Service<'a>>,
    mesh: &'a MeshResources,
}

impl<'a> Index<'a> {
    pub fn new(mesh: &'a MeshResources) -> Self {
        let mut services = BTreeMap::new();
        for se in mesh.service_entries() {
            let ports: Vec<MetaPort<'a>> = se
                .spec
                .ports
                .iter()
                .enumerate()
                .filter_map(|(index, p)| {
                    let number = u16::try_from(p.number).ok().filter(|n| *n != 0)?;
                    match classify_port(p, mesh.protocols()) {
                        PortKind::Meta(protocol) => Some(MetaPort {
                            index,
                            number,
                            name: p.name.as_deref().unwrap_or(""),
                            protocol,
                            spec: p,
                        }),
                        _ => None,
                    }
                })
                .collect();
            for host in &se.spec.hosts {
                if host.is_empty() {
                    continue;
                }
                services.entry(host_key(host)).or_insert_with(|| Service {
                    host,
                    entry: se,
                    ports: ports.clone(),
                });
            }
        }
        Index { services, mesh }
    }

    /// The service of a host.
    pub fn service(&self, host: &str) -> Option<&Service<'a>> {
        self.services.get(&host_key(host))
    }

    /// The DestinationRule of a host: one naming it exactly, else the `*.suffix` rule with
    /// the longest suffix, else a `*` rule.
    pub fn rule(&self, host: &str) -> Option<&'a DestinationRule> {
        let key = host_key(host);
        let rules = self.mesh.destination_rules();
        if let Some(r) = rules.iter().find(|r| host_key(&r.spec.host) == key) {
            return Some(r);
        }
        rules
            .iter()
            .filter_map(|r| {
                let h = host_key(&r.spec.host);
                if h == "*" {
                    Some((0, r))
                } else {
                    let suffix = h.strip_prefix('*')?;
                    (suffix.starts_with('.') && key.ends_with(suffix)).then_some((suffix.len(), r))
                }
            })
            .max_by_key(|(len, _)| *len)
            .map(|(_, r)| r)
    }

    /// The MetaRouter for a host's sidecar traffic: the first (by namespace and name)
    /// that lists the host and applies to sidecars.
    pub fn router(&self, host: &str) -> Option<&'a MetaRouter> {
        let key = host_key(host);
        self.mesh
            .meta_routers()
            .iter()
            .filter(|r| applies_to_sidecars(r))
            .find(|r| r.spec.hosts.iter().any(|h| host_key(h) == key))
    }

    /// Every LuaHook listing the host, by namespace and name.
    pub fn hooks(&self, host: &str) -> Vec<&'a LuaHook> {
        let key = host_key(host);
        self.mesh
            .lua_hooks()
            .iter()
            .filter(|h| h.spec.hosts.iter().any(|x| host_key(x) == key))
            .collect()
    }
}

/// Istio's cluster name: `outbound|{port}|{subset}|{host}` (empty subset for the whole
/// service).
pub fn cluster_name(port: u16, subset: &str, host: &str) -> String {
    format!("outbound|{port}|{subset}|{host}")
}

/// A destination resolved to a cluster.
#[derive(Clone, Debug)]
pub(crate) struct Resolved<'a> {
    /// Cluster name.
    pub cluster: String,
    /// The destination host's DestinationRule.
    pub rule: Option<&'a DestinationRule>,
    /// The subset, when one is named.
    pub subset: Option<&'a Subset>,
    /// The destination port.
    pub port: u16,
}

impl<'a> Index<'a> {
    /// Resolves a MetaRouter destination for traffic arriving on `listener_port`, which
    /// speaks `protocol`. Without a port number the destination takes the host's port of
    /// that protocol: the listener's port when the host has it, else its only one.
    pub fn resolve(
        &self,
        dest: &Destination,
        listener_port: u16,
        protocol: &str,
    ) -> Result<Resolved<'a>, String> {
        let host = dest.host.as_str();
        let svc = self
            .service(host)
            .ok_or_else(|| format!("no ServiceEntry defines host {host:?}"))?;
        let port = match dest.port.as_ref().map(|p| p.number) {
            Some(n) => {
                let n16 = u16::try_from(n)
                    .ok()
                    .filter(|n| *n != 0)
                    .ok_or_else(|| format!("port {n} is not between 1 and 65535"))?;
                let mp = svc
                    .port(n16)
                    .ok_or_else(|| format!("host {host:?} has no meta-protocol port {n}"))?;
                if mp.protocol != protocol {
                    return Err(format!(
                        "port {n} of {host:?} speaks {}, but this route serves {protocol} traffic (port {listener_port})",
                        mp.protocol
                    ));
                }
                n16
            }
            None => {
                let same: Vec<&MetaPort<'a>> = svc
                    .ports
                    .iter()
                    .filter(|p| p.protocol == protocol)
                    .collect();
                match same.as_slice() {
                    [] => {
                        return Err(format!(
                            "host {host:?} has no {protocol} port (this route serves {protocol} traffic on port {listener_port})"
                        ))
                    }
                    [one] => one.number,
                    several => {
                        if several.iter().any(|p| p.number == listener_port) {
                            listener_port
                        } else {
                            let list: Vec<String> =
                                several.iter().map(|p| p.number.to_string()).collect();
                            return Err(format!(
                                "host {host:?} has several {protocol} ports ({}): set port.number",
                                list.join(", ")
                            ));
                        }
                    }
                }
            }
        };
        let rule = self.rule(host);
        let subset = match dest.subset.as_deref().filter(|s| !s.is_empty()) {
            None => None,
            Some(name) => {
                let Some(r) = rule else {
                    return Err(format!(
                        "subset {name:?} of host {host:?} is not defined: no DestinationRule for the host"
                    ));
                };
                let s = r
                    .spec
                    .subsets
                    .iter()
                    .find(|s| s.name == name)
                    .ok_or_else(|| {
                        let names: Vec<&str> =
                            r.spec.subsets.iter().map(|s| s.name.as_str()).collect();
                        format!(
                            "subset {name:?} is not defined by {} (subsets: {})",
                            r.id(),
                            if names.is_empty() {
                                "none".to_owned()
                            } else {
                                names.join(", ")
                            }
                        )
                    })?;
                Some(s)
            }
        };
        Ok(Resolved {
            cluster: cluster_name(port, subset.map_or("", |s| s.name.as_str()), svc.host),
            rule,
            subset,
            port,
        })
    }
}

/// The traffic policy in force for one port of a service, or one subset of it.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Policy<'a> {
    pub load_balancer: Option<&'a LoadBalancerSettings>,
    pub connection_pool: Option<&'a ConnectionPoolSettings>,
    pub outlier_detection: Option<&'a OutlierDetection>,
}

impl<'a> Policy<'a> {
    /// Istio's merge: a policy's fields replace the ones below it when set; a matching
    /// `portLevelSettings` entry replaces all three, set or not.
    fn overlay(mut self, tp: &'a TrafficPolicy, port: u16) -> Self {
        if let Some(lb) = &tp.load_balancer {
            self.load_balancer = Some(lb);
        }
        if let Some(cp) = &tp.connection_pool {
            self.connection_pool = Some(cp);
        }
        if let Some(od) = &tp.outlier_detection {
            self.outlier_detection = Some(od);
        }
        if let Some(pl) = tp
            .port_level_settings
            .iter()
            .find(|p| p.port.as_ref().is_some_and(|s| s.number == u32::from(port)))
        {
            self.load_balancer = pl.load_balancer.as_ref();
            self.connection_pool = pl.connection_pool.as_ref();
            self.outlier_detection = pl.outlier_detection.as_ref();
        }
        self
    }

    /// The policy for `port` of the rule's host, and of `subset` when given.
    pub fn of(rule: Option<&'a DestinationRule>, port: u16, subset: Option<&'a Subset>) -> Self {
        let mut p = Policy::default();
        if let Some(tp) = rule.and_then(|r| r.spec.traffic_policy.as_ref()) {
            p = p.overlay(tp, port);
        }
        if let Some(tp) = subset.and_then(|s| s.traffic_policy.as_ref()) {
            p = p.overlay(tp, port);
        }
        p
    }

    /// The attribute a consistent-hash policy hashes on (Aeraki reads `httpHeaderName`
    /// as an attribute name).
    pub fn hash_attribute(&self) -> Option<&'a str> {
        self.load_balancer?
            .consistent_hash
            .as_ref()?
            .http_header_name
            .as_deref()
            .filter(|h| !h.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port(name: &str, protocol: &str) -> ServicePort {
        ServicePort {
            number: 20880,
            name: (!name.is_empty()).then(|| name.to_owned()),
            protocol: (!protocol.is_empty()).then(|| protocol.to_owned()),
            target_port: None,
        }
    }

    #[test]
    fn port_protocols() {
        let known: Vec<String> = ["dubbo", "thrift", "http"].map(String::from).to_vec();
        let c = |n, p| classify_port(&port(n, p), &known);
        assert_eq!(
            c("tcp-metaprotocol-dubbo", "TCP"),
            PortKind::Meta("dubbo".into())
        );
        assert_eq!(
            c("tcp-metaprotocol-thrift-hello", ""),
            PortKind::Meta("thrift".into())
        );
        assert_eq!(
            c("TCP-MetaProtocol-Dubbo", ""),
            PortKind::Meta("dubbo".into())
        );
        assert_eq!(c("tcp-dubbo", ""), PortKind::Meta("dubbo".into()));
        assert_eq!(c("", "dubbo"), PortKind::Meta("dubbo".into()));
        assert_eq!(c("web", "HTTP"), PortKind::Meta("http".into()));
        assert_eq!(
            c("tcp-metaprotocol-http", "http"),
            PortKind::Meta("http".into())
        );
        assert!(matches!(c("grpc", "GRPC"), PortKind::Other(_)));
        assert!(matches!(c("h2", "HTTP2"), PortKind::Other(_)));
        assert!(matches!(c("tcp", "TCP"), PortKind::Other(_)));
        assert!(matches!(c("", ""), PortKind::Other(_)));
        assert!(matches!(c("tcp-metaprotocol-trpc", ""), PortKind::Other(_)));
        assert!(matches!(c("tcp-metaprotocol-", ""), PortKind::Invalid(_)));
        assert!(matches!(
            c("tcp-metaprotocol-dubbo", "HTTP"),
            PortKind::Invalid(_)
        ));
        let custom = vec!["trpc".to_owned()];
        assert_eq!(
            classify_port(&port("tcp-metaprotocol-trpc", ""), &custom),
            PortKind::Meta("trpc".into())
        );
    }
}
