//! Hosts as Istio reads them in a cluster: a host without a dot is short for
//! `NAME.NAMESPACE.svc.DOMAIN` in the namespace of the resource naming it. And what of
//! a cluster's Istio configuration concerns meta protocols: ServiceEntries with a
//! meta-protocol port and IP endpoints, and the DestinationRules of their hosts; the
//! rest (other protocols, hosts resolved by DNS) is left to Istio and does not stop a
//! set.

use std::collections::BTreeSet;

use crate::resources::index::{classify_port, host_key, PortKind};
use crate::resources::meta_router::Destination;
use crate::resources::{Resource, ServiceEntry};

/// Istio's short-name rule: `*` and names with a dot stay; `NAME` becomes
/// `NAME.NAMESPACE.svc.DOMAIN`.
pub(crate) fn fqdn(host: &str, namespace: &str, domain: &str) -> String {
    if host.is_empty() || host == "*" || host.contains('.') {
        host.to_owned()
    } else {
        format!("{host}.{namespace}.svc.{domain}")
    }
}

fn expand_destination(d: &mut Destination, namespace: &str, domain: &str) {
    d.host = fqdn(&d.host, namespace, domain);
}

/// Expands the short hosts a MetaRouter, DestinationRule or LuaHook names.
pub(crate) fn expand(resource: &mut Resource, domain: &str) {
    match resource {
        Resource::MetaRouter(r) => {
            let ns = r.namespace().to_owned();
            for h in &mut r.spec.hosts {
                *h = fqdn(h, &ns, domain);
            }
            for route in &mut r.spec.routes {
                for d in &mut route.route {
                    expand_destination(&mut d.destination, &ns, domain);
                }
                if let Some(m) = &mut route.mirror {
                    expand_destination(m, &ns, domain);
                }
            }
        }
        Resource::DestinationRule(r) => {
            let ns = r.namespace().to_owned();
            r.spec.host = fqdn(&r.spec.host, &ns, domain);
        }
        Resource::LuaHook(h) => {
            let ns = h.namespace().to_owned();
            for x in &mut h.spec.hosts {
                *x = fqdn(x, &ns, domain);
            }
        }
        Resource::ServiceEntry(_) | Resource::Skipped(_) => {}
    }
}

/// True when a ServiceEntry has a port speaking one of `protocols` and endpoints the
/// proxies can use as they are (not resolved by DNS).
pub(crate) fn is_meta_service(se: &ServiceEntry, protocols: &[String]) -> bool {
    let dns = matches!(
        se.spec.resolution.as_deref(),
        Some("DNS" | "DNS_ROUND_ROBIN")
    );
    !dns && se
        .spec
        .ports
        .iter()
        .any(|p| matches!(classify_port(p, protocols), PortKind::Meta(_)))
}

/// Keeps ServiceEntries of meta-protocol services, the DestinationRules of their hosts
/// (and wildcard ones), and every MetaRouter and LuaHook. Returns what was left out, by
/// `Kind/namespace/name`.
pub(crate) fn mesh_only(resources: &mut Vec<Resource>, protocols: &[String]) -> Vec<String> {
    let mut hosts = BTreeSet::new();
    for r in resources.iter() {
        if let Resource::ServiceEntry(se) = r {
            if is_meta_service(se, protocols) {
                hosts.extend(se.spec.hosts.iter().map(|h| host_key(h)));
            }
        }
    }
    let mut left_out = Vec::new();
    resources.retain(|r| {
        let keep = match r {
            Resource::ServiceEntry(se) => is_meta_service(se, protocols),
            Resource::DestinationRule(dr) => {
                dr.spec.host.starts_with('*') || hosts.contains(&host_key(&dr.spec.host))
            }
            _ => true,
        };
        if !keep {
            left_out.push(match r {
                Resource::ServiceEntry(x) => x.id(),
                Resource::DestinationRule(x) => x.id(),
                _ => String::new(),
            });
        }
        keep
    });
    left_out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::parse_file;

    #[test]
    fn short_hosts_are_expanded_in_the_resource_namespace() {
        assert_eq!(
            fqdn("reviews", "shop", "cluster.local"),
            "reviews.shop.svc.cluster.local"
        );
        assert_eq!(fqdn("reviews.other", "shop", "c"), "reviews.other");
        assert_eq!(fqdn("*", "shop", "c"), "*");
        let text = r#"
apiVersion: metamesh.io/v1alpha1
kind: MetaRouter
metadata: { name: r, namespace: shop }
spec:
  hosts: [cart]
  routes:
    - route: [{ destination: { host: cart, subset: v1 } }]
      mirror: { host: cart-shadow.lab.svc.cluster.local }
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: { name: d, namespace: shop }
spec: { host: cart }
---
apiVersion: metamesh.io/v1alpha1
kind: LuaHook
metadata: { name: h }
spec: { hosts: [cart], script: "" }
"#;
        let mut got = parse_file("x.yaml", text).expect("parses");
        for r in &mut got {
            expand(r, "cluster.local");
        }
        let (Resource::MetaRouter(m), Resource::DestinationRule(d), Resource::LuaHook(h)) =
            (&got[0], &got[1], &got[2])
        else {
            panic!("{got:?}");
        };
        assert_eq!(m.spec.hosts, ["cart.shop.svc.cluster.local"]);
        let route = &m.spec.routes[0];
        assert_eq!(
            route.route[0].destination.host,
            "cart.shop.svc.cluster.local"
        );
        assert_eq!(
            route.mirror.as_ref().map(|d| d.host.as_str()),
            Some("cart-shadow.lab.svc.cluster.local")
        );
        assert_eq!(d.spec.host, "cart.shop.svc.cluster.local");
        assert_eq!(h.spec.hosts, ["cart.default.svc.cluster.local"]);
    }

    #[test]
    fn istio_configuration_for_other_protocols_is_left_out() {
        let text = r#"
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: { name: stripe, namespace: shop }
spec:
  hosts: [api.stripe.com]
  ports: [{ number: 443, name: https, protocol: TLS }]
  resolution: DNS
  endpoints: [{ address: api.stripe.com }]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: { name: stripe, namespace: shop }
spec: { host: api.stripe.com }
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: { name: httpbin, namespace: shop }
spec:
  hosts: [httpbin.org]
  ports: [{ number: 80, name: http, protocol: HTTP }]
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: { name: dubbo, namespace: shop }
spec:
  hosts: [dubbo.shop.svc.cluster.local]
  ports: [{ number: 20880, name: tcp-metaprotocol-dubbo }]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: { name: dubbo, namespace: shop }
spec: { host: dubbo.shop.svc.cluster.local }
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: { name: all, namespace: shop }
spec: { host: "*.shop.svc.cluster.local" }
"#;
        let mut got = parse_file("x.yaml", text).expect("parses");
        let protocols = crate::MeshResources::new().protocols().to_vec();
        let left_out = mesh_only(&mut got, &protocols);
        assert_eq!(
            left_out,
            [
                "ServiceEntry/shop/stripe",
                "DestinationRule/shop/stripe",
                "ServiceEntry/shop/httpbin"
            ]
        );
        assert_eq!(got.len(), 3);
    }
}
